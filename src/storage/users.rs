//! The `users` table.

use chrono::{DateTime, Utc};

use super::{Database, on_reader, on_writer};

/// A stored user, password hash included (never serialised to clients).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRecord {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// Result of an insert that may hit the unique email index.
#[derive(Debug)]
pub enum InsertOutcome {
    Created(UserRecord),
    EmailTaken,
}

const COLUMNS: &str = "id, email, name, password_hash, created_at";

/// Inserts a user; the unique index decides races, not a prior lookup.
pub async fn insert(
    db: &Database,
    email: &str,
    name: &str,
    password_hash: &str,
) -> Result<InsertOutcome, sqlx::Error> {
    let now = Utc::now();
    let (email, name, password_hash) =
        (email.to_owned(), name.to_owned(), password_hash.to_owned());
    let result = on_writer!(db, conn => {
        sqlx::query_as::<_, UserRecord>(
            "INSERT INTO users (email, name, password_hash, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, email, name, password_hash, created_at",
        )
        .bind(email)
        .bind(name)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
    });
    match result {
        Ok(user) => Ok(InsertOutcome::Created(user)),
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
            Ok(InsertOutcome::EmailTaken)
        }
        Err(err) => Err(err),
    }
}

/// Looks a user up by normalised email.
pub async fn find_by_email(db: &Database, email: &str) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE email = $1");
    on_reader!(db, conn => {
        sqlx::query_as::<_, UserRecord>(&sql).bind(email).fetch_optional(conn).await
    })
}

/// The account a login names: the one stored with exactly the address typed
/// (trimmed), else the one with its normalised form. Only accounts adopted
/// from the Python service, which compared addresses case-sensitively, can
/// differ in the two (see `services::adoption`).
pub async fn find_for_login(
    db: &Database,
    normalized: &str,
    typed: &str,
) -> Result<Option<UserRecord>, sqlx::Error> {
    if normalized == typed {
        return find_by_email(db, normalized).await;
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM users WHERE email = $1 OR email = $2 \
         ORDER BY CASE WHEN email = $2 THEN 0 ELSE 1 END LIMIT 1"
    );
    on_reader!(db, conn => {
        sqlx::query_as::<_, UserRecord>(&sql)
            .bind(normalized)
            .bind(typed)
            .fetch_optional(conn)
            .await
    })
}

/// Looks a user up by id.
pub async fn find_by_id(db: &Database, id: i64) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    on_reader!(db, conn => {
        sqlx::query_as::<_, UserRecord>(&sql).bind(id).fetch_optional(conn).await
    })
}
