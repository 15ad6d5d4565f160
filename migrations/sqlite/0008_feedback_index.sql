-- The admin feedback list reads the rated answers newest first, by rating:
-- a partial index holds only those rows. Kept in lockstep with
-- migrations/postgres.
CREATE INDEX IF NOT EXISTS messages_feedback_idx
    ON messages (feedback_rating, feedback_at) WHERE feedback_rating IS NOT NULL;
