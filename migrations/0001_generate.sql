-- The generate slice: runs, prompts, steps (answer / critique / revision), failures, pairs.
-- Keys are content hashes, so a rerun of the same work finds its rows instead of adding new ones.

-- Model files seen, with their SHA-256 (cached by path, size and mtime: hashing is slow).
CREATE TABLE model_files (
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);

-- One run = one model, constitution, templates and sampling settings. `id` hashes all of them.
CREATE TABLE runs (
    id                  TEXT PRIMARY KEY,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    model_path          TEXT NOT NULL,
    model_sha256        TEXT NOT NULL,
    chat_template_sha256 TEXT NOT NULL,
    constitution_name   TEXT NOT NULL,
    constitution_sha256 TEXT NOT NULL,
    constitution_json   TEXT NOT NULL,
    template_sha256     TEXT NOT NULL,
    rounds              INTEGER NOT NULL,
    temperature         REAL NOT NULL,
    top_p               REAL NOT NULL,
    max_tokens          INTEGER NOT NULL,
    seed                INTEGER NOT NULL
);

-- Prompts, keyed by the hash of their messages.
CREATE TABLE prompts (
    id          TEXT PRIMARY KEY,
    messages    TEXT NOT NULL,          -- JSON array of {role, content}
    kind        TEXT,
    source      TEXT NOT NULL,
    line        INTEGER NOT NULL
);

-- One generated turn. `id` = hash(run, prompt, stage, round).
CREATE TABLE steps (
    id              TEXT PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id),
    prompt_id       TEXT NOT NULL REFERENCES prompts(id),
    stage           TEXT NOT NULL CHECK (stage IN ('answer', 'critique', 'revision')),
    round           INTEGER NOT NULL,   -- 0 for the answer, 1.. for critique/revision rounds
    principle_id    TEXT,               -- NULL for the answer
    request         TEXT,               -- the rendered critique/revision request (NULL for the answer)
    output          TEXT NOT NULL,
    finish          TEXT NOT NULL CHECK (finish IN ('stop', 'length', 'context')),
    prompt_tokens   INTEGER NOT NULL,
    prefill_tokens  INTEGER NOT NULL,
    generated_tokens INTEGER NOT NULL,
    seed            INTEGER NOT NULL,
    template_sha256 TEXT NOT NULL,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (run_id, prompt_id, stage, round)
);
CREATE INDEX steps_by_run ON steps (run_id, prompt_id);

-- Prompts that could not complete in a run, and why. Cleared when a rerun completes them.
CREATE TABLE failures (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    prompt_id   TEXT NOT NULL REFERENCES prompts(id),
    stage       TEXT NOT NULL,
    round       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, prompt_id)
);

-- Preference pairs. `id` = hash(run, prompt, strategy). Written with the step that completes them.
CREATE TABLE pairs (
    id              TEXT PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id),
    prompt_id       TEXT NOT NULL REFERENCES prompts(id),
    strategy        TEXT NOT NULL,      -- 'revision': final revision vs original answer
    chosen_step     TEXT NOT NULL REFERENCES steps(id),
    rejected_step   TEXT NOT NULL REFERENCES steps(id),
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (run_id, prompt_id, strategy)
);
