//! The connections that read a SQLite file, held outside sqlx's pool.
//!
//! Every query through a sqlx pool ends with the connection's return, in a
//! spawned task, and a ping first: one more round trip to the connection's
//! thread (two thread wake-ups) per query, not configurable in sqlx 0.8. A
//! SQLite connection is a handle on a local file that does not go stale, so
//! reads take one of a few connections kept here and put it back as it is.
//! In-memory databases (one connection, see `Database::connect`) read on
//! their pool.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Sqlite, SqlitePool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The read connections of one file.
pub(crate) struct Readers {
    options: Arc<SqliteConnectOptions>,
    /// How long a read waits for a connection before giving up (503).
    acquire_timeout: Duration,
    /// One permit per connection that may be open.
    permits: Arc<Semaphore>,
    /// How many permits there are.
    capacity: usize,
    idle: Mutex<Vec<SqliteConnection>>,
}

/// Files read through connections of their own.
static READERS: LazyLock<Mutex<HashMap<PathBuf, Arc<Readers>>>> = LazyLock::new(Mutex::default);

/// Reads of the pool's file go through at most `connections` connections
/// kept here (file databases), waiting at most `acquire_timeout` for one.
pub(crate) fn register(pool: &SqlitePool, connections: usize, acquire_timeout: Duration) {
    let options = pool.connect_options();
    let readers = Readers {
        acquire_timeout,
        permits: Arc::new(Semaphore::new(connections.max(1))),
        capacity: connections.max(1),
        idle: Mutex::new(Vec::with_capacity(connections)),
        options: Arc::clone(&options),
    };
    READERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(options.get_filename().to_path_buf(), Arc::new(readers));
}

/// (connections reading now, connections open and idle) of the pool's file.
pub(crate) fn usage(pool: &SqlitePool) -> (usize, usize) {
    match readers_of(pool) {
        Some(readers) => {
            let idle = readers
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            let total = readers.capacity;
            (
                total.saturating_sub(readers.permits.available_permits()),
                idle,
            )
        }
        None => (0, 0),
    }
}

fn readers_of(pool: &SqlitePool) -> Option<Arc<Readers>> {
    let options = pool.connect_options();
    READERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(options.get_filename())
        .cloned()
}

/// A connection to read on, given back when dropped.
pub(crate) enum ReadConnection {
    Own {
        /// `Some` until dropped.
        connection: Option<SqliteConnection>,
        /// False after an error that leaves the connection unusable.
        sound: bool,
        readers: Arc<Readers>,
        _permit: OwnedSemaphorePermit,
    },
    Pooled(PoolConnection<Sqlite>),
}

/// Waits for a read connection of the pool's file (opening one when fewer
/// than the limit are open and none is idle).
pub(crate) async fn acquire(pool: &SqlitePool) -> Result<ReadConnection, sqlx::Error> {
    let Some(readers) = readers_of(pool) else {
        return Ok(ReadConnection::Pooled(pool.acquire().await?));
    };
    let permit = tokio::time::timeout(
        readers.acquire_timeout,
        Arc::clone(&readers.permits).acquire_owned(),
    )
    .await
    .map_err(|_| sqlx::Error::PoolTimedOut)?
    .map_err(|_| sqlx::Error::PoolClosed)?;
    if pool.is_closed() {
        return Err(sqlx::Error::PoolClosed);
    }
    let idle = readers
        .idle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let connection = match idle {
        Some(connection) => connection,
        None => SqliteConnection::connect_with(&readers.options).await?,
    };
    Ok(ReadConnection::Own {
        connection: Some(connection),
        sound: true,
        readers,
        _permit: permit,
    })
}

/// Closes the idle read connections of the pool's file (graceful shutdown).
/// Reads through the closed pool fail from now on; another pool open on the
/// same file opens connections again as it needs them.
pub(crate) async fn close(pool: &SqlitePool) {
    let Some(readers) = readers_of(pool) else {
        return;
    };
    let idle = std::mem::take(&mut *readers.idle.lock().unwrap_or_else(PoisonError::into_inner));
    for connection in idle {
        if let Err(err) = connection.close().await {
            tracing::warn!(error = %err, "closing a SQLite read connection failed");
        }
    }
}

impl ReadConnection {
    /// Forgets the connection after an error that was not SQLite's answer to
    /// the query (a crashed worker thread): the next read opens a fresh one.
    pub(crate) fn keep_if_sound<T>(&mut self, result: &Result<T, sqlx::Error>) {
        if let (Self::Own { sound, .. }, Err(err)) = (self, result)
            && !super::connection_still_usable(err)
        {
            *sound = false;
        }
    }
}

impl Deref for ReadConnection {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Own { connection, .. } => connection.as_ref().expect("present until dropped"),
            Self::Pooled(pooled) => pooled,
        }
    }
}

impl DerefMut for ReadConnection {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Own { connection, .. } => connection.as_mut().expect("present until dropped"),
            Self::Pooled(pooled) => pooled,
        }
    }
}

impl Drop for ReadConnection {
    fn drop(&mut self) {
        if let Self::Own {
            connection,
            sound: true,
            readers,
            ..
        } = self
            && let Some(connection) = connection.take()
        {
            // Back before the permit is released (fields drop after this).
            readers
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqlitePoolOptions;

    #[tokio::test]
    async fn a_read_waits_for_a_connection_at_most_the_acquire_timeout_and_reuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("read.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("pool");
        register(&pool, 1, Duration::from_millis(50));

        let mut held = acquire(&pool).await.expect("first connection");
        let (one,): (i64,) = sqlx::query_as("SELECT 1")
            .fetch_one(&mut *held)
            .await
            .expect("query");
        assert_eq!(one, 1);
        assert!(matches!(
            acquire(&pool).await,
            Err(sqlx::Error::PoolTimedOut)
        ));
        drop(held);
        let mut again = acquire(&pool).await.expect("given back on drop");
        sqlx::query("SELECT 1")
            .execute(&mut *again)
            .await
            .expect("the kept connection still works");
        drop(again);
        pool.close().await;
        assert!(matches!(acquire(&pool).await, Err(sqlx::Error::PoolClosed)));
        close(&pool).await;
    }
}
