-- AI feedback: a judge model answers comparison questions about each pair, in both orders.
-- Keys are content hashes, like the generate tables: a rerun finds its rows.

-- One judge = one model, chat template, constitution (its questions), frame template, number of
-- questions per pair and seed. `id` hashes all of them.
CREATE TABLE judges (
    id                   TEXT PRIMARY KEY,
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    model_path           TEXT NOT NULL,
    model_sha256         TEXT NOT NULL,
    chat_template_sha256 TEXT NOT NULL,
    constitution_sha256  TEXT NOT NULL,
    frame_sha256         TEXT NOT NULL,
    questions_per_pair   INTEGER NOT NULL,
    seed                 INTEGER NOT NULL
);

-- One comparison question about one pair in one order. `id` = hash(judge, pair, question, order).
-- swapped = 0: option (A) is the pair's chosen answer; 1: (A) is the rejected one.
CREATE TABLE judgments (
    id            TEXT PRIMARY KEY,
    judge_id      TEXT NOT NULL REFERENCES judges(id),
    pair_id       TEXT NOT NULL REFERENCES pairs(id),
    question_id   TEXT NOT NULL,
    swapped       INTEGER NOT NULL CHECK (swapped IN (0, 1)),
    mass_a        REAL NOT NULL,      -- raw next-token probability of every form of "A"
    mass_b        REAL NOT NULL,      -- ... and of "B"
    p_a           REAL NOT NULL,      -- mass_a / (mass_a + mass_b)
    p_chosen      REAL NOT NULL,      -- p(chosen ≻ rejected) from this judgment, swap undone
    prompt_tokens INTEGER NOT NULL,
    prefill_tokens INTEGER NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (judge_id, pair_id, question_id, swapped)
);
CREATE INDEX judgments_by_pair ON judgments (judge_id, pair_id);

-- A pair's soft label under a judge, written with its last judgment: the mean of the judgments'
-- p_chosen, and how often the two orders of one question disagreed about the winner.
CREATE TABLE labels (
    judge_id            TEXT NOT NULL REFERENCES judges(id),
    pair_id             TEXT NOT NULL REFERENCES pairs(id),
    p_chosen            REAL NOT NULL,
    judgments           INTEGER NOT NULL,
    order_disagreements INTEGER NOT NULL,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (judge_id, pair_id)
);
