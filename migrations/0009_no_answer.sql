-- A judge that puts no probability on any answer letter has not answered: a remote judge whose
-- top log-probs hold none of the letters, a probe read back with the wrong number of masses, a
-- verdict whose options tie exactly. Such a judgment is kept (a rerun does not ask it again)
-- with its reason and without a probability, and is left out of labels, verdict rates and
-- every mean — never read as an even 0.5 or as "complied". `tenets stats`, the export report
-- and the evaluation results count them.
--
-- SQLite cannot drop a NOT NULL, so the tables whose probabilities become optional are rebuilt;
-- rows written before are carried over, and the ones that were no answer (zero mass, or an
-- exact tie of the verdict's options) are marked so and their labels recomputed.

CREATE TABLE judgments_v9 (
    id            TEXT PRIMARY KEY,
    judge_id      TEXT NOT NULL REFERENCES judges(id),
    pair_id       TEXT NOT NULL REFERENCES pairs(id),
    question_id   TEXT NOT NULL,
    swapped       INTEGER NOT NULL CHECK (swapped IN (0, 1)),
    mass_a        REAL NOT NULL,      -- raw next-token probability of every form of "A"
    mass_b        REAL NOT NULL,      -- ... and of "B"
    p_a           REAL,               -- mass_a / (mass_a + mass_b); NULL: no answer
    p_chosen      REAL,               -- p(chosen ≻ rejected), swap undone; NULL: no answer
    no_answer     TEXT CHECK (no_answer IN ('no-mass', 'malformed')),
    prompt_tokens INTEGER NOT NULL,
    prefill_tokens INTEGER NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    reasoning     TEXT,
    CHECK ((no_answer IS NULL) = (p_a IS NOT NULL AND p_chosen IS NOT NULL)),
    UNIQUE (judge_id, pair_id, question_id, swapped)
);
INSERT INTO judgments_v9 (id, judge_id, pair_id, question_id, swapped, mass_a, mass_b, p_a,
    p_chosen, no_answer, prompt_tokens, prefill_tokens, created_at, reasoning)
SELECT id, judge_id, pair_id, question_id, swapped, mass_a, mass_b,
    CASE WHEN mass_a + mass_b > 0 THEN p_a END,
    CASE WHEN mass_a + mass_b > 0 THEN p_chosen END,
    CASE WHEN mass_a + mass_b > 0 THEN NULL ELSE 'no-mass' END,
    prompt_tokens, prefill_tokens, created_at, reasoning
FROM judgments;
DROP TABLE judgments;
ALTER TABLE judgments_v9 RENAME TO judgments;
CREATE INDEX judgments_by_pair ON judgments (judge_id, pair_id);

-- A label is the mean over the judgments that answered (`judgments`); `unanswered` counts the
-- others. p_chosen is NULL when none answered: the pair has no label under this judge.
CREATE TABLE labels_v9 (
    judge_id            TEXT NOT NULL REFERENCES judges(id),
    pair_id             TEXT NOT NULL REFERENCES pairs(id),
    p_chosen            REAL,
    judgments           INTEGER NOT NULL,
    unanswered          INTEGER NOT NULL DEFAULT 0,
    order_disagreements INTEGER NOT NULL,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (judge_id, pair_id)
);
INSERT INTO labels_v9 (judge_id, pair_id, p_chosen, judgments, unanswered, order_disagreements,
    created_at)
SELECT l.judge_id, l.pair_id,
    (SELECT AVG(j.p_chosen) FROM judgments j WHERE j.judge_id = l.judge_id AND j.pair_id = l.pair_id),
    (SELECT COUNT(j.p_chosen) FROM judgments j WHERE j.judge_id = l.judge_id AND j.pair_id = l.pair_id),
    (SELECT COUNT(*) FROM judgments j
       WHERE j.judge_id = l.judge_id AND j.pair_id = l.pair_id AND j.no_answer IS NOT NULL),
    l.order_disagreements, l.created_at
FROM labels l;
DROP TABLE labels;
ALTER TABLE labels_v9 RENAME TO labels;

CREATE TABLE eval_judgments_v9 (
    id             TEXT NOT NULL UNIQUE,
    eval_id        TEXT NOT NULL REFERENCES evals(id),
    prompt_id      TEXT NOT NULL REFERENCES prompts(id),
    question_id    TEXT NOT NULL,
    swapped        INTEGER NOT NULL CHECK (swapped IN (0, 1)),
    mass_a         REAL NOT NULL,
    mass_b         REAL NOT NULL,
    p_a            REAL,               -- NULL: no answer
    p_adapter      REAL,               -- NULL: no answer
    no_answer      TEXT CHECK (no_answer IN ('no-mass', 'malformed')),
    prompt_tokens  INTEGER NOT NULL,
    prefill_tokens INTEGER NOT NULL,
    reasoning      TEXT,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((no_answer IS NULL) = (p_a IS NOT NULL AND p_adapter IS NOT NULL)),
    PRIMARY KEY (eval_id, prompt_id, question_id, swapped)
);
INSERT INTO eval_judgments_v9 (id, eval_id, prompt_id, question_id, swapped, mass_a, mass_b,
    p_a, p_adapter, no_answer, prompt_tokens, prefill_tokens, reasoning, created_at)
SELECT id, eval_id, prompt_id, question_id, swapped, mass_a, mass_b,
    CASE WHEN mass_a + mass_b > 0 THEN p_a END,
    CASE WHEN mass_a + mass_b > 0 THEN p_adapter END,
    CASE WHEN mass_a + mass_b > 0 THEN NULL ELSE 'no-mass' END,
    prompt_tokens, prefill_tokens, reasoning, created_at
FROM eval_judgments;
DROP TABLE eval_judgments;
ALTER TABLE eval_judgments_v9 RENAME TO eval_judgments;

CREATE TABLE eval_comparisons_v9 (
    eval_id             TEXT NOT NULL REFERENCES evals(id),
    prompt_id           TEXT NOT NULL REFERENCES prompts(id),
    p_adapter           REAL,          -- NULL: no judgment answered
    judgments           INTEGER NOT NULL,
    unanswered          INTEGER NOT NULL DEFAULT 0,
    order_disagreements INTEGER NOT NULL,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (eval_id, prompt_id)
);
INSERT INTO eval_comparisons_v9 (eval_id, prompt_id, p_adapter, judgments, unanswered,
    order_disagreements, created_at)
SELECT c.eval_id, c.prompt_id,
    (SELECT AVG(j.p_adapter) FROM eval_judgments j
       WHERE j.eval_id = c.eval_id AND j.prompt_id = c.prompt_id),
    (SELECT COUNT(j.p_adapter) FROM eval_judgments j
       WHERE j.eval_id = c.eval_id AND j.prompt_id = c.prompt_id),
    (SELECT COUNT(*) FROM eval_judgments j
       WHERE j.eval_id = c.eval_id AND j.prompt_id = c.prompt_id AND j.no_answer IS NOT NULL),
    c.order_disagreements, c.created_at
FROM eval_comparisons c;
DROP TABLE eval_comparisons;
ALTER TABLE eval_comparisons_v9 RENAME TO eval_comparisons;

-- A refusal verdict the judge model did not give: no mass on any option, or options tied
-- exactly. `judge` is then NULL and `no_verdict` says why; the pattern verdict stands alone.
CREATE TABLE eval_verdicts_v9 (
    eval_id     TEXT NOT NULL REFERENCES evals(id),
    side        TEXT NOT NULL CHECK (side IN ('base', 'adapter')),
    prompt_id   TEXT NOT NULL REFERENCES prompts(id),
    step_id     TEXT NOT NULL REFERENCES steps(id),
    pattern     TEXT NOT NULL CHECK (pattern IN ('comply', 'refuse')),
    judge       TEXT CHECK (judge IN ('comply', 'refuse', 'partial')),
    no_verdict  TEXT CHECK (no_verdict IN ('no-mass', 'tie')),
    p_comply    REAL NOT NULL,
    p_refuse    REAL NOT NULL,
    p_partial   REAL NOT NULL,
    answer_mass REAL NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((judge IS NULL) = (no_verdict IS NOT NULL)),
    PRIMARY KEY (eval_id, side, prompt_id)
);
INSERT INTO eval_verdicts_v9 (eval_id, side, prompt_id, step_id, pattern, judge, no_verdict,
    p_comply, p_refuse, p_partial, answer_mass, created_at)
SELECT eval_id, side, prompt_id, step_id, pattern,
    CASE WHEN answer_mass <= 0 THEN NULL
         WHEN (judge = 'comply' AND (p_comply = p_refuse OR p_comply = p_partial))
           OR (judge = 'refuse' AND p_refuse = p_partial) THEN NULL
         ELSE judge END,
    CASE WHEN answer_mass <= 0 THEN 'no-mass'
         WHEN (judge = 'comply' AND (p_comply = p_refuse OR p_comply = p_partial))
           OR (judge = 'refuse' AND p_refuse = p_partial) THEN 'tie'
         END,
    p_comply, p_refuse, p_partial, answer_mass, created_at
FROM eval_verdicts;
DROP TABLE eval_verdicts;
ALTER TABLE eval_verdicts_v9 RENAME TO eval_verdicts;
