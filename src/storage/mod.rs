//! Storage: the only place that writes SQL. One module per table.
//!
//! `Database` is an enum over a SQLite and a PostgreSQL pool. Every query is
//! written once with `$N` placeholders (sqlx maps them on SQLite) and run on
//! whichever backend is live through [`on_reader!`] or [`on_writer!`], so
//! both backends keep native column types and compile-time-checked Rust
//! types. On a SQLite file, reads use connections kept outside sqlx's pool
//! ([`readers`]) and writes go to one writer per file that commits the
//! writes queued together at once ([`writer`]).

pub mod conversations;
pub mod feedback;
pub mod knowledge;
pub mod legacy;
pub mod messages;
pub mod outbox;
pub(crate) mod readers;
pub mod turns;
pub mod users;
pub(crate) mod writer;

use std::str::FromStr;
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

/// Runs a read against whichever backend is live and evaluates to its
/// `Result<_, sqlx::Error>`; `$conn` is bound to a `&mut SqliteConnection`
/// (see [`readers`]) or the `&PgPool`, and the body is type-checked for both.
macro_rules! on_reader {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::storage::Database::Sqlite(pool) => {
                match $crate::storage::readers::acquire(pool).await {
                    Ok(mut reader) => {
                        let $conn = &mut *reader;
                        let result: Result<_, sqlx::Error> = async move { $body }.await;
                        reader.keep_if_sound(&result);
                        result
                    }
                    Err(err) => Err(err),
                }
            }
            $crate::storage::Database::Postgres(pool) => {
                let $conn = pool;
                async move { $body }.await
            }
        }
    };
}
pub(crate) use on_reader;

/// Runs a write against whichever backend is live and evaluates to its
/// `Result<_, sqlx::Error>`; `$conn` is bound to the writing connection
/// (`&mut SqliteConnection` or `&mut PgConnection`), and the body is
/// type-checked for both. On SQLite the body runs on the file's writer (see
/// [`writer`]), so it must own what it uses.
macro_rules! on_writer {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::storage::Database::Sqlite(pool) => {
                $crate::storage::writer::write(pool, move |$conn| Box::pin(async move { $body }))
                    .await
            }
            $crate::storage::Database::Postgres(pool) => match pool.acquire().await {
                Ok(mut connection) => {
                    let $conn = &mut *connection;
                    async { $body }.await
                }
                Err(err) => Err(err),
            },
        }
    };
}
pub(crate) use on_writer;

/// Whether a connection that returned `err` can run the next query: SQLite
/// answered (a constraint, no row), rather than the connection or its worker
/// thread failing.
pub(crate) fn connection_still_usable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(_) | sqlx::Error::RowNotFound)
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

/// How long a SQLite statement waits for another connection's write lock.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The same wait at startup, when another server on the same file may be
/// migrating or adopting the Python service's tables (seconds, not minutes:
/// see BENCHMARKS.md section 7); longer than that means something is wrong.
pub(crate) const SQLITE_STARTUP_BUSY_TIMEOUT: Duration = Duration::from_secs(600);

/// Sets how long statements on `conn` wait for the write lock.
pub(crate) async fn set_busy_timeout(
    conn: &mut sqlx::SqliteConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let sql = format!("PRAGMA busy_timeout = {}", timeout.as_millis());
    sqlx::query(&sql).execute(conn).await.map(|_| ())
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
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    // Room for a whole history read: with the default (50) the
                    // connection's thread stalls mid-result until the reader catches up.
                    .row_buffer_size(256)
                    // The WAL file keeps its largest size unless told otherwise
                    // (measured: 403 MB after one bench run against a 132 MB
                    // database); cut back to 64 MiB whenever it restarts.
                    .pragma("journal_size_limit", "67108864")
                    .foreign_keys(true);
                // Queries run on connections of `readers` and `writer`; the
                // pool itself only applies the migrations, so its connection
                // closes soon after startup.
                // Opening switches the file to WAL, which needs it to itself
                // for a moment: a second server opening a rollback-journal
                // file (the Python service's) at that moment gets SQLITE_BUSY
                // at once, the busy handler not being called for it (CI: 1
                // run in about 20 of the two-servers test). Try again.
                let mut attempts = 0;
                let pool = loop {
                    let opened = SqlitePoolOptions::new()
                        .max_connections(1)
                        .idle_timeout(Duration::from_secs(30))
                        .acquire_timeout(settings.acquire_timeout)
                        .test_before_acquire(false)
                        .connect_with(options.clone())
                        .await;
                    match opened {
                        Err(sqlx::Error::Database(err))
                            if err.code().as_deref() == Some("5") && attempts < 10 =>
                        {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(20 * attempts)).await;
                        }
                        other => break other?,
                    }
                };
                let sqlite_readers = settings.max_connections.min(sqlite_connection_cap());
                writer::register(&pool);
                readers::register(&pool, sqlite_readers as usize, settings.acquire_timeout);
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

    /// (connections in use, connections open and idle), for the metrics:
    /// SQLite's reader connections, or the PostgreSQL pool.
    pub fn connection_usage(&self) -> (usize, usize) {
        match self {
            Self::Sqlite(pool) => readers::usage(pool),
            Self::Postgres(pool) => {
                let idle = pool.num_idle();
                ((pool.size() as usize).saturating_sub(idle), idle)
            }
        }
    }

    /// Applies the pending migrations of the live backend.
    /// Refreshes SQLite's planner statistics where they are missing or
    /// stale (`PRAGMA optimize`, at most 1,000 rows read per index): the
    /// analytics queries need them to skip-scan (see migration 0009).
    /// PostgreSQL's autovacuum does this by itself.
    pub async fn optimize(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::raw_sql("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002;")
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
            Self::Postgres(_) => Ok(()),
        }
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Self::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                set_busy_timeout(&mut conn, SQLITE_STARTUP_BUSY_TIMEOUT).await?;
                // sqlx locks migrations on PostgreSQL only: two servers
                // starting at once on one SQLite file both apply a migration,
                // and the slower one fails: recording it (unique violation),
                // running it (`duplicate column name`: SQLite has no ADD
                // COLUMN IF NOT EXISTS), or turning its deferred transaction
                // into a writer after the other's commit (SQLITE_BUSY without
                // waiting: the busy handler is not called for that). Its
                // transaction, DDL included, rolled back: run again, and it
                // finds the migrations applied. A migration that is really
                // broken fails every attempt and its error is returned.
                let mut attempts = 0;
                let result = loop {
                    match SQLITE_MIGRATOR.run(&mut *conn).await {
                        Err(
                            sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(_))
                            | sqlx::migrate::MigrateError::ExecuteMigration(
                                sqlx::Error::Database(_),
                                _,
                            ),
                        ) if attempts < 10 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(20 * attempts)).await;
                        }
                        other => break other,
                    }
                };
                set_busy_timeout(&mut conn, SQLITE_BUSY_TIMEOUT).await?;
                result
            }
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
            writer::close(pool).await;
            readers::close(pool).await;
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

    fn answer(conversation_id: i64, content: &str) -> NewMessage<'_> {
        NewMessage::answer(conversation_id, content)
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
            sources: None,
            grounded: None,
            stopped: false,
            turn_id: None,
            client_message_id: None,
            client_key: None,
            agent: None,
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
    async fn concurrent_writes_share_commits_and_a_refused_one_undoes_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(&DatabaseTarget::SqliteFile(dir.path().join("chat.db"))).await;
        let conversation_id = write_a_conversation(&db).await;
        let shared_before = writer::shared_commits();
        let messages = (0..200).map(|n| {
            let db = db.clone();
            async move {
                let content = format!("message {n}");
                messages::insert(&db, answer(conversation_id, &content)).await
            }
        });
        // Signups racing for one address: SQLite refuses all but one.
        let signups = (0..50).map(|_| users::insert(&db, "race@example.com", "R", "hash"));
        let (stored, signed_up) = tokio::join!(
            futures::future::join_all(messages),
            futures::future::join_all(signups)
        );
        let mut ids: Vec<i64> = stored
            .into_iter()
            .map(|id| id.expect("message stored"))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 200, "every write has its own row");
        let created = signed_up
            .iter()
            .filter(|outcome| matches!(outcome, Ok(InsertOutcome::Created(_))))
            .count();
        let taken = signed_up
            .iter()
            .filter(|outcome| matches!(outcome, Ok(InsertOutcome::EmailTaken)))
            .count();
        assert_eq!((created, taken), (1, 49));
        let history = messages::list(&db, conversation_id).await.expect("list");
        assert_eq!(
            history.len(),
            202,
            "system message, question and 200 answers"
        );
        assert!(
            writer::shared_commits() > shared_before,
            "250 writes queued at once were committed one by one"
        );
        db.close().await;
    }

    #[tokio::test]
    async fn a_write_after_close_fails_instead_of_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(&DatabaseTarget::SqliteFile(dir.path().join("chat.db"))).await;
        let conversation_id = write_a_conversation(&db).await;
        db.close().await;
        let late = answer(conversation_id, "too late");
        let outcome = tokio::time::timeout(Duration::from_secs(5), messages::insert(&db, late))
            .await
            .expect("answered, not stuck");
        assert!(outcome.is_err());
    }

    #[tokio::test]
    async fn closing_a_second_pool_on_the_same_file_leaves_the_first_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = DatabaseTarget::SqliteFile(dir.path().join("chat.db"));
        let db = open(&target).await;
        let conversation_id = write_a_conversation(&db).await;
        let inspector = open(&target).await;
        assert_eq!(
            messages::list(&inspector, conversation_id)
                .await
                .expect("list")
                .len(),
            2
        );
        inspector.close().await;
        assert!(
            messages::list(&inspector, conversation_id).await.is_err(),
            "closed pool reads"
        );

        let answer = answer(conversation_id, "still here");
        messages::insert(&db, answer)
            .await
            .expect("write after the other pool closed");
        assert_eq!(
            messages::list(&db, conversation_id)
                .await
                .expect("list")
                .len(),
            3
        );
        db.close().await;
    }

    #[tokio::test]
    async fn an_in_memory_database_writes_through_its_only_connection() {
        let db = open(&DatabaseTarget::SqliteMemory).await;
        let conversation_id = write_a_conversation(&db).await;
        let history = messages::list(&db, conversation_id).await.expect("list");
        assert_eq!(history.len(), 2, "system message and question");
    }
}
