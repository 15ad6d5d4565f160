//! The `conversations` table.

use chrono::{DateTime, Utc};

use super::outbox::{self, NewEvent, OwnedEvent};
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
    /// `bot`, `pending_human`, `human` or `closed` (migration 0011).
    pub status: String,
    /// Why it was last handed to a person.
    pub status_reason: Option<String>,
    /// When the status last changed (ms since the Unix epoch); `None` when
    /// it never did.
    pub status_changed_ms: Option<i64>,
}

const COLUMNS: &str = "id, user_id, short_name, created_at, updated_at, is_deleted, status, status_reason, status_changed_ms";

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
             RETURNING id, user_id, short_name, created_at, updated_at, is_deleted, status, \
             status_reason, status_changed_ms",
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
    // -1 is "no limit" on SQLite; PostgreSQL takes NULL for the same. The
    // list shows the status but not why or when it changed: those are not read.
    let sql = "SELECT id, user_id, short_name, created_at, updated_at, is_deleted, status, \
         CAST(NULL AS TEXT) AS status_reason, CAST(NULL AS BIGINT) AS status_changed_ms \
         FROM conversations WHERE user_id = $1 AND is_deleted = $2 \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4";
    match db {
        Database::Sqlite(pool) => {
            let mut reader = readers::acquire(pool).await?;
            let result = sqlx::query_as::<_, ConversationRecord>(sql)
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
            sqlx::query_as::<_, ConversationRecord>(sql)
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

/// A status change: from one of `from` to `to`, with its reason (kept as it
/// was when `None`) and optionally the webhook event it makes happen.
#[derive(Debug, Clone, Copy)]
pub struct StatusChange<'a> {
    pub id: i64,
    pub from: &'a [&'a str],
    pub to: &'a str,
    pub reason: Option<&'a str>,
    /// Stored in the same transaction, so the change and its event are
    /// written together or not at all.
    pub event: Option<NewEvent<'a>>,
}

/// Changes a conversation's status when it is one of `change.from` and the
/// conversation is not deleted; false when it was not (another change came
/// first). Touches `updated_at`.
pub async fn change_status(db: &Database, change: StatusChange<'_>) -> Result<bool, sqlx::Error> {
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    // `status IN (...)` with one placeholder per allowed status.
    let allowed: Vec<String> = change.from.iter().map(|s| (*s).to_owned()).collect();
    let sql = format!(
        "UPDATE conversations SET status = $1, status_reason = COALESCE($2, status_reason), \
         status_changed_ms = $3, updated_at = $4 \
         WHERE id = $5 AND is_deleted = $6 AND status IN ({})",
        (0..allowed.len())
            .map(|i| format!("${}", i + 7))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (id, to) = (change.id, change.to.to_owned());
    let reason = change.reason.map(str::to_owned);
    let event = change.event.map(OwnedEvent::from);
    on_writer!(db, conn => {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut update = sqlx::query(&sql)
            .bind(to)
            .bind(reason)
            .bind(now_ms)
            .bind(now)
            .bind(id)
            .bind(false);
        for status in allowed {
            update = update.bind(status);
        }
        let changed = update.execute(&mut *tx).await?.rows_affected() == 1;
        if changed && let Some(event) = event {
            outbox::insert_event!(&mut *tx, event, now_ms)?;
        }
        tx.commit().await?;
        Ok(changed)
    })
}

/// A conversation in the agents' queue, with its user's address and name
/// (none for an anonymous conversation).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedConversation {
    #[sqlx(flatten)]
    pub record: ConversationRecord,
    pub user_email: Option<String>,
    pub user_name: Option<String>,
}

/// Non-deleted conversations whose status is one of `statuses`, the longest
/// waiting first.
pub async fn list_by_status(
    db: &Database,
    statuses: &[&str],
    limit: i64,
    offset: i64,
) -> Result<Vec<QueuedConversation>, sqlx::Error> {
    let columns = COLUMNS
        .split(", ")
        .map(|column| format!("c.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns}, u.email AS user_email, u.name AS user_name \
         FROM conversations c LEFT JOIN users u ON u.id = c.user_id \
         WHERE c.is_deleted = $1 AND c.status IN ({}) \
         ORDER BY c.status_changed_ms, c.id LIMIT $2 OFFSET $3",
        (0..statuses.len())
            .map(|i| format!("${}", i + 4))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let statuses: Vec<String> = statuses.iter().map(|s| (*s).to_owned()).collect();
    on_reader!(db, conn => {
        let mut query = sqlx::query_as::<_, QueuedConversation>(&sql)
            .bind(false)
            .bind(limit)
            .bind(offset);
        for status in statuses.clone() {
            query = query.bind(status);
        }
        query.fetch_all(conn).await
    })
}
