//! The local knowledge base: `kb_records`, searched with SQLite FTS5 or
//! PostgreSQL full-text search over the application's analysis of each
//! record (`title_terms`, `text_terms`: see migration 0006), so both engines
//! hold the same terms and the caller can plan a query from their document
//! frequencies ([`vocabulary`]).
//!
//! [`candidates`] asks the engine twice: for the records holding every
//! group of the query (a group is a term and its synonyms, any one of them
//! will do), and for the records holding any of the rarest terms (as many as
//! fit a budget of postings). Both are ranked by the engine (BM25 with the
//! title weighted double on SQLite, `ts_rank_cd` with title weight A on
//! PostgreSQL). An OR of every term would be the obvious query, but the
//! engine scores every record that has any of them: a question with "card"
//! in it scored a third of a 50,000-record base, 56 ms at the median (bench
//! section 8). The caller scores the candidates.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, SqliteConnection};

use super::{Database, on_reader, on_writer, readers};

/// Records per multi-row upsert (9 columns: far below both engines' limits).
const UPSERT_BATCH: usize = 500;

/// Most postings (records containing a term, summed over terms) a ranked
/// query may touch. FTS5 ranks about one record per 2 µs at 50,000
/// records, so this bounds a ranked query near 2 ms on SQLite.
const RARE_POSTINGS: i64 = 1_000;

/// The same on PostgreSQL, which reads each matching record's tsvector to
/// rank it: about 15 µs a record at 50,000 records (bench section 8 with
/// `--postgres`; an OR of 1,000 postings took 7-17 ms).
const RARE_POSTINGS_POSTGRES: i64 = 300;

/// A query term and how many records hold it.
pub type Term = (String, i64);

/// A group's postings: the records holding any of its terms (at most).
fn postings(group: &[Term]) -> i64 {
    group.iter().map(|(_, count)| count).sum()
}

/// The groups the query for records holding every group takes, and whether
/// it is ranked. Only the rare groups (within the postings budget) when
/// there are any: the engine merges the whole posting list of every term in
/// an AND, and a common term's list is a third of the knowledge base (3 ms
/// for two common terms at 50,000 records, against 0.3 ms without them;
/// the caller's score still counts the common words). When every group is
/// common, all of them, unranked: ranking would score thousands of records
/// (a single turn took 26 ms at 50,000 records, and 200 concurrent turns
/// queued for seconds; bench section 2 with `--kb-records`), so the first
/// records found are taken and the caller's score orders them.
fn all_of(groups: &[Vec<Term>], budget: i64) -> (Vec<Vec<Term>>, bool) {
    let rare: Vec<Vec<Term>> = groups
        .iter()
        .filter(|group| postings(group) <= budget)
        .cloned()
        .collect();
    if rare.is_empty() {
        (groups.to_vec(), false)
    } else {
        (rare, true)
    }
}

/// The terms worth an OR query: rarest first, while their postings fit the
/// budget.
fn rare_terms(groups: &[Vec<Term>], mut budget: i64) -> Vec<String> {
    let mut terms: Vec<&Term> = groups.iter().flatten().collect();
    terms.sort_by_key(|(_, count)| *count);
    terms.dedup_by(|a, b| a.0 == b.0);
    let mut chosen = Vec::new();
    for (term, count) in terms {
        if *count > budget {
            break;
        }
        budget -= count;
        chosen.push(term.clone());
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
    /// The analysed title and text (services::knowledge::analyze): what
    /// the full-text index holds.
    pub title_terms: String,
    pub text_terms: String,
}

/// A record found by a search, with its terms for the caller's scoring.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Candidate {
    seq: i64,
    pub id: String,
    pub title: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
    pub text: String,
    pub title_terms: String,
    pub text_terms: String,
}

/// How many records and distinct sources the knowledge base holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub records: i64,
    pub sources: i64,
}

/// Every term the index holds with the number of records holding it, and
/// the number of records, as of `version`.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    pub version: i64,
    pub documents: i64,
    pub terms: Vec<Term>,
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
                "INSERT INTO kb_records (id, source, title, category, url, text, title_terms, text_terms, updated_at) ",
            );
            query.push_values(batch, |mut row, record| {
                row.push_bind(record.id)
                    .push_bind(record.source)
                    .push_bind(record.title)
                    .push_bind(record.category)
                    .push_bind(record.url)
                    .push_bind(record.text)
                    .push_bind(record.title_terms)
                    .push_bind(record.text_terms)
                    .push_bind(now);
            });
            query.push(
                " ON CONFLICT (id) DO UPDATE SET source = excluded.source, title = excluded.title, \
                 category = excluded.category, url = excluded.url, text = excluded.text, \
                 title_terms = excluded.title_terms, text_terms = excluded.text_terms, \
                 updated_at = excluded.updated_at",
            );
            query.build().execute(&mut *conn).await?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Brings the planner's statistics up to date after an ingestion. On
/// PostgreSQL a table filled moments ago has none until autovacuum gets to
/// it, and the planner then scans every row instead of using the GIN index
/// (bench section 8 `--quick`, 5,000 records just ingested: search p50
/// 24 ms); SQLite's FTS5 queries do not depend on statistics.
pub async fn analyze(db: &Database) -> Result<(), sqlx::Error> {
    if let Database::Postgres(pool) = db {
        sqlx::query("ANALYZE kb_records").execute(pool).await?;
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

/// Every source the knowledge base holds records of.
pub async fn sources(db: &Database) -> Result<Vec<String>, sqlx::Error> {
    on_reader!(db, conn => {
        sqlx::query_scalar("SELECT DISTINCT source FROM kb_records ORDER BY source")
            .fetch_all(conn)
            .await
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

/// The knowledge base's version: changes with every write to `kb_records`.
pub async fn version(db: &Database) -> Result<i64, sqlx::Error> {
    on_reader!(db, conn => {
        sqlx::query_scalar("SELECT version FROM kb_state WHERE id = 1")
            .fetch_one(conn)
            .await
    })
}

/// Every indexed term and its document frequency (`kb_vocab` on SQLite,
/// `ts_stat` on PostgreSQL: both read the whole index, so callers cache
/// the result per [`version`]).
pub async fn vocabulary(db: &Database) -> Result<Vocabulary, sqlx::Error> {
    const DOCUMENTS: &str = "SELECT COUNT(*) FROM kb_records";
    let version = version(db).await?;
    let (documents, terms) = match db {
        Database::Sqlite(pool) => {
            let mut reader = readers::acquire(pool).await?;
            let result = async {
                let documents: i64 = sqlx::query_scalar(DOCUMENTS)
                    .fetch_one(&mut *reader)
                    .await?;
                let terms: Vec<Term> = sqlx::query_as("SELECT term, doc FROM kb_vocab")
                    .fetch_all(&mut *reader)
                    .await?;
                Ok((documents, terms))
            }
            .await;
            reader.keep_if_sound(&result);
            result?
        }
        Database::Postgres(pool) => {
            let documents: i64 = sqlx::query_scalar(DOCUMENTS).fetch_one(pool).await?;
            let terms: Vec<Term> = sqlx::query_as(
                "SELECT word, ndoc::BIGINT FROM ts_stat('SELECT tsv FROM kb_records')",
            )
            .fetch_all(pool)
            .await?;
            (documents, terms)
        }
    };
    Ok(Vocabulary {
        version,
        documents,
        terms,
    })
}

/// How many records hold each of `terms` (asked of the index one by one:
/// for the few words a cached vocabulary does not know yet).
pub async fn frequencies(db: &Database, terms: &[String]) -> Result<Vec<i64>, sqlx::Error> {
    let mut counts = Vec::with_capacity(terms.len());
    for term in terms {
        if !is_plain(term) {
            counts.push(0);
            continue;
        }
        let count: Option<i64> = match db {
            Database::Sqlite(pool) => {
                let mut reader = readers::acquire(pool).await?;
                let result = sqlx::query_scalar("SELECT doc FROM kb_vocab WHERE term = $1")
                    .bind(term)
                    .fetch_optional(&mut *reader)
                    .await;
                reader.keep_if_sound(&result);
                result?
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM kb_records WHERE tsv @@ $1::tsquery")
                    .bind(format!("'{term}'"))
                    .fetch_optional(pool)
                    .await?
            }
        };
        counts.push(count.unwrap_or(0));
    }
    Ok(counts)
}

/// The analysis `title_terms` and `text_terms` were made with.
pub async fn analyzer_version(db: &Database) -> Result<i64, sqlx::Error> {
    on_reader!(db, conn => {
        sqlx::query_scalar("SELECT analyzer FROM kb_state WHERE id = 1")
            .fetch_one(conn)
            .await
    })
}

pub async fn set_analyzer_version(db: &Database, analyzer: i64) -> Result<(), sqlx::Error> {
    on_writer!(db, conn => {
        sqlx::query("UPDATE kb_state SET analyzer = $1 WHERE id = 1")
            .bind(analyzer)
            .execute(&mut *conn)
            .await
            .map(|_| ())
    })
}

/// A record to re-analyse: its `seq`, title and text.
pub type Text = (i64, Option<String>, String);

/// Up to `limit` records after `seq`, in order.
pub async fn texts_after(db: &Database, seq: i64, limit: i64) -> Result<Vec<Text>, sqlx::Error> {
    on_reader!(db, conn => {
        sqlx::query_as("SELECT seq, title, text FROM kb_records WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(limit)
            .fetch_all(conn)
            .await
    })
}

/// Stores new terms for records by `seq` (title terms, text terms).
pub async fn set_terms(
    db: &Database,
    terms: Vec<(i64, String, String)>,
) -> Result<(), sqlx::Error> {
    on_writer!(db, conn => {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for (seq, title_terms, text_terms) in terms {
            sqlx::query("UPDATE kb_records SET title_terms = $1, text_terms = $2 WHERE seq = $3")
                .bind(title_terms)
                .bind(text_terms)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })
}

/// Up to `limit` candidates for a query of `groups` (each a term and its
/// alternatives, with their document frequencies; terms no record holds
/// left out), in the engine's order of relevance, without duplicates.
pub async fn candidates(
    db: &Database,
    groups: &[Vec<Term>],
    limit: usize,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let groups: Vec<Vec<Term>> = groups
        .iter()
        .map(|group| {
            group
                .iter()
                .filter(|(term, count)| *count > 0 && is_plain(term))
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|group| !group.is_empty())
        .collect();
    if groups.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let limit = limit as i64;
    let budget = match db {
        Database::Sqlite(_) => RARE_POSTINGS,
        Database::Postgres(_) => RARE_POSTINGS_POSTGRES,
    };
    let (all, ranked) = all_of(&groups, budget);
    let rare = rare_terms(&groups, budget);
    // The OR of one term is the AND of its group.
    let same =
        matches!(all.as_slice(), [group] if group.len() == 1 && rare == [group[0].0.clone()]);
    let mut queries = vec![(Query::All(&all), ranked)];
    if !same {
        queries.push((Query::Any(&rare), true));
    }
    let mut found: Vec<Candidate> = Vec::new();
    match db {
        Database::Sqlite(pool) => {
            let mut reader = readers::acquire(pool).await?;
            let result = candidates_sqlite(&mut reader, &queries, limit, &mut found).await;
            reader.keep_if_sound(&result);
            result?
        }
        Database::Postgres(pool) => candidates_postgres(pool, &queries, limit, &mut found).await?,
    }
    Ok(found)
}

/// Terms are what the analyser makes: letters and digits only. Anything
/// else (never expected) is left out rather than quoted into a query.
fn is_plain(term: &str) -> bool {
    !term.is_empty() && term.chars().all(char::is_alphanumeric)
}

enum Query<'a> {
    /// Records holding a term of every group.
    All(&'a [Vec<Term>]),
    /// Records holding any of the terms.
    Any(&'a [String]),
}

impl Query<'_> {
    /// The query in the engine's syntax, with its operators and term quoting.
    fn render(&self, or: &str, and: &str, quote: &str) -> String {
        let quoted = |term: &str| format!("{quote}{term}{quote}");
        match self {
            Query::All(groups) => groups
                .iter()
                .map(|group| {
                    let terms: Vec<String> = group.iter().map(|(term, _)| quoted(term)).collect();
                    format!("({})", terms.join(or))
                })
                .collect::<Vec<_>>()
                .join(and),
            Query::Any(terms) => terms
                .iter()
                .map(|term| quoted(term))
                .collect::<Vec<_>>()
                .join(or),
        }
    }
}

fn add_new(found: &mut Vec<Candidate>, rows: Vec<Candidate>) {
    for row in rows {
        if !found.iter().any(|seen| seen.seq == row.seq) {
            found.push(row);
        }
    }
}

async fn candidates_sqlite(
    conn: &mut SqliteConnection,
    queries: &[(Query<'_>, bool)],
    limit: i64,
    found: &mut Vec<Candidate>,
) -> Result<(), sqlx::Error> {
    // Ranked in a subquery on the index alone, then joined: ordering the
    // join read every matching record's row first (15 ms instead of 5 ms
    // for 1,775 matches at 50,000 records).
    const RANKED: &str = "SELECT r.seq, r.id, r.title, r.category, r.url, r.text, \
         r.title_terms, r.text_terms FROM (SELECT rowid, rank FROM kb_fts \
         WHERE kb_fts MATCH $1 AND rank MATCH 'bm25(2.0, 1.0)' ORDER BY rank LIMIT $2) AS f \
         JOIN kb_records r ON r.seq = f.rowid ORDER BY f.rank";
    const UNRANKED: &str = "SELECT r.seq, r.id, r.title, r.category, r.url, r.text, \
         r.title_terms, r.text_terms FROM kb_fts JOIN kb_records r ON r.seq = kb_fts.rowid \
         WHERE kb_fts MATCH $1 LIMIT $2";
    for (query, ranked) in queries {
        let text = query.render(" OR ", " AND ", "\"");
        if text.is_empty() {
            continue;
        }
        let sql = if *ranked { RANKED } else { UNRANKED };
        let rows: Vec<Candidate> = sqlx::query_as(sql)
            .bind(text)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        add_new(found, rows);
    }
    Ok(())
}

async fn candidates_postgres(
    pool: &PgPool,
    queries: &[(Query<'_>, bool)],
    limit: i64,
    found: &mut Vec<Candidate>,
) -> Result<(), sqlx::Error> {
    const COLUMNS: &str = "SELECT r.seq, r.id, r.title, r.category, r.url, r.text, \
         r.title_terms, r.text_terms FROM kb_records r WHERE r.tsv @@ $1::tsquery";
    for (query, ranked) in queries {
        let text = query.render(" | ", " & ", "'");
        if text.is_empty() {
            continue;
        }
        let sql = if *ranked {
            format!("{COLUMNS} ORDER BY ts_rank(r.tsv, $1::tsquery) DESC LIMIT $2")
        } else {
            format!("{COLUMNS} LIMIT $2")
        };
        let rows: Vec<Candidate> = sqlx::query_as(&sql)
            .bind(text)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        add_new(found, rows);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(name: &str, count: i64) -> Term {
        (name.to_string(), count)
    }

    #[test]
    fn queries_render_in_each_engines_syntax() {
        let groups = vec![
            vec![term("lost", 3), term("stolen", 2)],
            vec![term("card", 10)],
        ];
        assert_eq!(
            Query::All(&groups).render(" OR ", " AND ", "\""),
            "(\"lost\" OR \"stolen\") AND (\"card\")"
        );
        assert_eq!(
            Query::All(&groups).render(" | ", " & ", "'"),
            "('lost' | 'stolen') & ('card')"
        );
        let rare = rare_terms(&groups, RARE_POSTINGS);
        assert_eq!(rare, ["stolen", "lost", "card"]);
        assert_eq!(
            Query::Any(&rare).render(" | ", " & ", "'"),
            "'stolen' | 'lost' | 'card'"
        );
    }

    #[test]
    fn common_groups_are_not_ranked_and_common_terms_not_ored() {
        let common = vec![
            vec![term("card", 20_000)],
            vec![term("fee", 400), term("cost", 2_000)],
        ];
        assert_eq!(all_of(&common, RARE_POSTINGS), (common.clone(), false));
        assert_eq!(rare_terms(&common, RARE_POSTINGS), ["fee"]);
        let one_rare = vec![vec![term("card", 20_000)], vec![term("iban", 12)]];
        assert_eq!(
            all_of(&one_rare, RARE_POSTINGS),
            (vec![vec![term("iban", 12)]], true)
        );
        assert!(is_plain("2fa") && !is_plain("a\"b") && !is_plain(""));
    }
}
