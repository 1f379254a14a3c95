-- Prompts a run left out because they repeat another (exactly, or nearly by MinHash), with the
-- prompt they matched: nothing is dropped silently.
CREATE TABLE dropped_prompts (
    run_id            TEXT NOT NULL REFERENCES runs(id),
    source            TEXT NOT NULL,
    line              INTEGER NOT NULL,
    reason            TEXT NOT NULL CHECK (reason IN ('duplicate', 'near-duplicate')),
    matched_prompt_id TEXT NOT NULL REFERENCES prompts(id),
    PRIMARY KEY (run_id, source, line)
);
