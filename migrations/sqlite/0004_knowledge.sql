-- The local knowledge base (RETRIEVAL_BACKEND=local): one row per record,
-- indexed for full-text search by FTS5 (BM25) with the Porter stemmer over
-- unicode61 (diacritics folded). `seq` is the FTS rowid: an explicit INTEGER
-- PRIMARY KEY, so VACUUM never renumbers it. Kept in lockstep with
-- migrations/postgres.
CREATE TABLE IF NOT EXISTS kb_records (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    source     TEXT    NOT NULL,
    title      TEXT,
    category   TEXT,
    url        TEXT,
    text       TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS kb_records_source_idx ON kb_records (source);

CREATE VIRTUAL TABLE IF NOT EXISTS kb_fts USING fts5(
    title, text,
    content = 'kb_records', content_rowid = 'seq',
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TRIGGER IF NOT EXISTS kb_records_ai AFTER INSERT ON kb_records BEGIN
    INSERT INTO kb_fts (rowid, title, text) VALUES (NEW.seq, NEW.title, NEW.text);
END;
CREATE TRIGGER IF NOT EXISTS kb_records_ad AFTER DELETE ON kb_records BEGIN
    INSERT INTO kb_fts (kb_fts, rowid, title, text) VALUES ('delete', OLD.seq, OLD.title, OLD.text);
END;
CREATE TRIGGER IF NOT EXISTS kb_records_au AFTER UPDATE ON kb_records BEGIN
    INSERT INTO kb_fts (kb_fts, rowid, title, text) VALUES ('delete', OLD.seq, OLD.title, OLD.text);
    INSERT INTO kb_fts (rowid, title, text) VALUES (NEW.seq, NEW.title, NEW.text);
END;
