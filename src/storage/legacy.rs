//! The Python service's tables (`"user"`, `conversation`, `message`, as
//! SQLModel created them) and their adoption into this server's tables.
//!
//! Everything here runs inside one [`LegacyTx`]: on PostgreSQL under a
//! transaction-scoped advisory lock (several servers starting at once adopt
//! once), on SQLite under `BEGIN IMMEDIATE` (the write lock from the start).
//! The Python tables are only read, never changed. The rules (what to adopt,
//! what to skip) live in `services::adoption`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};

use super::{Database, SQLITE_BUSY_TIMEOUT, SQLITE_STARTUP_BUSY_TIMEOUT, set_busy_timeout};
use crate::config::DatabaseTarget;

/// Serialises adoptions across servers sharing one PostgreSQL database.
const ADOPTION_LOCK_KEY: i64 = 0x656c_6f71_6164_6f70; // "eloqadop"

/// Rows per multi-row INSERT: 6 columns × 1,000 rows stays far below both
/// backends' bind-parameter limits (SQLite 32,766, PostgreSQL 65,535).
const INSERT_BATCH: usize = 1_000;

/// The Python service's table names, as SQL identifiers (`user` is reserved
/// on PostgreSQL; SQLite accepts the quotes too).
pub const USER_TABLE: &str = "\"user\"";
pub const CONVERSATION_TABLE: &str = "conversation";
pub const MESSAGE_TABLE: &str = "message";

/// The columns of one table: name → declared type, lower-cased.
#[derive(Debug, Clone, Default)]
pub struct Columns(HashMap<String, String>);

impl Columns {
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn declared_type(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Which of the Python service's tables exist, with their columns.
#[derive(Debug, Clone, Default)]
pub struct LegacySchema {
    pub user: Option<Columns>,
    pub conversation: Option<Columns>,
    pub message: Option<Columns>,
}

impl LegacySchema {
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.conversation.is_none() && self.message.is_none()
    }
}

/// Highest ids, per Python table (0 for an empty or missing table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ids {
    pub user: i64,
    pub conversation: i64,
    pub message: i64,
}

impl Ids {
    /// Whether any table has rows above `watermark`.
    pub fn any_above(&self, watermark: &Ids) -> bool {
        self.user > watermark.user
            || self.conversation > watermark.conversation
            || self.message > watermark.message
    }

    pub fn max(self, other: Ids) -> Ids {
        Ids {
            user: self.user.max(other.user),
            conversation: self.conversation.max(other.conversation),
            message: self.message.max(other.message),
        }
    }
}

/// The latest recorded adoption.
#[derive(Debug, Clone)]
pub struct PreviousAdoption {
    pub adopted_at: DateTime<Utc>,
    /// The Python tables' highest ids already read.
    pub watermark: Ids,
}

/// Rows of this server's tables that collide with not-yet-adopted Python rows.
#[derive(Debug, Clone, Default)]
pub struct Collisions {
    pub user_ids: Vec<i64>,
    pub emails: Vec<String>,
    pub conversation_ids: Vec<i64>,
    pub message_ids: Vec<i64>,
}

impl Collisions {
    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty()
            && self.emails.is_empty()
            && self.conversation_ids.is_empty()
            && self.message_ids.is_empty()
    }
}

/// A `"user"` row as stored (timestamps as text, see [`timestamp_expr`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacyUser {
    pub id: i64,
    pub email: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
    pub created_at: Option<String>,
}

/// A `conversation` row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacyConversation {
    pub id: i64,
    pub user_id: Option<i64>,
    pub short_name: Option<String>,
    pub created_at: Option<String>,
    pub is_deleted: i64,
}

/// A `message` row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacyMessage {
    pub id: i64,
    pub conversation_id: Option<i64>,
    pub role: Option<String>,
    pub content: Option<String>,
    pub user_message: Option<String>,
    pub created_at: Option<String>,
}

/// A user row to insert, id kept.
#[derive(Debug, Clone)]
pub struct AdoptedUser {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A conversation row to insert, id kept; `updated_at` starts at
/// `created_at` and each adopted message moves it (the touch trigger).
#[derive(Debug, Clone)]
pub struct AdoptedConversation {
    pub id: i64,
    pub user_id: Option<i64>,
    pub short_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub is_deleted: bool,
}

/// A message row to insert, id kept.
#[derive(Debug, Clone)]
pub struct AdoptedMessage {
    pub id: i64,
    pub conversation_id: i64,
    pub role: &'static str,
    pub content: String,
    pub user_message: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What one adoption did, as recorded in `legacy_adoptions`.
#[derive(Debug, Clone)]
pub struct AdoptionRecord {
    pub users: i64,
    pub conversations: i64,
    pub messages: i64,
    /// JSON object: reason → count.
    pub skipped: String,
    pub watermark: Ids,
    pub backup: Option<String>,
}

/// A transaction on whichever backend is live. On SQLite it is begun and
/// ended by hand on a pooled connection: sqlx's `Transaction` would start
/// waiting for the write lock (`BEGIN IMMEDIATE`) before the connection's
/// busy timeout could be raised for it.
pub enum LegacyTx {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs the same body on the transaction's connection, whichever backend it is.
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            LegacyTx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
            LegacyTx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

/// Opens the file read-only, for a dry run: no journal-mode switch, no
/// file created. `None` when there is no such file.
pub async fn open_read_only(target: &DatabaseTarget) -> Result<Option<Database>, sqlx::Error> {
    match target {
        DatabaseTarget::SqliteFile(path) => {
            if !path.exists() {
                return Ok(None);
            }
            let options = SqliteConnectOptions::new().filename(path).read_only(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            Ok(Some(Database::Sqlite(pool)))
        }
        DatabaseTarget::SqliteMemory => Ok(None),
        DatabaseTarget::Postgres(url) => {
            let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            Ok(Some(Database::Postgres(pool)))
        }
    }
}

/// Takes a consistent copy of a SQLite file next to it (`VACUUM INTO`);
/// returns its path. `None` for PostgreSQL and in-memory databases.
pub async fn backup_sqlite(db: &Database) -> Result<Option<PathBuf>, sqlx::Error> {
    let Database::Sqlite(pool) = db else {
        return Ok(None);
    };
    let file = pool.connect_options().get_filename().to_path_buf();
    if file.as_os_str().is_empty() || file == Path::new(":memory:") {
        return Ok(None);
    }
    // Servers starting together must not write the same copy (a second
    // VACUUM INTO into a file being written fails half-way): the name holds
    // the process id, and a count for a second copy in the same process.
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let pid = std::process::id();
    let mut attempt = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    loop {
        let mut name = file.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".before-eloquent-{stamp}-{pid}"));
        if attempt > 0 {
            name.push(format!("-{attempt}"));
        }
        let backup = file.with_file_name(name);
        let copied = sqlx::query("VACUUM INTO $1")
            .bind(backup.to_string_lossy().into_owned())
            .execute(pool)
            .await;
        match copied {
            Ok(_) => return Ok(Some(backup)),
            Err(sqlx::Error::Database(err))
                if attempt < 10 && err.message().contains("output file already exists") =>
            {
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

impl LegacyTx {
    /// Begins the adoption transaction. `write`: take the write lock (SQLite)
    /// or the adoption lock (PostgreSQL) up front; otherwise a read-only one.
    pub async fn begin(db: &Database, write: bool) -> Result<Self, sqlx::Error> {
        match db {
            Database::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                let begin = if write {
                    // Another server adopting the same file holds the write
                    // lock for as long as its adoption takes: wait for it.
                    set_busy_timeout(&mut conn, SQLITE_STARTUP_BUSY_TIMEOUT).await?;
                    "BEGIN IMMEDIATE"
                } else {
                    "BEGIN"
                };
                sqlx::query(begin).execute(&mut *conn).await?;
                Ok(Self::Sqlite(conn))
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if write {
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(ADOPTION_LOCK_KEY)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query("SET TRANSACTION READ ONLY")
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(Self::Postgres(tx))
            }
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(conn) => end_sqlite(conn, "COMMIT").await,
            Self::Postgres(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(conn) => end_sqlite(conn, "ROLLBACK").await,
            Self::Postgres(tx) => tx.rollback().await,
        }
    }

    /// The columns of `table` (unquoted name); `None` when it does not exist.
    async fn columns(&mut self, table: &str) -> Result<Option<Columns>, sqlx::Error> {
        let rows: Vec<(String, String)> = match self {
            Self::Sqlite(tx) => {
                sqlx::query_as("SELECT name, lower(type) FROM pragma_table_info($1)")
                    .bind(table)
                    .fetch_all(&mut **tx)
                    .await?
            }
            Self::Postgres(tx) => sqlx::query_as(
                "SELECT column_name::text, lower(data_type::text) FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
            )
            .bind(table)
            .fetch_all(&mut **tx)
            .await?,
        };
        Ok((!rows.is_empty()).then(|| Columns(rows.into_iter().collect())))
    }

    /// Which Python tables exist, and their columns.
    pub async fn legacy_schema(&mut self) -> Result<LegacySchema, sqlx::Error> {
        Ok(LegacySchema {
            user: self.columns("user").await?,
            conversation: self.columns("conversation").await?,
            message: self.columns("message").await?,
        })
    }

    /// Whether this server's tables exist yet (they do not before the first
    /// migration, which a dry run does not apply).
    pub async fn own_tables_exist(&mut self) -> Result<bool, sqlx::Error> {
        Ok(self.columns("users").await?.is_some())
    }

    /// The latest adoption recorded, if any.
    pub async fn previous_adoption(&mut self) -> Result<Option<PreviousAdoption>, sqlx::Error> {
        if self.columns("legacy_adoptions").await?.is_none() {
            return Ok(None);
        }
        let row: Option<(DateTime<Utc>, i64, i64, i64)> = on_tx!(self, conn => {
            sqlx::query_as(
                "SELECT (SELECT adopted_at FROM legacy_adoptions ORDER BY id DESC LIMIT 1), \
                 CAST(max(last_user_id) AS BIGINT), CAST(max(last_conversation_id) AS BIGINT), \
                 CAST(max(last_message_id) AS BIGINT) \
                 FROM legacy_adoptions HAVING count(*) > 0",
            )
            .fetch_optional(conn)
            .await?
        });
        Ok(row.map(
            |(adopted_at, user, conversation, message)| PreviousAdoption {
                adopted_at,
                watermark: Ids {
                    user,
                    conversation,
                    message,
                },
            },
        ))
    }

    /// The highest id of each existing Python table.
    pub async fn legacy_max_ids(&mut self, schema: &LegacySchema) -> Result<Ids, sqlx::Error> {
        let mut ids = Ids::default();
        for (table, present, slot) in [
            (USER_TABLE, schema.user.is_some(), &mut ids.user),
            (
                CONVERSATION_TABLE,
                schema.conversation.is_some(),
                &mut ids.conversation,
            ),
            (MESSAGE_TABLE, schema.message.is_some(), &mut ids.message),
        ] {
            if present {
                let sql = format!("SELECT CAST(COALESCE(max(id), 0) AS BIGINT) FROM {table}");
                *slot = on_tx!(self, conn => {
                    sqlx::query_scalar::<_, i64>(&sql).fetch_one(conn).await?
                });
            }
        }
        Ok(ids)
    }

    /// This server's rows that the Python rows above `watermark` would collide
    /// with: same id, or (users) the same address once lower-cased. At most
    /// five of each, for the message.
    pub async fn collisions(
        &mut self,
        schema: &LegacySchema,
        watermark: &Ids,
    ) -> Result<Collisions, sqlx::Error> {
        let mut found = Collisions::default();
        let id_checks = [
            (
                "users",
                USER_TABLE,
                schema.user.is_some(),
                watermark.user,
                &mut found.user_ids,
            ),
            (
                "conversations",
                CONVERSATION_TABLE,
                schema.conversation.is_some(),
                watermark.conversation,
                &mut found.conversation_ids,
            ),
            (
                "messages",
                MESSAGE_TABLE,
                schema.message.is_some(),
                watermark.message,
                &mut found.message_ids,
            ),
        ];
        for (ours, theirs, present, after, slot) in id_checks {
            if !present {
                continue;
            }
            let sql = format!(
                "SELECT o.id FROM {ours} o JOIN {theirs} t ON o.id = t.id WHERE t.id > $1 ORDER BY o.id LIMIT 5"
            );
            *slot = on_tx!(self, conn => {
                sqlx::query_scalar::<_, i64>(&sql).bind(after).fetch_all(conn).await?
            });
        }
        if schema
            .user
            .as_ref()
            .is_some_and(|columns| columns.has("email"))
        {
            let after = watermark.user;
            found.emails = on_tx!(self, conn => {
                sqlx::query_scalar::<_, String>(
                    "SELECT o.email FROM users o JOIN \"user\" t ON o.email = lower(trim(t.email)) \
                     WHERE t.id > $1 ORDER BY o.id LIMIT 5",
                )
                .bind(after)
                .fetch_all(conn)
                .await?
            });
        }
        Ok(found)
    }

    /// The ids of this server's users at or below `up_to` (users adopted earlier).
    pub async fn own_user_ids(&mut self, up_to: i64) -> Result<Vec<i64>, sqlx::Error> {
        Ok(on_tx!(self, conn => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE id <= $1")
                .bind(up_to)
                .fetch_all(conn)
                .await?
        }))
    }

    /// The ids of this server's conversations at or below `up_to`.
    pub async fn own_conversation_ids(&mut self, up_to: i64) -> Result<Vec<i64>, sqlx::Error> {
        Ok(on_tx!(self, conn => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM conversations WHERE id <= $1")
                .bind(up_to)
                .fetch_all(conn)
                .await?
        }))
    }

    /// The Python users above `after`, in id order.
    pub async fn legacy_users(
        &mut self,
        columns: &Columns,
        after: i64,
    ) -> Result<Vec<LegacyUser>, sqlx::Error> {
        let sql = format!(
            "SELECT CAST(id AS BIGINT) AS id, {email} AS email, {name} AS name, \
             {password} AS password, {created_at} AS created_at \
             FROM {USER_TABLE} WHERE id > $1 ORDER BY id",
            email = text_or_null(columns, "email"),
            name = text_or_null(columns, "name"),
            password = text_or_null(columns, "password"),
            created_at = timestamp_expr(self, columns),
        );
        Ok(on_tx!(self, conn => {
            sqlx::query_as::<_, LegacyUser>(&sql).bind(after).fetch_all(conn).await?
        }))
    }

    /// The Python conversations above `after`, in id order.
    pub async fn legacy_conversations(
        &mut self,
        columns: &Columns,
        after: i64,
    ) -> Result<Vec<LegacyConversation>, sqlx::Error> {
        let user_id = if columns.has("user_id") {
            "CAST(user_id AS BIGINT)"
        } else {
            "CAST(NULL AS BIGINT)"
        };
        // SQLite stores booleans as 0/1 (or whatever a hand-made row holds);
        // CASE reads both backends' truth the same way.
        let is_deleted = if columns.has("is_deleted") {
            "CAST(CASE WHEN is_deleted THEN 1 ELSE 0 END AS BIGINT)"
        } else {
            "CAST(0 AS BIGINT)"
        };
        let sql = format!(
            "SELECT CAST(id AS BIGINT) AS id, {user_id} AS user_id, {short_name} AS short_name, \
             {created_at} AS created_at, {is_deleted} AS is_deleted \
             FROM {CONVERSATION_TABLE} WHERE id > $1 ORDER BY id",
            short_name = text_or_null(columns, "short_name"),
            created_at = timestamp_expr(self, columns),
        );
        Ok(on_tx!(self, conn => {
            sqlx::query_as::<_, LegacyConversation>(&sql).bind(after).fetch_all(conn).await?
        }))
    }

    /// Up to `limit` Python messages above `after`, in id order (one page:
    /// message tables are the big ones).
    pub async fn legacy_messages(
        &mut self,
        columns: &Columns,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LegacyMessage>, sqlx::Error> {
        let conversation_id = if columns.has("conversation_id") {
            "CAST(conversation_id AS BIGINT)"
        } else {
            "CAST(NULL AS BIGINT)"
        };
        let sql = format!(
            "SELECT CAST(id AS BIGINT) AS id, {conversation_id} AS conversation_id, \
             {role} AS role, {content} AS content, {user_message} AS user_message, \
             {created_at} AS created_at \
             FROM {MESSAGE_TABLE} WHERE id > $1 ORDER BY id LIMIT $2",
            role = text_or_null(columns, "role"),
            content = text_or_null(columns, "content"),
            user_message = text_or_null(columns, "user_message"),
            created_at = timestamp_expr(self, columns),
        );
        Ok(on_tx!(self, conn => {
            sqlx::query_as::<_, LegacyMessage>(&sql)
                .bind(after)
                .bind(limit)
                .fetch_all(conn)
                .await?
        }))
    }

    pub async fn insert_users(&mut self, users: &[AdoptedUser]) -> Result<(), sqlx::Error> {
        for batch in users.chunks(INSERT_BATCH) {
            on_tx!(self, conn => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO users (id, email, name, password_hash, created_at) ",
                );
                query.push_values(batch, |mut row, user| {
                    row.push_bind(user.id)
                        .push_bind(user.email.clone())
                        .push_bind(user.name.clone())
                        .push_bind(user.password_hash.clone())
                        .push_bind(user.created_at);
                });
                query.build().execute(conn).await?;
            });
        }
        Ok(())
    }

    pub async fn insert_conversations(
        &mut self,
        conversations: &[AdoptedConversation],
    ) -> Result<(), sqlx::Error> {
        for batch in conversations.chunks(INSERT_BATCH) {
            on_tx!(self, conn => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO conversations (id, user_id, short_name, created_at, updated_at, is_deleted) ",
                );
                query.push_values(batch, |mut row, conversation| {
                    row.push_bind(conversation.id)
                        .push_bind(conversation.user_id)
                        .push_bind(conversation.short_name.clone())
                        .push_bind(conversation.created_at)
                        .push_bind(conversation.created_at)
                        .push_bind(conversation.is_deleted);
                });
                query.build().execute(conn).await?;
            });
        }
        Ok(())
    }

    pub async fn insert_messages(
        &mut self,
        messages: &[AdoptedMessage],
    ) -> Result<(), sqlx::Error> {
        for batch in messages.chunks(INSERT_BATCH) {
            on_tx!(self, conn => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO messages (id, conversation_id, role, content, user_message, created_at) ",
                );
                query.push_values(batch, |mut row, message| {
                    row.push_bind(message.id)
                        .push_bind(message.conversation_id)
                        .push_bind(message.role)
                        .push_bind(message.content.clone())
                        .push_bind(message.user_message.clone())
                        .push_bind(message.created_at);
                });
                query.build().execute(conn).await?;
            });
        }
        Ok(())
    }

    /// Names adopted conversations that had no name (id, title).
    pub async fn name_conversations(&mut self, names: &[(i64, String)]) -> Result<(), sqlx::Error> {
        for (id, name) in names {
            on_tx!(self, conn => {
                sqlx::query("UPDATE conversations SET short_name = $1 WHERE id = $2")
                    .bind(name)
                    .bind(id)
                    .execute(conn)
                    .await?;
            });
        }
        Ok(())
    }

    /// Moves each table's id generator past `ids` (and past its own rows),
    /// so new rows get ids after every Python row, adopted or not.
    pub async fn advance_id_generators(&mut self, ids: &Ids) -> Result<(), sqlx::Error> {
        for (table, floor) in [
            ("users", ids.user),
            ("conversations", ids.conversation),
            ("messages", ids.message),
        ] {
            if floor < 1 {
                continue;
            }
            match self {
                Self::Sqlite(tx) => {
                    // AUTOINCREMENT keeps its high-water mark in sqlite_sequence.
                    sqlx::query(
                        "INSERT INTO sqlite_sequence (name, seq) SELECT $1, 0 \
                         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = $1)",
                    )
                    .bind(table)
                    .execute(&mut **tx)
                    .await?;
                    sqlx::query("UPDATE sqlite_sequence SET seq = max(seq, $2) WHERE name = $1")
                        .bind(table)
                        .bind(floor)
                        .execute(&mut **tx)
                        .await?;
                }
                Self::Postgres(tx) => {
                    let sql = format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                         GREATEST((SELECT COALESCE(max(id), 0) FROM {table}), $1))"
                    );
                    sqlx::query(&sql).bind(floor).execute(&mut **tx).await?;
                }
            }
        }
        Ok(())
    }

    /// Records an adoption (the watermark of the next one).
    pub async fn record(&mut self, record: &AdoptionRecord) -> Result<(), sqlx::Error> {
        let record = record.clone();
        on_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO legacy_adoptions (adopted_at, users, conversations, messages, skipped, \
                 last_user_id, last_conversation_id, last_message_id, backup) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(Utc::now())
            .bind(record.users)
            .bind(record.conversations)
            .bind(record.messages)
            .bind(record.skipped)
            .bind(record.watermark.user)
            .bind(record.watermark.conversation)
            .bind(record.watermark.message)
            .bind(record.backup)
            .execute(conn)
            .await?;
        });
        Ok(())
    }
}

/// Ends a hand-made SQLite transaction; a connection where that fails is
/// closed rather than returned to the pool mid-transaction.
async fn end_sqlite(mut conn: PoolConnection<Sqlite>, statement: &str) -> Result<(), sqlx::Error> {
    let ended = sqlx::query(statement).execute(&mut *conn).await;
    let reset = set_busy_timeout(&mut conn, SQLITE_BUSY_TIMEOUT).await;
    if ended.is_err() || reset.is_err() {
        let _ = conn.close().await;
    }
    ended.and(reset).map(|_| ())
}

/// `CAST(column AS TEXT)`, or NULL when the table lacks the column.
fn text_or_null(columns: &Columns, name: &str) -> String {
    if columns.has(name) {
        format!("CAST({name} AS TEXT)")
    } else {
        "CAST(NULL AS TEXT)".to_string()
    }
}

/// `created_at` as text the adoption parses: as stored on SQLite; on
/// PostgreSQL a naive UTC timestamp's text, with `timestamptz` converted to
/// UTC first (so the session's time zone does not matter).
fn timestamp_expr(tx: &LegacyTx, columns: &Columns) -> &'static str {
    match (tx, columns.declared_type("created_at")) {
        (_, None) => "CAST(NULL AS TEXT)",
        (LegacyTx::Postgres(_), Some("timestamp with time zone")) => {
            "CAST(created_at AT TIME ZONE 'UTC' AS TEXT)"
        }
        _ => "CAST(created_at AS TEXT)",
    }
}
