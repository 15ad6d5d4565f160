//! What admins see (contract section 16): the rated answers and the
//! analytics of a period. Callers check the admin role
//! (`AuthService::role_of`) before asking.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::AppError;
use crate::services::chat::{Source, sources_json};
use crate::storage::turns::{self, OutcomeCount};
use crate::storage::{Database, feedback};

/// Most items a page of the feedback list holds.
pub const MAX_PAGE: i64 = 200;

/// Most ungrounded questions the analytics list.
pub const MAX_TOP_QUESTIONS: i64 = 100;

/// What happened in a period (`from` inclusive, `to` exclusive), counted
/// from the turn log: turns since the upgrade that created it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Analytics {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Turns started in the period: answered, refused or failed.
    pub turns: i64,
    /// Distinct signed-in users with a turn in the period.
    pub users: i64,
    /// Turns without a signed-in user.
    pub anonymous_turns: i64,
    /// `anonymous_turns / turns`, 0..1; null without turns.
    pub anonymous_share: Option<f64>,
    /// Turns by how they ended: `completed`, `refused`, `stopped`,
    /// `client_gone`, `upstream_error`, `timeout`, `storage_error`.
    pub outcomes: BTreeMap<String, i64>,
    /// Refused turns by reason: `prompt_injection`, `secret`.
    pub refusals: BTreeMap<String, i64>,
    /// Turns whose retrieval found no record over the minimum score.
    pub ungrounded_turns: i64,
    /// `ungrounded_turns` over the turns retrieval ran for (all but
    /// refusals), 0..1; null when it ran for none.
    pub ungrounded_share: Option<f64>,
    /// Ratings given in the period.
    pub feedback: FeedbackCounts,
    /// Time from a message's arrival to its answer's first token.
    pub ttft_ms: Option<Percentiles>,
    /// The questions the knowledge base had nothing for, most frequent
    /// first (rephrasings with the same words counted together, shown in
    /// their latest wording; redacted as stored).
    pub top_ungrounded_questions: Vec<QuestionCount>,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct FeedbackCounts {
    pub up: i64,
    pub down: i64,
}

/// Nearest-rank percentiles (the smallest value at least that share of the
/// turns took no longer than), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Turns with a first token.
    pub count: i64,
    pub p50: i64,
    pub p95: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuestionCount {
    pub question: String,
    pub count: i64,
}

/// A rated answer, with its question.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RatedAnswer {
    pub message_id: i64,
    pub conversation_id: i64,
    /// What the user asked (as stored: redacted).
    pub question: Option<String>,
    pub answer: String,
    #[schema(value_type = Vec<Source>)]
    pub sources: Option<Box<RawValue>>,
    /// `up` or `down`.
    pub rating: String,
    pub reason: Option<String>,
    pub rated_at: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct OperatorService {
    db: Database,
}

impl OperatorService {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The analytics of `[from, to)`, with the `top` most frequent
    /// ungrounded questions. Five queries, run at once on reader connections.
    pub async fn analytics(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        top: i64,
    ) -> Result<Analytics, AppError> {
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        let top = top.clamp(0, MAX_TOP_QUESTIONS);
        let (outcomes, ttft, users, questions, (up, down)) = tokio::try_join!(
            turns::outcomes(&self.db, from_ms, to_ms),
            turns::ttft_distribution(&self.db, from_ms, to_ms),
            turns::active_users(&self.db, from_ms, to_ms),
            turns::top_ungrounded(&self.db, from_ms, to_ms, top),
            feedback::counts(&self.db, from, to),
        )?;
        Ok(summarize(
            from, to, &outcomes, &ttft, users, questions, up, down,
        ))
    }

    /// Rated answers, newest rating first; `rating` `up`, `down` or both.
    pub async fn feedback(
        &self,
        rating: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<RatedAnswer>, AppError> {
        let rows =
            feedback::list(&self.db, rating, limit.clamp(0, MAX_PAGE), offset.max(0)).await?;
        Ok(rows
            .into_iter()
            .map(|row| RatedAnswer {
                message_id: row.message_id,
                conversation_id: row.conversation_id,
                question: row.question,
                answer: row.answer,
                sources: sources_json(row.sources.as_deref()),
                rating: row.rating,
                reason: row.reason,
                rated_at: row.rated_at,
            })
            .collect())
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    counts: &[OutcomeCount],
    ttft: &[(i64, i64)],
    users: i64,
    questions: Vec<turns::AskedQuestion>,
    up: i64,
    down: i64,
) -> Analytics {
    let share = |part: i64, whole: i64| (whole > 0).then(|| part as f64 / whole as f64);
    let (mut total, mut anonymous, mut retrieved, mut ungrounded) = (0, 0, 0, 0);
    let mut outcomes = BTreeMap::new();
    let mut refusals = BTreeMap::new();
    for count in counts {
        total += count.turns;
        anonymous += count.anonymous;
        retrieved += count.retrieved;
        ungrounded += count.ungrounded;
        *outcomes.entry(count.outcome.clone()).or_insert(0) += count.turns;
        if let Some(reason) = &count.refusal_reason {
            *refusals.entry(reason.clone()).or_insert(0) += count.turns;
        }
    }
    let mut distribution = BTreeMap::new();
    for &(ms, turns) in ttft {
        *distribution.entry(ms).or_insert(0) += turns;
    }
    Analytics {
        from,
        to,
        turns: total,
        users,
        anonymous_turns: anonymous,
        anonymous_share: share(anonymous, total),
        outcomes,
        refusals,
        ungrounded_turns: ungrounded,
        ungrounded_share: share(ungrounded, retrieved),
        feedback: FeedbackCounts { up, down },
        ttft_ms: percentiles(&distribution),
        top_ungrounded_questions: questions
            .into_iter()
            .map(|asked| QuestionCount {
                question: asked.question,
                count: asked.count,
            })
            .collect(),
    }
}

/// p50 and p95 of a distribution given as value → how many times.
fn percentiles(distribution: &BTreeMap<i64, i64>) -> Option<Percentiles> {
    let count: i64 = distribution.values().sum();
    if count == 0 {
        return None;
    }
    // Nearest rank: the value at position ceil(p * count), counting from 1.
    let at = |percent: i64| {
        let rank = ((percent * count + 99) / 100).max(1);
        let mut seen = 0;
        for (&value, &times) in distribution {
            seen += times;
            if seen >= rank {
                return value;
            }
        }
        0
    };
    Some(Percentiles {
        count,
        p50: at(50),
        p95: at(95),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let one_to_hundred: BTreeMap<i64, i64> = (1..=100).map(|ms| (ms, 1)).collect();
        assert_eq!(
            percentiles(&one_to_hundred),
            Some(Percentiles {
                count: 100,
                p50: 50,
                p95: 95
            })
        );
        // 19 fast turns and one slow: the slow one is above p95.
        let skewed = BTreeMap::from([(10, 19), (900, 1)]);
        assert_eq!(percentiles(&skewed).map(|p| (p.p50, p.p95)), Some((10, 10)));
        let skewed = BTreeMap::from([(10, 18), (900, 2)]);
        assert_eq!(
            percentiles(&skewed).map(|p| (p.p50, p.p95)),
            Some((10, 900))
        );
        assert_eq!(percentiles(&BTreeMap::new()), None);
    }
}
