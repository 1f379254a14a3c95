-- What a reward model's file says its training measured, kept with its record so a report can
-- show how far to trust the answers it picked (best-of-N): pairs trained on and held out, and
-- its accuracy on the held-out ones (NULL where the file does not say).
ALTER TABLE reward_models ADD COLUMN train_pairs INTEGER;
ALTER TABLE reward_models ADD COLUMN held_out_pairs INTEGER;
ALTER TABLE reward_models ADD COLUMN held_out_accuracy REAL;
