//! The `webhook_outbox` table (migration 0011): events waiting to be
//! delivered, claimed by one server at a time.

use super::{Database, on_reader, on_writer};

/// An event to store: its id, type, JSON body, and when it may first be
/// delivered (ms since the Unix epoch).
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub body: &'a str,
    pub due_ms: i64,
}

/// [`NewEvent`] owned, for the SQLite writer.
#[derive(Debug, Clone)]
pub(crate) struct OwnedEvent {
    pub id: String,
    pub kind: String,
    pub body: String,
    pub due_ms: i64,
}

impl From<NewEvent<'_>> for OwnedEvent {
    fn from(event: NewEvent<'_>) -> Self {
        Self {
            id: event.id.to_owned(),
            kind: event.kind.to_owned(),
            body: event.body.to_owned(),
            due_ms: event.due_ms,
        }
    }
}

/// Binds: event id, type, body, created (ms), first due (ms).
pub(crate) const INSERT: &str = "INSERT INTO webhook_outbox \
     (event_id, event_type, body, created_ms, next_attempt_ms) VALUES ($1, $2, $3, $4, $5)";

/// Inserts an [`OwnedEvent`] created at `now_ms` on a writing connection or
/// transaction (inside an `on_writer!` body, alongside the write that
/// causes the event); evaluates to the statement's result.
macro_rules! insert_event {
    ($conn:expr, $event:expr, $now_ms:expr) => {{
        let event: $crate::storage::outbox::OwnedEvent = $event;
        sqlx::query($crate::storage::outbox::INSERT)
            .bind(event.id)
            .bind(event.kind)
            .bind(event.body)
            .bind($now_ms)
            .bind(event.due_ms)
            .execute($conn)
            .await
    }};
}
pub(crate) use insert_event;

/// Stores an event on its own (the events that need no other write).
pub async fn insert(db: &Database, event: NewEvent<'_>, now_ms: i64) -> Result<(), sqlx::Error> {
    let event = OwnedEvent::from(event);
    on_writer!(db, conn => {
        insert_event!(&mut *conn, event, now_ms)?;
        Ok(())
    })
}

/// An event claimed for one delivery attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedEvent {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub body: String,
    pub created_ms: i64,
    /// Attempts including this one.
    pub attempts: i32,
}

/// Claims up to `limit` events due at `now_ms` that nobody holds, for
/// `lease_ms`, counting the attempt. On PostgreSQL the rows are picked
/// `FOR UPDATE SKIP LOCKED`, so servers claiming at once each get others;
/// on SQLite the one writer runs the statement alone.
pub async fn claim_due(
    db: &Database,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<ClaimedEvent>, sqlx::Error> {
    const DUE: &str = "SELECT id FROM webhook_outbox \
         WHERE delivered_ms IS NULL AND failed_ms IS NULL AND next_attempt_ms <= $1 \
         AND (claimed_until_ms IS NULL OR claimed_until_ms < $1) \
         ORDER BY next_attempt_ms, id LIMIT $3";
    let sql = match db {
        Database::Sqlite(_) => format!(
            "UPDATE webhook_outbox SET claimed_until_ms = $2, attempts = attempts + 1 \
             WHERE id IN ({DUE}) \
             RETURNING id, event_id, event_type, body, created_ms, attempts"
        ),
        Database::Postgres(_) => format!(
            "UPDATE webhook_outbox SET claimed_until_ms = $2, attempts = attempts + 1 \
             WHERE id IN ({DUE} FOR UPDATE SKIP LOCKED) \
             RETURNING id, event_id, event_type, body, created_ms, attempts"
        ),
    };
    on_writer!(db, conn => {
        sqlx::query_as::<_, ClaimedEvent>(&sql)
            .bind(now_ms)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
    })
}

/// How a claimed attempt ended.
#[derive(Debug, Clone)]
pub enum Settlement {
    Delivered {
        at_ms: i64,
    },
    /// Try again at `next_ms`.
    Retry {
        next_ms: i64,
        error: String,
    },
    /// No attempt left.
    Failed {
        at_ms: i64,
        error: String,
    },
}

/// Records how an attempt on a claimed event ended and releases the claim.
pub async fn settle(db: &Database, id: i64, settlement: Settlement) -> Result<(), sqlx::Error> {
    let (delivered, failed, next, error) = match settlement {
        Settlement::Delivered { at_ms } => (Some(at_ms), None, None, None),
        Settlement::Retry { next_ms, error } => (None, None, Some(next_ms), Some(error)),
        Settlement::Failed { at_ms, error } => (None, Some(at_ms), None, Some(error)),
    };
    on_writer!(db, conn => {
        sqlx::query(
            "UPDATE webhook_outbox SET claimed_until_ms = NULL, delivered_ms = $1, failed_ms = $2, \
             next_attempt_ms = COALESCE($3, next_attempt_ms), last_error = COALESCE($4, last_error) \
             WHERE id = $5",
        )
        .bind(delivered)
        .bind(failed)
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    })
}

/// Replaces the body of an event not yet attempted and makes it due at
/// `due_ms`; false when an attempt has already been made (the body that went
/// out stays the event's).
pub async fn complete_body(
    db: &Database,
    event_id: &str,
    body: &str,
    due_ms: i64,
) -> Result<bool, sqlx::Error> {
    let (event_id, body) = (event_id.to_owned(), body.to_owned());
    on_writer!(db, conn => {
        sqlx::query(
            "UPDATE webhook_outbox SET body = $1, next_attempt_ms = $2 \
             WHERE event_id = $3 AND attempts = 0 AND claimed_until_ms IS NULL",
        )
        .bind(body)
        .bind(due_ms)
        .bind(event_id)
        .execute(&mut *conn)
        .await
        .map(|done| done.rows_affected() == 1)
    })
}

/// When the next unsettled event falls due, if any.
pub async fn next_due_ms(db: &Database) -> Result<Option<i64>, sqlx::Error> {
    on_reader!(db, conn => {
        sqlx::query_as::<_, (Option<i64>,)>(
            "SELECT MIN(next_attempt_ms) FROM webhook_outbox \
             WHERE delivered_ms IS NULL AND failed_ms IS NULL",
        )
        .fetch_one(conn)
        .await
        .map(|(due,)| due)
    })
}

/// Deletes events delivered before `before_ms`; how many.
pub async fn purge_delivered(db: &Database, before_ms: i64) -> Result<u64, sqlx::Error> {
    on_writer!(db, conn => {
        sqlx::query("DELETE FROM webhook_outbox WHERE delivered_ms < $1")
            .bind(before_ms)
            .execute(&mut *conn)
            .await
            .map(|done| done.rows_affected())
    })
}

/// An event as operators see it (`eloquent webhooks list`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub event_id: String,
    pub event_type: String,
    pub created_ms: i64,
    pub attempts: i32,
    pub next_attempt_ms: i64,
    pub delivered_ms: Option<i64>,
    pub failed_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// Which events to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Not yet delivered nor given up.
    Pending,
    /// Given up after the last attempt.
    Failed,
    Delivered,
}

/// Events in `state`, newest first, at most `limit`.
pub async fn list(
    db: &Database,
    state: EventState,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let filter = match state {
        EventState::Pending => "delivered_ms IS NULL AND failed_ms IS NULL",
        EventState::Failed => "failed_ms IS NOT NULL",
        EventState::Delivered => "delivered_ms IS NOT NULL",
    };
    let sql = format!(
        "SELECT event_id, event_type, created_ms, attempts, next_attempt_ms, delivered_ms, \
         failed_ms, last_error FROM webhook_outbox WHERE {filter} ORDER BY id DESC LIMIT $1"
    );
    on_reader!(db, conn => {
        sqlx::query_as::<_, StoredEvent>(&sql)
            .bind(limit)
            .fetch_all(conn)
            .await
    })
}

/// Makes given-up events due again at `now_ms` with a fresh set of
/// attempts: those named (any undelivered one), or every failed one when
/// `ids` is `None`. How many.
pub async fn redeliver(
    db: &Database,
    ids: Option<&[String]>,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let which = match ids {
        None => "failed_ms IS NOT NULL".to_string(),
        Some(ids) => format!(
            "event_id IN ({})",
            (0..ids.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let sql = format!(
        "UPDATE webhook_outbox SET failed_ms = NULL, attempts = 0, next_attempt_ms = $1, \
         claimed_until_ms = NULL WHERE delivered_ms IS NULL \
         AND (claimed_until_ms IS NULL OR claimed_until_ms < $1) AND {which}"
    );
    let ids: Vec<String> = ids.map(<[String]>::to_vec).unwrap_or_default();
    on_writer!(db, conn => {
        let mut query = sqlx::query(&sql).bind(now_ms);
        for id in ids {
            query = query.bind(id);
        }
        query.execute(&mut *conn).await.map(|done| done.rows_affected())
    })
}
