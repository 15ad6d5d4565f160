-- Human handoff and webhooks (contract section 17). Kept in lockstep with
-- migrations/sqlite.
--
-- conversations.status: bot (the model answers), pending_human (waiting for
-- a person), human (a person answers), closed (a person closed it; the next
-- user message returns it to bot). `status_reason`: why it was handed over
-- (the user's words or the trigger); `status_changed_ms`: when the status
-- last changed (milliseconds since the Unix epoch; the agents' queue is
-- oldest first). Rows written by the Python service get `bot`.
ALTER TABLE conversations ADD COLUMN status TEXT NOT NULL DEFAULT 'bot'
    CHECK (status IN ('bot', 'pending_human', 'human', 'closed'));
ALTER TABLE conversations ADD COLUMN status_reason TEXT;
ALTER TABLE conversations ADD COLUMN status_changed_ms BIGINT;
CREATE INDEX IF NOT EXISTS conversations_status_idx
    ON conversations (status, status_changed_ms) WHERE status <> 'bot';

-- messages.author on assistant rows: NULL or 'bot' (the model or a fixed
-- reply), 'agent' (a person, `author_id` their user id).
ALTER TABLE messages ADD COLUMN author TEXT CHECK (author IN ('bot', 'agent'));
ALTER TABLE messages ADD COLUMN author_id BIGINT;

-- The webhook outbox: one row per event, written in the transaction that
-- makes the event happen, delivered (and retried) by whichever server claims
-- it first. Times are milliseconds since the Unix epoch. `claimed_until_ms`:
-- a server is delivering it until then (a server that dies mid-delivery
-- loses its claim when that passes). `attempts`: deliveries tried so far.
-- Exactly one of `delivered_ms` / `failed_ms` is set once it is settled.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id               BIGSERIAL PRIMARY KEY,
    event_id         TEXT    NOT NULL UNIQUE,
    event_type       TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    created_ms       BIGINT  NOT NULL,
    next_attempt_ms  BIGINT  NOT NULL,
    claimed_until_ms BIGINT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    delivered_ms     BIGINT,
    failed_ms        BIGINT
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due_idx
    ON webhook_outbox (next_attempt_ms) WHERE delivered_ms IS NULL AND failed_ms IS NULL;
