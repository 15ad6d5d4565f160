//! The `eloquent kb` commands: thin over `services::knowledge`, printing
//! for people (stderr) and scripts (stdout with `--json`, exit status).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use crate::config::{Config, RetrievalBackend};
use crate::services::knowledge::ingest::{self, Destination, FileOutcome, IngestReport};
use crate::services::knowledge::retrieve::{Retrieval, Retriever};
use crate::startup;
use crate::storage::knowledge;

/// Knowledge-base commands.
#[derive(Debug, Subcommand)]
pub enum KbCommand {
    /// Ingest Markdown/text guides, CSV FAQs and JSON Lines files (folders recursively).
    Ingest {
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also remove the records of these files that they no longer hold.
        #[arg(long)]
        replace: bool,
    },
    /// Show what retrieval returns for a query, with scores.
    Search {
        query: String,
        /// How many hits (default RETRIEVAL_TOP_K).
        #[arg(long)]
        top_k: Option<usize>,
        /// Drop hits scoring below this (default RETRIEVAL_MIN_SCORE).
        #[arg(long)]
        min_score: Option<f64>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// How many records and sources the local knowledge base holds.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Remove records by id, or every record of a source file.
    Remove {
        #[arg(required_unless_present = "source", conflicts_with = "source")]
        ids: Vec<String>,
        /// The source file whose records to remove (as it was ingested).
        #[arg(long)]
        source: Option<PathBuf>,
    },
}

/// Runs a `kb` command; the exit status a script can trust.
pub async fn kb(command: KbCommand, config: Config) -> ExitCode {
    match run(command, config).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: KbCommand, mut config: Config) -> Result<ExitCode, String> {
    if let KbCommand::Search {
        top_k: Some(top_k), ..
    } = &command
    {
        config.retrieval.top_k = (*top_k).max(1);
    }
    let db = startup::open_database(&config)
        .await
        .map_err(|err| err.to_string())?;
    let code = match command {
        KbCommand::Ingest { paths, replace } => {
            let retrieval = Retrieval::new(&config, &db).map_err(|err| err.to_string())?;
            let destination = match &retrieval.retriever {
                Retriever::Pinecone(client) if !replace => Destination::Pinecone(client),
                Retriever::Pinecone(_) => {
                    return Err("kb ingest --replace works on the local knowledge base only (RETRIEVAL_BACKEND is pinecone)".into());
                }
                Retriever::Local { .. } => Destination::Local { db: &db, replace },
                Retriever::None => {
                    return Err("kb ingest: RETRIEVAL_BACKEND is none; run it with RETRIEVAL_BACKEND=local or pinecone".into());
                }
            };
            eprintln!(
                "ingesting into the {} knowledge base",
                retrieval.backend_name()
            );
            ingest_paths(destination, &paths).await?
        }
        KbCommand::Search {
            query,
            top_k,
            min_score,
            json,
        } => {
            let mut retrieval = Retrieval::new(&config, &db).map_err(|err| err.to_string())?;
            if let Some(min_score) = min_score {
                retrieval.min_score = min_score;
            }
            if let (Retriever::Local { top_k: local, .. }, Some(wanted)) =
                (&mut retrieval.retriever, top_k)
            {
                *local = wanted;
            }
            let mut hits = retrieval.search(&query).await;
            hits.truncate(top_k.unwrap_or(usize::MAX));
            if json {
                let hits: Vec<_> = hits
                    .iter()
                    .map(|hit| {
                        json!({"id": hit.id, "score": hit.score, "title": hit.title,
                               "category": hit.category, "url": hit.url, "text": hit.text})
                    })
                    .collect();
                println!("{}", json!({ "hits": hits }));
            } else if hits.is_empty() {
                println!(
                    "no hit at or above the minimum score {}",
                    retrieval.min_score
                );
            } else {
                for hit in &hits {
                    println!(
                        "{:.3}  {}  {}",
                        hit.score,
                        hit.id,
                        hit.title.as_deref().unwrap_or("")
                    );
                }
            }
            ExitCode::SUCCESS
        }
        KbCommand::Stats { json } => {
            local_only(&config, "kb stats")?;
            let stats = knowledge::stats(&db).await.map_err(|err| err.to_string())?;
            if json {
                println!(
                    "{}",
                    json!({"records": stats.records, "sources": stats.sources})
                );
            } else {
                println!("{} records from {} sources", stats.records, stats.sources);
            }
            ExitCode::SUCCESS
        }
        KbCommand::Remove { ids, source } => {
            local_only(&config, "kb remove")?;
            let removed = match source {
                Some(source) => knowledge::remove_source(&db, &ingest::source_name(&source)).await,
                None => knowledge::remove_ids(&db, ids).await,
            }
            .map_err(|err| err.to_string())?;
            eprintln!("removed {removed} records");
            ExitCode::SUCCESS
        }
    };
    db.close().await;
    Ok(code)
}

/// The commands that work on the local tables only (for now).
fn local_only(config: &Config, command: &str) -> Result<(), String> {
    match config.retrieval.backend {
        RetrievalBackend::Local => Ok(()),
        RetrievalBackend::Pinecone => Err(format!(
            "{command} works on the local knowledge base only for now (RETRIEVAL_BACKEND is pinecone); \
             run it with RETRIEVAL_BACKEND=local"
        )),
        RetrievalBackend::None => Err(format!(
            "{command}: RETRIEVAL_BACKEND is none; run it with RETRIEVAL_BACKEND=local"
        )),
    }
}

async fn ingest_paths(destination: Destination<'_>, paths: &[PathBuf]) -> Result<ExitCode, String> {
    let files = ingest::collect_files(paths).map_err(|err| err.to_string())?;
    let listed = files.clone();
    let terminal = std::io::stderr().is_terminal();
    // indicatif draws only on a terminal; elsewhere each file gets a plain line.
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if !terminal {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let say = |line: String| {
        if terminal {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let mut report = IngestReport::default();
    for (path, format) in files {
        let name = path.display().to_string();
        bar.set_message(name.clone());
        let outcome = ingest::ingest_file(destination, &path, format)
            .await
            .map_err(|err| err.to_string())?;
        match &outcome {
            FileOutcome::Ingested {
                records,
                bad_rows,
                removed,
                ..
            } => {
                for bad in bad_rows {
                    say(format!("{name}:{}: {}", bad.line, bad.reason));
                }
                if !terminal {
                    say(format!(
                        "{name}: {records} records{}",
                        if *removed > 0 {
                            format!(", {removed} removed")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            FileOutcome::Skipped(reason) => say(format!("{name}: skipped: {reason}")),
            FileOutcome::Failed(reason) => say(format!("{name}: {reason}")),
        }
        report.add(&outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Destination::Local { db, replace: true } = destination {
        let gone = ingest::remove_missing(db, paths, &listed)
            .await
            .map_err(|err| format!("cannot write to the knowledge base: {err}"))?;
        for (source, removed) in gone {
            eprintln!("{source}: no longer there, {removed} records removed");
            report.removed += removed;
        }
    }
    eprintln!("ingested {report}");
    Ok(if report.records == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
