-- Quality filters: a revision's stripped opening ("Here is a revised response:"), kept so the
-- stored output is clean and nothing is removed silently.
ALTER TABLE steps ADD COLUMN preamble TEXT;
