//! One integration-test binary: every module drives the real server over real sockets.

mod fakes;
mod helpers;

mod analytics;
mod auth;
mod basics;
mod battery;
mod browser;
mod chat;
mod conversations;
mod fault;
mod feedback;
mod handoff;
mod hardening;
mod idempotency;
mod judge;
mod knowledge;
mod metrics;
mod redis;
mod resume;
mod storage;
mod streaming;
mod upgrade;
