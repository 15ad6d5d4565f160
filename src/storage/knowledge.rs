//! The local knowledge base: `kb_records`, searched with SQLite FTS5 or
//! PostgreSQL full-text search.
//!
//! A search takes the query's terms (already stop-word-filtered by the
//! caller) and asks the engine for candidates twice: the records holding
//! every known term, and the records holding any of the rarest terms (as
//! many as fit a budget of postings). Both are ranked by the engine (BM25
//! with the title weighted double on SQLite, `ts_rank_cd` with title weight
//! A on PostgreSQL). An OR of every term would be the obvious query, but
//! the engine scores every record that has any of them: a question with
//! "card" in it scored a third of a 50,000-record base, 56 ms at the median
//! (bench section 8). Each candidate is then scored by how much of the
//! query's information it covers: the sum of the inverse document
//! frequencies of the terms it contains over that of all the query's terms
//! (0..1, higher is better). A raw BM25 value cannot tell a paraphrase that
//! shares one rare word from an off-topic question that shares one common
//! word; the covered share of the query's IDF can, and it means the same on
//! both engines.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, SqliteConnection};

use super::{Database, on_reader, on_writer, readers};

/// Records per multi-row upsert (7 columns: far below both engines' limits).
const UPSERT_BATCH: usize = 500;

/// Most postings (records containing a term, summed over terms) the OR
/// query of rare terms may touch; the rarest term is always taken unless it
/// alone exceeds this.
const RARE_POSTINGS: i64 = 5_000;

/// Whether ranking the records that hold every known term is affordable:
/// some term is rare enough (within the postings budget). When every term
/// is common, the engine would score thousands of records to rank them (a
/// single turn took 26 ms at 50,000 records, and 200 concurrent turns
/// queued for seconds; bench section 2 with `--kb-records`), so the first
/// records found are taken unranked and the coverage score orders them.
fn selective(containing: &[i64]) -> bool {
    containing
        .iter()
        .filter(|count| **count > 0)
        .min()
        .is_none_or(|count| *count <= RARE_POSTINGS)
}

/// The terms worth an OR query: rarest first, while their postings fit the
/// budget; terms no record has are left out (they cannot find anything).
fn rare_terms(terms: &[String], containing: &[i64]) -> Vec<String> {
    let mut order: Vec<usize> = (0..terms.len()).filter(|i| containing[*i] > 0).collect();
    order.sort_by_key(|i| containing[*i]);
    let mut budget = RARE_POSTINGS;
    let mut chosen = Vec::new();
    for i in order {
        if containing[i] > budget {
            break;
        }
        budget -= containing[i];
        chosen.push(terms[i].clone());
    }
    chosen
}

/// A record to store.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: String,
    pub source: String,
    pub title: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
    pub text: String,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub title: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
    pub text: String,
    /// Share of the query's IDF the record covers, 0..1.
    pub score: f64,
}

/// How many records and distinct sources the knowledge base holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub records: i64,
    pub sources: i64,
}

/// Inserts or updates records by id; every one written gets `now` as its
/// `updated_at` (see [`remove_stale`]).
pub async fn upsert(
    db: &Database,
    records: Vec<NewRecord>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for batch in records.chunks(UPSERT_BATCH) {
        let batch = batch.to_vec();
        on_writer!(db, conn => {
            let mut query = sqlx::QueryBuilder::new(
                "INSERT INTO kb_records (id, source, title, category, url, text, updated_at) ",
            );
            query.push_values(batch, |mut row, record| {
                row.push_bind(record.id)
                    .push_bind(record.source)
                    .push_bind(record.title)
                    .push_bind(record.category)
                    .push_bind(record.url)
                    .push_bind(record.text)
                    .push_bind(now);
            });
            query.push(
                " ON CONFLICT (id) DO UPDATE SET source = excluded.source, title = excluded.title, \
                 category = excluded.category, url = excluded.url, text = excluded.text, \
                 updated_at = excluded.updated_at",
            );
            query.build().execute(&mut *conn).await?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Removes the records of `source` not written since `since` (they left the
/// source); returns how many.
pub async fn remove_stale(
    db: &Database,
    source: &str,
    since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let source = source.to_owned();
    on_writer!(db, conn => {
        sqlx::query("DELETE FROM kb_records WHERE source = $1 AND updated_at < $2")
            .bind(source)
            .bind(since)
            .execute(&mut *conn)
            .await
            .map(|done| done.rows_affected())
    })
}

/// Removes records by id; returns how many existed.
pub async fn remove_ids(db: &Database, ids: Vec<String>) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    for id in ids {
        removed += on_writer!(db, conn => {
            sqlx::query("DELETE FROM kb_records WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected())
        })?;
    }
    Ok(removed)
}

/// Removes every record of a source; returns how many.
pub async fn remove_source(db: &Database, source: &str) -> Result<u64, sqlx::Error> {
    let source = source.to_owned();
    on_writer!(db, conn => {
        sqlx::query("DELETE FROM kb_records WHERE source = $1")
            .bind(source)
            .execute(&mut *conn)
            .await
            .map(|done| done.rows_affected())
    })
}

pub async fn stats(db: &Database) -> Result<Stats, sqlx::Error> {
    let (records, sources): (i64, i64) = on_reader!(db, conn => {
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT source) FROM kb_records")
            .fetch_one(conn)
            .await
    })?;
    Ok(Stats { records, sources })
}

/// The best `top_k` records for `terms`, best first; `candidates` (at least
/// `top_k`) is how many the engine ranks before they are scored.
pub async fn search(
    db: &Database,
    terms: &[String],
    top_k: usize,
    candidates: usize,
) -> Result<Vec<Hit>, sqlx::Error> {
    if terms.is_empty() || top_k == 0 {
        return Ok(Vec::new());
    }
    let candidates = candidates.max(top_k) as i64;
    let (weights, hits) = match db {
        Database::Sqlite(pool) => {
            let mut reader = readers::acquire(pool).await?;
            let found = search_sqlite(&mut reader, terms, candidates).await;
            reader.keep_if_sound(&found);
            found?
        }
        Database::Postgres(pool) => search_postgres(pool, terms, candidates).await?,
    };
    let total: f64 = weights.iter().sum();
    let mut scored: Vec<Hit> = hits
        .into_iter()
        .map(|(mut hit, matched)| {
            let covered: f64 = matched
                .iter()
                .zip(&weights)
                .filter(|(present, _)| **present)
                .map(|(_, weight)| weight)
                .sum();
            hit.score = if total > 0.0 { covered / total } else { 0.0 };
            hit
        })
        .collect();
    // Stable: among equal coverage the engine's own ranking decides.
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(top_k);
    Ok(scored)
}

/// Inverse document frequency, always positive (Lucene's BM25 form).
fn idf(documents: i64, containing: i64) -> f64 {
    let (n, df) = (documents as f64, containing as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// A term as an FTS5 string (quoted, so no user text is read as syntax).
fn fts_string(term: &str) -> String {
    format!("\"{}\"", term.replace('"', "\"\""))
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    seq: i64,
    id: String,
    title: Option<String>,
    category: Option<String>,
    url: Option<String>,
    text: String,
}

impl CandidateRow {
    fn into_hit(self) -> Hit {
        Hit {
            id: self.id,
            title: self.title,
            category: self.category,
            url: self.url,
            text: self.text,
            score: 0.0,
        }
    }
}

/// Per term its IDF weight; per candidate (engine order) which terms it has.
type Candidates = (Vec<f64>, Vec<(Hit, Vec<bool>)>);

async fn search_sqlite(
    conn: &mut SqliteConnection,
    terms: &[String],
    candidates: i64,
) -> Result<Candidates, sqlx::Error> {
    let documents: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kb_records")
        .fetch_one(&mut *conn)
        .await?;
    let mut containing = Vec::with_capacity(terms.len());
    for term in terms {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kb_fts WHERE kb_fts MATCH $1")
            .bind(fts_string(term))
            .fetch_one(&mut *conn)
            .await?;
        containing.push(count);
    }
    let weights = containing
        .iter()
        .map(|count| idf(documents, *count))
        .collect();
    let known: Vec<String> = terms
        .iter()
        .zip(&containing)
        .filter(|(_, count)| **count > 0)
        .map(|(term, _)| fts_string(term))
        .collect();
    let rare: Vec<String> = rare_terms(terms, &containing)
        .iter()
        .map(|term| fts_string(term))
        .collect();
    let mut rows: Vec<CandidateRow> = Vec::new();
    let ranked = |selective: bool| {
        if selective {
            "SELECT r.seq, r.id, r.title, r.category, r.url, r.text FROM kb_fts \
             JOIN kb_records r ON r.seq = kb_fts.rowid \
             WHERE kb_fts MATCH $1 ORDER BY bm25(kb_fts, 2.0, 1.0) LIMIT $2"
        } else {
            "SELECT r.seq, r.id, r.title, r.category, r.url, r.text FROM kb_fts \
             JOIN kb_records r ON r.seq = kb_fts.rowid \
             WHERE kb_fts MATCH $1 LIMIT $2"
        }
    };
    let all_selective = selective(&containing);
    for (query, sql) in [
        (known.join(" AND "), ranked(all_selective)),
        (rare.join(" OR "), ranked(true)),
    ] {
        if query.is_empty() {
            continue;
        }
        let found: Vec<CandidateRow> = sqlx::query_as(sql)
            .bind(query)
            .bind(candidates)
            .fetch_all(&mut *conn)
            .await?;
        for row in found {
            if !rows.iter().any(|seen| seen.seq == row.seq) {
                rows.push(row);
            }
        }
    }
    let hits = rows.into_iter().map(CandidateRow::into_hit).collect();
    Ok((weights, with_presence(terms, hits)))
}

async fn search_postgres(
    pool: &PgPool,
    terms: &[String],
    candidates: i64,
) -> Result<Candidates, sqlx::Error> {
    // The query's lexemes as the index has them (English stemming).
    let lexemes: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', $1)))")
            .bind(terms.join(" "))
            .fetch_all(pool)
            .await?;
    if lexemes.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let frequencies: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT l, (SELECT COUNT(*) FROM kb_records WHERE tsv @@ quote_literal(l)::tsquery), \
         (SELECT COUNT(*) FROM kb_records) FROM unnest($1::text[]) AS l",
    )
    .bind(&lexemes)
    .fetch_all(pool)
    .await?;
    let weights: Vec<f64> = frequencies
        .iter()
        .map(|(_, containing, documents)| idf(*documents, *containing))
        .collect();
    let containing: Vec<i64> = frequencies.iter().map(|(_, count, _)| *count).collect();
    let order: Vec<String> = frequencies
        .into_iter()
        .map(|(lexeme, _, _)| lexeme)
        .collect();
    let known: Vec<String> = order
        .iter()
        .zip(&containing)
        .filter(|(_, count)| **count > 0)
        .map(|(lexeme, _)| lexeme.clone())
        .collect();
    let rare = rare_terms(&order, &containing);
    let mut rows: Vec<CandidateRow> = Vec::new();
    let all_selective = selective(&containing);
    for (lexemes, operator, selective) in [(known, " & ", all_selective), (rare, " | ", true)] {
        if lexemes.is_empty() {
            continue;
        }
        let sql = if selective {
            "SELECT r.seq, r.id, r.title, r.category, r.url, r.text \
             FROM kb_records r, \
             (SELECT string_agg(quote_literal(l), $3)::tsquery AS q FROM unnest($1::text[]) AS l) AS s \
             WHERE r.tsv @@ s.q ORDER BY ts_rank_cd(r.tsv, s.q) DESC LIMIT $2"
        } else {
            "SELECT r.seq, r.id, r.title, r.category, r.url, r.text \
             FROM kb_records r, \
             (SELECT string_agg(quote_literal(l), $3)::tsquery AS q FROM unnest($1::text[]) AS l) AS s \
             WHERE r.tsv @@ s.q LIMIT $2"
        };
        let found: Vec<CandidateRow> = sqlx::query_as(sql)
            .bind(&lexemes)
            .bind(candidates)
            .bind(operator)
            .fetch_all(pool)
            .await?;
        for row in found {
            if !rows.iter().any(|seen| seen.seq == row.seq) {
                rows.push(row);
            }
        }
    }
    let hits = rows.into_iter().map(CandidateRow::into_hit).collect();
    Ok((weights, with_presence(&order, hits)))
}

/// Which of `terms` each hit contains, compared as English (Porter2)
/// stems: what PostgreSQL's `english` configuration indexes, and close to
/// FTS5's Porter stemmer. Done here on the few candidates rather than with
/// one index lookup per term (measured on SQLite, 50,000 records: 7.6 ms of
/// a 14 ms search went to `MATCH term AND rowid IN (...)`, which walks the
/// term's whole posting list).
fn with_presence(terms: &[String], hits: Vec<Hit>) -> Vec<(Hit, Vec<bool>)> {
    let stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    let wanted: Vec<String> = terms
        .iter()
        .map(|term| stemmer.stem(&term.to_lowercase()).into_owned())
        .collect();
    hits.into_iter()
        .map(|hit| {
            let mut present = vec![false; wanted.len()];
            let words = hit
                .title
                .iter()
                .flat_map(|title| title.split(|c: char| !c.is_alphanumeric()))
                .chain(hit.text.split(|c: char| !c.is_alphanumeric()))
                .filter(|word| !word.is_empty());
            for word in words {
                let stem = stemmer.stem(&word.to_lowercase()).into_owned();
                for (slot, term) in present.iter_mut().zip(&wanted) {
                    if *term == stem {
                        *slot = true;
                    }
                }
            }
            (hit, present)
        })
        .collect()
}
