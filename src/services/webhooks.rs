//! Webhook events and their delivery (contract section 17).
//!
//! An event is a row of the outbox table, written in the transaction that
//! makes it happen (a handoff, a close, a rating). Every server runs one
//! deliverer: it claims due rows (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so
//! servers never claim the same row; a claim is a lease, so a server that
//! dies mid-delivery loses it), POSTs each with a fresh signature, and marks
//! it delivered, or due again after an exponential backoff with jitter, or
//! failed after `WEBHOOK_MAX_ATTEMPTS`. The event's `id` never changes, so
//! a receiver counts an event once however often it arrives (delivery is at
//! least once: a server can die after the receiver answered and before the
//! row is marked).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clients::ClientSetupError;
use crate::clients::webhook::WebhookClient;
use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::storage::Database;
use crate::storage::outbox::{self, ClaimedEvent, NewEvent, Settlement};

/// Events claimed at once by one server.
const BATCH: i64 = 32;
/// Longest wait between two looks at the outbox when nothing is due sooner
/// (events other servers wrote, claims that expired).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Longest delay between two attempts, however many failed.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Delivered events are kept this long (for inspection), then deleted.
const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    HandoffRequested,
    ConversationClosed,
    FeedbackCreated,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandoffRequested => "handoff.requested",
            Self::ConversationClosed => "conversation.closed",
            Self::FeedbackCreated => "feedback.created",
        }
    }

    fn label(stored: &str) -> &'static str {
        [
            Self::HandoffRequested,
            Self::ConversationClosed,
            Self::FeedbackCreated,
        ]
        .into_iter()
        .map(Self::as_str)
        .find(|kind| *kind == stored)
        .unwrap_or("other")
    }
}

/// One event: its id and time are fixed when it happens; the body is
/// rendered from them and its data.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: EventType,
    pub created_at: DateTime<Utc>,
}

impl Event {
    pub fn new(kind: EventType) -> Self {
        Self {
            id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
            kind,
            created_at: Utc::now(),
        }
    }

    /// `{"id", "type", "created_at", "data"}`.
    pub fn render(&self, data: &Value) -> String {
        json!({
            "id": self.id,
            "type": self.kind.as_str(),
            "created_at": self.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string()
    }
}

/// Records events for delivery and delivers them; does nothing without
/// `WEBHOOK_URL`.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Deliverer>>,
}

struct Deliverer {
    db: Database,
    client: WebhookClient,
    max_attempts: u32,
    retry_base: Duration,
    lease: Duration,
    /// Rung when this server records an event: delivered at once.
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Starts the deliverer when `config` is set.
    pub fn start(
        db: Database,
        config: Option<&WebhookConfig>,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, ClientSetupError> {
        let Some(config) = config else {
            return Ok(Self::default());
        };
        let deliverer = Arc::new(Deliverer {
            db,
            client: WebhookClient::new(config)?,
            max_attempts: config.max_attempts,
            retry_base: config.retry_base,
            // The attempt's own timeout and a margin: no other server takes
            // the event while this one may still be posting it.
            lease: config.timeout + Duration::from_secs(5),
            wake: Notify::new(),
            metrics,
        });
        tasks.spawn(deliverer.clone().run(shutdown));
        Ok(Self {
            inner: Some(deliverer),
        })
    }

    /// Whether events are recorded at all.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts delivering what was just recorded (the outbox is also read
    /// every second, so a missed call only delays).
    pub fn wake(&self) {
        if let Some(inner) = &self.inner {
            inner.wake.notify_one();
        }
    }
}

/// The outbox row for `event` with `body`, due at `due`.
pub fn outbox_row<'a>(event: &'a Event, body: &'a str, due: DateTime<Utc>) -> NewEvent<'a> {
    NewEvent {
        id: &event.id,
        kind: event.kind.as_str(),
        body,
        due_ms: due.timestamp_millis(),
    }
}

/// Replaces the body of an event nobody has tried to deliver yet and makes
/// it due now (a handoff's summary, written after the event).
pub async fn complete(
    webhooks: &Webhooks,
    db: &Database,
    event: &Event,
    body: &str,
) -> Result<bool, sqlx::Error> {
    let done = outbox::complete_body(db, &event.id, body, Utc::now().timestamp_millis()).await?;
    webhooks.wake();
    Ok(done)
}

impl Deliverer {
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut purged_at: Option<tokio::time::Instant> = None;
        let mut failing = false;
        while !shutdown.is_cancelled() {
            let now_ms = Utc::now().timestamp_millis();
            let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
            match outbox::claim_due(&self.db, now_ms, lease_ms, BATCH).await {
                Ok(claimed) if !claimed.is_empty() => {
                    failing = false;
                    let attempts = futures::future::join_all(
                        claimed.into_iter().map(|event| self.attempt(event)),
                    );
                    tokio::select! {
                        _ = attempts => {}
                        // The claims lapse after the lease: another server (or
                        // this one, restarted) tries those events again.
                        () = shutdown.cancelled() => break,
                    }
                    continue;
                }
                Ok(_) => failing = false,
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "webhook outbox unreadable; retrying every second");
                    }
                    failing = true;
                }
            }
            if purged_at.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
                purged_at = Some(tokio::time::Instant::now());
                let keep_ms = i64::try_from(KEEP_DELIVERED.as_millis()).unwrap_or(i64::MAX);
                if let Err(err) = outbox::purge_delivered(&self.db, now_ms - keep_ms).await {
                    tracing::warn!(error = %err, "purging delivered webhook events failed");
                }
            }
            let wait = match outbox::next_due_ms(&self.db).await {
                Ok(Some(due)) => {
                    let ms = u64::try_from(due - Utc::now().timestamp_millis()).unwrap_or(0);
                    Duration::from_millis(ms).min(IDLE_POLL)
                }
                _ => IDLE_POLL,
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One delivery attempt of a claimed event, and its settlement.
    async fn attempt(&self, event: ClaimedEvent) {
        let label = EventType::label(&event.event_type);
        let sent = self
            .client
            .deliver(
                &event.event_id,
                &event.event_type,
                &event.body,
                Utc::now().timestamp(),
            )
            .await;
        let now_ms = Utc::now().timestamp_millis();
        let attempts = u32::try_from(event.attempts).unwrap_or(u32::MAX);
        let settlement = match sent {
            Ok(()) => {
                let waited = u64::try_from(now_ms - event.created_ms).unwrap_or(0);
                self.metrics.webhook_delivery(
                    label,
                    "delivered",
                    Some(Duration::from_millis(waited)),
                );
                tracing::debug!(event_id = %event.event_id, attempts, "webhook delivered");
                Settlement::Delivered { at_ms: now_ms }
            }
            Err(err) if attempts >= self.max_attempts => {
                self.metrics.webhook_delivery(label, "failed", None);
                tracing::error!(
                    event_id = %event.event_id, event_type = %event.event_type, attempts,
                    error = %err, "webhook event given up after its last attempt"
                );
                Settlement::Failed {
                    at_ms: now_ms,
                    error: err.to_string(),
                }
            }
            Err(err) => {
                self.metrics.webhook_delivery(label, "retry", None);
                let delay = backoff(self.retry_base, attempts, fastrand::f64());
                tracing::warn!(
                    event_id = %event.event_id, event_type = %event.event_type, attempts,
                    max_attempts = self.max_attempts, retry_in_secs = delay.as_secs_f64(),
                    error = %err, "webhook delivery failed; will retry"
                );
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                Settlement::Retry {
                    next_ms: now_ms.saturating_add(delay_ms),
                    error: err.to_string(),
                }
            }
        };
        if let Err(err) = outbox::settle(&self.db, event.id, settlement).await {
            // The claim lapses and the event is tried again: at least once.
            tracing::warn!(event_id = %event.event_id, error = %err, "recording a webhook attempt failed");
        }
    }
}

/// The wait after failed attempt number `attempt` (from 1): `base`
/// doubled per earlier attempt, at most an hour, scaled by a factor between
/// 0.5 and 1 from `unit` (uniform in 0..1), so that receivers coming back are
/// not hit by every server's retries at once.
pub fn backoff(base: Duration, attempt: u32, unit: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    let full = base
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF.max(base));
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(20);
        assert_eq!(backoff(base, 1, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(base, 1, 0.0), Duration::from_secs(10));
        assert_eq!(backoff(base, 2, 1.0), Duration::from_secs(40));
        assert_eq!(backoff(base, 4, 1.0), Duration::from_secs(160));
        assert_eq!(backoff(base, 9, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(base, 99, 0.0), Duration::from_secs(1800));
    }

    #[test]
    fn an_event_renders_with_its_id_type_and_time() {
        let event = Event::new(EventType::ConversationClosed);
        let body: Value = serde_json::from_str(&event.render(&json!({"x": 1}))).unwrap_or_default();
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body["type"], "conversation.closed");
        assert_eq!(body["data"]["x"], 1);
        assert!(
            body["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
    }
}
