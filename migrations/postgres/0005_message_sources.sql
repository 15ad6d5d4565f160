-- What an assistant answer was given: `sources` is a JSON array of
-- {id, title, category, url, score}; `grounded` whether any hit cleared
-- RETRIEVAL_MIN_SCORE. NULL on other rows and on rows written before this
-- migration (or adopted from the Python service). Kept in lockstep with
-- migrations/sqlite.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS sources TEXT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS grounded BOOLEAN;
