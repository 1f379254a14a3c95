-- The embedded trainer: reference log-probs (computed once per sequence and model, reused by
-- every later run), training runs, their per-step metrics and their latest checkpoint.

-- The base model's summed answer log-prob of one tokenized sequence. `sequence_sha256` hashes
-- the token ids and where the answer starts.
CREATE TABLE reference_logps (
    model_sha256    TEXT NOT NULL,
    sequence_sha256 TEXT NOT NULL,
    logp            REAL NOT NULL,
    PRIMARY KEY (model_sha256, sequence_sha256)
) WITHOUT ROWID;

-- One training run. `id` hashes the model, the tokenized data and every setting, so the same
-- command finds its own run again (and `--resume` continues it).
CREATE TABLE train_runs (
    id              TEXT PRIMARY KEY,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    model_path      TEXT NOT NULL,
    model_sha256    TEXT NOT NULL,
    data_source     TEXT NOT NULL,
    data_sha256     TEXT NOT NULL,
    settings_json   TEXT NOT NULL,
    examples        INTEGER NOT NULL,
    total_steps     INTEGER NOT NULL,
    finished_at     TEXT,
    final_loss      REAL,
    final_accuracy  REAL,
    final_margin    REAL
);

-- Metrics of every completed step (the preference columns are NULL for SFT).
CREATE TABLE train_steps (
    run_id          TEXT NOT NULL REFERENCES train_runs(id),
    step            INTEGER NOT NULL,
    loss            REAL NOT NULL,
    reward_chosen   REAL,
    reward_rejected REAL,
    margin          REAL,
    accuracy        REAL,
    logp_chosen     REAL NOT NULL,
    logp_rejected   REAL,
    grad_norm       REAL NOT NULL,
    lr              REAL NOT NULL,
    tokens          INTEGER NOT NULL,
    seconds         REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);

-- The latest checkpoint of a run: adapters, optimiser moments and the step (which is also the
-- data cursor: batches are a function of the seed and the step).
CREATE TABLE train_checkpoints (
    run_id          TEXT PRIMARY KEY REFERENCES train_runs(id),
    step            INTEGER NOT NULL,
    state           BLOB NOT NULL,
    saved_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- A generate run may decode with a LoRA adapter on the model (`generate --lora`): which one,
-- and at what scale, is part of the run's identity.
ALTER TABLE runs ADD COLUMN lora_sha256 TEXT;
ALTER TABLE runs ADD COLUMN lora_scale REAL;
