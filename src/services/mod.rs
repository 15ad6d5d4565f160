//! Domain services; they know nothing about HTTP.

pub mod adoption;
pub mod auth;
pub mod chat;
pub mod guardrails;
pub mod handoff;
pub mod judge;
pub mod knowledge;
pub mod live;
pub mod operator;
pub mod pattern_screen;
pub mod prompt;
pub mod rate_limits;
pub mod sends;
pub mod shared_turns;
pub mod stream_limits;
pub mod turn_log;
pub mod webhooks;
