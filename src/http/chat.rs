//! `/api/chat/*` REST routes and the SSE stream.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::envelope::{Envelope, ErrorData, Reply};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, AuthUser, ClientIp, MaybeAuthUser};
use crate::services::chat::{
    ConversationSummary, ConversationView, HistoryJson, ReplyEvent, ReplyStream, Transport,
    TurnOutcome, TurnRequest,
};

/// One-shot chat turns (rate-limited, answered within the request timeout).
pub fn turn_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create))
}

/// Conversation reads and edits (answered within the request timeout).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(messages))
        .routes(routes!(conversations))
        .routes(routes!(delete))
        .routes(routes!(summarize))
}

/// Long-lived streaming routes (rate-limited, no request timeout).
pub fn streaming_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stream))
        .routes(routes!(crate::http::ws::chat_socket))
}

/// Body of `/create` and `/stream`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    #[serde(default, deserialize_with = "lenient_id")]
    #[schema(schema_with = conversation_id_schema)]
    pub conversation_id: Option<i64>,
    /// What the user typed: not blank, at most `MAX_MESSAGE_CHARS` characters (default 8000).
    #[schema(
        example = "How do I reset my card PIN?",
        min_length = 1,
        pattern = r"\S"
    )]
    pub message: String,
    /// Any value; ignored: identity only comes from the token.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub user_id: Option<serde_json::Value>,
    /// The client's id for this send (1 to 64 characters, e.g. a UUID): a
    /// retry with the same id gets the first send's turn instead of a second
    /// one; the same id with a different message is a 409.
    #[serde(default)]
    #[schema(
        example = "3f2b8c1e-6a7d-4e55-9b0a-1c2d3e4f5a6b",
        min_length = 1,
        max_length = 64,
        pattern = r"\S"
    )]
    pub client_message_id: Option<String>,
}

/// `conversation_id`: what [`lenient_id`] accepts.
fn conversation_id_schema() -> Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .description(Some(
            "Integer, numeric string, or null; null/0/unknown start a new conversation.",
        ))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[ \t\r\n]*(null|[+-]?[0-9]{1,18})?[ \t\r\n]*$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .examples([json!(12), json!("12"), json!(null)])
        .into()
}

/// The frontend sends the id as a string (`"12"`); curl scripts send a number.
fn lenient_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(i64),
        // JSON Schema (and pydantic) count `12.0` as an integer.
        Float(f64),
        Text(String),
    }
    let not_integer = || serde::de::Error::custom("conversation_id must be an integer");
    match Option::<Id>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Id::Number(id)) => Ok(Some(id)),
        Some(Id::Float(value))
            // Strict bounds: the casts round to ±2^63, and so do neighbours past them.
            if value.fract() == 0.0 && value > i64::MIN as f64 && value < i64::MAX as f64 =>
        {
            Ok(Some(value as i64))
        }
        Some(Id::Float(_)) => Err(not_integer()),
        Some(Id::Text(text)) if text.trim().is_empty() || text.trim() == "null" => Ok(None),
        Some(Id::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| not_integer()),
    }
}

impl ChatRequest {
    fn into_turn(
        self,
        caller: Option<i64>,
        client_ip: Option<std::net::IpAddr>,
        transport: Transport,
    ) -> TurnRequest {
        TurnRequest {
            caller,
            conversation_id: self.conversation_id,
            message: self.message,
            transport,
            client_message_id: self.client_message_id,
            client_ip,
        }
    }
}

/// `?limit=&offset=` (and the frontend's ignored `user_id`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// At most this many conversations (all when absent).
    #[param(minimum = 0)]
    pub limit: Option<i64>,
    /// Skip this many first.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Sent by the frontend; ignored.
    #[param(value_type = Option<String>)]
    pub user_id: Option<serde_json::Value>,
}

/// `data` of the conversations list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
}

/// `data` with a sentence.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageData {
    pub message: &'static str,
}

/// `data` of a summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryData {
    pub summary: String,
}

/// `data` of a token-delta event of `/api/chat/stream`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamDelta {
    pub delta: String,
}

/// `data` of the `error` event of `/api/chat/stream`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamFailure {
    pub message: String,
}

/// One event of `/api/chat/stream` as an SSE parser yields it: `event`
/// (`message` when the stream names none) and `data`, a JSON text.
pub struct StreamEvent;

fn stream_event_variant(event: &str, description: &str, payload: &str) -> Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .description(Some(description))
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([event])),
        )
        .required("event")
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json")
                .content_schema(Some(Ref::from_schema_name(payload))),
        )
        .required("data")
        .into()
}

impl utoipa::PartialSchema for StreamEvent {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .description(Some(
                "An SSE event: token deltas (no `event:` line), then `done` or `error`",
            ))
            .item(stream_event_variant(
                "message",
                "A token delta",
                "StreamDelta",
            ))
            .item(stream_event_variant(
                "done",
                "The end: the whole history",
                "ConversationView",
            ))
            .item(stream_event_variant(
                "error",
                "An upstream failure after the stream began; the stream ends",
                "StreamFailure",
            ))
            .into()
    }
}

impl ToSchema for StreamEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push((StreamDelta::name().into(), StreamDelta::schema()));
        <StreamDelta as ToSchema>::schemas(schemas);
        schemas.push((StreamFailure::name().into(), StreamFailure::schema()));
        <StreamFailure as ToSchema>::schemas(schemas);
        schemas.push((ConversationView::name().into(), ConversationView::schema()));
        <ConversationView as ToSchema>::schemas(schemas);
    }
}

/// Ask a question and get the whole answer at once.
#[utoipa::path(post, path = "/api/chat/create", tag = "chat",
    request_body = ChatRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "History including the answer (or the refusal)", body = Envelope<ConversationView>),
        (status = 400, description = "Conversation is deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Forbidden", body = Envelope<ErrorData>),
        (status = 409, description = "This client_message_id was already used for a different message", body = Envelope<ErrorData>),
        (status = 413, description = "Request body too large", body = Envelope<ErrorData>),
        (status = 422, description = "Validation error", body = Envelope<ErrorData>),
        (status = 429, description = "Too many chat turns", body = Envelope<ErrorData>),
        (status = 502, description = "Upstream model error", body = Envelope<ErrorData>),
        (status = 503, description = "Model not configured, database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn create(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ClientIp(client_ip): ClientIp,
    ApiJson(body): ApiJson<ChatRequest>,
) -> Result<Reply<ConversationView>, AppError> {
    let view = state
        .chat
        .complete_turn(body.into_turn(caller, client_ip, Transport::Create))
        .await?;
    Ok(Reply::ok(view))
}

/// Ask a question and receive the answer token by token (Server-Sent Events).
///
/// Deltas: `data: {"delta": "..."}`. End: `event: done` with
/// `{"conversation_id", "messages"}`. Failure mid-stream: `event: error` with
/// `{"message"}`. Refusals and errors before the stream starts are JSON envelopes.
#[utoipa::path(post, path = "/api/chat/stream", tag = "chat",
    request_body = ChatRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream of deltas, then `done` (or a JSON envelope when the guardrails refuse)",
            content((StreamEvent = "text/event-stream"), (Envelope<ConversationView> = "application/json"))),
        (status = 400, description = "Conversation is deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Forbidden", body = Envelope<ErrorData>),
        (status = 409, description = "This client_message_id was already used for a different message", body = Envelope<ErrorData>),
        (status = 413, description = "Request body too large", body = Envelope<ErrorData>),
        (status = 422, description = "Validation error", body = Envelope<ErrorData>),
        (status = 429, description = "Too many chat turns", body = Envelope<ErrorData>),
        (status = 502, description = "Upstream model error", body = Envelope<ErrorData>),
        (status = 503, description = "Model not configured or database unavailable", body = Envelope<ErrorData>),
    ))]
async fn stream(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ClientIp(client_ip): ClientIp,
    ApiJson(body): ApiJson<ChatRequest>,
) -> Result<Response, AppError> {
    let replies = match state
        .chat
        .start_turn(body.into_turn(caller, client_ip, Transport::Sse))
        .await?
    {
        TurnOutcome::Refused(view) => return Ok(Reply::ok(view).into_response()),
        TurnOutcome::Streaming(replies) => replies,
    };
    Ok(sse_response(&state, replies))
}

/// The SSE response following a turn: each event with its id
/// `<turn_id>:<seq>`, the turn id in `X-Turn-Id`.
pub(crate) fn sse_response(state: &AppState, replies: ReplyStream) -> Response {
    let turn_id = replies.turn.id.clone();
    let events = {
        let turn_id = turn_id.clone();
        replies.map(move |(seq, event)| Ok::<_, Infallible>(sse_event(&turn_id, seq, event)))
    };
    let keep_alive = KeepAlive::new()
        .interval(state.config.sse_keepalive)
        .text("ping");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(value) = HeaderValue::from_str(&turn_id) {
        headers.insert(TURN_ID_HEADER, value);
    }
    response
}

/// The header naming a streaming turn (exposed to other origins by CORS).
pub const TURN_ID_HEADER: &str = "x-turn-id";

/// One SSE event, its `id:` line first: a client that splits a block on
/// `data: ` or `event: ` (the existing frontend does) still finds exactly
/// what it did before ids existed.
fn sse_event(turn_id: &str, seq: u64, event: ReplyEvent) -> Event {
    let numbered = Event::default().id(format!("{turn_id}:{seq}"));
    match event {
        ReplyEvent::Delta(text) => {
            // Serialized straight from a struct: no intermediate JSON map per token.
            #[derive(Serialize)]
            struct Delta<'a> {
                delta: &'a str,
            }
            let data = serde_json::to_string(&Delta { delta: &text })
                .unwrap_or_else(|_| json!({ "delta": text }).to_string());
            numbered.data(data)
        }
        ReplyEvent::Done(view) => numbered.event("done").data(
            json!({
                "conversation_id": view.conversation_id,
                "messages": view.messages,
                "status": view.status,
                "turn_id": turn_id,
            })
            .to_string(),
        ),
        ReplyEvent::Failed(failure) => numbered
            .event("error")
            .data(json!({ "message": failure.message() }).to_string()),
    }
}

/// A conversation's history.
#[utoipa::path(get, path = "/api/chat/messages/{id}", tag = "chat",
    params(("id" = i64, Path, description = "Conversation id", example = 1)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "History", body = Envelope<ConversationView>),
        (status = 400, description = "Conversation already deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Forbidden", body = Envelope<ErrorData>),
        (status = 404, description = "Conversation not found", body = Envelope<ErrorData>),
        (status = 422, description = "Non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn messages(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Reply<HistoryJson>, AppError> {
    let history = state.chat.messages(caller, id).await?;
    let expected = history.rendered_len() + 96;
    Ok(Reply::ok(history).expecting_bytes(expected))
}

/// The caller's conversations, newest first.
#[utoipa::path(get, path = "/api/chat/conversations", tag = "chat",
    params(Paging),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Conversations", body = Envelope<ConversationList>),
        (status = 401, description = "Not authenticated, invalid or expired token, or its user does not exist", body = Envelope<ErrorData>),
        (status = 422, description = "Bad paging values", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn conversations(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Reply<ConversationList>, AppError> {
    if paging.limit.is_some_and(|limit| limit < 0) {
        return Err(AppError::invalid(
            &["query", "limit"],
            "limit must not be negative",
        ));
    }
    let offset = paging.offset.unwrap_or(0);
    if offset < 0 {
        return Err(AppError::invalid(
            &["query", "offset"],
            "offset must not be negative",
        ));
    }
    let conversations = state.chat.list(user.id, paging.limit, offset).await?;
    // About 160 bytes per rendered conversation.
    let expected = conversations.len() * 160 + 64;
    Ok(Reply::ok(ConversationList { conversations }).expecting_bytes(expected))
}

/// Soft-delete a conversation.
#[utoipa::path(post, path = "/api/chat/delete/{id}", tag = "chat",
    params(("id" = i64, Path, description = "Conversation id", example = 1)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Conversation deleted", body = Envelope<MessageData>),
        (status = 400, description = "Conversation already deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Forbidden", body = Envelope<ErrorData>),
        (status = 404, description = "Conversation not found", body = Envelope<ErrorData>),
        (status = 422, description = "Non-integer id", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn delete(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Reply<MessageData>, AppError> {
    state.chat.delete(caller, id).await?;
    Ok(Reply::ok(MessageData {
        message: "Conversation deleted",
    }))
}

/// Summarize a conversation (key points and next steps, about 120 words).
#[utoipa::path(post, path = "/api/chat/summarize/{id}", tag = "chat",
    params(("id" = i64, Path, description = "Conversation id", example = 1)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Summary", body = Envelope<SummaryData>),
        (status = 400, description = "Conversation already deleted", body = Envelope<ErrorData>),
        (status = 401, description = "Token expired, or its user does not exist", body = Envelope<ErrorData>),
        (status = 403, description = "Forbidden", body = Envelope<ErrorData>),
        (status = 404, description = "Conversation not found", body = Envelope<ErrorData>),
        (status = 422, description = "Non-integer id", body = Envelope<ErrorData>),
        (status = 502, description = "Upstream model error", body = Envelope<ErrorData>),
        (status = 503, description = "Model not configured, database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn summarize(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Reply<SummaryData>, AppError> {
    let summary = state.chat.summarize(caller, id).await?;
    Ok(Reply::ok(SummaryData { summary }))
}

#[cfg(test)]
mod tests {
    use super::ChatRequest;

    fn id(body: &str) -> Result<Option<i64>, String> {
        serde_json::from_str::<ChatRequest>(body)
            .map(|request| request.conversation_id)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn conversation_id_accepts_what_the_schema_documents() {
        let cases = [
            (r#"{"message":"hi"}"#, Some(None)),
            (r#"{"message":"hi","conversation_id":null}"#, Some(None)),
            (r#"{"message":"hi","conversation_id":12}"#, Some(Some(12))),
            (r#"{"message":"hi","conversation_id":"12"}"#, Some(Some(12))),
            (
                r#"{"message":"hi","conversation_id":" 12 "}"#,
                Some(Some(12)),
            ),
            (r#"{"message":"hi","conversation_id":"null"}"#, Some(None)),
            (r#"{"message":"hi","conversation_id":""}"#, Some(None)),
            // JSON Schema's `integer` includes 12.0.
            (r#"{"message":"hi","conversation_id":12.0}"#, Some(Some(12))),
            (
                r#"{"message":"hi","conversation_id":-3e2}"#,
                Some(Some(-300)),
            ),
            (r#"{"message":"hi","conversation_id":12.5}"#, None),
            (r#"{"message":"hi","conversation_id":"12.0"}"#, None),
            (r#"{"message":"hi","conversation_id":"abc"}"#, None),
            (r#"{"message":"hi","conversation_id":true}"#, None),
            (
                r#"{"message":"hi","conversation_id":9223372036854775808}"#,
                None,
            ),
            (
                r#"{"message":"hi","conversation_id":-9223372036854775809}"#,
                None,
            ),
            (r#"{"message":"hi","conversation_id":1e300}"#, None),
        ];
        for (body, expected) in cases {
            match expected {
                Some(value) => assert_eq!(id(body), Ok(value), "{body}"),
                None => assert!(id(body).is_err(), "{body} should be rejected"),
            }
        }
    }
}
