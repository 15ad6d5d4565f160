-- The knowledge base indexes the application's own analysis of each record
-- (services::knowledge::analyze: words folded to ASCII where they have an
-- ASCII form, lower-cased, English (Porter2) stems, in order) with the
-- 'simple' configuration instead of 'english', so that the query side looks
-- up exactly the lexemes the index holds (document frequencies from
-- ts_stat, typo correction against them) and PostgreSQL and SQLite hold the
-- same terms. `kb_state.analyzer` names the analysis the terms columns were
-- made with; 0 (set here) makes the next start fill them
-- (startup::open_database). `kb_state.version` changes with every write to
-- kb_records, so a server knows when its cached vocabulary is stale. Kept in
-- lockstep with migrations/sqlite.
ALTER TABLE kb_records
    ADD COLUMN title_terms TEXT NOT NULL DEFAULT '',
    ADD COLUMN text_terms TEXT NOT NULL DEFAULT '';

ALTER TABLE kb_records DROP COLUMN tsv;
ALTER TABLE kb_records ADD COLUMN tsv TSVECTOR GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', title_terms), 'A')
    || setweight(to_tsvector('simple', text_terms), 'D')
) STORED;
CREATE INDEX kb_records_tsv_idx ON kb_records USING GIN (tsv);

CREATE TABLE kb_state (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT  NOT NULL,
    analyzer BIGINT  NOT NULL
);
INSERT INTO kb_state (id, version, analyzer) VALUES (1, 1, 0);

CREATE FUNCTION kb_records_bump_version() RETURNS trigger AS $$
BEGIN
    UPDATE kb_state SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER kb_records_version
    AFTER INSERT OR UPDATE OR DELETE ON kb_records
    FOR EACH STATEMENT EXECUTE FUNCTION kb_records_bump_version();
