//! The `eloquent webhooks` commands: what waits in the outbox, what was
//! given up, and sending given-up events again (after the receiver is fixed).

use std::process::ExitCode;

use chrono::DateTime;
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::startup;
use crate::storage::outbox::{self, EventState, StoredEvent};

/// Webhook outbox commands.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List events: waiting (default), given up (--failed) or delivered (--delivered).
    List {
        #[arg(long, conflicts_with = "delivered")]
        failed: bool,
        #[arg(long)]
        delivered: bool,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Send events again with a fresh set of attempts: the ids given, or
    /// every given-up one with --failed. Running servers pick them up within
    /// a second.
    Retry {
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        ids: Vec<String>,
        #[arg(long)]
        failed: bool,
    },
}

/// Runs a `webhooks` command; the exit status a script can trust.
pub async fn webhooks(command: WebhooksCommand, config: Config) -> ExitCode {
    match run(command, config).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: WebhooksCommand, config: Config) -> Result<ExitCode, String> {
    let db = startup::open_database(&config)
        .await
        .map_err(|err| err.to_string())?;
    let code = match command {
        WebhooksCommand::List {
            failed,
            delivered,
            limit,
            json,
        } => {
            let state = match (failed, delivered) {
                (true, _) => EventState::Failed,
                (_, true) => EventState::Delivered,
                _ => EventState::Pending,
            };
            let events = outbox::list(&db, state, limit.clamp(1, 10_000))
                .await
                .map_err(|err| format!("reading the outbox: {err}"))?;
            if json {
                let events: Vec<_> = events.iter().map(event_json).collect();
                println!("{}", json!({ "events": events }));
            } else if events.is_empty() {
                eprintln!("no events");
            } else {
                for event in &events {
                    eprintln!(
                        "{}  {}  created {}  attempts {}  {}{}",
                        event.event_id,
                        event.event_type,
                        time(Some(event.created_ms)),
                        event.attempts,
                        state_line(event),
                        event
                            .last_error
                            .as_deref()
                            .map(|error| format!("  last error: {error}"))
                            .unwrap_or_default()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        WebhooksCommand::Retry { ids, failed } => {
            let ids = (!failed).then_some(ids);
            let now = chrono::Utc::now().timestamp_millis();
            let count = outbox::redeliver(&db, ids.as_deref(), now)
                .await
                .map_err(|err| format!("updating the outbox: {err}"))?;
            eprintln!("{count} event(s) due again now");
            match (&ids, count) {
                // An id that is unknown, delivered or being delivered now.
                (Some(ids), count) if count < ids.len() as u64 => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            }
        }
    };
    db.close().await;
    Ok(code)
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn state_line(event: &StoredEvent) -> String {
    match (event.delivered_ms, event.failed_ms) {
        (Some(at), _) => format!("delivered {}", time(Some(at))),
        (_, Some(at)) => format!("given up {}", time(Some(at))),
        _ => format!("next attempt {}", time(Some(event.next_attempt_ms))),
    }
}

fn event_json(event: &StoredEvent) -> serde_json::Value {
    json!({
        "id": event.event_id,
        "type": event.event_type,
        "created_at": time(Some(event.created_ms)),
        "attempts": event.attempts,
        "next_attempt_at": (event.delivered_ms.is_none() && event.failed_ms.is_none())
            .then(|| time(Some(event.next_attempt_ms))),
        "delivered_at": event.delivered_ms.map(|ms| time(Some(ms))),
        "failed_at": event.failed_ms.map(|ms| time(Some(ms))),
        "last_error": event.last_error,
    })
}
