//! Resuming and stopping a turn (contract section 14):
//! `GET /api/chat/stream/{turn_id}` and `POST /api/chat/stop/{turn_id}`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::chat::{StreamEvent, sse_response};
use crate::http::envelope::{Envelope, ErrorData, Reply};
use crate::http::extract::{ApiPath, ApiQuery, MaybeAuthUser, bearer_token};

/// `POST /api/chat/stop/{turn_id}` (answered within the request timeout).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stop))
}

/// `GET /api/chat/stream/{turn_id}` (a stream: no request timeout).
pub fn streaming_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(resume))
}

/// `?token=&last_event_id=` of a resume: what an `EventSource` can send.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResumeParams {
    /// The bearer token, for clients that cannot set headers (`EventSource`).
    pub token: Option<String>,
    /// The last event seen (`<turn_id>:<seq>`, or the number alone); the
    /// `Last-Event-ID` header wins over it.
    pub last_event_id: Option<String>,
}

/// The number in an event id `<turn_id>:<seq>` (or a bare number); 0 (replay
/// everything) for anything else, such as another turn's id.
fn seq_after(turn_id: &str, last_event_id: Option<&str>) -> u64 {
    let Some(id) = last_event_id.map(str::trim) else {
        return 0;
    };
    let seq = match id.rsplit_once(':') {
        Some((turn, seq)) if turn == turn_id => seq,
        Some(_) => return 0,
        None => id,
    };
    seq.parse().unwrap_or(0)
}

/// Follow a turn: its events after `Last-Event-ID`, then the live ones.
///
/// Replays the turn's events after the last one the client saw (the
/// `Last-Event-ID` header, else `?last_event_id=`, else from the first),
/// then follows the turn to its end (`done` or `error`), with the same
/// event ids. `204` when the turn has ended and its last event was seen (an
/// `EventSource` stops reconnecting). Same access rules as the
/// conversation; for an anonymous one the turn id is the key.
#[utoipa::path(get, path = "/api/chat/stream/{turn_id}", tag = "chat",
    params(("turn_id" = String, Path, description = "The turn's id (`X-Turn-Id`)"), ResumeParams),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream: the turn's events after the last one seen",
            content((StreamEvent = "text/event-stream"))),
        (status = 204, description = "The turn has ended and its last event was seen"),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "The conversation is someone else's", body = Envelope<ErrorData>),
        (status = 404, description = "Unknown turn, or its events have expired", body = Envelope<ErrorData>),
        (status = 422, description = "Bad query", body = Envelope<ErrorData>),
    ))]
async fn resume(
    State(state): State<AppState>,
    ApiPath(turn_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ResumeParams>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let token = bearer_token(&headers).or(params.token.as_deref());
    let caller = state.auth.optional_caller(token).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .or(params.last_event_id.as_deref());
    let after = seq_after(&turn_id, last_event_id);
    match state.chat.resume(caller, &turn_id, after).await? {
        Some(replies) => Ok(sse_response(&state, replies)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `data` of a stop.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stopped {
    pub turn_id: String,
    /// False when the turn had already ended.
    pub stopped: bool,
}

/// Stop a turn now.
///
/// The model request is cancelled, the answer so far is stored with
/// `"stopped": true`, and every stream following the turn ends with its
/// `done`. Same access rules as the conversation.
#[utoipa::path(post, path = "/api/chat/stop/{turn_id}", tag = "chat",
    params(("turn_id" = String, Path, description = "The turn's id (`X-Turn-Id`)")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Stopped, or `stopped: false` when the turn had already ended", body = Envelope<Stopped>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "The conversation is someone else's", body = Envelope<ErrorData>),
        (status = 404, description = "Unknown turn, or its events have expired", body = Envelope<ErrorData>),
        (status = 503, description = "Request timed out", body = Envelope<ErrorData>),
    ))]
async fn stop(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ApiPath(turn_id): ApiPath<String>,
) -> Result<Reply<Stopped>, AppError> {
    let stopped = state.chat.stop(caller, &turn_id).await?;
    Ok(Reply::ok(Stopped { turn_id, stopped }))
}

#[cfg(test)]
mod tests {
    use super::seq_after;

    #[test]
    fn event_ids_name_the_last_event_seen() {
        assert_eq!(seq_after("abc", Some("abc:7")), 7);
        assert_eq!(seq_after("abc", Some(" 12 ")), 12);
        assert_eq!(seq_after("abc", Some("other:7")), 0);
        assert_eq!(seq_after("abc", Some("abc:x")), 0);
        assert_eq!(seq_after("abc", None), 0);
    }
}
