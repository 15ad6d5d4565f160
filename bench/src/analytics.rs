//! Section 9: `GET /api/admin/analytics` over a database of 1,000,000
//! messages (and the turn log of the 500,000 turns they make), on SQLite
//! and, with `--postgres`, PostgreSQL. The service is called in-process
//! (`OperatorService::analytics`, the route's whole work but the envelope)
//! on a database filled in SQL by the server's own migrations' schema.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use eloquent::config::DatabaseTarget;
use eloquent::services::operator::OperatorService;
use eloquent::storage::{Database, PoolSettings};
use hdrhistogram::Histogram;

/// Days the generated turns spread over, ending now.
const DAYS: i64 = 30;
/// Signed-in users.
const USERS: i64 = 20_000;
/// Timed calls per period (after two warm-up calls).
const CALLS: usize = 20;

pub struct AnalyticsRun {
    pub backend: &'static str,
    pub messages: i64,
    pub turns: i64,
    pub fill: Duration,
    /// The default period (the last 7 days), then the whole 30 days.
    pub periods: Vec<(String, i64, Histogram<u64>)>,
}

/// Section 9 on SQLite, then on a throwaway PostgreSQL database when
/// `postgres` names a server.
pub async fn run(
    dir: &Path,
    messages: i64,
    postgres: Option<&str>,
) -> Result<Vec<AnalyticsRun>, String> {
    let mut runs = Vec::new();
    let file = dir.join("analytics.db");
    let target = DatabaseTarget::SqliteFile(file.clone());
    runs.push(time_backend("sqlite", &target, messages).await?);
    let _ = std::fs::remove_file(&file);
    if let Some(server) = postgres {
        let name = format!("eloquent_bench_analytics_{}", std::process::id());
        let run = crate::postgres::with_fresh_database(server, &name, |url| async move {
            let target = DatabaseTarget::parse(&url).map_err(|err| format!("{url}: {err}"))?;
            time_backend("postgres", &target, messages).await
        })
        .await?;
        runs.push(run);
    }
    Ok(runs)
}

/// A database at `target` with the server's migrations applied.
pub async fn open_migrated(
    target: &DatabaseTarget,
    max_connections: u32,
) -> Result<Database, String> {
    let settings = PoolSettings {
        max_connections,
        ..PoolSettings::small(Duration::from_secs(60))
    };
    let db = Database::connect(target, settings)
        .await
        .map_err(|err| format!("open: {err}"))?;
    db.migrate()
        .await
        .map_err(|err| format!("migrate: {err}"))?;
    Ok(db)
}

async fn time_backend(
    backend: &'static str,
    target: &DatabaseTarget,
    messages: i64,
) -> Result<AnalyticsRun, String> {
    let db = open_migrated(target, 4).await?;
    let now = Utc::now();
    let started = Instant::now();
    let turns = fill(&db, messages, now.timestamp()).await?;
    let fill = started.elapsed();
    let operator = OperatorService::new(db.clone());
    let mut periods = Vec::new();
    for (name, days) in [("last 7 days (the default)", 7), ("all 30 days", DAYS)] {
        let from = now - chrono::Duration::days(days);
        let to = now + chrono::Duration::minutes(1);
        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|err| err.to_string())?;
        let mut counted = 0;
        for call in 0..CALLS + 2 {
            let started = Instant::now();
            let analytics = operator
                .analytics(from, to, 10)
                .await
                .map_err(|err| format!("analytics: {err}"))?;
            if call >= 2 {
                let _ = latency.record(started.elapsed().as_micros().max(1) as u64);
            }
            counted = analytics.turns;
        }
        periods.push((name.to_string(), counted, latency));
    }
    db.close().await;
    Ok(AnalyticsRun {
        backend,
        messages,
        turns,
        fill,
        periods,
    })
}

/// `messages` messages (a question and an answer per turn, ten to a
/// conversation, a fifth of them anonymous, 2% of answers rated) and their
/// turns, spread evenly over the last [`DAYS`] days: 3% refused, 4% left by
/// their client, 3% failed upstream, a fifth of the rest ungrounded, the
/// ungrounded questions drawn from about a thousand with a long tail.
/// Returns the number of turns.
async fn fill(db: &Database, messages: i64, now: i64) -> Result<i64, String> {
    let turns = messages / 2;
    let conversations = (turns / 5).max(1);
    let start = now - DAYS * 86_400;
    // Seconds between turns, as a float, so that any count spreads evenly.
    let step = (DAYS * 86_400) as f64 / turns as f64;
    let stamp: fn(&str) -> String = match db {
        Database::Postgres(_) => postgres_stamp,
        _ => sqlite_stamp,
    };
    let numbers = |n: i64| match db {
        Database::Postgres(_) => format!("SELECT i FROM generate_series(1, {n}) AS s(i)"),
        _ => format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT i FROM s"
        ),
    };
    // The moment of turn i (seconds since the epoch, whole).
    let turn_at = format!("({start} + CAST((i - 1) * {step} AS BIGINT))");
    let sql = [
        format!(
            "INSERT INTO users (email, name, password_hash, created_at) \
             SELECT 'user' || i || '@example.com', 'User ' || i, 'x', {} FROM ({}) AS n",
            stamp(&start.to_string()),
            numbers(USERS)
        ),
        format!(
            "INSERT INTO conversations (user_id, short_name, created_at, updated_at, is_deleted) \
             SELECT CASE WHEN i % 5 = 0 THEN NULL ELSE 1 + (i * 7919) % {USERS} END, \
             'Conversation ' || i, {at}, {at}, {false_} FROM ({}) AS n",
            numbers(conversations),
            at = stamp(&start.to_string()),
            false_ = match db {
                Database::Postgres(_) => "false",
                _ => "0",
            },
        ),
        // Turn i: its question (message 2i - 1) and its answer (2i).
        format!(
            "INSERT INTO messages (conversation_id, role, content, user_message, created_at, \
             feedback_rating, feedback_at) \
             SELECT 1 + (i - 1) / 5, 'user', 'Context block and question ' || i, \
             'Question ' || i, {at}, NULL, NULL FROM ({n}) AS n \
             UNION ALL \
             SELECT 1 + (i - 1) / 5, 'assistant', 'An answer of a few sentences to question ' || i, \
             NULL, {at}, CASE WHEN i % 50 = 0 THEN 'down' WHEN i % 50 = 25 THEN 'up' END, \
             CASE WHEN i % 25 = 0 THEN {at} END FROM ({n}) AS n",
            n = numbers(turns),
            at = stamp(&turn_at),
        ),
        format!(
            "INSERT INTO turns (started_ms, conversation_id, user_id, transport, outcome, \
             refusal_reason, grounded, ttft_ms, question, question_key) \
             SELECT {turn_at} * 1000, 1 + (i - 1) / 5, \
             CASE WHEN ((i - 1) / 5) % 5 = 4 THEN NULL ELSE 1 + (((i - 1) / 5 + 1) * 7919) % {USERS} END, \
             CASE i % 3 WHEN 0 THEN 'create' WHEN 1 THEN 'sse' ELSE 'websocket' END, \
             outcome, \
             CASE WHEN outcome = 'refused' THEN CASE WHEN i % 2 = 0 THEN 'prompt_injection' ELSE 'secret' END END, \
             CASE WHEN outcome = 'refused' THEN NULL ELSE {grounded} END, \
             CASE WHEN outcome IN ('completed', 'client_gone') THEN 150 + (i * 37) % 1200 END, \
             CASE WHEN outcome <> 'refused' AND (i / 7) % 5 = 0 THEN 'How do I ' || k || ' my account?' END, \
             CASE WHEN outcome <> 'refused' AND (i / 7) % 5 = 0 THEN 'how do i ' || k || ' my account' END \
             FROM (SELECT i, ((i % 1009) * (i % 1009)) / 1009 AS k, \
               CASE WHEN i % 100 < 3 THEN 'refused' WHEN i % 100 < 7 THEN 'client_gone' \
               WHEN i % 100 < 9 THEN 'upstream_error' WHEN i % 100 = 9 THEN 'timeout' \
               ELSE 'completed' END AS outcome FROM ({n}) AS s) AS n",
            n = numbers(turns),
            grounded = match db {
                Database::Postgres(_) => "(i / 7) % 5 <> 0",
                _ => "CASE WHEN (i / 7) % 5 <> 0 THEN 1 ELSE 0 END",
            },
        ),
    ];
    for statement in &sql {
        execute(db, statement).await?;
    }
    // What a running database has: planner statistics (and on PostgreSQL a
    // visibility map, which index-only scans need; autovacuum keeps it).
    match db {
        Database::Postgres(_) => execute(db, "VACUUM ANALYZE").await?,
        _ => execute(db, "ANALYZE").await?,
    }
    Ok(turns)
}

fn sqlite_stamp(seconds: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%S+00:00', {seconds}, 'unixepoch')")
}

fn postgres_stamp(seconds: &str) -> String {
    format!("to_timestamp({seconds})")
}

async fn execute(db: &Database, sql: &str) -> Result<(), String> {
    let short: String = sql.chars().take(60).collect();
    match db {
        Database::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(|_| ()),
        Database::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(|_| ()),
    }
    .map_err(|err| format!("{short}…: {err}"))
}
