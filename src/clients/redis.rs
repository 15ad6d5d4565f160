//! Redis (`REDIS_URL`, contract section 15): what several servers share.
//!
//! One `ConnectionManager` (the `redis` crate's multiplexed connection that
//! reconnects by itself), created lazily so that a server starts while
//! Redis is down. Every command has a short deadline; a failure marks Redis
//! down (one warning per outage, a metric), and callers fall back to their
//! in-process state. Nothing here returns an error to a client: a caller
//! gets `None` and carries on.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Longest wait for one command; past it the command counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// While Redis is down, commands are not even tried (callers fall back at
/// once instead of waiting for a timeout each), except one probe this often.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The channel on which servers ask each other to stop a turn.
pub const STOP_CHANNEL: &str = "eloquent:stop";

/// A shared Redis, or its absence.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: ::redis::Client,
    manager: ConnectionManager,
    up: AtomicBool,
    failures: AtomicU64,
    /// When the last command failed (ms since `started`).
    failed_at: AtomicU64,
    started: std::time::Instant,
}

/// Redis as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisState {
    Disabled,
    Connected,
    Disconnected,
}

impl RedisState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }
}

impl Redis {
    /// A client for `url` (validated now; connected on first use, and again
    /// after every outage).
    pub fn new(url: &str) -> Result<Self, ::redis::RedisError> {
        let client = ::redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                manager,
                up: AtomicBool::new(true),
                failures: AtomicU64::new(0),
                failed_at: AtomicU64::new(0),
                started: std::time::Instant::now(),
            }),
        })
    }

    pub fn state(&self) -> RedisState {
        if self.inner.up.load(Ordering::Relaxed) {
            RedisState::Connected
        } else {
            RedisState::Disconnected
        }
    }

    /// Commands that failed since startup.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Runs `command` on the shared connection; `None` when Redis failed
    /// or took longer than [`COMMAND_TIMEOUT`].
    pub async fn run<T, F, Fut>(&self, what: &'static str, command: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        let now = self.inner.started.elapsed().as_millis() as u64;
        if !self.inner.up.load(Ordering::Relaxed) {
            let last = self.inner.failed_at.load(Ordering::Relaxed);
            let probe_due = now.saturating_sub(last) >= PROBE_EVERY.as_millis() as u64;
            // One caller probes; the others fall back at once.
            if !probe_due
                || self
                    .inner
                    .failed_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return None;
            }
        }
        let outcome = tokio::time::timeout(COMMAND_TIMEOUT, command(self.inner.manager.clone()))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|result| result.map_err(|err| err.to_string()));
        match outcome {
            Ok(value) => {
                if !self.inner.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis is reachable again: shared limits and turns resume");
                }
                Some(value)
            }
            Err(error) => {
                self.inner.failures.fetch_add(1, Ordering::Relaxed);
                self.inner.failed_at.store(
                    self.inner.started.elapsed().as_millis() as u64,
                    Ordering::Relaxed,
                );
                if self.inner.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        %error,
                        what,
                        "Redis is unreachable: limits fall back to this server's counts and \
                         turns can be resumed only here; reconnecting"
                    );
                }
                None
            }
        }
    }

    /// Calls `on_stop` with each turn id published on [`STOP_CHANNEL`],
    /// resubscribing after every lost connection, until `shutdown`.
    pub fn listen_for_stops(
        &self,
        shutdown: CancellationToken,
        on_stop: impl Fn(&str) + Send + Sync + 'static,
    ) {
        let client = self.inner.client.clone();
        tokio::spawn(async move {
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(STOP_CHANNEL).await?;
                    Ok::<_, ::redis::RedisError>(pubsub)
                };
                let pubsub = tokio::select! {
                    () = shutdown.cancelled() => return,
                    subscribed = subscribed => subscribed,
                };
                if let Ok(pubsub) = pubsub {
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            () = shutdown.cancelled() => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        if let Ok(turn_id) = message.get_payload::<String>() {
                            on_stop(&turn_id);
                        }
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}
