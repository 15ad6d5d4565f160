//! Section 10 with `--judge-url`: the held-out split through the rules and
//! then, for what they let through, the server's own judge client
//! (`eloquent::services::judge::Judge`: the fixed prompt, the `<message>`
//! wrapper, the strict JSON parse) against an OpenAI-compatible endpoint,
//! exactly as a turn would with `GUARDRAIL_JUDGE=model`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eloquent::config::{JudgeConfig, ModelConfig, Secret};
use eloquent::metrics::Metrics;
use eloquent::services::guardrails::{Verdict, check};
use eloquent::services::judge::{Judge, Ruling};
use hdrhistogram::Histogram;

use crate::guardrails::{Counts, Text};

/// Judge calls in flight at once.
const CONCURRENCY: usize = 8;

pub struct JudgedRun {
    pub url: String,
    /// Per category (attack?, rules alone, rules then judge) on the held-out split.
    pub categories: Vec<(String, bool, Counts, Counts)>,
    /// Judge calls that failed (error, timeout, not the JSON asked for).
    pub failures: usize,
    /// Microseconds per judge call.
    pub latency: Histogram<u64>,
}

/// The held-out `texts` through the rules and the judge at `url`.
pub async fn run(url: &str, texts: Vec<Text>) -> Result<JudgedRun, String> {
    let config = JudgeConfig {
        model: ModelConfig {
            api_key: Some(Secret::new("bench")),
            base_url: url.trim_end_matches('/').to_string(),
            model: "judge".into(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(10),
            streams_per_connection: 100,
        },
        timeout: Duration::from_secs(10),
        // A failure is counted apart, not as a verdict.
        fail_closed: true,
    };
    let judge = Judge::new(Some(&config), Arc::new(Metrics::new()))
        .map_err(|err| format!("judge client: {err}"))?
        .ok_or("judge client: no key")?;
    let held_out: Vec<Text> = texts.into_iter().filter(|text| text.held_out).collect();
    let queue = Arc::new(std::sync::Mutex::new(held_out));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (judge, queue) = (judge.clone(), queue.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut queue| queue.pop());
                let Some(text) = next else { break };
                let (by_rules, ruling, took) = match check(&text.text) {
                    Verdict::Refuse { .. } => (true, None, None),
                    Verdict::Allow { redacted } => {
                        let started = Instant::now();
                        let ruling = judge.rule(&redacted).await;
                        (false, Some(ruling), Some(started.elapsed()))
                    }
                };
                done.push((text, by_rules, ruling, took));
            }
            done
        }));
    }
    let mut by_category: BTreeMap<(bool, String), (Counts, Counts)> = BTreeMap::new();
    let mut latency = Histogram::<u64>::new(3).map_err(|err| err.to_string())?;
    let mut failures = 0;
    for worker in workers {
        for (text, by_rules, ruling, took) in worker.await.map_err(|err| err.to_string())? {
            if let Some(took) = took {
                latency
                    .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))
                    .map_err(|err| err.to_string())?;
            }
            failures += usize::from(ruling == Some(Ruling::Unavailable));
            let judged = by_rules || ruling == Some(Ruling::Attack);
            let (rules, both) = by_category
                .entry((!text.attack, text.category.clone()))
                .or_default();
            for (counts, refused) in [(rules, by_rules), (both, judged)] {
                counts.total += 1;
                counts.right += usize::from(refused == text.attack);
            }
        }
    }
    let categories = by_category
        .into_iter()
        .map(|((benign, name), (rules, both))| (name, !benign, rules, both))
        .collect();
    Ok(JudgedRun {
        url: url.to_string(),
        categories,
        failures,
        latency,
    })
}

/// The section's markdown.
pub fn render(run: &JudgedRun) -> String {
    let rate = |counts: Counts| {
        counts
            .rate()
            .map_or("–".to_string(), |rate| format!("{rate:.1}%"))
    };
    let mut out = format!(
        "\n### Rules, then the judge (held-out split)\n\n\
         Every held-out text through `check`, and each one the rules let through (redacted, as stored) through the \
         server's judge client (`GUARDRAIL_JUDGE=model`) against `{}`. Attack categories count refusals, benign ones \
         messages let through.\n\n| category | kind | texts | rules alone | rules, then the judge |\n|---|---|---:|---:|---:|\n",
        run.url
    );
    for (name, attack, rules, both) in &run.categories {
        let kind = if *attack {
            "attack: refused"
        } else {
            "benign: passed"
        };
        out.push_str(&format!(
            "| {name} | {kind} | {} | {} | {} |\n",
            rules.total,
            rate(*rules),
            rate(*both)
        ));
    }
    out.push_str(&format!(
        "\nJudge calls: {} (failed: {}), p50 {:.1} ms, p99 {:.1} ms over loopback HTTP.\n",
        run.latency.len(),
        run.failures,
        run.latency.value_at_quantile(0.5) as f64 / 1000.0,
        run.latency.value_at_quantile(0.99) as f64 / 1000.0,
    ));
    out
}
