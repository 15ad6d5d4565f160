//! The `conversations` table.

use chrono::{DateTime, Utc};

use super::{Database, on_reader, on_writer, readers};

/// A stored conversation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversationRecord {
    pub id: i64,
    pub user_id: Option<i64>,
    pub short_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub is_deleted: bool,
}

const COLUMNS: &str = "id, user_id, short_name, created_at, updated_at, is_deleted";

/// Creates a conversation named after its first message and stores its
/// system message, atomically.
pub async fn create(
    db: &Database,
    user_id: Option<i64>,
    short_name: &str,
    system_prompt: &str,
) -> Result<ConversationRecord, sqlx::Error> {
    let now = Utc::now();
    let (short_name, system_prompt) = (short_name.to_owned(), system_prompt.to_owned());
    on_writer!(db, conn => {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let conversation = sqlx::query_as::<_, ConversationRecord>(
            "INSERT INTO conversations (user_id, short_name, created_at, updated_at, is_deleted) \
             VALUES ($1, $2, $3, $3, $4) \
             RETURNING id, user_id, short_name, created_at, updated_at, is_deleted",
        )
        .bind(user_id)
        .bind(short_name)
        .bind(now)
        .bind(false)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO messages (conversation_id, role, content, user_message, created_at) \
             VALUES ($1, 'system', $2, NULL, $3)",
        )
        .bind(conversation.id)
        .bind(system_prompt)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(conversation)
    })
}

/// Gives a conversation its `short_name` when it has none yet (conversations
/// created before names were filled in at creation).
pub async fn name_if_unnamed(db: &Database, id: i64, short_name: &str) -> Result<(), sqlx::Error> {
    let short_name = short_name.to_owned();
    on_writer!(db, conn => {
        sqlx::query("UPDATE conversations SET short_name = $1 WHERE id = $2 AND short_name IS NULL")
            .bind(short_name)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
}

/// A conversation and how many messages it holds.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionedConversation {
    #[sqlx(flatten)]
    pub record: ConversationRecord,
    /// Messages are only ever appended, never edited or deleted, so the set a
    /// reader can see only grows and its size names it exactly: a history
    /// read earlier with as many rows is the current one. (The newest id
    /// would not do on PostgreSQL, where ids can commit out of order.)
    pub message_count: i64,
    /// Feedback is the one change to stored messages: it moves this.
    pub feedback_version: i64,
}

/// Finds a conversation by id, deleted or not, with its message count.
pub async fn find_versioned(
    db: &Database,
    id: i64,
) -> Result<Option<VersionedConversation>, sqlx::Error> {
    // Counted on messages_conversation_idx (conversation_id, id) alone.
    let sql = format!(
        "SELECT {COLUMNS}, \
         (SELECT COUNT(*) FROM messages WHERE conversation_id = $1) AS message_count, \
         feedback_version FROM conversations WHERE id = $1"
    );
    on_reader!(db, conn => {
        sqlx::query_as::<_, VersionedConversation>(&sql).bind(id).fetch_optional(conn).await
    })
}

/// Finds a conversation by id, deleted or not.
pub async fn find(db: &Database, id: i64) -> Result<Option<ConversationRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM conversations WHERE id = $1");
    on_reader!(db, conn => {
        sqlx::query_as::<_, ConversationRecord>(&sql).bind(id).fetch_optional(conn).await
    })
}

/// A user's non-deleted conversations, newest first; `limit = None` means all.
pub async fn list_for_user(
    db: &Database,
    user_id: i64,
    limit: Option<i64>,
    offset: i64,
) -> Result<Vec<ConversationRecord>, sqlx::Error> {
    // -1 is "no limit" on SQLite; PostgreSQL takes NULL for the same.
    let sql = format!(
        "SELECT {COLUMNS} FROM conversations WHERE user_id = $1 AND is_deleted = $2 \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    );
    match db {
        Database::Sqlite(pool) => {
            let mut reader = readers::acquire(pool).await?;
            let result = sqlx::query_as::<_, ConversationRecord>(&sql)
                .bind(user_id)
                .bind(false)
                .bind(limit.unwrap_or(-1))
                .bind(offset)
                .fetch_all(&mut *reader)
                .await;
            reader.keep_if_sound(&result);
            result
        }
        Database::Postgres(pool) => {
            sqlx::query_as::<_, ConversationRecord>(&sql)
                .bind(user_id)
                .bind(false)
                .bind(limit)
                .bind(offset)
                .fetch_all(pool)
                .await
        }
    }
}

/// Marks a conversation deleted; false when it already was (or does not exist).
pub async fn soft_delete(db: &Database, id: i64) -> Result<bool, sqlx::Error> {
    let now = Utc::now();
    let affected = on_writer!(db, conn => {
        sqlx::query(
            "UPDATE conversations SET is_deleted = $1, updated_at = $2 WHERE id = $3 AND is_deleted = $4",
        )
        .bind(true)
        .bind(now)
        .bind(id)
        .bind(false)
        .execute(&mut *conn)
        .await
        .map(|done| done.rows_affected())
    })?;
    Ok(affected == 1)
}
