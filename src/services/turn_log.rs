//! The turn log: one row per ended turn (`storage::turns`), the facts the
//! admin analytics count. Rows are written in tracked tasks, off the
//! answer's path (a lost row costs a count, never an answer), and every
//! turn is written exactly once: a [`TurnTally`] dropped before it was told
//! how its turn ended writes the turn as `client_gone`, as its metrics do.

use std::time::Duration;

use chrono::Utc;
use tokio_util::task::TaskTracker;

use crate::metrics::TurnMeter;
use crate::services::chat::Transport;
use crate::services::knowledge::analyze::Analyzer;
use crate::storage::Database;
use crate::storage::turns::{self, NewTurn};

/// Longest grouping key kept (bytes): PostgreSQL's B-tree entries must stay
/// well under 2,704 bytes, and a question's first 200 bytes of terms group
/// rephrasings as well as its whole text.
const MAX_KEY_BYTES: usize = 200;

/// Writes ended turns.
#[derive(Clone)]
pub struct TurnLog {
    db: Database,
    tasks: TaskTracker,
}

/// What is known of a turn so far.
#[derive(Debug, Clone)]
pub struct TurnEntry {
    started_ms: i64,
    user_id: Option<i64>,
    transport: Transport,
    conversation_id: i64,
    grounded: Option<bool>,
    question: Option<String>,
}

impl TurnEntry {
    /// A turn that starts now.
    pub fn begin(user_id: Option<i64>, transport: Transport) -> Self {
        Self {
            started_ms: Utc::now().timestamp_millis(),
            user_id,
            transport,
            conversation_id: 0,
            grounded: None,
            question: None,
        }
    }

    pub fn in_conversation(mut self, conversation_id: i64) -> Self {
        self.conversation_id = conversation_id;
        self
    }

    /// Retrieval ran: whether it grounded the turn. The (redacted) question is
    /// kept only when it did not.
    pub fn retrieved(mut self, grounded: bool, question: &str) -> Self {
        self.grounded = Some(grounded);
        self.question = (!grounded).then(|| question.to_owned());
        self
    }
}

impl TurnLog {
    pub fn new(db: Database, tasks: TaskTracker) -> Self {
        Self { db, tasks }
    }

    /// Writes the turn (in a tracked task: shutdown waits for it).
    pub fn record(
        &self,
        entry: TurnEntry,
        outcome: &'static str,
        refusal_reason: Option<&'static str>,
        ttft: Option<Duration>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(outcome, "turn not logged: no runtime");
            return;
        };
        let question_key = entry.question.as_deref().map(question_key);
        let turn = NewTurn {
            started_ms: entry.started_ms,
            conversation_id: entry.conversation_id,
            user_id: entry.user_id,
            transport: entry.transport.as_str(),
            outcome,
            refusal_reason,
            grounded: entry.grounded,
            ttft_ms: ttft.map(|ttft| i64::try_from(ttft.as_millis()).unwrap_or(i64::MAX)),
            question: entry.question,
            question_key,
        };
        let db = self.db.clone();
        self.tasks.spawn_on(
            async move {
                if let Err(err) = turns::insert(&db, turn).await {
                    tracing::warn!(error = %err, "logging a turn failed");
                }
            },
            &runtime,
        );
    }
}

/// What groups rephrasings of one question: its analysed terms (folded,
/// lower-cased, stemmed), at most [`MAX_KEY_BYTES`].
pub fn question_key(question: &str) -> String {
    let mut key = Analyzer::default().terms(question);
    if key.len() > MAX_KEY_BYTES {
        let mut end = MAX_KEY_BYTES;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
    key
}

/// A streaming turn's metrics and log entry, told once how the turn ended.
pub struct TurnTally {
    meter: TurnMeter,
    entry: Option<TurnEntry>,
    log: TurnLog,
}

impl TurnTally {
    pub fn new(meter: TurnMeter, entry: TurnEntry, log: TurnLog) -> Self {
        Self {
            meter,
            entry: Some(entry),
            log,
        }
    }

    /// A delta went out.
    pub fn token(&mut self) {
        self.meter.token();
    }

    /// How the turn ended (see [`TurnMeter::ended`]).
    pub fn ended(&mut self, outcome: &'static str) {
        self.end(outcome, None);
    }

    /// The turn ended refused (after it started streaming), for `reason`.
    pub fn refused(&mut self, reason: &'static str) {
        self.end("refused", Some(reason));
    }

    fn end(&mut self, outcome: &'static str, reason: Option<&'static str>) {
        self.meter.ended(outcome);
        if let Some(entry) = self.entry.take() {
            self.log.record(entry, outcome, reason, self.meter.ttft());
        }
    }
}

impl Drop for TurnTally {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.log
                .record(entry, "client_gone", None, self.meter.ttft());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rephrasings_share_a_key_and_long_questions_are_cut_on_a_character() {
        assert_eq!(
            question_key("How do I close my accounts?"),
            question_key("how do i CLOSE my account")
        );
        let long = "日".repeat(100);
        let key = question_key(&long);
        assert!(key.len() <= MAX_KEY_BYTES && !key.is_empty());
    }
}
