-- Sampled answers (RL-CAI): a run may answer each prompt several times at temperature > 0
-- (`tenets generate --samples N`). For stage 'answer', `round` is then the sample index
-- (0 .. N-1; a run that answers once keeps round 0, and its critiques revise sample 0).
-- A sampled run's candidate pairs are every two samples of a prompt, written with the last
-- sample: strategy 'sampled:I-J' (chosen_step = sample I, rejected_step = sample J, I < J;
-- the orientation is only an order, the judge's label decides which wins). `tenets export`
-- ranks a prompt's samples by their labels and keeps best vs worst (or every informative pair).
ALTER TABLE runs ADD COLUMN samples INTEGER NOT NULL DEFAULT 1;
