//! Prometheus metrics (`GET /metrics`, contract section 16), with
//! `prometheus-client`: one registry per application (no process-global
//! recorder, so test servers in one process do not share counters).
//!
//! Labels carry no user data: routes are templates (`/api/chat/messages/{id}`),
//! never paths; transports, outcomes, scopes and kinds are fixed words.
//! A turn resolves its labelled counters once ([`TurnMeter`]), so recording
//! a streamed token is one atomic add.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TurnLabels {
    transport: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    event: &'static str,
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 1 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Seconds, 1 ms to about 9 hours (webhook deliveries wait through retries).
fn latency_long() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

/// Every metric the server records.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<RouteLabels>,
    turns: Family<TurnLabels, Counter>,
    ungrounded: Family<TransportLabels, Counter>,
    first_token: Histograms<TransportLabels>,
    tokens: Family<TransportLabels, Counter>,
    retrieval_duration: Histograms<BackendLabels>,
    retrieval_hits: Family<BackendLabels, Counter>,
    retrieval_failures: Family<BackendLabels, Counter>,
    rate_limited: Family<ScopeLabels, Counter>,
    streams: Gauge,
    db_connections: Family<StateLabels, Gauge>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    redis: Family<StateLabels, Gauge>,
    redis_failures: Counter,
    handoffs: Family<TriggerLabels, Counter>,
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    webhook_latency: Histogram,
    judge_verdicts: Family<VerdictLabels, Counter>,
    judge_duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("eloquent");
        let metrics = Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            turns: Family::default(),
            ungrounded: Family::default(),
            first_token: Family::new_with_constructor(latency),
            tokens: Family::default(),
            retrieval_duration: Family::new_with_constructor(latency),
            retrieval_hits: Family::default(),
            retrieval_failures: Family::default(),
            rate_limited: Family::default(),
            streams: Gauge::default(),
            db_connections: Family::default(),
            upstream_errors: Family::default(),
            redis: Family::default(),
            redis_failures: Counter::default(),
            handoffs: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_latency: latency_long(),
            judge_verdicts: Family::default(),
            judge_duration: latency(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head by route template and method (streams: until they start)",
            metrics.http_duration.clone(),
        );
        registry.register(
            "chat_turns",
            "Chat turns by transport and outcome",
            metrics.turns.clone(),
        );
        registry.register(
            "chat_ungrounded_turns",
            "Chat turns no knowledge-base record cleared the minimum score for",
            metrics.ungrounded.clone(),
        );
        registry.register(
            "chat_time_to_first_token_seconds",
            "From the turn's start to its first streamed token",
            metrics.first_token.clone(),
        );
        registry.register(
            "chat_tokens_streamed",
            "Answer deltas streamed to clients",
            metrics.tokens.clone(),
        );
        registry.register(
            "retrieval_duration_seconds",
            "Retrieval of a turn's context by backend",
            metrics.retrieval_duration.clone(),
        );
        registry.register(
            "retrieval_hits",
            "Records retrieval gave turns (after the minimum score)",
            metrics.retrieval_hits.clone(),
        );
        registry.register(
            "retrieval_failures",
            "Retrievals that failed (the turn answered without context)",
            metrics.retrieval_failures.clone(),
        );
        registry.register(
            "rate_limited_requests",
            "Requests refused by a rate limit or the per-user stream cap, by scope",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "chat_streams_in_progress",
            "Answers being streamed now",
            metrics.streams.clone(),
        );
        registry.register(
            "db_connections",
            "Database connections in use and idle",
            metrics.db_connections.clone(),
        );
        registry.register(
            "upstream_errors",
            "Errors from the model upstream by kind",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "redis_state",
            "1 for the Redis state this server is in (disabled: no REDIS_URL)",
            metrics.redis.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis commands that failed or timed out (the server fell back to in-process state)",
            metrics.redis_failures.clone(),
        );
        registry.register(
            "handoffs",
            "Conversations handed to a person, by trigger (user_request, ungrounded, api)",
            metrics.handoffs.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by event type and result (delivered, retry, failed)",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_delivery_latency_seconds",
            "From an event's creation to its delivery (retries included)",
            metrics.webhook_latency.clone(),
        );
        registry.register(
            "guardrail_judge_verdicts",
            "Verdicts of the guardrail judge (GUARDRAIL_JUDGE=model): attack, benign, error, timeout",
            metrics.judge_verdicts.clone(),
        );
        registry.register(
            "guardrail_judge_duration_seconds",
            "Time the guardrail judge took per message",
            metrics.judge_duration.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// One verdict of the guardrail judge and how long it took.
    pub fn judge_verdict(&self, verdict: &'static str, took: Duration) {
        self.judge_verdicts
            .get_or_create(&VerdictLabels { verdict })
            .inc();
        self.judge_duration.observe(took.as_secs_f64());
    }

    /// A conversation handed to a person.
    pub fn handoff(&self, trigger: &'static str) {
        self.handoffs
            .get_or_create(&TriggerLabels { trigger })
            .inc();
    }

    /// One webhook delivery attempt; `latency` (from the event's creation)
    /// when it was delivered.
    pub fn webhook_delivery(
        &self,
        event: &'static str,
        result: &'static str,
        latency: Option<Duration>,
    ) {
        self.webhook_deliveries
            .get_or_create(&DeliveryLabels { event, result })
            .inc();
        if let Some(latency) = latency {
            self.webhook_latency.observe(latency.as_secs_f64());
        }
    }

    /// One HTTP request: `route` is the matched template, never the path.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A turn that ended without streaming (`refused`) or failed before its
    /// first token (`upstream_error`, `timeout`).
    pub fn turn_ended(&self, transport: &'static str, outcome: &'static str) {
        self.turns
            .get_or_create(&TurnLabels { transport, outcome })
            .inc();
    }

    pub fn rate_limited(&self, scope: &'static str) {
        self.rate_limited
            .get_or_create(&ScopeLabels { scope })
            .inc();
    }

    pub fn retrieval(&self, backend: &'static str, took: Duration, hits: usize, failed: bool) {
        let labels = BackendLabels { backend };
        self.retrieval_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.retrieval_hits
            .get_or_create(&labels)
            .inc_by(hits as u64);
        if failed {
            self.retrieval_failures.get_or_create(&labels).inc();
        }
    }

    /// An error from the model upstream (`kind` names the class, never the
    /// message).
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: "model",
                kind,
            })
            .inc();
    }

    /// Starts metering a streaming turn: counts it in progress until the
    /// meter is dropped; a meter dropped without [`TurnMeter::ended`] counts
    /// the turn as `client_gone`.
    pub fn stream_started(
        &self,
        transport: &'static str,
        started: Instant,
        grounded: bool,
    ) -> TurnMeter {
        let labels = TransportLabels { transport };
        if !grounded {
            self.ungrounded.get_or_create(&labels).inc();
        }
        self.streams.inc();
        TurnMeter {
            started,
            transport,
            first_token: Some(self.first_token.get_or_create_owned(&labels)),
            tokens: self.tokens.get_or_create_owned(&labels),
            turns: self.turns.clone(),
            streams: self.streams.clone(),
            outcome: None,
            ttft: None,
        }
    }

    /// The exposition, with the gauges read at scrape time set first.
    /// `redis`: the state this server is in (`disabled`, `connected`,
    /// `disconnected`) and the Redis commands failed so far.
    pub fn render(
        &self,
        connections: (usize, usize),
        redis: (&'static str, u64),
    ) -> Result<String, std::fmt::Error> {
        let (in_use, idle) = connections;
        self.db_connections
            .get_or_create(&StateLabels { state: "in_use" })
            .set(in_use as i64);
        self.db_connections
            .get_or_create(&StateLabels { state: "idle" })
            .set(idle as i64);
        let (redis_state, redis_failures) = redis;
        for state in ["disabled", "connected", "disconnected"] {
            self.redis
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == redis_state));
        }
        self.redis_failures
            .inner()
            .store(redis_failures, std::sync::atomic::Ordering::Relaxed);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The metrics of one streaming turn.
pub struct TurnMeter {
    started: Instant,
    transport: &'static str,
    first_token: Option<Histogram>,
    tokens: Counter,
    turns: Family<TurnLabels, Counter>,
    streams: Gauge,
    outcome: Option<&'static str>,
    ttft: Option<Duration>,
}

impl TurnMeter {
    /// A delta went out.
    pub fn token(&mut self) {
        if let Some(first) = self.first_token.take() {
            let ttft = self.started.elapsed();
            first.observe(ttft.as_secs_f64());
            self.ttft = Some(ttft);
        }
        self.tokens.inc();
    }

    /// From the turn's start to its first token, once there was one.
    pub fn ttft(&self) -> Option<Duration> {
        self.ttft
    }

    /// How the turn ended: `completed`, `upstream_error`, `timeout`,
    /// `storage_error`.
    pub fn ended(&mut self, outcome: &'static str) {
        self.outcome = Some(outcome);
    }
}

impl Drop for TurnMeter {
    fn drop(&mut self) {
        self.streams.dec();
        let outcome = self.outcome.unwrap_or("client_gone");
        self.turns
            .get_or_create(&TurnLabels {
                transport: self.transport,
                outcome,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The families the exposition declares (`# TYPE name kind`).
    fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect()
    }

    #[test]
    fn every_metric_the_dashboard_and_the_alerts_query_exists() {
        // A family shows in the exposition once it has a series: give each one.
        let metrics = Metrics::new();
        drop(metrics.stream_started("sse", Instant::now(), false));
        metrics.http_request("GET", "/health", 200, Duration::from_millis(1));
        metrics.rate_limited("chat");
        metrics.retrieval("local", Duration::from_millis(1), 1, true);
        metrics.upstream_error("status");
        metrics.handoff("api");
        metrics.judge_verdict("benign", Duration::ZERO);
        metrics.webhook_delivery("handoff.requested", "delivered", Some(Duration::ZERO));
        let declared = families(&metrics.render((0, 0), ("disabled", 0)).unwrap_or_default());
        let dashboard = include_str!("../deploy/grafana/eloquent.json");
        let readme = include_str!("../README.md");
        let mut queried = 0;
        for text in [dashboard, readme] {
            for (at, _) in text.match_indices("eloquent_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // Family names in the README's table and series in queries.
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                if family == "eloquent_" {
                    continue;
                }
                queried += 1;
                assert!(
                    declared.iter().any(|(declared, kind)| {
                        declared == family
                            && (name == family
                                || (kind == "counter" && name.ends_with("_total"))
                                || (kind == "histogram" && !name.ends_with("_total")))
                    }),
                    "{name} is queried but not exposed: {declared:?}"
                );
            }
        }
        assert!(queried > 10, "the dashboard queries the metrics");
    }

    #[test]
    fn a_turn_is_counted_once_with_its_outcome_and_tokens() {
        let metrics = Metrics::new();
        {
            let mut meter = metrics.stream_started("sse", Instant::now(), false);
            meter.token();
            meter.token();
            meter.ended("completed");
        }
        drop(metrics.stream_started("websocket", Instant::now(), true));
        metrics.http_request(
            "GET",
            "/api/chat/messages/{id}",
            200,
            Duration::from_millis(3),
        );
        let text = metrics.render((1, 2), ("disabled", 0)).unwrap_or_default();
        for line in [
            "eloquent_chat_turns_total{transport=\"sse\",outcome=\"completed\"} 1",
            "eloquent_chat_turns_total{transport=\"websocket\",outcome=\"client_gone\"} 1",
            "eloquent_chat_tokens_streamed_total{transport=\"sse\"} 2",
            "eloquent_chat_ungrounded_turns_total{transport=\"sse\"} 1",
            "eloquent_chat_time_to_first_token_seconds_count{transport=\"sse\"} 1",
            "eloquent_chat_streams_in_progress 0",
            "eloquent_db_connections{state=\"in_use\"} 1",
            "eloquent_http_requests_total{method=\"GET\",route=\"/api/chat/messages/{id}\",status=\"200\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
