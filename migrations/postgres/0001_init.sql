-- Users, conversations and messages (PostgreSQL). Kept in lockstep with migrations/sqlite.
CREATE TABLE IF NOT EXISTS users (
    id            BIGSERIAL   PRIMARY KEY,
    email         TEXT        NOT NULL,
    name          TEXT        NOT NULL,
    password_hash TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (email);

CREATE TABLE IF NOT EXISTS conversations (
    id          BIGSERIAL   PRIMARY KEY,
    user_id     BIGINT      REFERENCES users (id),
    short_name  TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    is_deleted  BOOLEAN     NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS conversations_user_idx ON conversations (user_id, is_deleted, created_at);

CREATE TABLE IF NOT EXISTS messages (
    id              BIGSERIAL   PRIMARY KEY,
    conversation_id BIGINT      NOT NULL REFERENCES conversations (id),
    role            TEXT        NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'guardrails')),
    content         TEXT        NOT NULL,
    user_message    TEXT,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conversation_idx ON messages (conversation_id, id);
