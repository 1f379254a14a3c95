-- An evaluation may read refusals by the string patterns alone (`eval --patterns-only`): no
-- judge model runs, so no answer has its verdict. `no_verdict` gains 'not-asked' for that;
-- such an evaluation's `judge_model_sha256` is 'patterns' (part of its id, so it never
-- mixes with a judged one). SQLite cannot change a CHECK in place: the table is rebuilt.
CREATE TABLE eval_verdicts_v14 (
    eval_id     TEXT NOT NULL REFERENCES evals(id),
    side        TEXT NOT NULL CHECK (side IN ('base', 'adapter')),
    prompt_id   TEXT NOT NULL REFERENCES prompts(id),
    step_id     TEXT NOT NULL REFERENCES steps(id),
    pattern     TEXT NOT NULL CHECK (pattern IN ('comply', 'refuse')),
    judge       TEXT CHECK (judge IN ('comply', 'refuse', 'partial')),
    no_verdict  TEXT CHECK (no_verdict IN ('no-mass', 'tie', 'not-asked')),
    p_comply    REAL NOT NULL,
    p_refuse    REAL NOT NULL,
    p_partial   REAL NOT NULL,
    answer_mass REAL NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((judge IS NULL) = (no_verdict IS NOT NULL)),
    PRIMARY KEY (eval_id, side, prompt_id)
);
INSERT INTO eval_verdicts_v14 (eval_id, side, prompt_id, step_id, pattern, judge, no_verdict,
    p_comply, p_refuse, p_partial, answer_mass, created_at)
SELECT eval_id, side, prompt_id, step_id, pattern, judge, no_verdict,
    p_comply, p_refuse, p_partial, answer_mass, created_at
FROM eval_verdicts;
DROP TABLE eval_verdicts;
ALTER TABLE eval_verdicts_v14 RENAME TO eval_verdicts;
