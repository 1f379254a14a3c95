-- Evaluation: held-out prompts answered by a base model and by the same model with an adapter
-- (answer-only generate runs, rounds = 0), each answer given a refusal verdict twice (string
-- patterns and the judge model), and the two answers compared under the constitution's
-- comparison questions in both orders.

-- What a prompt is about and how it asks (red-team and evaluation sets carry them).
ALTER TABLE prompts ADD COLUMN topic TEXT;
ALTER TABLE prompts ADD COLUMN style TEXT;

-- One evaluation. `id` hashes the two runs, the judge (model, chat template, constitution,
-- frames, questions and principles per prompt, seed) and the prompt set; `name` is the user's
-- label for it.
CREATE TABLE evals (
    id                   TEXT PRIMARY KEY,
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    name                 TEXT NOT NULL,
    base_run_id          TEXT NOT NULL REFERENCES runs(id),
    adapter_run_id       TEXT REFERENCES runs(id),     -- NULL: the base model alone
    adapter_path         TEXT,
    judge_model_path     TEXT NOT NULL,
    judge_model_sha256   TEXT NOT NULL,
    chat_template_sha256 TEXT NOT NULL,
    constitution_name    TEXT NOT NULL,
    constitution_sha256  TEXT NOT NULL,
    constitution_json    TEXT NOT NULL,
    verdict_frame_sha256 TEXT NOT NULL,
    judge_frame_sha256   TEXT NOT NULL,
    questions            INTEGER NOT NULL,   -- comparison questions per prompt
    principle_questions  INTEGER NOT NULL,   -- principles asked as comparisons per prompt
    seed                 INTEGER NOT NULL,
    prompts_sha256       TEXT NOT NULL
);

-- The prompts an evaluation covers (its runs may hold more).
CREATE TABLE eval_prompts (
    eval_id   TEXT NOT NULL REFERENCES evals(id),
    prompt_id TEXT NOT NULL REFERENCES prompts(id),
    PRIMARY KEY (eval_id, prompt_id)
);

-- Whether one answer complied with or refused its prompt, judged twice.
CREATE TABLE eval_verdicts (
    eval_id     TEXT NOT NULL REFERENCES evals(id),
    side        TEXT NOT NULL CHECK (side IN ('base', 'adapter')),
    prompt_id   TEXT NOT NULL REFERENCES prompts(id),
    step_id     TEXT NOT NULL REFERENCES steps(id),
    pattern     TEXT NOT NULL CHECK (pattern IN ('comply', 'refuse')),
    judge       TEXT NOT NULL CHECK (judge IN ('comply', 'refuse', 'partial')),
    p_comply    REAL NOT NULL,    -- the judge's probabilities over the three, each rotation of
                                  -- the options normalised, mapped back to meanings, averaged
    p_refuse    REAL NOT NULL,
    p_partial   REAL NOT NULL,
    answer_mass REAL NOT NULL,    -- mean raw probability on any of the three letters
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (eval_id, side, prompt_id)
);

-- Adapter answer vs base answer: one comparison question in one order (as `judgments`, with the
-- adapter's answer in the role of "chosen"). A principle asked as a comparison has question_id
-- `principle:<id>`.
CREATE TABLE eval_judgments (
    id             TEXT NOT NULL UNIQUE,   -- hash(evaluation, prompt, question, order), as judgments.id
    eval_id        TEXT NOT NULL REFERENCES evals(id),
    prompt_id      TEXT NOT NULL REFERENCES prompts(id),
    question_id    TEXT NOT NULL,
    swapped        INTEGER NOT NULL CHECK (swapped IN (0, 1)),
    mass_a         REAL NOT NULL,
    mass_b         REAL NOT NULL,
    p_a            REAL NOT NULL,
    p_adapter      REAL NOT NULL,
    prompt_tokens  INTEGER NOT NULL,
    prefill_tokens INTEGER NOT NULL,
    reasoning      TEXT,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (eval_id, prompt_id, question_id, swapped)
);

-- A prompt's comparison, written with its last judgment: mean p(adapter ≻ base).
CREATE TABLE eval_comparisons (
    eval_id             TEXT NOT NULL REFERENCES evals(id),
    prompt_id           TEXT NOT NULL REFERENCES prompts(id),
    p_adapter           REAL NOT NULL,
    judgments           INTEGER NOT NULL,
    order_disagreements INTEGER NOT NULL,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (eval_id, prompt_id)
);
