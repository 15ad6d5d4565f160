//! What admins see (contract section 16): the rated answers. Callers check
//! the admin role (`AuthService::role_of`) before asking.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::AppError;
use crate::services::chat::{Source, sources_json};
use crate::storage::{Database, feedback};

/// Most items a page of the feedback list holds.
pub const MAX_PAGE: i64 = 200;

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
