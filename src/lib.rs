//! Eloquent: a fintech customer-support chat backend.
//!
//! Layers: `http` (routers, extractors, envelope) → `services` (auth, chat
//! pipeline, guardrails, prompts) → `storage` (SQL, one module per table) and
//! `clients` (the model and retrieval upstreams).

pub mod cli;
pub mod clients;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod services;
pub mod startup;
pub mod storage;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
