-- A judge's calibration: how it answered known-answer pairs built from the constitution (a
-- principled refusal over compliance for a restricted topic, a helpful answer over a needless
-- refusal for an allowed one, each constitution example's revision over its response), both
-- orders, like any pair. Export, train and loop orient pairs by a judge only when the 95%
-- interval of its accuracy clears chance (or they are told to trust it). Recalibrating replaces
-- the row.
CREATE TABLE judge_calibrations (
    judge_id         TEXT PRIMARY KEY REFERENCES judges(id),
    items            INTEGER NOT NULL,  -- known-answer pairs asked
    answered         INTEGER NOT NULL,  -- ... of which at least one judgment answered
    correct          INTEGER NOT NULL,  -- ... whose label prefers the known-better answer
    accuracy_low     REAL NOT NULL,     -- Wilson 95% interval of correct / items
    accuracy_high    REAL NOT NULL,
    mean_p_a         REAL NOT NULL,     -- position bias: 0.5 = none
    mean_answer_mass REAL NOT NULL,     -- probability put on "A" or "B" at all
    by_kind          TEXT NOT NULL,     -- JSON: [{kind, items, correct}]
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (0 <= correct AND correct <= answered AND answered <= items)
);
