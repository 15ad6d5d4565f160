-- Streams that survive (contract section 14). On assistant rows, `stopped`:
-- the answer was cut short by a stop request (NULL otherwise). On the user
-- row of a turn (and on a guardrails row), `turn_id` and, when the client
-- sent one, `client_message_id` with the key it is unique under: the
-- conversation, or for a message that started a new conversation
-- `client_key` (`user:<id>`, or `ip:<address>` when anonymous), so that a
-- retried send finds its first turn. Kept in lockstep with
-- migrations/sqlite.
ALTER TABLE messages
    ADD COLUMN stopped BOOLEAN,
    ADD COLUMN turn_id TEXT,
    ADD COLUMN client_message_id TEXT,
    ADD COLUMN client_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_message_idx
    ON messages (conversation_id, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_client_key_idx
    ON messages (client_key, client_message_id) WHERE client_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_turn_idx
    ON messages (turn_id) WHERE turn_id IS NOT NULL;
