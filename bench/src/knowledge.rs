//! Section 8: the local knowledge base at 50,000 records. `eloquent kb
//! ingest` (release build) times the ingestion and reports its peak RSS;
//! the retrieval stage of a turn (`search_local`, the code the server runs
//! before calling the model) is timed in this process against the same file.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use eloquent::config::DatabaseTarget;
use eloquent::services::knowledge::local::LocalSearch;
use eloquent::services::knowledge::synonyms::BUILT_IN;
use eloquent::storage::{Database, PoolSettings};
use hdrhistogram::Histogram;

/// Topic words records are built from (a support site's vocabulary), plus a
/// long tail of rarer generated words, as real documentation has.
const TOPICS: &[&str] = &[
    "card",
    "payment",
    "transfer",
    "account",
    "fee",
    "limit",
    "loan",
    "savings",
    "interest",
    "statement",
    "dispute",
    "chargeback",
    "refund",
    "merchant",
    "pin",
    "password",
    "login",
    "security",
    "fraud",
    "phishing",
    "travel",
    "abroad",
    "currency",
    "exchange",
    "atm",
    "withdrawal",
    "deposit",
    "salary",
    "overdraft",
    "mortgage",
    "insurance",
    "app",
    "notification",
    "identity",
    "verification",
    "address",
    "tax",
    "invoice",
    "direct",
    "debit",
    "standing",
    "order",
    "iban",
    "swift",
    "contactless",
    "wallet",
    "apple",
    "google",
    "virtual",
    "freeze",
    "block",
    "replace",
    "stolen",
    "lost",
    "delivery",
    "business",
    "joint",
    "minor",
    "closing",
];

/// Retrieval quality per kind of question: (kind, questions, answered right
/// at each of [`THRESHOLDS`]).
pub type Quality = Vec<(String, usize, Vec<usize>)>;

/// The minimum scores the quality is measured at (the default among them).
pub const THRESHOLDS: [f64; 6] = [0.2, 0.25, 0.3, 0.35, 0.4, 0.45];

/// One backend's ingestion and search timings.
pub struct BackendRun {
    pub backend: &'static str,
    pub ingest: Duration,
    pub ingest_peak_rss_kib: u64,
    pub database_bytes: u64,
    pub searches: Histogram<u64>,
}

impl BackendRun {
    pub fn records_per_second(&self, records: usize) -> f64 {
        records as f64 / self.ingest.as_secs_f64().max(1e-9)
    }
}

/// One measured section-8 run: SQLite, and PostgreSQL with `--postgres`.
pub struct KnowledgeRun {
    pub quality: Quality,
    pub records: usize,
    pub queries: usize,
    pub backends: Vec<BackendRun>,
}

/// xorshift64*: reproducible record text without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn word(&mut self) -> String {
        if self.below(3) == 0 {
            TOPICS[self.below(TOPICS.len())].to_string()
        } else {
            // Zipf-ish long tail: low numbers far more often.
            let span = 1 + self.below(20_000);
            let rank = self.below(span);
            format!("term{rank}")
        }
    }

    fn sentence(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| self.word())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Writes `records` JSON Lines records (question/answer, about 500
/// characters each) and the queries to time against them.
fn generate(path: &Path, records: usize) -> Result<Vec<String>, String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = String::with_capacity(records * 600);
    let mut queries = Vec::new();
    for n in 0..records {
        let question = format!("How do I {}?", rng.sentence(6));
        let answer = format!("{}.", rng.sentence(70));
        if n % 50 == 0 {
            queries.push(question.clone());
        }
        let line = serde_json::json!({
            "id": format!("bench-{n}"),
            "question": question,
            "answer": answer,
            "category": TOPICS[n % TOPICS.len()],
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    // Off-topic and short questions too: they scan different postings.
    queries.extend(
        [
            "my card was stolen abroad what do I do",
            "fees for a transfer to another currency",
            "what is the weather like tomorrow",
            "pin",
        ]
        .iter()
        .map(|query| query.to_string()),
    );
    std::fs::write(path, out).map_err(|err| format!("write {}: {err}", path.display()))?;
    Ok(queries)
}

/// Runs `eloquent kb ingest` on the file: its wall time and peak RSS (the
/// child's `VmHWM`, read while it runs).
async fn run_ingest(
    binary: &Path,
    workdir: &Path,
    url: &str,
    file: &Path,
) -> Result<(Duration, u64), String> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(["kb", "ingest"])
        .arg(file)
        .current_dir(workdir)
        .env("DATABASE_URL", url)
        .env("RETRIEVAL_BACKEND", "local")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("run {}: {err}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    let mut peak = 0;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let hwm = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .unwrap_or(0);
            peak = peak.max(hwm);
        }
        match tokio::time::timeout(Duration::from_millis(20), child.wait()).await {
            Ok(status) => break status.map_err(|err| format!("wait: {err}"))?,
            Err(_) => continue,
        }
    };
    let elapsed = started.elapsed();
    if !status.success() {
        return Err(format!("eloquent kb ingest failed: {status}"));
    }
    Ok((elapsed, peak))
}

/// Ingests `records` generated records into a fresh SQLite file (and a
/// fresh database on the PostgreSQL server at `postgres`) and times the
/// retrieval stage on it.
pub async fn run(
    binary: &Path,
    dir: &Path,
    records: usize,
    postgres: Option<&str>,
) -> Result<KnowledgeRun, String> {
    let file = dir.join("kb-bench.jsonl");
    let db_path = dir.join("kb-bench.db");
    let queries = generate(&file, records)?;
    let url = format!("sqlite:///{}", db_path.display());
    let mut backends = vec![time_backend(binary, dir, "SQLite", &url, &file, &queries).await?];
    if let Some(server) = postgres {
        let name = format!("eloquent_bench_kb_{}", std::process::id());
        let run = crate::postgres::with_fresh_database(server, &name, async |url| {
            time_backend(binary, dir, "PostgreSQL", &url, &file, &queries).await
        })
        .await?;
        backends.push(run);
    }
    let quality = evaluate(binary, dir).await?;
    Ok(KnowledgeRun {
        quality,
        records,
        queries: queries.len(),
        backends,
    })
}

/// `eloquent kb ingest` of `file` into `url`, then the searches timed.
async fn time_backend(
    binary: &Path,
    dir: &Path,
    backend: &'static str,
    url: &str,
    file: &Path,
    queries: &[String],
) -> Result<BackendRun, String> {
    let (ingest, ingest_peak_rss_kib) = run_ingest(binary, dir, url, file).await?;
    let target = DatabaseTarget::parse(url).map_err(|err| format!("{url}: {err}"))?;
    let db = Database::connect(&target, PoolSettings::small(Duration::from_secs(10)))
        .await
        .map_err(|err| format!("open: {err}"))?;
    let database_bytes = match (&db, &target) {
        (Database::Postgres(pool), _) => {
            sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())")
                .fetch_one(pool)
                .await
                .map(|bytes| bytes as u64)
                .unwrap_or(0)
        }
        (_, DatabaseTarget::SqliteFile(path)) => {
            std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
        }
        _ => 0,
    };
    let search = LocalSearch::new(db.clone(), Some(BUILT_IN));
    let mut searches =
        Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).map_err(|err| err.to_string())?;
    // One warm-up pass (page cache, the vocabulary), then three timed passes.
    for pass in 0..4 {
        for query in queries {
            let started = Instant::now();
            search
                .search(query, 5)
                .await
                .map_err(|err| format!("search: {err}"))?;
            if pass > 0 {
                let _ = searches.record(started.elapsed().as_micros().max(1) as u64);
            }
        }
    }
    db.close().await;
    Ok(BackendRun {
        backend,
        ingest,
        ingest_peak_rss_kib,
        database_bytes,
        searches,
    })
}

/// Retrieval quality on the held-out questions of `kb/eval/questions.jsonl`
/// against the shipped sample (`kb/sample`), at the default minimum score:
/// paraphrases, typos and guide-only questions count when the expected
/// record is among the top 3 hits (hit@3); off-topic ones when no hit
/// clears the minimum (the turn is ungrounded).
async fn evaluate(binary: &Path, dir: &Path) -> Result<Quality, String> {
    let root = Path::new(crate::ROOT);
    let db_path = dir.join("kb-eval.db");
    let url = format!("sqlite:///{}", db_path.display());
    run_ingest(binary, dir, &url, &root.join("kb/sample")).await?;
    let db = Database::connect(
        &DatabaseTarget::SqliteFile(db_path),
        PoolSettings::small(Duration::from_secs(10)),
    )
    .await
    .map_err(|err| format!("open: {err}"))?;
    let search = LocalSearch::new(db.clone(), Some(BUILT_IN));
    let mut quality: Quality = Vec::new();
    for (set, file) in [
        ("development", "questions.jsonl"),
        ("held-out", "heldout.jsonl"),
    ] {
        let questions = std::fs::read_to_string(root.join("kb/eval").join(file))
            .map_err(|err| format!("kb/eval/{file}: {err}"))?;
        for line in questions.lines().filter(|line| !line.trim().is_empty()) {
            let entry: serde_json::Value =
                serde_json::from_str(line).map_err(|err| format!("eval line {line:?}: {err}"))?;
            let question = entry["question"].as_str().unwrap_or_default();
            let kind = format!("{set}: {}", entry["kind"].as_str().unwrap_or("unknown"));
            let top = search
                .search(question, 3)
                .await
                .map_err(|err| format!("search: {err}"))?;
            let rights: Vec<usize> = THRESHOLDS
                .iter()
                .map(|minimum| {
                    let hits: Vec<_> = top.iter().filter(|hit| hit.score >= *minimum).collect();
                    let right = match entry["expect"].as_str() {
                        None => hits.is_empty(),
                        Some(expected) => match expected.strip_prefix("guide:") {
                            Some(section) => hits.iter().any(|hit| {
                                hit.title
                                    .as_deref()
                                    .is_some_and(|title| title.ends_with(&format!("> {section}")))
                            }),
                            None => hits.iter().any(|hit| hit.id == expected),
                        },
                    };
                    usize::from(right)
                })
                .collect();
            let at_default = THRESHOLDS
                .iter()
                .position(|minimum| *minimum == eloquent::config::DEFAULT_LOCAL_MIN_SCORE)
                .unwrap_or(0);
            let right = rights[at_default] == 1;
            match quality.iter_mut().find(|(name, _, _)| *name == kind) {
                Some((_, total, good)) => {
                    *total += 1;
                    for (sum, one) in good.iter_mut().zip(&rights) {
                        *sum += one;
                    }
                }
                None => quality.push((kind, 1, rights)),
            }
            if !right && std::env::var_os("BENCH_KB_MISSES").is_some() {
                let all = search.search(question, 3).await.unwrap_or_default();
                let found: Vec<String> = all
                    .iter()
                    .map(|hit| format!("{} {:.2}", hit.id, hit.score))
                    .collect();
                eprintln!("miss ({set}) {question:?} -> {found:?}");
            }
        }
    }
    db.close().await;
    Ok(quality)
}

/// Fills the server's own database with `records` generated records before
/// it starts (`--kb-records`), so sections 1–3 run with local retrieval on a
/// knowledge base of that size.
pub async fn fill_server_database(
    binary: &Path,
    dir: &Path,
    database_url: &str,
    records: usize,
) -> Result<Duration, String> {
    let file = dir.join("kb-server.jsonl");
    generate(&file, records)?;
    let (elapsed, _) = run_ingest(binary, dir, database_url, &file).await?;
    let _ = std::fs::remove_file(&file);
    Ok(elapsed)
}
