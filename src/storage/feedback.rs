//! Rated answers, for the admin feedback list.

use chrono::{DateTime, Utc};

use super::{Database, on_reader};

/// A rated answer with the question it answered.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RatedAnswer {
    pub message_id: i64,
    pub conversation_id: i64,
    /// What the user typed (redacted as stored); for a refusal, the
    /// refused message.
    pub question: Option<String>,
    pub answer: String,
    /// JSON array of the answer's sources, when it had any.
    pub sources: Option<String>,
    pub rating: String,
    pub reason: Option<String>,
    pub rated_at: Option<DateTime<Utc>>,
}

/// Rated answers, newest rating first, `rating` (`up`/`down`) or both.
pub async fn list(
    db: &Database,
    rating: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<RatedAnswer>, sqlx::Error> {
    // The question of an answer is the last user row before it in its
    // conversation (messages_conversation_idx); a guardrails row holds its own.
    const SQL: &str = "SELECT m.id AS message_id, m.conversation_id, \
         CASE WHEN m.role = 'guardrails' THEN m.user_message ELSE \
           (SELECT u.user_message FROM messages u WHERE u.conversation_id = m.conversation_id \
            AND u.id < m.id AND u.role = 'user' ORDER BY u.id DESC LIMIT 1) END AS question, \
         m.content AS answer, m.sources, m.feedback_rating AS rating, m.feedback_reason AS reason, \
         m.feedback_at AS rated_at \
         FROM messages m \
         WHERE m.feedback_rating IS NOT NULL AND ($1 IS NULL OR m.feedback_rating = $1) \
         ORDER BY m.feedback_at DESC, m.id DESC LIMIT $2 OFFSET $3";
    let rating = rating.map(str::to_owned);
    on_reader!(db, conn => {
        sqlx::query_as::<_, RatedAnswer>(SQL)
            .bind(rating.clone())
            .bind(limit)
            .bind(offset)
            .fetch_all(conn)
            .await
    })
}

/// How many answers were rated up and down in `[from, to)` (by when the
/// rating was given; a replaced rating counts once, as it is now).
pub async fn counts(
    db: &Database,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(i64, i64), sqlx::Error> {
    // Two ranges of messages_feedback_idx (rating, feedback_at).
    const SQL: &str = "SELECT \
         (SELECT COUNT(*) FROM messages WHERE feedback_rating = 'up' \
          AND feedback_at >= $1 AND feedback_at < $2), \
         (SELECT COUNT(*) FROM messages WHERE feedback_rating = 'down' \
          AND feedback_at >= $1 AND feedback_at < $2)";
    on_reader!(db, conn => {
        sqlx::query_as::<_, (i64, i64)>(SQL)
            .bind(from)
            .bind(to)
            .fetch_one(conn)
            .await
    })
}
