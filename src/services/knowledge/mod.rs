//! The knowledge base: documents turned into records, ingestion, retrieval.

pub mod ingest;
pub mod parse;
pub mod retrieve;
