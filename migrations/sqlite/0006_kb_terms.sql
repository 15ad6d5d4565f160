-- The knowledge base indexes the application's own analysis of each record
-- (services::knowledge::analyze: words folded to ASCII where they have an
-- ASCII form, lower-cased, English (Porter2) stems, in order) instead of
-- FTS5's Porter tokenizer, so that the query side looks up exactly the terms
-- the index holds (document frequencies from `kb_vocab`, typo correction
-- against them) and SQLite and PostgreSQL hold the same terms.
-- `kb_state.analyzer` names the analysis the terms columns were made with;
-- 0 (set here) makes the next start fill them (startup::open_database).
-- `kb_state.version` changes with every write to kb_records, so a server
-- knows when its cached vocabulary is stale. Kept in lockstep with
-- migrations/postgres.
ALTER TABLE kb_records ADD COLUMN title_terms TEXT NOT NULL DEFAULT '';
ALTER TABLE kb_records ADD COLUMN text_terms TEXT NOT NULL DEFAULT '';

DROP TRIGGER IF EXISTS kb_records_ai;
DROP TRIGGER IF EXISTS kb_records_ad;
DROP TRIGGER IF EXISTS kb_records_au;
DROP TABLE IF EXISTS kb_fts;

CREATE VIRTUAL TABLE kb_fts USING fts5(
    title_terms, text_terms,
    content = 'kb_records', content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 0'
);
-- Index what the rows hold now (empty terms), so that the update trigger's
-- 'delete' of the old values matches the index when the terms are filled.
INSERT INTO kb_fts (kb_fts) VALUES ('rebuild');

CREATE VIRTUAL TABLE kb_vocab USING fts5vocab(kb_fts, 'row');

CREATE TABLE kb_state (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL,
    analyzer INTEGER NOT NULL
);
INSERT INTO kb_state (id, version, analyzer) VALUES (1, 1, 0);

CREATE TRIGGER kb_records_ai AFTER INSERT ON kb_records BEGIN
    INSERT INTO kb_fts (rowid, title_terms, text_terms)
        VALUES (NEW.seq, NEW.title_terms, NEW.text_terms);
    UPDATE kb_state SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER kb_records_ad AFTER DELETE ON kb_records BEGIN
    INSERT INTO kb_fts (kb_fts, rowid, title_terms, text_terms)
        VALUES ('delete', OLD.seq, OLD.title_terms, OLD.text_terms);
    UPDATE kb_state SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER kb_records_au AFTER UPDATE ON kb_records BEGIN
    INSERT INTO kb_fts (kb_fts, rowid, title_terms, text_terms)
        VALUES ('delete', OLD.seq, OLD.title_terms, OLD.text_terms);
    INSERT INTO kb_fts (rowid, title_terms, text_terms)
        VALUES (NEW.seq, NEW.title_terms, NEW.text_terms);
    UPDATE kb_state SET version = version + 1 WHERE id = 1;
END;
