//! The measurements, one function per section of `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::fake::{self, Behaviour, Fake};
use crate::load::{self, RateResult, SseConnection, Turn};
use crate::server::Server;

/// Everything the sections share.
pub struct Bench {
    pub fake: Fake,
    pub server: Server,
    pub http: reqwest::Client,
    pub quick: bool,
    pub users: Users,
    /// A conversation of `reader` holding 50 client-visible messages.
    pub conversation_50: i64,
    tags: AtomicU64,
}

/// Signed-in users, each with a fresh token.
pub struct Users {
    /// Reads `/me` and the 50-message conversation.
    pub reader: String,
    /// Owns 200 conversations.
    pub lister: String,
    /// Creates conversations and streams.
    pub writer: String,
    /// Logs in during the flood.
    pub flood_email: String,
}

pub const FLOOD_PASSWORD: &str = "correct horse battery staple";

/// Seeding answers and the `/create` benchmark: 100 tokens, no delay.
pub const FAST_ANSWER: Behaviour = Behaviour {
    ttft: Duration::ZERO,
    tokens: 100,
    delay: Duration::ZERO,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sse => "SSE",
            Self::WebSocket => "WebSocket",
        }
    }
}

impl Bench {
    /// Signs up the users and builds the conversations the reads need.
    pub async fn seed(fake: Fake, server: Server, quick: bool) -> Result<Self, String> {
        let http = reqwest::Client::new();
        fake.set_behaviour(FAST_ANSWER);
        let base = server.base();
        let signup = |email: &'static str| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let answer: Value = http
                    .post(format!("{base}/api/auth/signup"))
                    .json(
                        &json!({"email": email, "name": "Bench User", "password": FLOOD_PASSWORD}),
                    )
                    .send()
                    .await
                    .map_err(|err| format!("signup: {err}"))?
                    .json()
                    .await
                    .map_err(|err| format!("signup: {err}"))?;
                answer["data"]["access_token"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("signup {email} failed: {answer}"))
            }
        };
        let (reader, lister, writer, _) = tokio::try_join!(
            signup("reader@bench.example.com"),
            signup("lister@bench.example.com"),
            signup("writer@bench.example.com"),
            signup("flood@bench.example.com"),
        )?;
        let bench = Self {
            fake,
            server,
            http,
            quick,
            users: Users {
                reader,
                lister,
                writer,
                flood_email: "flood@bench.example.com".into(),
            },
            conversation_50: 0,
            tags: AtomicU64::new(0),
        };
        // 25 turns = 50 client-visible messages (plus the hidden system message).
        let mut conversation = None;
        for turn in 0..25 {
            let question = format!("How do I dispute a card payment, step {turn}?");
            let id = bench
                .create(&bench.users.reader, conversation, &question)
                .await?;
            conversation = Some(id);
        }
        let conversation_50 = conversation.ok_or("no conversation")?;
        // 200 conversations for the listing.
        let lister = bench.users.lister.clone();
        let created: Vec<Result<i64, String>> = futures::stream::iter(0..200)
            .map(|i| {
                let bench = &bench;
                let lister = lister.clone();
                async move {
                    bench
                        .create(&lister, None, &format!("Question number {i} about my card"))
                        .await
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        if let Some(Err(err)) = created.into_iter().find(Result::is_err) {
            return Err(err);
        }
        Ok(Self {
            conversation_50,
            ..bench
        })
    }

    /// One `/api/chat/create` turn; returns the conversation id.
    pub async fn create(
        &self,
        token: &str,
        conversation: Option<i64>,
        question: &str,
    ) -> Result<i64, String> {
        let answer: Value = self
            .http
            .post(format!("{}/api/chat/create", self.server.base()))
            .bearer_auth(token)
            .json(&json!({"conversation_id": conversation, "message": question}))
            .send()
            .await
            .map_err(|err| format!("create: {err}"))?
            .json()
            .await
            .map_err(|err| format!("create: {err}"))?;
        answer["data"]["conversation_id"]
            .as_i64()
            .ok_or_else(|| format!("create failed: {answer}"))
    }

    fn next_tag(&self) -> String {
        fake::tag(self.tags.fetch_add(1, Ordering::Relaxed))
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// A little of everything, so caches, pools and allocator arenas are warm.
    pub async fn warm_up(&self) -> Result<(), String> {
        let addr = self.addr();
        let short = Duration::from_millis(if self.quick { 300 } else { 1000 });
        for request in [
            load::raw_request("GET", "/health", addr, None, None),
            load::raw_request("GET", "/api/auth/me", addr, Some(&self.users.reader), None),
        ] {
            load::request_flood(addr, 16, request, 200, Duration::ZERO, short).await;
        }
        self.fake.set_behaviour(Behaviour {
            ttft: Duration::from_millis(5),
            tokens: 20,
            delay: Duration::from_millis(5),
        });
        for transport in [Transport::Sse, Transport::WebSocket] {
            let outcome = self
                .stream_burst(transport, 200, Duration::from_millis(200))
                .await;
            if outcome.failed > 0 {
                return Err(format!(
                    "warm-up: {} of 200 {} streams failed: {:?}",
                    outcome.failed,
                    transport.name(),
                    outcome.failures
                ));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ section 1

    pub async fn http_rates(&self) -> Vec<(String, RateResult)> {
        let addr = self.addr();
        let (warmup, duration) = if self.quick {
            (Duration::from_millis(300), Duration::from_secs(1))
        } else {
            (Duration::from_secs(1), Duration::from_secs(5))
        };
        let create_body =
            r#"{"conversation_id": null, "message": "How do I dispute a card payment?"}"#;
        let messages_path = format!("/api/chat/messages/{}", self.conversation_50);
        let cases = [
            (
                "GET /health",
                load::raw_request("GET", "/health", addr, None, None),
                200,
            ),
            (
                "GET /api/auth/me",
                load::raw_request("GET", "/api/auth/me", addr, Some(&self.users.reader), None),
                200,
            ),
            (
                "GET /api/chat/messages/{id} (50 messages)",
                load::raw_request("GET", &messages_path, addr, Some(&self.users.reader), None),
                200,
            ),
            (
                "GET /api/chat/conversations (200 conversations)",
                load::raw_request(
                    "GET",
                    "/api/chat/conversations",
                    addr,
                    Some(&self.users.lister),
                    None,
                ),
                200,
            ),
            (
                "POST /api/chat/create (new conversation, 100-token answer)",
                load::raw_request(
                    "POST",
                    "/api/chat/create",
                    addr,
                    Some(&self.users.writer),
                    Some(create_body),
                ),
                200,
            ),
        ];
        self.fake.set_behaviour(FAST_ANSWER);
        let mut results = Vec::new();
        for (name, request, expect) in cases {
            let result = load::request_flood(addr, 64, request, expect, warmup, duration).await;
            println!(
                "  {name}: {:.0} req/s, p99 {:.2} ms, {} errors",
                result.per_second(),
                result.latency.value_at_quantile(0.99) as f64 / 1000.0,
                result.errors
            );
            results.push((name.to_string(), result));
            // Let the writes of the /create flood settle before the next case.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        results
    }

    // ------------------------------------------------------------ section 2

    /// Added time to first delta with `concurrency` streams in flight.
    pub async fn ttft(self: &Arc<Self>, transport: Transport, concurrency: usize) -> TtftResult {
        let (behaviour, stagger, measure) = if concurrency == 1 {
            let behaviour = Behaviour {
                ttft: Duration::from_millis(20),
                tokens: 5,
                delay: Duration::from_millis(2),
            };
            (behaviour, Duration::ZERO, Duration::ZERO)
        } else {
            let behaviour = Behaviour {
                ttft: Duration::from_millis(20),
                tokens: 100,
                delay: Duration::from_millis(20),
            };
            let measure = Duration::from_secs(if self.quick { 3 } else { 10 });
            (behaviour, behaviour.ideal(), measure)
        };
        let sequential_turns = if self.quick { 30 } else { 300 };
        self.fake.set_behaviour(behaviour);
        self.fake.clear_timings();
        let expected: Arc<str> = self.fake.answer_text();
        let start = Instant::now();
        let measure_from = start + stagger;
        let measure_until = measure_from + measure;
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let expected = expected.clone();
            let bench = self.clone();
            let begin = start + stagger.mul_f64(worker as f64 / concurrency as f64);
            workers.push(tokio::spawn(async move {
                tokio::time::sleep_until(begin.into()).await;
                let mut samples = Vec::new();
                let mut errors = Vec::new();
                let mut conversation = None;
                let mut sse = None;
                for turn in 0.. {
                    let now = Instant::now();
                    if concurrency == 1 && turn >= sequential_turns {
                        break;
                    }
                    if concurrency > 1 && now >= measure_until {
                        break;
                    }
                    // A new conversation every 10 turns keeps histories realistic.
                    if turn % 10 == 0 {
                        conversation = None;
                    }
                    let tag = bench.next_tag();
                    let question = format!("How long does a card dispute take? {tag}");
                    let outcome = bench
                        .one_turn(transport, &mut sse, conversation, &question)
                        .await;
                    let counted = concurrency == 1 || now >= measure_from;
                    let timing = bench.fake.take_timing(&tag);
                    match outcome {
                        Ok(turn) if *turn.text == *expected => {
                            conversation = turn.conversation_id;
                            match TtftSample::new(&turn, timing) {
                                Some(sample) if counted => samples.push(sample),
                                Some(_) => {}
                                None => errors.push("no timing".to_string()),
                            }
                        }
                        Ok(_) => errors.push("answer text differs".into()),
                        Err(err) => {
                            sse = None;
                            conversation = None;
                            errors.push(err);
                        }
                    }
                }
                (samples, errors)
            }));
        }
        let mut result = TtftResult {
            transport,
            concurrency,
            behaviour,
            added: load::histogram(),
            seen: load::histogram(),
            before_search: load::histogram(),
            search_to_model: load::histogram(),
            relay: load::histogram(),
            errors: Vec::new(),
        };
        for joined in futures::future::join_all(workers).await {
            let Ok((samples, errors)) = joined else {
                result.errors.push("worker panicked".into());
                continue;
            };
            for sample in samples {
                load::record(&mut result.added, sample.added);
                load::record(&mut result.seen, sample.seen);
                load::record(&mut result.before_search, sample.before_search);
                load::record(&mut result.search_to_model, sample.search_to_model);
                load::record(&mut result.relay, sample.relay);
            }
            result.errors.extend(errors);
        }
        result
    }

    /// One turn over `transport`; SSE reuses its keep-alive connection.
    async fn one_turn(
        &self,
        transport: Transport,
        sse: &mut Option<SseConnection>,
        conversation: Option<i64>,
        question: &str,
    ) -> Result<Turn, String> {
        let token = &self.users.writer;
        match transport {
            Transport::Sse => {
                let connection = match sse {
                    Some(connection) => connection,
                    None => sse.insert(SseConnection::open(self.addr()).await?),
                };
                connection.turn(token, conversation, question).await
            }
            Transport::WebSocket => {
                load::ws_turn(self.addr(), token, conversation.unwrap_or(0), question).await
            }
        }
    }

    // ------------------------------------------------------------ section 3

    /// `streams` simultaneous streams, each a new conversation on its own connection.
    pub async fn concurrent_streams(
        &self,
        transport: Transport,
        streams: usize,
        tokens: usize,
        delay: Duration,
    ) -> StreamRun {
        let behaviour = Behaviour {
            ttft: delay,
            tokens,
            delay,
        };
        self.fake.set_behaviour(behaviour);
        let ideal = behaviour.ideal();
        // All streams open before the first ones finish.
        let ramp = Duration::from_secs_f64(streams as f64 / 2000.0).min(ideal / 2);
        let before = self.server.stats();
        let bench_before = crate::server::proc_stats(std::process::id()).unwrap_or_default();
        self.server.reset_peak();
        let sampling = Arc::new(AtomicUsize::new(1));
        let sampler = {
            let sampling = sampling.clone();
            let pid = self.server.pid;
            tokio::spawn(async move {
                let (mut peak_rss, mut peak_fds) = (0u64, 0usize);
                let mut tick = 0u64;
                while sampling.load(Ordering::Relaxed) == 1 {
                    if let Some(stats) = crate::server::proc_stats(pid) {
                        peak_rss = peak_rss.max(stats.rss_kib);
                    }
                    if tick.is_multiple_of(10) {
                        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                            .map_or(0, |dir| dir.count());
                        peak_fds = peak_fds.max(fds);
                    }
                    tick += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (peak_rss, peak_fds)
            })
        };
        let outcome = self.stream_burst(transport, streams, ramp).await;
        sampling.store(0, Ordering::Relaxed);
        let after = self.server.stats();
        let bench_after = crate::server::proc_stats(std::process::id()).unwrap_or_default();
        let (sampled_rss, peak_fds) = sampler.await.unwrap_or((0, 0));
        StreamRun {
            transport,
            streams,
            behaviour,
            ramp,
            outcome,
            rss_before_kib: before.rss_kib,
            peak_rss_kib: after.hwm_kib.max(sampled_rss),
            cpu_secs: after.cpu_secs - before.cpu_secs,
            bench_cpu_secs: bench_after.cpu_secs - bench_before.cpu_secs,
            peak_fds,
        }
    }

    /// Opens `streams` turns spread evenly over `ramp` and waits for all of them.
    async fn stream_burst(
        &self,
        transport: Transport,
        streams: usize,
        ramp: Duration,
    ) -> BurstOutcome {
        let expected = self.fake.answer_text();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let addr = self.addr();
        let token: Arc<str> = self.users.writer.clone().into();
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..streams {
            let begin = start + ramp.mul_f64(i as f64 / streams as f64);
            let (open, peak, token, expected) =
                (open.clone(), peak.clone(), token.clone(), expected.clone());
            let question = format!("How do I dispute a card payment? {}", self.next_tag());
            tasks.spawn(async move {
                tokio::time::sleep_until(begin.into()).await;
                let started = Instant::now();
                let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now_open, Ordering::SeqCst);
                let limit = Duration::from_secs(120);
                let result = tokio::time::timeout(limit, async {
                    match transport {
                        Transport::Sse => {
                            let mut connection = SseConnection::open(addr).await?;
                            connection.turn(&token, None, &question).await
                        }
                        Transport::WebSocket => load::ws_turn(addr, &token, 0, &question).await,
                    }
                })
                .await
                .unwrap_or_else(|_| Err("timed out after 120 s".into()));
                open.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(turn) if *turn.text == *expected => Ok(turn.done - started),
                    Ok(turn) => Err(format!(
                        "answer text differs ({} of {} bytes)",
                        turn.text.len(),
                        expected.len()
                    )),
                    Err(err) => Err(err),
                }
            });
        }
        let mut outcome = BurstOutcome {
            completed: 0,
            failed: 0,
            failures: BTreeMap::new(),
            duration: load::histogram(),
            peak_open: 0,
        };
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(elapsed)) => {
                    outcome.completed += 1;
                    load::record(&mut outcome.duration, elapsed);
                }
                Ok(Err(reason)) => {
                    outcome.failed += 1;
                    // Group by the reason's first words.
                    let key: String = reason.chars().take(60).collect();
                    *outcome.failures.entry(key).or_default() += 1;
                }
                Err(err) => {
                    outcome.failed += 1;
                    *outcome.failures.entry(format!("task: {err}")).or_default() += 1;
                }
            }
        }
        outcome.peak_open = peak.load(Ordering::SeqCst);
        outcome
    }

    // ------------------------------------------------------------ section 4

    pub async fn login_flood(&self) -> LoginFlood {
        let addr = self.addr();
        let duration = Duration::from_secs(if self.quick { 2 } else { 10 });
        let body = json!({"email": self.users.flood_email, "password": FLOOD_PASSWORD}).to_string();
        let login = load::raw_request("POST", "/api/auth/login", addr, None, Some(&body));
        let probe = async {
            let request = load::raw_request("GET", "/health", addr, None, None);
            let mut latency = load::histogram();
            let mut errors = 0u64;
            let mut connection = load::RawConnection::open(addr).await.ok();
            let end = Instant::now() + duration;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < end {
                tick.tick().await;
                let Some(open) = connection.as_mut() else {
                    errors += 1;
                    connection = load::RawConnection::open(addr).await.ok();
                    continue;
                };
                let sent = Instant::now();
                match open.request(&request).await {
                    Ok(200) => load::record(&mut latency, sent.elapsed()),
                    _ => {
                        errors += 1;
                        connection = None;
                    }
                }
            }
            (latency, errors)
        };
        let before = self.server.stats();
        let flood_started = Instant::now();
        let (logins, (health, health_errors)) = tokio::join!(
            load::request_flood(addr, 50, login, 200, Duration::ZERO, duration),
            probe
        );
        let after = self.server.stats();
        LoginFlood {
            logins,
            health,
            health_errors,
            cpu_cores: (after.cpu_secs - before.cpu_secs) / flood_started.elapsed().as_secs_f64(),
            duration,
        }
    }

    // ------------------------------------------------------------ section 5

    /// Prompt sizes sent upstream at turns 1, 5, 10 and 20 of one conversation.
    pub async fn prompt_cost(&self) -> Result<Vec<(usize, fake::PromptStat)>, String> {
        self.fake.set_behaviour(FAST_ANSWER);
        let mut conversation = None;
        let mut stats = Vec::new();
        for turn in 1..=20 {
            let tag = self.next_tag();
            let question =
                format!("Question {turn}: what are the fees for an international transfer? {tag}");
            conversation = Some(
                self.create(&self.users.writer, conversation, &question)
                    .await?,
            );
            if [1, 5, 10, 20].contains(&turn) {
                let stat = self
                    .fake
                    .prompt(&tag)
                    .ok_or_else(|| format!("turn {turn} never reached the model"))?;
                stats.push((turn, stat));
            }
        }
        self.fake.clear_prompts();
        Ok(stats)
    }
}

/// Section 2 result.
pub struct TtftResult {
    pub transport: Transport,
    pub concurrency: usize,
    pub behaviour: Behaviour,
    /// Server time to first delta minus upstream time to first token.
    pub added: Histogram<u64>,
    /// Time to first delta seen by the client.
    pub seen: Histogram<u64>,
    /// Question sent → search request at the fake (auth, conversation, guardrails).
    pub before_search: Histogram<u64>,
    /// Search request → completion request at the fake (search answer, history, storing the question, prompt).
    pub search_to_model: Histogram<u64>,
    /// First token sent by the fake → first delta at the client.
    pub relay: Histogram<u64>,
    pub errors: Vec<String>,
}

/// One measured turn of section 2.
struct TtftSample {
    seen: Duration,
    added: Duration,
    before_search: Duration,
    search_to_model: Duration,
    relay: Duration,
}

impl TtftSample {
    fn new(turn: &Turn, timing: Option<fake::Timing>) -> Option<Self> {
        let timing = timing?;
        let (received, first_token) = (timing.received?, timing.first_token?);
        // With local retrieval (`--kb-records`) the fake sees no search: all
        // the time before the model request counts as "before the search".
        let search = timing.search.unwrap_or(received);
        let first_delta = turn.first_delta?;
        let seen = first_delta.checked_duration_since(turn.sent)?;
        Some(Self {
            seen,
            added: seen.saturating_sub(first_token.checked_duration_since(received)?),
            before_search: search.saturating_duration_since(turn.sent),
            search_to_model: received.saturating_duration_since(search),
            relay: first_delta.saturating_duration_since(first_token),
        })
    }
}

/// How a burst of streams went.
pub struct BurstOutcome {
    pub completed: usize,
    pub failed: usize,
    pub failures: BTreeMap<String, usize>,
    /// Connect → `done`, per completed stream.
    pub duration: Histogram<u64>,
    pub peak_open: usize,
}

/// Section 3 result.
pub struct StreamRun {
    pub transport: Transport,
    pub streams: usize,
    pub behaviour: Behaviour,
    pub ramp: Duration,
    pub outcome: BurstOutcome,
    pub rss_before_kib: u64,
    pub peak_rss_kib: u64,
    pub cpu_secs: f64,
    /// CPU time of the bench process (fake upstream + clients) during the run.
    pub bench_cpu_secs: f64,
    pub peak_fds: usize,
}

impl StreamRun {
    pub fn tokens_streamed(&self) -> usize {
        self.outcome.completed * self.behaviour.tokens
    }

    pub fn rss_per_stream_kib(&self) -> f64 {
        self.peak_rss_kib.saturating_sub(self.rss_before_kib) as f64 / self.streams as f64
    }

    pub fn cpu_micros_per_token(&self) -> f64 {
        self.cpu_secs * 1e6 / self.tokens_streamed().max(1) as f64
    }
}

/// Section 4 result.
pub struct LoginFlood {
    pub logins: RateResult,
    pub health: Histogram<u64>,
    pub health_errors: u64,
    /// Server CPU time per wall-clock second, logins in flight included.
    pub cpu_cores: f64,
    pub duration: Duration,
}
