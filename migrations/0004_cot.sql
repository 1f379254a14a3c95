-- Chain-of-thought judging: the judge reasons before it answers, and its probabilities are
-- clamped (as in the Constitutional AI paper). A judge without CoT has cot_tokens = 0.
ALTER TABLE judges ADD COLUMN cot_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE judges ADD COLUMN cot_clamp_low REAL;
ALTER TABLE judges ADD COLUMN cot_clamp_high REAL;
-- The reasoning a CoT judgment was read after.
ALTER TABLE judgments ADD COLUMN reasoning TEXT;
