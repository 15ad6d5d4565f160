//! The turn log (migration 0009): one row per chat turn, and the counts the
//! admin analytics make of it.

use super::{Database, on_reader, on_writer};

/// One ended turn.
#[derive(Debug, Clone)]
pub struct NewTurn {
    /// When the message arrived, milliseconds since the Unix epoch.
    pub started_ms: i64,
    pub conversation_id: i64,
    /// `None`: anonymous.
    pub user_id: Option<i64>,
    pub transport: &'static str,
    pub outcome: &'static str,
    pub refusal_reason: Option<&'static str>,
    /// `None` when retrieval did not run (refused turns).
    pub grounded: Option<bool>,
    pub ttft_ms: Option<i64>,
    /// Ungrounded turns only: the redacted question and its grouping key.
    pub question: Option<String>,
    pub question_key: Option<String>,
}

pub async fn insert(db: &Database, turn: NewTurn) -> Result<(), sqlx::Error> {
    on_writer!(db, conn => {
        sqlx::query(
            "INSERT INTO turns (started_ms, conversation_id, user_id, transport, outcome, \
             refusal_reason, grounded, ttft_ms, question, question_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(turn.started_ms)
        .bind(turn.conversation_id)
        .bind(turn.user_id)
        .bind(turn.transport)
        .bind(turn.outcome)
        .bind(turn.refusal_reason)
        .bind(turn.grounded)
        .bind(turn.ttft_ms)
        .bind(turn.question.clone())
        .bind(turn.question_key.clone())
        .execute(&mut *conn)
        .await?;
        Ok(())
    })
}

/// The turns of a period that ended one way (and, when refused, for one
/// reason), with how many of them were anonymous and how many retrieval
/// ran for and left ungrounded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutcomeCount {
    pub outcome: String,
    pub refusal_reason: Option<String>,
    pub turns: i64,
    pub anonymous: i64,
    pub retrieved: i64,
    pub ungrounded: i64,
}

/// The turns started in `[from_ms, to_ms)` by outcome and refusal reason.
pub async fn outcomes(
    db: &Database,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<OutcomeCount>, sqlx::Error> {
    const SQL: &str = "SELECT outcome, refusal_reason, COUNT(*) AS turns, \
         SUM(CASE WHEN user_id IS NULL THEN 1 ELSE 0 END) AS anonymous, \
         SUM(CASE WHEN grounded IS NOT NULL THEN 1 ELSE 0 END) AS retrieved, \
         SUM(CASE WHEN NOT grounded THEN 1 ELSE 0 END) AS ungrounded \
         FROM turns WHERE started_ms >= $1 AND started_ms < $2 \
         GROUP BY outcome, refusal_reason";
    on_reader!(db, conn => {
        sqlx::query_as::<_, OutcomeCount>(SQL)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(conn)
            .await
    })
}

/// The times to first token of the turns started in `[from_ms, to_ms)`:
/// (milliseconds, how many turns took that long), exact (a few thousand
/// distinct values at most), for the caller's percentiles.
pub async fn ttft_distribution(
    db: &Database,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    const SQL: &str = "SELECT ttft_ms, COUNT(*) FROM turns \
         WHERE ttft_ms IS NOT NULL AND started_ms >= $1 AND started_ms < $2 GROUP BY ttft_ms";
    on_reader!(db, conn => {
        sqlx::query_as::<_, (i64, i64)>(SQL)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(conn)
            .await
    })
}

/// How many signed-in users had a turn in `[from_ms, to_ms)`: one probe of
/// `turns_user_idx` per user with turns, rather than a distinct count
/// over every turn of the period.
pub async fn active_users(db: &Database, from_ms: i64, to_ms: i64) -> Result<i64, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) FROM users u WHERE EXISTS \
         (SELECT 1 FROM turns t WHERE t.user_id = u.id AND t.started_ms >= $1 AND t.started_ms < $2)";
    on_reader!(db, conn => {
        let (count,): (i64,) = sqlx::query_as(SQL)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_one(conn)
            .await?;
        Ok(count)
    })
}

/// An ungrounded question and how often it (or a rephrasing with the same
/// terms) was asked.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AskedQuestion {
    pub question: String,
    pub count: i64,
}

/// The `limit` most frequent ungrounded questions of `[from_ms, to_ms)`,
/// most frequent first, each shown as its latest wording.
pub async fn top_ungrounded(
    db: &Database,
    from_ms: i64,
    to_ms: i64,
    limit: i64,
) -> Result<Vec<AskedQuestion>, sqlx::Error> {
    // Counted on `turns_ungrounded_idx` alone; only the winners' rows are
    // read for their text.
    const SQL: &str = "WITH top AS ( \
           SELECT question_key, COUNT(*) AS count, MAX(id) AS latest FROM turns \
           WHERE question_key IS NOT NULL AND started_ms >= $1 AND started_ms < $2 \
           GROUP BY question_key ORDER BY count DESC, question_key LIMIT $3) \
         SELECT t.question AS question, top.count AS count FROM top JOIN turns t ON t.id = top.latest \
         WHERE t.question IS NOT NULL ORDER BY top.count DESC, top.question_key";
    on_reader!(db, conn => {
        sqlx::query_as::<_, AskedQuestion>(SQL)
            .bind(from_ms)
            .bind(to_ms)
            .bind(limit)
            .fetch_all(conn)
            .await
    })
}
