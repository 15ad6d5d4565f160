//! `eloquent kb ingest`: files and folders turned into knowledge-base records
//! and written to the local tables, ids stable across runs.

use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::clients::retrieval::{RetrievalClient, UpsertRecord};
use crate::services::knowledge::analyze::{ANALYZER_VERSION, Analyzer};
use crate::services::knowledge::parse::{self, BadRow, Format, Record};
use crate::storage::{Database, knowledge};

/// Where ingested records go: the configured retrieval backend.
#[derive(Clone, Copy)]
pub enum Destination<'a> {
    /// The local tables; `replace` also removes a file's records it no longer holds.
    Local { db: &'a Database, replace: bool },
    /// A Pinecone namespace (integrated embedding: the index embeds the text).
    Pinecone(&'a RetrievalClient),
}

/// What happened to one file, for the caller's progress display.
#[derive(Debug, Clone)]
pub enum FileOutcome {
    /// Read and written: how many records, which rows were bad, how many
    /// records `--replace` removed because they left the file.
    Ingested {
        records: usize,
        bad_rows: Vec<BadRow>,
        removed: u64,
        /// Upsert requests repeated after a 429 or 5xx (Pinecone).
        retries: usize,
    },
    /// Not read: a folder's file of another type, or a whole-file problem.
    Skipped(String),
    Failed(String),
}

/// Totals of a run.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    pub files: usize,
    pub records: usize,
    pub bad_rows: usize,
    pub removed: u64,
    pub retries: usize,
    pub skipped_files: usize,
    pub failed_files: usize,
}

/// Why a run stopped before it finished.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {path}: {reason}")]
    Walk { path: String, reason: String },
    #[error("cannot write to the knowledge base: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot write to Pinecone: {0}")]
    Pinecone(String),
}

/// The files under `paths` (folders recursively, sorted), each with the
/// format its extension names; `None` for a folder's file of another type.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Option<Format>)>, IngestError> {
    let mut files = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|err| IngestError::Walk {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
        if metadata.is_dir() {
            walk(path, &mut files)?;
        } else {
            files.push((path.clone(), Format::from_path(path)));
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<(PathBuf, Option<Format>)>) -> Result<(), IngestError> {
    let unreadable = |err: std::io::Error| IngestError::Walk {
        path: dir.display().to_string(),
        reason: err.to_string(),
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            let format = Format::from_path(&path);
            files.push((path, format));
        }
    }
    Ok(())
}

/// The source name of a file: its path as given (relative to the working
/// directory when it is under it), without a leading `./`, with `/`
/// separators, so ids do not depend on how the path was typed.
pub fn source_name(path: &Path) -> String {
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf());
    let text = relative.to_string_lossy().replace('\\', "/");
    let mut name = text.as_str();
    while let Some(rest) = name.strip_prefix("./") {
        name = rest;
    }
    name.to_string()
}

/// Ingests one file into `destination`.
pub async fn ingest_file(
    destination: Destination<'_>,
    path: &Path,
    format: Option<Format>,
) -> Result<FileOutcome, IngestError> {
    let Some(format) = format else {
        return Ok(FileOutcome::Skipped(
            "not a knowledge-base file (.md, .markdown, .txt, .csv, .jsonl)".into(),
        ));
    };
    let contents = match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => return Ok(FileOutcome::Failed("not UTF-8 text".into())),
        },
        Err(err) => return Ok(FileOutcome::Failed(err.to_string())),
    };
    let source = source_name(path);
    let parsed = match parse::parse(format, &source, &contents) {
        Ok(parsed) => parsed,
        Err(err) => return Ok(FileOutcome::Failed(err.to_string())),
    };
    let records = parsed.records.len();
    let (removed, retries) = match destination {
        Destination::Local { db, replace } => {
            (write_local(db, &source, parsed.records, replace).await?, 0)
        }
        Destination::Pinecone(client) => {
            let upserts: Vec<UpsertRecord> = parsed
                .records
                .into_iter()
                .map(|record| UpsertRecord {
                    id: record.id,
                    text: record.text,
                    title: record.title,
                    category: record.category,
                    url: record.url,
                })
                .collect();
            let summary = client
                .upsert(&upserts)
                .await
                .map_err(IngestError::Pinecone)?;
            (0, summary.retries)
        }
    };
    Ok(FileOutcome::Ingested {
        records,
        bad_rows: parsed.bad_rows,
        removed,
        retries,
    })
}

/// Writes a file's records to the local tables; returns how many `replace` removed.
async fn write_local(
    db: &Database,
    source: &str,
    records: Vec<Record>,
    replace: bool,
) -> Result<u64, IngestError> {
    let started = Utc::now();
    let analyzer = Analyzer::default();
    let rows = records
        .into_iter()
        .map(|record| {
            let (title_terms, text_terms) =
                analyzer.record_terms(record.title.as_deref(), &record.text);
            knowledge::NewRecord {
                id: record.id,
                source: source.to_string(),
                title: record.title,
                category: record.category,
                url: record.url,
                text: record.text,
                title_terms,
                text_terms,
            }
        })
        .collect();
    knowledge::upsert(db, rows, started).await?;
    Ok(if replace {
        knowledge::remove_stale(db, source, started).await?
    } else {
        0
    })
}

/// Ends an ingestion run: the local tables' planner statistics refreshed.
pub async fn finish(destination: Destination<'_>) -> Result<(), IngestError> {
    if let Destination::Local { db, .. } = destination {
        knowledge::analyze(db).await?;
    }
    Ok(())
}

/// With `--replace`, the sources under the folders of `paths` that are no
/// longer among `files` (deleted, renamed, or no longer a knowledge-base
/// type) lose their records; returns (source, records removed) for each.
/// A file that is still there but failed to read keeps its records.
pub async fn remove_missing(
    db: &Database,
    paths: &[PathBuf],
    files: &[(PathBuf, Option<Format>)],
) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let present: Vec<String> = files
        .iter()
        .filter(|(_, format)| format.is_some())
        .map(|(path, _)| source_name(path))
        .collect();
    let folders: Vec<String> = paths
        .iter()
        .filter(|path| path.is_dir())
        .map(|path| source_name(path))
        .collect();
    let under = |source: &str| {
        folders.iter().any(|folder| {
            if folder.is_empty() || folder == "." {
                !source.starts_with('/') && !source.starts_with("../")
            } else {
                source
                    .strip_prefix(folder.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            }
        })
    };
    let mut removed = Vec::new();
    for source in knowledge::sources(db).await? {
        if under(&source) && !present.contains(&source) {
            let count = knowledge::remove_source(db, &source).await?;
            removed.push((source, count));
        }
    }
    Ok(removed)
}

/// What the knowledge base holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holdings {
    Local(knowledge::Stats),
    /// Pinecone counts records, not the files they came from.
    Pinecone {
        records: u64,
    },
}

/// `eloquent kb stats`.
pub async fn stats(destination: Destination<'_>) -> Result<Holdings, IngestError> {
    Ok(match destination {
        Destination::Local { db, .. } => Holdings::Local(knowledge::stats(db).await?),
        Destination::Pinecone(client) => Holdings::Pinecone {
            records: client.count().await.map_err(IngestError::Pinecone)?,
        },
    })
}

/// Which records `eloquent kb remove` removes.
#[derive(Debug, Clone)]
pub enum Removal {
    Ids(Vec<String>),
    /// Every record of a file, by its source name ([`source_name`]).
    Source(String),
}

/// `eloquent kb remove`: how many records were removed (local), or how many
/// ids were sent to be deleted (Pinecone does not say which existed). On
/// Pinecone a source's records are found by the prefix of their generated
/// ids (`<source>#`): records with their own ids in the file are not.
pub async fn remove(destination: Destination<'_>, removal: Removal) -> Result<u64, IngestError> {
    match (destination, removal) {
        (Destination::Local { db, .. }, Removal::Ids(ids)) => {
            Ok(knowledge::remove_ids(db, ids).await?)
        }
        (Destination::Local { db, .. }, Removal::Source(source)) => {
            Ok(knowledge::remove_source(db, &source).await?)
        }
        (Destination::Pinecone(client), removal) => {
            let ids = match removal {
                Removal::Ids(ids) => ids,
                Removal::Source(source) => client
                    .list(&format!("{source}#"))
                    .await
                    .map_err(IngestError::Pinecone)?,
            };
            client.delete(&ids).await.map_err(IngestError::Pinecone)?;
            Ok(ids.len() as u64)
        }
    }
}

/// Records re-analysed per transaction by [`reanalyze`].
const REANALYZE_BATCH: i64 = 500;

/// Makes every record's terms those of the current analysis when they were
/// made with another (a new migration, a changed analyser); returns how
/// many records were re-analysed (0 when none needed it).
pub async fn reanalyze(db: &Database) -> Result<u64, sqlx::Error> {
    if knowledge::analyzer_version(db).await? == ANALYZER_VERSION {
        return Ok(0);
    }
    let analyzer = Analyzer::default();
    let (mut after, mut done) = (0, 0);
    loop {
        let texts = knowledge::texts_after(db, after, REANALYZE_BATCH).await?;
        let Some((last, _, _)) = texts.last() else {
            break;
        };
        after = *last;
        done += texts.len() as u64;
        let terms = texts
            .into_iter()
            .map(|(seq, title, text)| {
                let (title_terms, text_terms) = analyzer.record_terms(title.as_deref(), &text);
                (seq, title_terms, text_terms)
            })
            .collect();
        knowledge::set_terms(db, terms).await?;
    }
    knowledge::set_analyzer_version(db, ANALYZER_VERSION).await?;
    Ok(done)
}

impl IngestReport {
    /// Adds one file's outcome.
    pub fn add(&mut self, outcome: &FileOutcome) {
        match outcome {
            FileOutcome::Ingested {
                records,
                bad_rows,
                removed,
                retries,
            } => {
                self.files += 1;
                self.records += records;
                self.bad_rows += bad_rows.len();
                self.removed += removed;
                self.retries += retries;
            }
            FileOutcome::Skipped(_) => self.skipped_files += 1,
            FileOutcome::Failed(_) => self.failed_files += 1,
        }
    }
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records from {} files; {} bad rows skipped; {} records removed; {} files skipped, {} failed",
            self.records,
            self.files,
            self.bad_rows,
            self.removed,
            self.skipped_files,
            self.failed_files
        )?;
        if self.retries > 0 {
            write!(f, "; {} upsert requests retried", self.retries)?;
        }
        Ok(())
    }
}
