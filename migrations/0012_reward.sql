-- A reward model's scores (`tenets reward score --db`): which reward model (by the SHA-256 of
-- its file, on which base), and for each answer it scored — keyed by a hash of the prompt's
-- messages and the answer's, so a rerun skips what is scored and a pair's two answers are
-- found again by export — the reward.
CREATE TABLE reward_models (
    sha256       TEXT PRIMARY KEY,
    path         TEXT NOT NULL,
    base_sha256  TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE reward_scores (
    reward_model_sha256 TEXT NOT NULL REFERENCES reward_models(sha256),
    text_sha256         TEXT NOT NULL,
    score               REAL NOT NULL,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (reward_model_sha256, text_sha256)
);
