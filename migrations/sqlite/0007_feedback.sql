-- Feedback on assistant answers (contract section 16): the rating ('up' or
-- 'down'), an optional reason and when it was given; NULL when none.
-- `conversations.feedback_version` changes with every feedback change, so
-- a cached history (keyed by message count and this) is never stale. Kept
-- in lockstep with migrations/postgres.
ALTER TABLE messages ADD COLUMN feedback_rating TEXT CHECK (feedback_rating IN ('up', 'down'));
ALTER TABLE messages ADD COLUMN feedback_reason TEXT;
ALTER TABLE messages ADD COLUMN feedback_at TEXT;
ALTER TABLE conversations ADD COLUMN feedback_version INTEGER NOT NULL DEFAULT 0;
