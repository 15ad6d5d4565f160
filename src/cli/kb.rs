//! The `eloquent kb` commands: thin over `services::knowledge`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::services::knowledge::ingest::{
    self, Destination, FileOutcome, Holdings, IngestReport, Removal,
};
use crate::services::knowledge::retrieve::{Retrieval, Retriever};
use crate::startup;
use crate::storage::Database;

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
            let destination = destination(&retrieval, &db, replace, "kb ingest")?;
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
            let retrieval = Retrieval::new(&config, &db).map_err(|err| err.to_string())?;
            let destination = destination(&retrieval, &db, false, "kb stats")?;
            let holdings = ingest::stats(destination)
                .await
                .map_err(|err| err.to_string())?;
            match (holdings, json) {
                (Holdings::Local(stats), true) => println!(
                    "{}",
                    json!({"records": stats.records, "sources": stats.sources})
                ),
                (Holdings::Local(stats), false) => {
                    println!("{} records from {} sources", stats.records, stats.sources)
                }
                (Holdings::Pinecone { records }, true) => {
                    println!("{}", json!({"records": records, "sources": null}))
                }
                (Holdings::Pinecone { records }, false) => {
                    println!("{records} records in the Pinecone namespace")
                }
            }
            ExitCode::SUCCESS
        }
        KbCommand::Remove { ids, source } => {
            let retrieval = Retrieval::new(&config, &db).map_err(|err| err.to_string())?;
            let destination = destination(&retrieval, &db, false, "kb remove")?;
            let removal = match source {
                Some(source) => Removal::Source(ingest::source_name(&source)),
                None => Removal::Ids(ids),
            };
            let removed = ingest::remove(destination, removal)
                .await
                .map_err(|err| err.to_string())?;
            match destination {
                Destination::Local { .. } => eprintln!("removed {removed} records"),
                Destination::Pinecone(_) => {
                    eprintln!("asked Pinecone to delete {removed} records")
                }
            }
            ExitCode::SUCCESS
        }
    };
    db.close().await;
    Ok(code)
}

/// Where a `kb` command works: the configured backend.
fn destination<'a>(
    retrieval: &'a Retrieval,
    db: &'a Database,
    replace: bool,
    command: &str,
) -> Result<Destination<'a>, String> {
    match &retrieval.retriever {
        Retriever::Pinecone(_) if replace => Err(format!(
            "{command} --replace works on the local knowledge base only (RETRIEVAL_BACKEND is pinecone): \
             Pinecone cannot list the records of a file that have their own ids"
        )),
        Retriever::Pinecone(client) => Ok(Destination::Pinecone(client)),
        Retriever::Local { .. } => Ok(Destination::Local { db, replace }),
        Retriever::None => Err(format!(
            "{command}: RETRIEVAL_BACKEND is none; run it with RETRIEVAL_BACKEND=local or pinecone"
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
    ingest::finish(destination)
        .await
        .map_err(|err| err.to_string())?;
    eprintln!("ingested {report}");
    Ok(if report.records == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
