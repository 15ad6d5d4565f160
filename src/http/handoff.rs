//! Human handoff (contract section 17): the owner's
//! `POST /api/chat/handoff/{id}` and the agents' routes under
//! `/api/agent/conversations`.

use axum::body::Bytes;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::envelope::{Envelope, ErrorData, Reply};
use crate::http::extract::{AgentUser, ApiJson, ApiPath, ApiQuery, MaybeAuthUser, parse_json};
use crate::http::feedback::optional_reason;
use crate::services::chat::ConversationView;
use crate::services::handoff::{self, QueueEntry, Status};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_handoff))
        .routes(routes!(queue))
        .routes(routes!(agent_conversation))
        .routes(routes!(agent_message))
        .routes(routes!(close))
}

/// Body of `POST /api/chat/handoff/{id}` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct HandoffRequest {
    /// Why, in the user's words: at most 500 characters.
    #[schema(max_length = 500, example = "I want to dispute a card payment")]
    #[serde(default)]
    pub reason: Option<String>,
}

/// Hand a conversation to a person: its status becomes `pending_human`, the
/// handoff reply is added as the bot's answer, and `handoff.requested` goes
/// to the webhook. The body is optional.
#[utoipa::path(post, path = "/api/chat/handoff/{id}", tag = "handoff",
    params(("id" = i64, Path, description = "Conversation id", example = 1)),
    request_body(content = Option<HandoffRequest>, description = "Optional: why"),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Handed over; the conversation now", body = Envelope<ConversationView>),
        (status = 400, description = "Conversation already deleted, or an unreadable body", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Someone else's conversation", body = Envelope<ErrorData>),
        (status = 404, description = "Conversation not found", body = Envelope<ErrorData>),
        (status = 409, description = "Already with a person or waiting for one", body = Envelope<ErrorData>),
        (status = 413, description = "Body too large", body = Envelope<ErrorData>),
        (status = 422, description = "Bad body, reason too long, non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn request_handoff(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> Result<Reply<ConversationView>, AppError> {
    let body: HandoffRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HandoffRequest::default()
    } else {
        parse_json(&body)?
    };
    let reason = optional_reason(body.reason)?;
    let view = state
        .chat
        .request_handoff(caller, id, reason.as_deref())
        .await?;
    Ok(Reply::ok(view))
}

/// `?status=&limit=&offset=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// `pending_human` (the queue), `human`, `closed` or `bot`; default:
    /// `pending_human` and `human`.
    #[param(example = "pending_human")]
    pub status: Option<String>,
    /// At most this many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// A conversation in an agent's list.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedConversation {
    pub id: i64,
    pub short_name: Option<String>,
    /// `bot`, `pending_human`, `human` or `closed`.
    #[schema(example = "pending_human")]
    pub status: String,
    /// Why it was handed over: the user's words, the API reason, or the
    /// trigger (`ungrounded`, `api`).
    pub status_reason: Option<String>,
    /// When the status last changed (the queue is oldest first).
    pub status_changed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The signed-in user it belongs to; null when anonymous.
    #[schema(nullable)]
    pub user: Option<QueuedUser>,
}

/// Who a queued conversation belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedUser {
    pub id: i64,
    pub email: String,
    pub name: String,
}

impl From<QueueEntry> for QueuedConversation {
    fn from(entry: QueueEntry) -> Self {
        let status_changed_at = handoff::changed_at(&entry.record);
        let record = entry.record;
        let user = match (record.user_id, entry.user_email, entry.user_name) {
            (Some(id), Some(email), Some(name)) => Some(QueuedUser { id, email, name }),
            _ => None,
        };
        Self {
            id: record.id,
            short_name: record.short_name,
            status: record.status,
            status_reason: record.status_reason,
            status_changed_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
            user,
        }
    }
}

/// The agents' list: conversations waiting for a person (`?status=pending_human`),
/// being answered by one, or closed; the longest waiting first.
#[utoipa::path(get, path = "/api/agent/conversations", tag = "handoff",
    params(QueueQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Conversations", body = Envelope<Vec<QueuedConversation>>),
        (status = 401, description = "Not authenticated", body = Envelope<ErrorData>),
        (status = 403, description = "Not an agent or admin", body = Envelope<ErrorData>),
        (status = 422, description = "Unknown status, bad limit or offset", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn queue(
    State(state): State<AppState>,
    AgentUser(_agent): AgentUser,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> Result<Reply<Vec<QueuedConversation>>, AppError> {
    let statuses = match query.status.as_deref() {
        None | Some("") => vec![Status::PendingHuman, Status::Human],
        Some(raw) => vec![Status::parse(raw).ok_or_else(|| {
            AppError::invalid(
                &["query", "status"],
                "status must be one of bot, pending_human, human, closed",
            )
        })?],
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(AppError::invalid(
            &["query", "limit"],
            "limit must be between 1 and 500",
        ));
    }
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(AppError::invalid(
            &["query", "offset"],
            "offset must not be negative",
        ));
    }
    let entries = state.handoff.queue(&statuses, limit, offset).await?;
    Ok(Reply::ok(
        entries.into_iter().map(QueuedConversation::from).collect(),
    ))
}

/// Any conversation's history and status, for an agent.
#[utoipa::path(get, path = "/api/agent/conversations/{id}", tag = "handoff",
    params(("id" = i64, Path, description = "Conversation id", example = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation", body = Envelope<ConversationView>),
        (status = 400, description = "Conversation is deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Not authenticated", body = Envelope<ErrorData>),
        (status = 403, description = "Not an agent or admin", body = Envelope<ErrorData>),
        (status = 404, description = "Conversation not found", body = Envelope<ErrorData>),
        (status = 422, description = "Non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn agent_conversation(
    State(state): State<AppState>,
    AgentUser(_agent): AgentUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Reply<ConversationView>, AppError> {
    Ok(Reply::ok(state.chat.agent_view(id).await?))
}

/// Body of `POST /api/agent/conversations/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AgentMessageRequest {
    #[schema(
        example = "Hello, I'm Sam from the payments team. I can see the charge; let me check."
    )]
    pub content: String,
}

/// An agent's answer: stored as an assistant message with `"author": "agent"`;
/// the conversation becomes `human` (the model is not called while it is).
#[utoipa::path(post, path = "/api/agent/conversations/{id}/messages", tag = "handoff",
    params(("id" = i64, Path, description = "Conversation id", example = 1)),
    request_body = AgentMessageRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored; the conversation now", body = Envelope<ConversationView>),
        (status = 400, description = "Conversation is deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Not authenticated", body = Envelope<ErrorData>),
        (status = 403, description = "Not an agent or admin", body = Envelope<ErrorData>),
        (status = 404, description = "Conversation not found", body = Envelope<ErrorData>),
        (status = 409, description = "Conversation is closed", body = Envelope<ErrorData>),
        (status = 413, description = "Body too large", body = Envelope<ErrorData>),
        (status = 422, description = "Empty or too long content, bad body, non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn agent_message(
    State(state): State<AppState>,
    AgentUser(agent): AgentUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<AgentMessageRequest>,
) -> Result<Reply<ConversationView>, AppError> {
    let content = state.chat.validate_message(&body.content).map_err(|_| {
        AppError::invalid(
            &["body", "content"],
            format!(
                "content must not be empty and at most {} characters",
                state.config.max_message_chars
            ),
        )
    })?;
    state.handoff.agent_message(&agent, id, content).await?;
    Ok(Reply::ok(state.chat.agent_view(id).await?))
}

/// Close a conversation a person owns: its status becomes `closed` and
/// `conversation.closed` goes to the webhook; the user's next message
/// returns it to the bot.
#[utoipa::path(post, path = "/api/agent/conversations/{id}/close", tag = "handoff",
    params(("id" = i64, Path, description = "Conversation id", example = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Closed; the conversation now", body = Envelope<ConversationView>),
        (status = 400, description = "Conversation is deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Not authenticated", body = Envelope<ErrorData>),
        (status = 403, description = "Not an agent or admin", body = Envelope<ErrorData>),
        (status = 404, description = "Conversation not found", body = Envelope<ErrorData>),
        (status = 409, description = "Already closed, or with the bot", body = Envelope<ErrorData>),
        (status = 422, description = "Non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn close(
    State(state): State<AppState>,
    AgentUser(agent): AgentUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Reply<ConversationView>, AppError> {
    state.handoff.close(&agent, id).await?;
    Ok(Reply::ok(state.chat.agent_view(id).await?))
}
