//! The knowledge base: documents turned into records, ingestion, retrieval.

pub mod analyze;
pub mod ingest;
pub mod local;
pub mod parse;
pub mod retrieve;
pub mod synonyms;
