//! `bench`: the benchmark harness behind `BENCHMARKS.md`.
//!
//! Starts the release server binary (`eloquent`, next to this one in the
//! workspace's target directory) as its
//! own process on a fresh SQLite database, a fake OpenAI + Pinecone upstream
//! and a load generator (both inside this process), all on loopback; runs
//! the sections; prints the markdown tables and writes `BENCHMARKS.md`.
//!
//! ```sh
//! cargo build --release --bins && cargo run --release --bin bench
//! ```

mod adoption;
mod analytics;
mod fake;
mod guardrails;
mod judged;
mod knowledge;
mod load;
mod postgres;
mod report;
mod sections;
mod server;
mod webhooks;

/// The repository root: the server crate, whose workspace this crate is in.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// The sections a run without `--sections` runs.
const DEFAULT_SECTIONS: [u8; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::Results;
use crate::sections::{Bench, Transport};
use crate::server::Server;

const USAGE: &str = "\
usage: cargo run --release --bin bench -- [options]

  --quick              short smoke run (under a minute); prints, writes no file unless --out
  --sections LIST      comma-separated sections to run, e.g. 1,3 (default: all; 6 with any of 1-9)
                         1 request rates   2 added time to first delta   3 concurrent streams
                         4 login flood     5 prompt cost                 6 memory
                         7 upgrading in place (adopting a Python-service database)
                         8 local knowledge base (ingest and search 50,000 records)
                         9 admin analytics over 1,000,000 messages
                         10 guardrails: attack refusal and benign pass rates, rule latency (no
                            server; run bench/data/guardrails/fetch.sh first for the attack set)
                         11 webhook delivery (handoff events to a receiver on loopback)
  --adoption-messages N  messages in section 7's generated database (default 100000)
  --kb-records N       serve with RETRIEVAL_BACKEND=local on a knowledge base of N generated
                         records (ingested before the server starts) instead of the fake
                         Pinecone: sections 1-3 then include local retrieval
  --analytics-messages N  messages in section 9's generated database (default 1000000)
  --postgres URL       also run sections 7-9 and 11 on PostgreSQL: a server URL whose user may
                         create databases (the bench creates and drops its own)
  --streams LIST       stream counts for section 3 at 100 ms/token (default 5000,10000)
  --tokens N           tokens per answer in section 3 (default 100)
  --judge-url URL      section 10 also sends what the rules let through to the judge at this
                         OpenAI-compatible base URL (e.g. bench/judge/run.sh's stand-in)
  --judge-delay-ms N   turn the guardrail judge on (GUARDRAIL_JUDGE=model, on the fake
                         upstream), which answers benign after N ms
  --env NAME=VALUE     extra server environment (repeatable), e.g. --env DB_POOL_SIZE=4
  --upstream h2|http1  how the server reaches the fake upstream: TLS with HTTP/2 (default, as
                         api.openai.com) or plain HTTP/1.1 (as a local vLLM/Ollama; one
                         connection per stream, so at most ~9,900 streams under a 20,000
                         open-files limit)
  --out PATH           where to write the markdown (default: BENCHMARKS.md in the crate
                         root for a full run of all sections)
  --no-write           print only
";

struct Options {
    quick: bool,
    sections: BTreeSet<u8>,
    streams: Vec<usize>,
    tokens: usize,
    server_env: Vec<(String, String)>,
    /// `--judge-delay-ms`: the guardrail judge on, answered by the fake after this.
    judge_delay: Option<std::time::Duration>,
    /// `--judge-url`: section 10 also runs the rules, then this judge.
    judge_url: Option<String>,
    upstream_h2: bool,
    adoption_messages: i64,
    analytics_messages: i64,
    kb_records: usize,
    postgres: Option<String>,
    out: Option<PathBuf>,
    no_write: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        sections: DEFAULT_SECTIONS.into_iter().collect(),
        streams: vec![5000, 10_000],
        tokens: 100,
        server_env: Vec::new(),
        judge_delay: None,
        judge_url: None,
        upstream_h2: true,
        adoption_messages: 100_000,
        analytics_messages: 1_000_000,
        kb_records: 0,
        postgres: None,
        out: None,
        no_write: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--no-write" => options.no_write = true,
            "--sections" => {
                let list = value("--sections")?;
                options.sections = list
                    .split(',')
                    .map(|s| s.trim().parse::<u8>().ok().filter(|n| (1..=11).contains(n)))
                    .collect::<Option<_>>()
                    .ok_or(format!("--sections: bad list {list:?}"))?;
                if options.sections.iter().any(|n| *n < 10) {
                    options.sections.insert(6);
                }
            }
            "--streams" => {
                let list = value("--streams")?;
                options.streams = list
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().ok().filter(|n| *n > 0))
                    .collect::<Option<_>>()
                    .ok_or(format!("--streams: bad list {list:?}"))?;
            }
            "--tokens" => {
                options.tokens = value("--tokens")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--tokens: expected a positive number")?;
            }
            "--judge-delay-ms" => {
                let ms: u64 = value("--judge-delay-ms")?
                    .parse()
                    .map_err(|_| "--judge-delay-ms: expected a number of milliseconds")?;
                options.judge_delay = Some(std::time::Duration::from_millis(ms));
                options
                    .server_env
                    .push(("GUARDRAIL_JUDGE".to_string(), "model".to_string()));
            }
            "--env" => {
                let pair = value("--env")?;
                let (name, value) = pair
                    .split_once('=')
                    .ok_or(format!("--env: expected NAME=VALUE, got {pair:?}"))?;
                options
                    .server_env
                    .push((name.to_string(), value.to_string()));
            }
            "--upstream" => match value("--upstream")?.as_str() {
                "h2" => options.upstream_h2 = true,
                "http1" => options.upstream_h2 = false,
                other => return Err(format!("--upstream: {other:?} is not h2 or http1")),
            },
            "--adoption-messages" => {
                options.adoption_messages = value("--adoption-messages")?
                    .parse()
                    .ok()
                    .filter(|n| *n >= 10)
                    .ok_or("--adoption-messages: expected a number of at least 10")?;
            }
            "--analytics-messages" => {
                options.analytics_messages = value("--analytics-messages")?
                    .parse()
                    .ok()
                    .filter(|n| *n >= 10)
                    .ok_or("--analytics-messages: expected a number of at least 10")?;
            }
            "--postgres" => options.postgres = Some(value("--postgres")?),
            "--judge-url" => options.judge_url = Some(value("--judge-url")?),
            "--kb-records" => {
                options.kb_records = value("--kb-records")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--kb-records: expected a positive number")?;
            }
            "--out" => options.out = Some(PathBuf::from(value("--out")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(err) => {
            if !err.is_empty() {
                eprintln!("{err}\n");
            }
            eprint!("{USAGE}");
            return if err.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    if cfg!(debug_assertions) {
        return Err(
            "this is a debug build: run `cargo build --release --bins && cargo run --release --bin bench`"
                .into(),
        );
    }
    let started = Instant::now();
    if options.sections.iter().all(|n| *n >= 10) {
        // Sections 10 and 11 need no server.
        let list: Vec<String> = options.sections.iter().map(u8::to_string).collect();
        let mut results = Results {
            quick: options.quick,
            command: format!(
                "cargo run --release --bin bench -- --sections {}",
                list.join(",")
            ),
            ..Results::default()
        };
        let dir = std::env::temp_dir().join(format!("eloquent-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("temp dir: {err}"))?;
        serverless_sections(&options, &dir, &mut results).await?;
        results.elapsed = started.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        return write_report(&options, &results);
    }
    let binary = server::server_binary()?;
    let stale = server::stale_sources(&binary);
    if !stale.is_empty() {
        eprintln!(
            "warning: {} is older than {} source file(s) (e.g. {}): run `cargo build --release --bins` first",
            binary.display(),
            stale.len(),
            stale[0].display()
        );
    }
    // The server inherits this limit: 10,000 streams need 20,000+ descriptors in all.
    let nofile = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|err| format!("raising the open-files limit: {err}"))?;
    println!("open-files limit: {nofile}");

    let fake = fake::Fake::start().await?;
    if let Some(delay) = options.judge_delay {
        fake.set_judge_delay(delay);
    }
    let dir = std::env::temp_dir().join(format!("eloquent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|err| format!("temp dir: {err}"))?;
    let ca_path = dir.join("fake-ca.pem");
    std::fs::write(&ca_path, &fake.ca_pem).map_err(|err| format!("write CA: {err}"))?;
    let (upstream, upstream_name) = if options.upstream_h2 {
        (
            format!("https://{}", fake.tls_addr),
            "TLS 1.3 + HTTP/2 via ALPN, as api.openai.com and Pinecone are reached, allowing 100 concurrent streams per connection (the least RFC 9113 asks servers to allow); the server multiplexes up to `UPSTREAM_STREAMS_PER_CONNECTION` (100) requests on each connection and opens another when those are full",
        )
    } else {
        (
            format!("http://{}", fake.plain_addr),
            "plain HTTP/1.1, as a local vLLM or Ollama; one connection per concurrent stream",
        )
    };
    let mut results_notes: Vec<String> = Vec::new();
    let env: Vec<(String, String)> = [
        (
            "DATABASE_URL",
            format!("sqlite:///{}", dir.join("bench.db").display()),
        ),
        ("OPENAI_API_KEY", "sk-bench-not-a-real-key".into()),
        ("OPENAI_BASE_URL", format!("{upstream}/v1")),
        ("OPENAI_MODEL", "gpt-4o".into()),
        ("PINECONE_API_KEY", "pc-bench-key".into()),
        ("PINECONE_HOST", upstream.clone()),
        (
            "JWT_SECRET",
            "bench-secret-0123456789abcdef0123456789abcdef".into(),
        ),
        ("RATE_LIMIT_AUTH_PER_MINUTE", "0".into()),
        ("RATE_LIMIT_CHAT_PER_MINUTE", "0".into()),
        // A few users carry the whole load; the total cap stays at its default.
        ("MAX_STREAMS_PER_USER", "0".into()),
        // The fake's CA, through the standard variable the TLS verifier reads.
        ("SSL_CERT_FILE", ca_path.display().to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .chain(options.server_env.iter().cloned())
    .collect();
    let mut env = env;
    if options.kb_records > 0 {
        let url = env
            .iter()
            .find(|(name, _)| name == "DATABASE_URL")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        let took = knowledge::fill_server_database(&binary, &dir, &url, options.kb_records).await?;
        println!(
            "local knowledge base: {} records ingested in {took:?}",
            options.kb_records
        );
        env.push(("RETRIEVAL_BACKEND".into(), "local".into()));
        results_notes.push(format!(
            "Served with `RETRIEVAL_BACKEND=local` on {} generated knowledge-base records (`--kb-records`): every turn's retrieval is the local search, not the fake Pinecone.",
            options.kb_records
        ));
    }
    let server = Server::start(&binary, &dir, &env).await?;
    println!(
        "server pid {} on {} (log {}), upstream {upstream}",
        server.pid,
        server.addr,
        server.log.display()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut results = Results {
        quick: options.quick,
        upstream: upstream_name.to_string(),
        command: "cargo build --release --bins && cargo run --release --bin bench".into(),
        ..Results::default()
    };
    results.notes.append(&mut results_notes);
    if !options.server_env.is_empty() {
        results.notes.push(format!(
            "Extra server environment: {}.",
            options
                .server_env
                .iter()
                .map(|(name, value)| format!("`{name}={value}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    results.memory.startup_kib = server.stats().rss_kib;
    println!("idle RSS after startup: {} KiB", results.memory.startup_kib);

    println!("seeding users and conversations...");
    let bench = Arc::new(Bench::seed(fake, server, options.quick).await?);
    println!("warming up...");
    bench.warm_up().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    results.memory.warm_kib = bench.server.stats().rss_kib;
    results.memory.warm_allocator = bench.server.allocator_stats().await;
    println!("RSS after warm-up: {} KiB", results.memory.warm_kib);

    let sections = &options.sections;
    if sections.contains(&1) {
        println!("section 1: request rates");
        results.rates = bench.http_rates().await;
    }
    if sections.contains(&5) {
        println!("section 5: prompt cost");
        results.prompts = bench.prompt_cost().await?;
    }
    if sections.contains(&2) {
        println!("section 2: added time to first delta");
        for concurrency in [1, 200] {
            for transport in [Transport::Sse, Transport::WebSocket] {
                let result = bench.ttft(transport, concurrency).await;
                println!(
                    "  {} × {concurrency}: added p50 {} µs, p99 {} µs ({} turns, {} errors)",
                    transport.name(),
                    result.added.value_at_quantile(0.5),
                    result.added.value_at_quantile(0.99),
                    result.added.len(),
                    result.errors.len()
                );
                if let Some(first) = result.errors.first() {
                    results.notes.push(format!(
                        "section 2, {} × {concurrency}: {} errors, first: {first}",
                        transport.name(),
                        result.errors.len()
                    ));
                }
                results.ttft.push(result);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if sections.contains(&4) {
        println!("section 4: login flood");
        let flood = bench.login_flood().await;
        println!(
            "  {:.1} logins/s, /health p99 {} µs",
            flood.logins.per_second(),
            flood.health.value_at_quantile(0.99)
        );
        results.login = Some(flood);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if sections.contains(&3) {
        println!("section 3: concurrent streams");
        let mut runs = vec![(1000, Duration::from_millis(20))];
        if !options.quick {
            runs.extend(
                options
                    .streams
                    .iter()
                    .map(|&n| (n, Duration::from_millis(100))),
            );
        }
        for (streams, delay) in runs {
            for transport in [Transport::WebSocket, Transport::Sse] {
                let run = bench
                    .concurrent_streams(transport, streams, options.tokens, delay)
                    .await;
                println!(
                    "  {} × {streams} at {delay:?}/token: {} completed, {} failed, p99 {} ms, peak RSS {} MiB, {:.1} µs CPU/token",
                    transport.name(),
                    run.outcome.completed,
                    run.outcome.failed,
                    run.outcome.duration.value_at_quantile(0.99) / 1000,
                    run.peak_rss_kib / 1024,
                    run.cpu_micros_per_token()
                );
                results.streams.push(run);
                // Let the last answers be stored and connections close.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }

    // Section 6: idle again after everything, past the 5 s after which the
    // server closes the upstream connections it opened for the peak.
    let settle = Duration::from_secs(12);
    tokio::time::sleep(settle).await;
    results.memory.after_kib = Some(bench.server.stats().rss_kib);
    results.memory.after_allocator = bench.server.allocator_stats().await;
    results.memory.after_settle = settle;
    let (completions, searches, connections) = bench.fake.counts();
    results.notes.push(format!(
        "The fake upstream served {completions} chat completions and {searches} searches in this run, \
         over {connections} connections (it allows {} concurrent streams per HTTP/2 connection; \
         the server opens another connection when its open ones are full).",
        fake::MAX_STREAMS_PER_CONNECTION
    ));
    if !options.sections.is_superset(&(1..=8).collect()) {
        results
            .notes
            .push(format!("Sections run: {:?}.", options.sections));
    }
    let bench = Arc::into_inner(bench).ok_or("bench still shared")?;
    let log = bench.server.log.clone();
    let stopped = bench.server.stop().await;
    println!("server {stopped}");
    results.notes.extend(server::log_warnings(&log));
    if options.sections.contains(&7) {
        println!("section 7: upgrading in place");
        results.adoption = upgrade_in_place(&options, &binary, &dir).await?;
        if options.postgres.is_some() {
            results.notes.push(
                "Section 7's PostgreSQL row: run with `-- --postgres URL`, against the server that URL names \
                 (here the throwaway cluster `.ci/run` starts: PostgreSQL 15 on loopback, `fsync=off`, `synchronous_commit=off`)."
                    .to_string(),
            );
        }
    }
    if options.sections.contains(&8) {
        println!("section 8: local knowledge base");
        let records = if options.quick { 5_000 } else { 50_000 };
        let run = knowledge::run(&binary, &dir, records, options.postgres.as_deref()).await?;
        for backend in &run.backends {
            println!(
                "  {}: {} records ingested in {:?} ({:.0} records/s, peak RSS {} MiB); search p50 {} µs, p99 {} µs",
                backend.backend,
                run.records,
                backend.ingest,
                backend.records_per_second(run.records),
                backend.ingest_peak_rss_kib / 1024,
                backend.searches.value_at_quantile(0.5),
                backend.searches.value_at_quantile(0.99)
            );
        }
        for (kind, total, right) in &run.quality {
            println!(
                "  quality, {kind}: {right:?} of {total} at minimum scores {:?}",
                knowledge::THRESHOLDS
            );
        }
        results.knowledge = Some(run);
    }
    if options.sections.contains(&9) {
        println!("section 9: admin analytics");
        let messages = if options.quick {
            options.analytics_messages.min(100_000)
        } else {
            options.analytics_messages
        };
        let runs = analytics::run(&dir, messages, options.postgres.as_deref()).await?;
        for run in &runs {
            for (period, turns, latency) in &run.periods {
                println!(
                    "  {}: {} messages (filled in {:?}), {period}: {turns} turns, p50 {} µs, max {} µs",
                    run.backend,
                    run.messages,
                    run.fill,
                    latency.value_at_quantile(0.5),
                    latency.max()
                );
            }
        }
        results.analytics = runs;
    }
    serverless_sections(&options, &dir, &mut results).await?;
    results.elapsed = started.elapsed();
    write_report(&options, &results)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Sections 10 and 11, which start no server.
async fn serverless_sections(
    options: &Options,
    dir: &std::path::Path,
    results: &mut Results,
) -> Result<(), String> {
    if options.sections.contains(&10) {
        println!("section 10: guardrails");
        results.guardrails = Some(guardrails::run()?);
        if let Some(url) = &options.judge_url {
            println!("section 10: rules, then the judge at {url}");
            let run = judged::run(url, guardrails::texts()?).await?;
            print!("{}", judged::render(&run));
            results.judged = Some(run);
        }
    }
    if options.sections.contains(&11) {
        println!("section 11: webhook delivery");
        let runs = webhooks::run(dir, options.postgres.as_deref()).await?;
        for run in &runs {
            println!(
                "  {}: one at a time p50 {} µs, p99 {} µs; burst p50 {} µs, p99 {} µs in {:?}; retry wait {}–{} µs",
                run.backend,
                run.one_by_one.value_at_quantile(0.5),
                run.one_by_one.value_at_quantile(0.99),
                run.burst.value_at_quantile(0.5),
                run.burst.value_at_quantile(0.99),
                run.burst_elapsed,
                run.retry_wait.min(),
                run.retry_wait.max()
            );
        }
        results.webhooks = runs;
    }
    Ok(())
}

/// Prints the markdown and writes it where `--out` (or a full run) says.
fn write_report(options: &Options, results: &Results) -> Result<(), String> {
    let markdown = report::render(results);
    println!("\n{markdown}");
    let all_sections = options
        .sections
        .is_superset(&DEFAULT_SECTIONS.into_iter().collect());
    let out = match (&options.out, options.no_write) {
        (_, true) => None,
        (Some(path), false) => Some(path.clone()),
        (None, false) if all_sections && !options.quick => {
            Some(PathBuf::from(crate::ROOT).join("BENCHMARKS.md"))
        }
        (None, false) => None,
    };
    if let Some(path) = out {
        std::fs::write(&path, markdown)
            .map_err(|err| format!("write {}: {err}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Section 7 on a SQLite file, and on PostgreSQL when `--postgres` names a server.
async fn upgrade_in_place(
    options: &Options,
    binary: &std::path::Path,
    dir: &std::path::Path,
) -> Result<Vec<adoption::AdoptionRun>, String> {
    let messages = if options.quick {
        options.adoption_messages.min(10_000)
    } else {
        options.adoption_messages
    };
    let shape = adoption::Shape::for_messages(messages);
    let mut runs = Vec::new();
    let file = dir.join("python-chat.db");
    let url = format!("sqlite:///{}", file.display());
    let run = adoption::run(binary, dir, "sqlite", &url, &shape).await?;
    println!(
        "  sqlite: {} rows in {:?} ({:.0} rows/s), command {:?}",
        run.rows(),
        run.adoption,
        run.rows_per_second(),
        run.command
    );
    runs.push(run);
    if let Some(server) = &options.postgres {
        let name = format!("eloquent_bench_adopt_{}", std::process::id());
        let run = adoption::run_on_fresh_postgres(binary, dir, server, &name, &shape).await?;
        println!(
            "  postgres: {} rows in {:?} ({:.0} rows/s), command {:?}",
            run.rows(),
            run.adoption,
            run.rows_per_second(),
            run.command
        );
        runs.push(run);
    }
    Ok(runs)
}
