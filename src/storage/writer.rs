//! The one connection that writes to a SQLite file, with group commit.
//!
//! SQLite has one writer at a time, and what a write costs is mostly its
//! commit: every page the transaction touched is appended to the WAL (two
//! `write` calls per page), and every thousand pages a checkpoint copies them
//! into the database file. Each file gets a task that owns a connection of
//! its own and runs the writes queued for it: one alone commits on its own;
//! several queued at once (concurrent turns) run inside one transaction and
//! share its commit. Each caller gets its answer only after the commit that
//! made its write durable.
//!
//! A connection of its own, outside the pool, also keeps its page cache
//! valid between writes (SQLite drops a connection's cache whenever another
//! connection has written the file), and no pool acquire and release (with
//! sqlx's ping on release) surround each write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use futures::future::BoxFuture;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

/// Most writes that share one commit: bounds how long the first of them
/// waits for the others (tens of microseconds each).
const MAX_WRITES_PER_COMMIT: usize = 64;

/// Commits shared by more than one write since startup (tests check that
/// concurrent writes do share them).
static SHARED_COMMITS: AtomicU64 = AtomicU64::new(0);

/// How many commits so far were shared by several writes.
#[cfg(test)]
pub(crate) fn shared_commits() -> u64 {
    SHARED_COMMITS.load(Ordering::Relaxed)
}

/// Hands a write's outcome to its caller once its commit is known.
type Deliver = Box<dyn FnOnce(CommitOutcome) + Send>;

/// A write that ran: whether its connection is still sound, whether its
/// failure may have ended the transaction it ran in, and the handover.
struct Ran {
    sound: bool,
    may_have_ended_transaction: bool,
    deliver: Deliver,
}

/// One queued write: runs its statements; the commit comes later.
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Ran> + Send>;

/// What a file's writer is asked to do.
enum Command {
    Write(Job),
    /// Close the writing connection and stop (graceful shutdown).
    Close(oneshot::Sender<()>),
}

/// How the transaction holding a write ended.
enum CommitOutcome {
    Committed,
    /// The commit failed: the write is not stored.
    Failed(String),
}

/// Runs `write` on the writing connection of the pool's file and returns its
/// result once it is committed. In-memory databases (one connection, see
/// `Database::connect`) write on their pool connection.
///
/// A write that fails with SQLite's answer to a statement (a constraint, say)
/// is undone alone, as SQLite undoes a failed statement; writes that need
/// several statements to be all-or-nothing open their own (nested)
/// transaction, which becomes a savepoint when they share a commit. A write
/// failing in a way that may roll back the whole transaction (a full disk)
/// takes the writes that shared it before it down with it: they are
/// answered with an error and not stored.
pub(crate) async fn write<T, F>(pool: &SqlitePool, write: F) -> Result<T, sqlx::Error>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>
        + Send
        + 'static,
{
    if pool.is_closed() {
        return Err(sqlx::Error::PoolClosed);
    }
    let Some(writer) = writer_of(pool) else {
        let mut connection = pool.acquire().await?;
        return write(&mut connection).await;
    };
    let (answer, answered) = oneshot::channel();
    let job: Job = Box::new(move |connection| {
        Box::pin(async move {
            let result = write(connection).await;
            let failure = result.as_ref().err();
            let sound = failure.is_none_or(super::connection_still_usable);
            let may_have_ended_transaction = failure.is_some_and(may_end_the_transaction);
            let deliver: Deliver = Box::new(move |outcome| {
                let result = match outcome {
                    CommitOutcome::Committed => result,
                    CommitOutcome::Failed(why) => Err(sqlx::Error::Protocol(why)),
                };
                // The caller may have gone (request cancelled): the write stays done.
                let _ = answer.send(result);
            });
            Ran {
                sound,
                may_have_ended_transaction,
                deliver,
            }
        })
    });
    if let Err(mpsc::error::SendError(command)) = writer.send(Command::Write(job)) {
        // That writer has just stopped (closed by another pool on the same
        // file): its successor takes the write.
        let successor = writer_of(pool).ok_or(sqlx::Error::PoolClosed)?;
        successor
            .send(command)
            .map_err(|_| sqlx::Error::PoolClosed)?;
    }
    // Dropped unanswered when the batch never ran (no connection, closed pool).
    answered.await.map_err(|_| sqlx::Error::WorkerCrashed)?
}

/// Files whose writes go through a writer of their own, and how to reach it.
static WRITERS: LazyLock<Mutex<HashMap<PathBuf, Option<mpsc::UnboundedSender<Command>>>>> =
    LazyLock::new(Mutex::default);

/// Gives the pool's file a writer of its own (file databases).
pub(crate) fn register(pool: &SqlitePool) {
    let file = pool.connect_options().get_filename().to_path_buf();
    WRITERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(file, None);
}

/// The writer of a registered file, started on first use (and again when
/// the runtime that ran the previous one has ended, as between tests).
fn writer_of(pool: &SqlitePool) -> Option<mpsc::UnboundedSender<Command>> {
    let options = pool.connect_options();
    let file = options.get_filename();
    let mut writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
    let writer = writers.get_mut(file)?;
    if let Some(running) = writer.as_ref().filter(|running| !running.is_closed()) {
        return Some(running.clone());
    }
    let (commands, queue) = mpsc::unbounded_channel();
    tokio::spawn(run_writer(pool.clone(), queue));
    *writer = Some(commands.clone());
    Some(commands)
}

/// Closes the writing connection of the pool's file, if it has one.
pub(crate) async fn close(pool: &SqlitePool) {
    let options = pool.connect_options();
    let file = options.get_filename();
    let running = WRITERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(file)
        .and_then(Option::take);
    if let Some(running) = running {
        let (closed, done) = oneshot::channel();
        if running.send(Command::Close(closed)).is_ok() {
            let _ = done.await;
        }
    }
}

/// Runs queued writes until told to close.
async fn run_writer(pool: SqlitePool, mut queue: mpsc::UnboundedReceiver<Command>) {
    let mut connection: Option<SqliteConnection> = None;
    let mut commands = Vec::with_capacity(MAX_WRITES_PER_COMMIT);
    let mut closed = None;
    while closed.is_none() && queue.recv_many(&mut commands, MAX_WRITES_PER_COMMIT).await > 0 {
        let mut batch = Vec::with_capacity(commands.len());
        for command in commands.drain(..) {
            match command {
                // Writes queued with the close still run: another pool may be
                // open on the same file (a closed pool fails its writes itself).
                Command::Write(job) => batch.push(job),
                Command::Close(done) => closed = Some(done),
            }
        }
        // More than one pass only when a write ended its group commit early.
        while !batch.is_empty() {
            let open = match connection.take() {
                Some(open) => Ok(open),
                None if pool.is_closed() => Err(sqlx::Error::PoolClosed),
                None => SqliteConnection::connect_with(&pool.connect_options()).await,
            };
            match open {
                Ok(mut open) => {
                    let ran = run_batch(&mut open, batch).await;
                    if ran.reusable {
                        connection = Some(open);
                    }
                    batch = ran.unrun;
                }
                Err(err) => {
                    // Dropping the batch answers each caller with an error.
                    tracing::error!(error = %err, writes = batch.len(), "no SQLite writing connection");
                    break;
                }
            }
        }
    }
    if let Some(open) = connection
        && let Err(err) = open.close().await
    {
        tracing::warn!(error = %err, "closing the SQLite writing connection failed");
    }
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// What running a batch left behind.
struct BatchRun {
    /// False when the connection should not be used again.
    reusable: bool,
    /// Writes left to run, after one that may have ended the batch's transaction.
    unrun: Vec<Job>,
}

/// Runs one batch: alone in autocommit, or several in one transaction.
async fn run_batch(connection: &mut SqliteConnection, mut batch: Vec<Job>) -> BatchRun {
    if batch.len() == 1
        && let Some(job) = batch.pop()
    {
        let ran = job(connection).await;
        (ran.deliver)(CommitOutcome::Committed);
        return BatchRun {
            reusable: ran.sound,
            unrun: Vec::new(),
        };
    }
    let mut transaction = match connection.begin().await {
        Ok(transaction) => transaction,
        Err(err) => {
            // Dropping the batch answers each caller with an error.
            tracing::error!(error = %err, writes = batch.len(), "could not begin a group commit");
            return BatchRun {
                reusable: false,
                unrun: Vec::new(),
            };
        }
    };
    let mut jobs = batch.into_iter();
    let mut delivers: Vec<Deliver> = Vec::with_capacity(jobs.len());
    let mut sound = true;
    for job in jobs.by_ref() {
        let ran = job(&mut transaction).await;
        sound &= ran.sound;
        if ran.may_have_ended_transaction {
            // Its own error is its answer. The writes before it are undone
            // (SQLite may have done so already); the rest run after.
            (ran.deliver)(CommitOutcome::Committed);
            tracing::error!(
                undone = delivers.len(),
                "a write failed in a way that may roll back its whole transaction; \
                 undoing the writes of its group commit that came before it"
            );
            fail_all(
                delivers,
                "undone with its group commit after another write in it failed",
            );
            // Fails when SQLite has rolled back already. sqlx then still
            // counts the transaction as open, so the connection is replaced.
            let rolled_back = transaction.rollback().await.is_ok();
            return BatchRun {
                reusable: sound && rolled_back,
                unrun: jobs.collect(),
            };
        }
        delivers.push(ran.deliver);
    }
    let reusable = match transaction.commit().await {
        Ok(()) => {
            SHARED_COMMITS.fetch_add(1, Ordering::Relaxed);
            for deliver in delivers {
                deliver(CommitOutcome::Committed);
            }
            sound
        }
        Err(err) => {
            tracing::error!(error = %err, writes = delivers.len(), "a group commit failed");
            fail_all(delivers, &format!("commit failed: {err}"));
            false
        }
    };
    BatchRun {
        reusable,
        unrun: Vec::new(),
    }
}

/// Answers each write with an error: it is not stored.
fn fail_all(delivers: Vec<Deliver>, why: &str) {
    for deliver in delivers {
        deliver(CommitOutcome::Failed(why.to_owned()));
    }
}

/// Errors after which SQLite may have rolled back the whole transaction
/// rather than the failed statement alone (SQLITE_BUSY, SQLITE_NOMEM,
/// SQLITE_IOERR, SQLITE_FULL: <https://sqlite.org/lang_transaction.html>).
/// Whether it did can only be asked through the C API, so a group commit
/// treats its transaction as ended either way.
fn may_end_the_transaction(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(err) = err else {
        return false;
    };
    // sqlx reports the extended result code; its low byte is the primary one.
    err.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 7 | 10 | 13))
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::time::Duration;

    use sqlx::Row;

    use super::*;
    use crate::storage::{Database, DatabaseTarget, PoolSettings};

    /// A write of one statement.
    fn statement(
        pool: &SqlitePool,
        sql: &'static str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> {
        write(pool, move |connection| {
            Box::pin(async move { sqlx::query(sql).execute(connection).await.map(|_| ()) })
        })
    }

    #[tokio::test]
    async fn a_write_that_may_end_a_group_commit_undoes_the_writes_before_it_not_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = DatabaseTarget::SqliteFile(dir.path().join("full.db"));
        let db = Database::connect(&target, PoolSettings::small(Duration::from_secs(5)))
            .await
            .expect("open database");
        let Database::Sqlite(pool) = &db else {
            panic!("a SQLite file opens as SQLite");
        };
        statement(pool, "CREATE TABLE t (v TEXT)")
            .await
            .expect("create table");

        // A write holding the writer, so that the next three queue up and share one commit.
        let (started, has_started) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        let holder = write(pool, move |_connection| {
            Box::pin(async move {
                let _ = started.send(());
                let _ = released.await;
                Ok(())
            })
        });
        let mut holder = pin!(holder);
        assert!(futures::poll!(holder.as_mut()).is_pending());
        has_started.await.expect("the holding write runs");
        let mut before = pin!(statement(pool, "INSERT INTO t (v) VALUES ('before')"));
        // Fails with SQLITE_FULL: the file may not grow.
        let mut full = pin!(write(pool, |connection| {
            Box::pin(async move {
                let pages: i64 = sqlx::query("PRAGMA page_count")
                    .fetch_one(&mut *connection)
                    .await?
                    .get(0);
                sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
                    .execute(&mut *connection)
                    .await?;
                let grown = sqlx::query("INSERT INTO t (v) VALUES (hex(randomblob(100000)))")
                    .execute(&mut *connection)
                    .await
                    .map(|_| ());
                sqlx::query("PRAGMA max_page_count = 1073741823")
                    .execute(&mut *connection)
                    .await?;
                grown
            })
        }));
        let mut after = pin!(statement(pool, "INSERT INTO t (v) VALUES ('after')"));
        // Polled once, each write is queued.
        assert!(futures::poll!(before.as_mut()).is_pending());
        assert!(futures::poll!(full.as_mut()).is_pending());
        assert!(futures::poll!(after.as_mut()).is_pending());
        release.send(()).expect("holder waiting");
        holder.await.expect("holding write");

        let before = before.await;
        assert!(
            matches!(&before, Err(sqlx::Error::Protocol(why)) if why.contains("undone")),
            "{before:?}"
        );
        let full = full.await;
        assert!(
            matches!(&full, Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("13")),
            "{full:?}"
        );
        after.await.expect("the write after the failure is stored");
        let stored: Vec<String> = sqlx::query_scalar("SELECT v FROM t")
            .fetch_all(pool)
            .await
            .expect("read");
        assert_eq!(stored, ["after"]);
        db.close().await;
    }
}
