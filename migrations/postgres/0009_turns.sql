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
-- with migrations/sqlite.
CREATE TABLE IF NOT EXISTS turns (
    id              BIGSERIAL PRIMARY KEY,
    started_ms      BIGINT  NOT NULL,
    conversation_id BIGINT  NOT NULL,
    user_id         BIGINT,
    transport       TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    refusal_reason  TEXT,
    grounded        BOOLEAN,
    ttft_ms         BIGINT,
    question        TEXT,
    question_key    TEXT
);
-- The counts of a period in one pass over this index alone (SQLite has
-- two indexes leading with the grouped columns instead: it sorts groups, it
-- does not hash them).
CREATE INDEX IF NOT EXISTS turns_period_idx
    ON turns (started_ms, outcome, refusal_reason, grounded, user_id, ttft_ms);
-- Distinct signed-in users of a period: one probe per user.
CREATE INDEX IF NOT EXISTS turns_user_idx
    ON turns (user_id, started_ms) WHERE user_id IS NOT NULL;
-- The most frequent ungrounded questions of a period.
CREATE INDEX IF NOT EXISTS turns_ungrounded_idx
    ON turns (started_ms, question_key, id) WHERE question_key IS NOT NULL;
