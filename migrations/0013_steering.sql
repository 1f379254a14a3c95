-- A generate run may decode with a control vector added to the residual stream
-- (`generate --control-vector V[:SCALE] [--control-layers A-B]`, and `eval`'s candidate side):
-- which one (the SHA-256 of its file), at what scale, on which blocks (`A-B`, NULL: all the
-- file has). Like the adapter, it is part of the run's id: steered answers are their own run.
ALTER TABLE runs ADD COLUMN control_vector_sha256 TEXT;
ALTER TABLE runs ADD COLUMN control_vector_scale REAL;
ALTER TABLE runs ADD COLUMN control_layers TEXT;
