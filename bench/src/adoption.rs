//! Section 7: upgrading in place. Generates a Python-service database
//! (SQLModel's schema, realistic row sizes) and times `eloquent migrate`
//! adopting it: the whole command, and the adoption transaction alone (from
//! its log line).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{Connection, QueryBuilder};

const SCHEMA_SQLITE: &str = include_str!("../../tests/api/fixtures/python_schema_sqlite.sql");
const SCHEMA_POSTGRES: &str = include_str!("../../tests/api/fixtures/python_schema_postgres.sql");

/// A bcrypt hash as Python's bcrypt wrote them (cost 12).
const HASH: &str = "$2b$12$FQxrsow4Tf/KgBLnjre1Gu5a6nh0F0YKY8lByhM/ne6SEjOuRGp9W";

/// The generated database: 10 messages per conversation (a system prompt and
/// four and a half turns), 10 conversations per user.
pub struct Shape {
    pub users: i64,
    pub conversations: i64,
    pub messages: i64,
}

impl Shape {
    pub fn for_messages(messages: i64) -> Self {
        let conversations = (messages / 10).max(1);
        Self {
            users: (conversations / 10).max(1),
            conversations,
            messages: conversations * 10,
        }
    }
}

/// One measured adoption.
pub struct AdoptionRun {
    pub backend: &'static str,
    pub users: i64,
    pub conversations: i64,
    pub messages: i64,
    /// Bytes of the Python tables' text (content, user_message).
    pub text_bytes: u64,
    /// `eloquent migrate` start to exit: connect, backup (SQLite), migrations, adoption.
    pub command: Duration,
    /// The adoption transaction, from its log line.
    pub adoption: Duration,
}

impl AdoptionRun {
    pub fn rows(&self) -> i64 {
        self.users + self.conversations + self.messages
    }

    pub fn rows_per_second(&self) -> f64 {
        self.rows() as f64 / self.adoption.as_secs_f64().max(1e-9)
    }
}

/// A user question with its retrieved context, as the Python service stored it.
fn user_content(n: i64) -> (String, String) {
    let question =
        format!("How do I raise the daily card limit on account {n} before travelling abroad?");
    let context = "[Cards] Daily limits can be changed in the app under Cards > Limits. Changes apply at once. ".repeat(12);
    (
        format!("Context:\n{context}\n\nQuestion: {question}"),
        question,
    )
}

fn answer(n: i64) -> String {
    format!(
        "You can raise it in the app: open Cards > Limits, choose the card ending {n:04}, and set a new daily limit. {}",
        "The change applies immediately and lasts until you change it again. ".repeat(4)
    )
}

/// A naive UTC time about `n` seconds after a fixed start.
fn naive(n: i64) -> chrono::NaiveDateTime {
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|day| day.and_hms_micro_opt(8, 0, 0, 0))
        .unwrap_or_default();
    start + chrono::Duration::microseconds(n * 1_000_003)
}

/// The same as SQLAlchemy writes it into SQLite (always six fractional digits).
fn sqlalchemy_text(n: i64) -> String {
    naive(n).format("%F %T%.6f").to_string()
}

/// Fills the Python tables on a connection of either backend (a macro: the
/// same statements, type-checked for each); evaluates to the bytes of
/// message text written.
macro_rules! generate {
    ($conn:expr, $shape:expr, $stamp:expr) => {{
    let shape: &Shape = $shape;
    let stamp = $stamp;
    let mut tx = $conn.begin().await?;
    let users: Vec<i64> = (1..=shape.users).collect();
    for batch in users.chunks(1000) {
        let mut query = QueryBuilder::new(
            "INSERT INTO \"user\" (id, email, name, password, created_at) ",
        );
        query.push_values(batch, |mut row, id| {
            row.push_bind(*id)
                .push_bind(format!("Customer{id}@Example.com"))
                .push_bind(format!("Customer {id}"))
                .push_bind(HASH.to_string())
                .push_bind(stamp(*id));
        });
        query.build().execute(&mut *tx).await?;
    }
    let conversations: Vec<i64> = (1..=shape.conversations).collect();
    for batch in conversations.chunks(1000) {
        let mut query = QueryBuilder::new(
            "INSERT INTO conversation (id, user_id, short_name, created_at, is_deleted) ",
        );
        query.push_values(batch, |mut row, id| {
            // One in ten anonymous, one in twenty deleted, half without a title.
            let owner = (id % 10 != 0).then_some((id - 1) % shape.users + 1);
            let title = (id % 2 == 0).then(|| format!("Card limit {id}"));
            row.push_bind(*id)
                .push_bind(owner)
                .push_bind(title)
                .push_bind(stamp(shape.users + id * 10))
                .push_bind(id % 20 == 0);
        });
        query.build().execute(&mut *tx).await?;
    }
    let mut text_bytes = 0u64;
    let messages: Vec<i64> = (1..=shape.messages).collect();
    for batch in messages.chunks(1000) {
        let rows: Vec<(i64, i64, &str, String, Option<String>)> = batch
            .iter()
            .map(|id| {
                let conversation = (id - 1) / 10 + 1;
                match (id - 1) % 10 {
                    0 => (
                        *id,
                        conversation,
                        "system",
                        "You are Eloquent, the support assistant of a bank.".to_string(),
                        None,
                    ),
                    n if n % 2 == 1 => {
                        let (content, typed) = user_content(*id);
                        (*id, conversation, "user", content, Some(typed))
                    }
                    _ => (*id, conversation, "assistant", answer(*id), None),
                }
            })
            .collect();
        text_bytes += rows
            .iter()
            .map(|row| (row.3.len() + row.4.as_ref().map_or(0, String::len)) as u64)
            .sum::<u64>();
        let mut query = QueryBuilder::new(
            "INSERT INTO message (id, conversation_id, role, content, user_message, created_at) ",
        );
        query.push_values(rows, |mut row, (id, conversation, role, content, typed)| {
            row.push_bind(id)
                .push_bind(conversation)
                .push_bind(role.to_string())
                .push_bind(content)
                .push_bind(typed)
                .push_bind(stamp(shape.users + shape.conversations * 10 + id));
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok::<u64, sqlx::Error>(text_bytes)
    }};
}

/// Generates the database at `database_url` (SQLite file path or a fresh
/// PostgreSQL database) and times `eloquent migrate` on it.
pub async fn run(
    binary: &Path,
    workdir: &Path,
    backend: &'static str,
    database_url: &str,
    shape: &Shape,
) -> Result<AdoptionRun, String> {
    let text_bytes = if backend == "sqlite" {
        let path = database_url.trim_start_matches("sqlite:///");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(false);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .map_err(|err| format!("open {path}: {err}"))?;
        sqlx::raw_sql(SCHEMA_SQLITE)
            .execute(&mut conn)
            .await
            .map_err(|err| format!("Python schema: {err}"))?;
        async { generate!(conn, shape, sqlalchemy_text) }
            .await
            .map_err(|err| format!("generate: {err}"))?
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url)
            .await
            .map_err(|err| format!("connect {database_url}: {err}"))?;
        sqlx::raw_sql(SCHEMA_POSTGRES)
            .execute(&mut conn)
            .await
            .map_err(|err| format!("Python schema: {err}"))?;
        async { generate!(conn, shape, naive) }
            .await
            .map_err(|err| format!("generate: {err}"))?
    };
    let started = Instant::now();
    let output = tokio::process::Command::new(binary)
        .arg("migrate")
        // Not the caller's directory: no stray .env is read.
        .current_dir(workdir)
        .env("DATABASE_URL", database_url)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|err| format!("run {}: {err}", binary.display()))?;
    let command = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "eloquent migrate failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let adoption_ms = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| {
            entry["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("adopted the Python service's data"))
        })
        .and_then(|entry| entry["fields"]["elapsed_ms"].as_u64())
        .ok_or_else(|| format!("no adoption log line in: {stdout}"))?;
    Ok(AdoptionRun {
        backend,
        users: shape.users,
        conversations: shape.conversations,
        messages: shape.messages,
        text_bytes,
        command,
        adoption: Duration::from_millis(adoption_ms),
    })
}

/// [`run`] on a new database `name` on the PostgreSQL server at `server_url`,
/// dropped afterwards.
pub async fn run_on_fresh_postgres(
    binary: &Path,
    workdir: &Path,
    server_url: &str,
    name: &str,
    shape: &Shape,
) -> Result<AdoptionRun, String> {
    crate::postgres::with_fresh_database(server_url, name, async |url| {
        run(binary, workdir, "postgres", &url, shape).await
    })
    .await
}
