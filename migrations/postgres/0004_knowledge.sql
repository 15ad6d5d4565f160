-- The local knowledge base (RETRIEVAL_BACKEND=local): one row per record,
-- with PostgreSQL full-text search: an English tsvector (title weighted A,
-- text D) in a generated column under a GIN index. Kept in lockstep with
-- migrations/sqlite.
CREATE TABLE IF NOT EXISTS kb_records (
    seq        BIGSERIAL   PRIMARY KEY,
    id         TEXT        NOT NULL UNIQUE,
    source     TEXT        NOT NULL,
    title      TEXT,
    category   TEXT,
    url        TEXT,
    text       TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    tsv        TSVECTOR    GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(title, '')), 'A')
        || setweight(to_tsvector('english', text), 'D')
    ) STORED
);
CREATE INDEX IF NOT EXISTS kb_records_source_idx ON kb_records (source);
CREATE INDEX IF NOT EXISTS kb_records_tsv_idx ON kb_records USING GIN (tsv);
