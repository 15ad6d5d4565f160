//! Feedback on answers: `POST` / `DELETE /api/chat/messages/{id}/feedback`
//! (contract section 16).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::envelope::{Envelope, ErrorData, Reply};
use crate::http::extract::{ApiJson, ApiPath, MaybeAuthUser};
use crate::services::chat::Feedback;

/// Longest reason kept, in characters.
const MAX_REASON_CHARS: usize = 500;

/// A body's optional `reason`: trimmed, none when blank, 422 over 500 characters.
pub(crate) fn optional_reason(reason: Option<String>) -> Result<Option<String>, AppError> {
    let reason = reason
        .map(|reason| reason.trim().to_string())
        .filter(|reason| !reason.is_empty());
    if reason
        .as_ref()
        .is_some_and(|reason| reason.chars().count() > MAX_REASON_CHARS)
    {
        return Err(AppError::invalid(
            &["body", "reason"],
            format!("reason must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason)
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(give, remove))
}

/// A rating.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Up,
    Down,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// Body of `POST /api/chat/messages/{id}/feedback`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct FeedbackRequest {
    pub rating: Rating,
    /// Why, in the user's words: at most 500 characters.
    #[schema(max_length = 500, example = "It did not answer my question")]
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer's feedback now.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackData {
    pub message_id: i64,
    #[schema(nullable)]
    pub feedback: Option<Feedback>,
}

/// Rate an answer (a second call replaces the first).
#[utoipa::path(post, path = "/api/chat/messages/{id}/feedback", tag = "chat",
    params(("id" = i64, Path, description = "The assistant message's id (as in the history)", example = 2)),
    request_body = FeedbackRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Feedback stored", body = Envelope<FeedbackData>),
        (status = 400, description = "Conversation already deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Someone else's conversation", body = Envelope<ErrorData>),
        (status = 404, description = "Message not found", body = Envelope<ErrorData>),
        (status = 413, description = "Body too large", body = Envelope<ErrorData>),
        (status = 422, description = "Not an answer, bad rating, reason too long, non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn give(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<FeedbackRequest>,
) -> Result<Reply<FeedbackData>, AppError> {
    let reason = optional_reason(body.reason)?;
    let feedback = Feedback {
        rating: body.rating.as_str().to_string(),
        reason,
    };
    let feedback = state.chat.feedback(caller, id, Some(feedback)).await?;
    Ok(Reply::ok(FeedbackData {
        message_id: id,
        feedback,
    }))
}

/// Remove the feedback on an answer.
#[utoipa::path(delete, path = "/api/chat/messages/{id}/feedback", tag = "chat",
    params(("id" = i64, Path, description = "The assistant message's id (as in the history)", example = 2)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Feedback removed (or there was none)", body = Envelope<FeedbackData>),
        (status = 400, description = "Conversation already deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Someone else's conversation", body = Envelope<ErrorData>),
        (status = 404, description = "Message not found", body = Envelope<ErrorData>),
        (status = 422, description = "Not an answer, non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn remove(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Reply<FeedbackData>, AppError> {
    let feedback = state.chat.feedback(caller, id, None).await?;
    Ok(Reply::ok(FeedbackData {
        message_id: id,
        feedback,
    }))
}
