-- One row per adoption of the Python service's tables (`user`, `conversation`,
-- `message`; see README "Upgrading from the Python service"). The last_* ids
-- are the Python tables' highest ids when they were read: rows above them are
-- new since, so a later start adopts only those. Kept in lockstep with
-- migrations/postgres.
CREATE TABLE IF NOT EXISTS legacy_adoptions (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    adopted_at           TEXT    NOT NULL,
    users                INTEGER NOT NULL,
    conversations        INTEGER NOT NULL,
    messages             INTEGER NOT NULL,
    skipped              TEXT    NOT NULL,
    last_user_id         INTEGER NOT NULL,
    last_conversation_id INTEGER NOT NULL,
    last_message_id      INTEGER NOT NULL,
    backup               TEXT
);
