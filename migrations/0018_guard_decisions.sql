-- `tenets serve`'s decision log: one row per chat completion it answered, refused or failed —
-- which guard fired (input or output screen), the rule (or `classifier`, with its
-- probability), the principle at stake and the matched text, how many critique-and-revise
-- rounds the answer took, token counts and latency, and the texts themselves. Each row is
-- committed before the response's last byte is sent, so a server that is killed keeps every
-- decision it returned. `tenets stats` and `tenets report` read the guard rates from it.
CREATE TABLE guard_decisions (
    id                  TEXT PRIMARY KEY,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    model               TEXT NOT NULL,
    model_sha256        TEXT NOT NULL,
    constitution        TEXT NOT NULL,
    constitution_sha256 TEXT NOT NULL,
    outcome             TEXT NOT NULL CHECK (outcome IN
                            ('answered', 'refused', 'revised', 'failed', 'cancelled')),
    guard               TEXT CHECK (guard IN ('input', 'output')),
    rule                TEXT,
    principle           TEXT,
    topic               TEXT,
    matched             TEXT,
    score               REAL,
    revise_rounds       INTEGER NOT NULL DEFAULT 0,
    constrained         TEXT,
    stream              INTEGER NOT NULL,
    prompt_tokens       INTEGER NOT NULL DEFAULT 0,
    completion_tokens   INTEGER NOT NULL DEFAULT 0,
    finish              TEXT,
    latency_ms          INTEGER NOT NULL,
    prompt              TEXT NOT NULL,
    answer              TEXT NOT NULL
);
CREATE INDEX guard_decisions_created ON guard_decisions (created_at);
