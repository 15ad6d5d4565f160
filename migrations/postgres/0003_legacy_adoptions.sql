-- One row per adoption of the Python service's tables (`"user"`,
-- `conversation`, `message`; see README "Upgrading from the Python service").
-- The last_* ids are the Python tables' highest ids when they were read: rows
-- above them are new since, so a later start adopts only those. Kept in
-- lockstep with migrations/sqlite.
CREATE TABLE IF NOT EXISTS legacy_adoptions (
    id                   BIGSERIAL   PRIMARY KEY,
    adopted_at           TIMESTAMPTZ NOT NULL,
    users                BIGINT      NOT NULL,
    conversations        BIGINT      NOT NULL,
    messages             BIGINT      NOT NULL,
    skipped              TEXT        NOT NULL,
    last_user_id         BIGINT      NOT NULL,
    last_conversation_id BIGINT      NOT NULL,
    last_message_id      BIGINT      NOT NULL,
    backup               TEXT
);
