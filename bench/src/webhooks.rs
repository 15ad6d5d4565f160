//! Section 11: webhook delivery. Handoffs are requested in-process
//! (`Handoff::request`, the work of `POST /api/chat/handoff/{id}` but the
//! HTTP round trip and the reply message) on a fresh database, with the
//! server's own outbox deliverer posting to a receiver on loopback. Timed:
//! from the request to the receiver getting the event, one at a time and in
//! a burst; and the wait before a retry when the first attempt fails.
//! Without a model, so no summary is waited for (with one, an event leaves
//! when the model's summary is written, at most 20 s later).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use eloquent::config::{DatabaseTarget, HandoffConfig, Secret, WebhookConfig};
use eloquent::metrics::Metrics;
use eloquent::services::handoff::{Handoff, Trigger};
use eloquent::services::webhooks::Webhooks;
use eloquent::storage::Database;
use eloquent::storage::conversations;
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Events timed one at a time.
const ONE_BY_ONE: usize = 200;
/// Events in the burst, and how many are requested at once.
const BURST: usize = 2_000;
const BURST_CONCURRENCY: usize = 64;
/// Events whose first attempt fails, and the retry base they run with.
const RETRIED: usize = 50;
const RETRY_BASE: Duration = Duration::from_secs(1);

pub struct WebhookRun {
    pub backend: &'static str,
    /// Request → received, microseconds.
    pub one_by_one: Histogram<u64>,
    pub burst: Histogram<u64>,
    pub burst_elapsed: Duration,
    /// Failed first attempt → accepted retry, microseconds.
    pub retry_wait: Histogram<u64>,
}

/// Section 11 on SQLite, then on a throwaway PostgreSQL database when
/// `postgres` names a server.
pub async fn run(dir: &Path, postgres: Option<&str>) -> Result<Vec<WebhookRun>, String> {
    let mut runs = Vec::new();
    let file = dir.join("webhooks.db");
    runs.push(time_backend("sqlite", &DatabaseTarget::SqliteFile(file.clone())).await?);
    let _ = std::fs::remove_file(&file);
    if let Some(server) = postgres {
        let name = format!("eloquent_bench_webhooks_{}", std::process::id());
        let run = crate::postgres::with_fresh_database(server, &name, |url| async move {
            let target = DatabaseTarget::parse(&url).map_err(|err| format!("{url}: {err}"))?;
            time_backend("postgres", &target).await
        })
        .await?;
        runs.push(run);
    }
    Ok(runs)
}

/// What the receiver saw: by conversation id, when the accepted delivery
/// arrived, and when a refused first attempt did.
#[derive(Default)]
struct Receiver {
    accepted: Mutex<HashMap<i64, Instant>>,
    refused: Mutex<HashMap<i64, Instant>>,
    /// Refuse the first attempt of each event.
    refuse_first: std::sync::atomic::AtomicBool,
    seen: Mutex<HashSet<String>>,
    arrived: Notify,
}

async fn receive(State(receiver): State<Arc<Receiver>>, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let conversation = event["data"]["conversation"]["id"].as_i64().unwrap_or(-1);
    let id = event["id"].as_str().unwrap_or_default().to_string();
    let first = receiver
        .seen
        .lock()
        .map(|mut seen| seen.insert(id))
        .unwrap_or(false);
    let status = if first
        && receiver
            .refuse_first
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        if let Ok(mut refused) = receiver.refused.lock() {
            refused.insert(conversation, now);
        }
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        if let Ok(mut accepted) = receiver.accepted.lock() {
            accepted.insert(conversation, now);
        }
        StatusCode::OK
    };
    receiver.arrived.notify_waiters();
    status
}

impl Receiver {
    fn accepted_at(&self, conversation: i64) -> Option<Instant> {
        self.accepted
            .lock()
            .ok()
            .and_then(|accepted| accepted.get(&conversation).copied())
    }

    async fn wait_accepted(&self, conversation: i64) -> Result<Instant, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let arrived = self.arrived.notified();
            if let Some(at) = self.accepted_at(conversation) {
                return Ok(at);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(format!(
                    "event of conversation {conversation} not delivered in 60 s"
                ));
            }
        }
    }
}

/// A deliverer and a handoff service on `db` posting to `url`.
fn services(
    db: &Database,
    url: &str,
    retry_base: Duration,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<Handoff, String> {
    let metrics = Arc::new(Metrics::new());
    let config = WebhookConfig {
        url: url.to_string(),
        secret: Secret::new("whsec_bench".to_string()),
        max_attempts: 10,
        retry_base,
        timeout: Duration::from_secs(10),
    };
    let webhooks = Webhooks::start(
        db.clone(),
        Some(&config),
        metrics.clone(),
        tasks,
        shutdown.clone(),
    )
    .map_err(|err| format!("webhook client: {err}"))?;
    let handoff = HandoffConfig {
        after_ungrounded: 2,
        reply: String::new(),
        ack_reply: String::new(),
        agent_emails: Vec::new(),
    };
    Ok(Handoff::new(
        db.clone(),
        None,
        webhooks,
        handoff,
        metrics,
        tasks.clone(),
        shutdown.clone(),
    ))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new(3).map_err(|err| err.to_string())
}

async fn time_backend(
    backend: &'static str,
    target: &DatabaseTarget,
) -> Result<WebhookRun, String> {
    let db = crate::analytics::open_migrated(target, 8).await?;
    let receiver = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| format!("bind receiver: {err}"))?;
    let url = format!(
        "http://{}/hooks",
        listener.local_addr().map_err(|err| err.to_string())?
    );
    let app = Router::new()
        .route("/hooks", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let handoff = services(&db, &url, Duration::from_secs(20), &shutdown, &tasks)?;
    let conversation = || async {
        conversations::create(&db, None, "bench", "system")
            .await
            .map_err(|err| format!("create: {err}"))
    };

    // One at a time.
    let mut one_by_one = histogram()?;
    for _ in 0..ONE_BY_ONE {
        let record = conversation().await?;
        let asked = Instant::now();
        handoff
            .request(&record, Trigger::Api, None)
            .await
            .map_err(|err| format!("handoff: {err}"))?;
        let at = receiver.wait_accepted(record.id).await?;
        one_by_one
            .record(micros(at - asked))
            .map_err(|err| err.to_string())?;
    }

    // A burst: BURST handoffs, BURST_CONCURRENCY at a time.
    let mut records = Vec::with_capacity(BURST);
    for _ in 0..BURST {
        records.push(conversation().await?);
    }
    let started = Instant::now();
    let asked: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let chunks: Vec<Vec<_>> = records
        .chunks(BURST.div_ceil(BURST_CONCURRENCY))
        .map(<[_]>::to_vec)
        .collect();
    let mut workers = Vec::new();
    for chunk in chunks {
        let (handoff, asked) = (handoff.clone(), asked.clone());
        workers.push(tokio::spawn(async move {
            for record in chunk {
                let at = Instant::now();
                handoff
                    .request(&record, Trigger::Api, None)
                    .await
                    .map_err(|err| format!("handoff: {err}"))?;
                if let Ok(mut asked) = asked.lock() {
                    asked.insert(record.id, at);
                }
            }
            Ok::<_, String>(())
        }));
    }
    for worker in workers {
        worker.await.map_err(|err| err.to_string())??;
    }
    let mut burst = histogram()?;
    let mut last = started;
    for record in &records {
        let at = receiver.wait_accepted(record.id).await?;
        last = last.max(at);
        let from = asked
            .lock()
            .ok()
            .and_then(|asked| asked.get(&record.id).copied())
            .ok_or("burst: request time missing")?;
        burst
            .record(micros(at - from))
            .map_err(|err| err.to_string())?;
    }
    let burst_elapsed = last - started;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;

    // Retries: every first attempt refused, the retry base at 1 s.
    receiver
        .refuse_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let handoff = services(&db, &url, RETRY_BASE, &shutdown, &tasks)?;
    let mut retried = Vec::new();
    for _ in 0..RETRIED {
        let record = conversation().await?;
        handoff
            .request(&record, Trigger::Api, None)
            .await
            .map_err(|err| format!("handoff: {err}"))?;
        retried.push(record.id);
    }
    let mut retry_wait = histogram()?;
    for id in retried {
        let accepted = receiver.wait_accepted(id).await?;
        let refused = receiver
            .refused
            .lock()
            .ok()
            .and_then(|refused| refused.get(&id).copied())
            .ok_or("retry: no refused first attempt")?;
        retry_wait
            .record(micros(accepted - refused))
            .map_err(|err| err.to_string())?;
    }
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    db.close().await;
    Ok(WebhookRun {
        backend,
        one_by_one,
        burst,
        burst_elapsed,
        retry_wait,
    })
}

/// The section's markdown.
pub fn render(runs: &[WebhookRun]) -> String {
    let ms = |micros: u64| format!("{:.1} ms", micros as f64 / 1000.0);
    let mut out = String::from(
        "\n## 11. Webhook delivery\n\n\
         `Handoff::request` in-process (the work of `POST /api/chat/handoff/{id}` but HTTP and the reply \
         message) with the server's outbox deliverer posting `handoff.requested` to a receiver on loopback; \
         no model, so no summary is waited for. Time from the request to the receiver getting the event.\n\n\
         | backend | one at a time (200) p50 / p99 / max | burst of 2,000 (64 at once) p50 / p99 / max | burst throughput | first attempt refused → retry accepted (base 1 s) min / p50 / max |\n\
         |---|---|---|---|---|\n",
    );
    for run in runs {
        let throughput = BURST as f64 / run.burst_elapsed.as_secs_f64().max(1e-9);
        out.push_str(&format!(
            "| {} | {} / {} / {} | {} / {} / {} | {:.0} events/s | {} / {} / {} |\n",
            run.backend,
            ms(run.one_by_one.value_at_quantile(0.5)),
            ms(run.one_by_one.value_at_quantile(0.99)),
            ms(run.one_by_one.max()),
            ms(run.burst.value_at_quantile(0.5)),
            ms(run.burst.value_at_quantile(0.99)),
            ms(run.burst.max()),
            throughput,
            ms(run.retry_wait.min()),
            ms(run.retry_wait.value_at_quantile(0.5)),
            ms(run.retry_wait.max()),
        ));
    }
    out.push_str(
        "\nThe retry waits are the backoff's first step, `WEBHOOK_RETRY_BASE_SECS` × a random factor \
         in [0.5, 1], plus the deliverer's wake-up (it looks at the outbox when the next retry is due).\n",
    );
    out
}
