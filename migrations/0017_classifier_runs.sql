-- A safety classifier's run over a database (`tenets classify --db D`): which scorer and what
-- it was fitted on or read with, at which threshold, what it flagged, and its figures on the
-- database's tagged prompts (AUROC, precision, recall, benign flagged; JSON) — what
-- `tenets report` shows. `id` hashes the settings, so a rerun replaces its row.
CREATE TABLE classifier_runs (
    id              TEXT PRIMARY KEY,
    scorer          TEXT NOT NULL,
    scorer_input    TEXT NOT NULL,
    model_sha256    TEXT NOT NULL,
    threshold       REAL NOT NULL,
    target          TEXT NOT NULL CHECK (target IN ('prompt', 'answer', 'both')),
    prompts         INTEGER NOT NULL,
    flagged         INTEGER NOT NULL,
    answers         INTEGER NOT NULL,
    answers_flagged INTEGER NOT NULL,
    figures_json    TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
