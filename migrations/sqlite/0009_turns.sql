-- One row per chat turn, written when the turn ends (contract section 16:
-- the admin analytics read only this table and the rated messages). A turn is
-- a message the pipeline took on: answered, refused by the guardrails, or
-- failed upstream; not one rejected before (validation, access, limits).
-- `started_ms`: when the message arrived, milliseconds since the Unix epoch.
-- `user_id`: NULL for anonymous turns. `outcome`: completed, refused,
-- stopped, client_gone, upstream_error, timeout, storage_error.
-- `refusal_reason`: the guardrail's code when refused. `grounded`: whether
-- retrieval found a record over the minimum score (NULL when it did not run).
-- `ttft_ms`: time from arrival to the first streamed token (NULL when none).
-- `question` (redacted, as stored in messages) and `question_key` (its
-- analysed terms, which group rephrasings) only on ungrounded turns: the
-- list an operator grows the knowledge base from.
-- No foreign keys: the row is a fact about the past, written off the
-- answer's path. Turns before this migration are not in it. Kept in lockstep
-- with migrations/postgres.
CREATE TABLE IF NOT EXISTS turns (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    started_ms      INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    user_id         INTEGER,
    transport       TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    refusal_reason  TEXT,
    grounded        BOOLEAN,
    ttft_ms         INTEGER,
    question        TEXT,
    question_key    TEXT
);
-- The counts of a period by outcome, and its times to first token, each
-- from an index alone. They lead with the grouped column, not the time:
-- SQLite then reads each group's range of the period in order (a skip-scan,
-- with the statistics `PRAGMA optimize` keeps) instead of sorting every
-- turn of the period into a temporary B-tree, which cost 0.4 s at 500,000
-- turns (bench section 9). PostgreSQL has one index by time instead (it
-- hashes the groups).
CREATE INDEX IF NOT EXISTS turns_outcome_idx
    ON turns (outcome, refusal_reason, started_ms, grounded, user_id);
CREATE INDEX IF NOT EXISTS turns_ttft_idx
    ON turns (ttft_ms, started_ms) WHERE ttft_ms IS NOT NULL;
-- Distinct signed-in users of a period: one probe per user.
CREATE INDEX IF NOT EXISTS turns_user_idx
    ON turns (user_id, started_ms) WHERE user_id IS NOT NULL;
-- The most frequent ungrounded questions of a period.
CREATE INDEX IF NOT EXISTS turns_ungrounded_idx
    ON turns (started_ms, question_key) WHERE question_key IS NOT NULL;
