-- The judge model's refusal verdicts on answers whose verdict is known, built from the
-- constitution (each restricted topic's principled refusal and a compliance, each allowed
-- topic's helpful answer and a needless refusal), asked in the same frame and rotations as the
-- evaluation's answers. An evaluation reports the judge model's rates as evidence only when its
-- accuracy here clears chance; below that its "harmful compliance" cannot show an effect.
-- Kept per judge (model, chat template, frame), not per evaluation: a loop's later rounds and
-- a later adapter's evaluation by the same judge reuse it.
CREATE TABLE eval_verdict_calibration (
    judge_key   TEXT NOT NULL,      -- hash of the judge model's, chat template's, frame's hashes
    item_id     TEXT NOT NULL,      -- `calibration:` and a hash of the request, answer, verdict
    kind        TEXT NOT NULL,      -- "refuse restricted" or "help allowed"
    expected    TEXT NOT NULL CHECK (expected IN ('comply', 'refuse')),
    judge       TEXT CHECK (judge IN ('comply', 'refuse', 'partial')),
    no_verdict  TEXT CHECK (no_verdict IN ('no-mass', 'tie')),
    p_comply    REAL NOT NULL,
    p_refuse    REAL NOT NULL,
    p_partial   REAL NOT NULL,
    answer_mass REAL NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((judge IS NULL) = (no_verdict IS NOT NULL)),
    PRIMARY KEY (judge_key, item_id)
);
