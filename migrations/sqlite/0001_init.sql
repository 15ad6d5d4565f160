-- Users, conversations and messages (SQLite). Kept in lockstep with migrations/postgres.
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    TEXT    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (email);

CREATE TABLE IF NOT EXISTS conversations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER REFERENCES users (id),
    short_name  TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    is_deleted  BOOLEAN NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS conversations_user_idx ON conversations (user_id, is_deleted, created_at);

CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    role            TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'guardrails')),
    content         TEXT    NOT NULL,
    user_message    TEXT,
    created_at      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conversation_idx ON messages (conversation_id, id);
