-- An evaluation's candidate may be the best of N sampled answers by a reward model
-- (`eval --best-of N --rm RM.gguf`): `candidate_selection` says how its answers were picked
-- ('best-of-N by reward <sha256>'); it is part of the evaluation's id, and an evaluation
-- without one keeps the id it always had.
ALTER TABLE evals ADD COLUMN candidate_selection TEXT;
