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

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

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

/// Held while writing to SQLite; `None` on PostgreSQL.
pub(crate) type WriteGuard = Option<tokio::sync::OwnedMutexGuard<()>>;

/// Waits for this process's turn to write to the SQLite file (PostgreSQL: no wait).
///
/// SQLite has one writer at a time. A second writer gets `SQLITE_BUSY` and
/// retries inside SQLite's busy handler, which sleeps (1, 2, 5, 10, … 100 ms)
/// while holding its pool connection: under concurrent turns that means
/// stalls of tens of milliseconds and, at worst, an exhausted pool. Queuing
/// here instead wakes each writer as soon as the previous one commits, and
/// holds no connection while waiting. One gate per database file.
pub(crate) async fn write_gate(db: &Database) -> WriteGuard {
    static GATES: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Mutex::default);
    let Database::Sqlite(pool) = db else {
        return None;
    };
    let file = pool.connect_options().get_filename().to_path_buf();
    let gate = GATES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(file)
        .or_default()
        .clone();
    Some(gate.lock_owned().await)
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
        on_pool!(self, pool => pool.close().await)
    }
}
