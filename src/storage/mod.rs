//! Storage: the only place that writes SQL. One module per table.
//!
//! `Database` is an enum over a SQLite and a PostgreSQL pool. Every query is
//! written once with `$N` placeholders (sqlx maps them on SQLite) and run on
//! whichever pool is live through [`on_pool!`], so both backends keep native
//! column types and compile-time-checked Rust types.

pub mod conversations;
pub mod messages;
pub mod users;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, PgPool, Sqlite, SqlitePool};

use crate::config::DatabaseTarget;

/// A connection pool on one of the two supported backends.
#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same expression against whichever pool is live; `$pool` is bound
/// to `&SqlitePool` or `&PgPool` and the expression is type-checked for both.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::storage::Database::Sqlite($pool) => $body,
            $crate::storage::Database::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Runs a write against whichever backend is live; `$conn` is bound to the
/// writing connection (`&mut SqliteConnection` or `&mut PgConnection`) and
/// the body, type-checked for both, evaluates to a `Result<_, sqlx::Error>`
/// (`?` inside it ends the body, not the calling function).
macro_rules! on_writer {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::storage::Database::Sqlite(pool) => {
                let mut writer = $crate::storage::sqlite_writer(pool).await?;
                let $conn = writer.connection().await?;
                let result: Result<_, sqlx::Error> = async { $body }.await;
                writer.keep_if_sound(&result);
                result
            }
            $crate::storage::Database::Postgres(pool) => {
                let mut connection = pool.acquire().await?;
                let $conn = &mut *connection;
                async { $body }.await
            }
        }
    };
}
pub(crate) use on_writer;

/// The one connection that writes to a SQLite file, and whether the file
/// gets a connection of its own for writing.
#[derive(Default)]
pub(crate) struct WriterSlot {
    dedicated: bool,
    connection: Option<SqliteConnection>,
}

/// A SQLite writer's turn: the only one writing to its file until dropped.
pub(crate) struct SqliteWriter {
    slot: tokio::sync::OwnedMutexGuard<WriterSlot>,
    pooled: Option<PoolConnection<Sqlite>>,
    pool: SqlitePool,
}

impl SqliteWriter {
    /// The connection to write on: the file's own writing connection (opened
    /// on first use), or one from the pool for an in-memory database.
    pub(crate) async fn connection(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        if !self.slot.dedicated {
            let pooled = match self.pooled.take() {
                Some(pooled) => pooled,
                None => self.pool.acquire().await?,
            };
            return Ok(&mut **self.pooled.insert(pooled));
        }
        let connection = match self.slot.connection.take() {
            Some(connection) => connection,
            None => SqliteConnection::connect_with(&self.pool.connect_options()).await?,
        };
        Ok(self.slot.connection.insert(connection))
    }

    /// Drops the writing connection after an error that was not SQLite's
    /// answer to a statement (a broken connection, a crashed worker thread):
    /// the next writer opens a fresh one.
    pub(crate) fn keep_if_sound<T>(&mut self, result: &Result<T, sqlx::Error>) {
        if let Err(err) = result
            && !matches!(err, sqlx::Error::Database(_) | sqlx::Error::RowNotFound)
        {
            self.slot.connection = None;
        }
    }
}

/// Waits for this process's turn to write to a SQLite file.
///
/// SQLite has one writer at a time. A second writer gets `SQLITE_BUSY` and
/// retries inside SQLite's busy handler, which sleeps (1, 2, 5, 10, … 100 ms)
/// while holding its pool connection: under concurrent turns that means
/// stalls of tens of milliseconds and, at worst, an exhausted pool. Queuing
/// here instead wakes each writer as soon as the previous one commits, and
/// holds no connection while waiting.
///
/// Writes go through one connection of their own, outside the pool: its page
/// cache stays valid between writes (SQLite drops a connection's cache
/// whenever another connection has written the file, so writers taking turns
/// on pool connections re-read the b-tree pages of every table they touch),
/// and no pool acquire and release surround each statement.
pub(crate) async fn sqlite_writer(pool: &SqlitePool) -> Result<SqliteWriter, sqlx::Error> {
    let slot = writer_slot(pool).lock_owned().await;
    Ok(SqliteWriter {
        slot,
        pooled: None,
        pool: pool.clone(),
    })
}

/// One writer slot per database file, shared by every pool on that file.
fn writer_slot(pool: &SqlitePool) -> Arc<tokio::sync::Mutex<WriterSlot>> {
    static SLOTS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<WriterSlot>>>>> =
        LazyLock::new(Mutex::default);
    let file = pool.connect_options().get_filename().to_path_buf();
    SLOTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(file)
        .or_default()
        .clone()
}

/// Most SQLite connections worth having: two per core. Each is a thread of
/// its own doing short in-process work, and writers take turns anyway, so
/// more only adds context switches. Measured with `bench --sections 1` on 2
/// cores (two runs each), 4 connections against 16: conversation list
/// 2,346 / 2,422 against 1,214 / 1,036 requests/s, 50-message history
/// 5,967 / 5,899 against 4,996 / 5,424, one-shot turns 563 / 519 against 525 / 525.
fn sqlite_connection_cap() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(cores * 2).unwrap_or(u32::MAX).max(2)
}

/// Pool settings read from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
}

impl PoolSettings {
    /// Small pools for tools and tests.
    pub fn small(acquire_timeout: Duration) -> Self {
        Self {
            max_connections: 2,
            acquire_timeout,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
        }
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Database {
    /// Opens the pool (creating the SQLite file when missing).
    pub async fn connect(
        target: &DatabaseTarget,
        settings: PoolSettings,
    ) -> Result<Self, sqlx::Error> {
        match target {
            DatabaseTarget::SqliteFile(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    // WAL + busy timeout: concurrent writers wait instead of failing "database is locked".
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    // Room for a whole history read: with the default (50) the
                    // connection's thread stalls mid-result until the reader catches up.
                    .row_buffer_size(256)
                    // The WAL file keeps its largest size unless told otherwise
                    // (measured: 403 MB after one bench run against a 132 MB
                    // database); cut back to 64 MiB whenever it restarts.
                    .pragma("journal_size_limit", "67108864")
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(settings.max_connections.min(sqlite_connection_cap()))
                    .acquire_timeout(settings.acquire_timeout)
                    // A SQLite connection is a local file handle: the default
                    // ping before every acquire only doubles the round trips to
                    // the connection's worker thread.
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await?;
                writer_slot(&pool).lock().await.dedicated = true;
                Ok(Self::Sqlite(pool))
            }
            DatabaseTarget::SqliteMemory => {
                let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
                // Every in-memory connection is its own database: keep exactly one, forever.
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(settings.acquire_timeout)
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
            DatabaseTarget::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .idle_timeout(settings.idle_timeout)
                    .max_lifetime(settings.max_lifetime)
                    // A restarted server leaves dead connections in the pool: check before use.
                    .test_before_acquire(true)
                    .connect_with(options)
                    .await?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    /// Applies the pending migrations of the live backend.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Self::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await,
            Self::Postgres(pool) => POSTGRES_MIGRATOR.run(pool).await,
        }
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection (graceful shutdown).
    pub async fn close(&self) {
        if let Self::Sqlite(pool) = self {
            let writer = writer_slot(pool).lock().await.connection.take();
            if let Some(writer) = writer
                && let Err(err) = writer.close().await
            {
                tracing::warn!(error = %err, "closing the SQLite writing connection failed");
            }
        }
        on_pool!(self, pool => pool.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::messages::{self, NewMessage, Role};
    use crate::storage::users::{self, InsertOutcome};

    async fn open(target: &DatabaseTarget) -> Database {
        let db = Database::connect(target, PoolSettings::small(Duration::from_secs(5)))
            .await
            .expect("open database");
        db.migrate().await.expect("migrate");
        db
    }

    /// Writes one of everything, including a refused one; returns the conversation id.
    async fn write_a_conversation(db: &Database) -> i64 {
        let user = match users::insert(db, "a@example.com", "A", "hash").await {
            Ok(InsertOutcome::Created(user)) => user,
            other => panic!("first insert: {other:?}"),
        };
        // A statement SQLite refuses leaves the writing connection usable.
        assert!(matches!(
            users::insert(db, "a@example.com", "A", "hash").await,
            Ok(InsertOutcome::EmailTaken)
        ));
        let conversation = conversations::create(db, Some(user.id), "first", "system")
            .await
            .expect("create conversation");
        let question = NewMessage {
            conversation_id: conversation.id,
            role: Role::User,
            content: "question with context",
            user_message: Some("question"),
        };
        messages::insert(db, question)
            .await
            .expect("insert message");
        conversation.id
    }

    #[tokio::test]
    async fn writes_on_a_file_reach_the_pool_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = DatabaseTarget::SqliteFile(dir.path().join("chat.db"));
        let db = open(&target).await;
        let conversation_id = write_a_conversation(&db).await;
        // Read through the pool, i.e. another connection than the writer's.
        let history = messages::list(&db, conversation_id).await.expect("list");
        assert_eq!(history.len(), 2, "system message and question");
        assert!(
            conversations::soft_delete(&db, conversation_id)
                .await
                .expect("delete")
        );
        db.close().await;

        let reopened = open(&target).await;
        let record = conversations::find(&reopened, conversation_id)
            .await
            .expect("find")
            .expect("conversation kept");
        assert!(record.is_deleted);
        // The writer of the closed pool was closed with it: a new one is opened.
        assert!(
            !conversations::soft_delete(&reopened, conversation_id)
                .await
                .expect("delete")
        );
        reopened.close().await;
    }

    #[tokio::test]
    async fn an_in_memory_database_writes_through_its_only_connection() {
        let db = open(&DatabaseTarget::SqliteMemory).await;
        let conversation_id = write_a_conversation(&db).await;
        let history = messages::list(&db, conversation_id).await.expect("list");
        assert_eq!(history.len(), 2, "system message and question");
    }
}
