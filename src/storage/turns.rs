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

/// The turns of a period sharing one combination of these values.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TurnGroup {
    pub outcome: String,
    pub refusal_reason: Option<String>,
    pub grounded: Option<bool>,
    pub anonymous: bool,
    pub ttft_ms: Option<i64>,
    pub turns: i64,
}

/// The turns started in `[from_ms, to_ms)`, grouped: everything but the
/// distinct users and the questions, in one pass over `turns_period_idx`.
/// Grouping by the time to first token keeps its exact distribution (a few
/// thousand distinct milliseconds at most), from which the caller takes
/// percentiles.
pub async fn groups(
    db: &Database,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<TurnGroup>, sqlx::Error> {
    const SQL: &str = "SELECT outcome, refusal_reason, grounded, \
         (user_id IS NULL) AS anonymous, ttft_ms, COUNT(*) AS turns \
         FROM turns WHERE started_ms >= $1 AND started_ms < $2 \
         GROUP BY outcome, refusal_reason, grounded, (user_id IS NULL), ttft_ms";
    on_reader!(db, conn => {
        sqlx::query_as::<_, TurnGroup>(SQL)
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
