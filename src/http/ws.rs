//! `GET /api/chat/ws/{conversation_id}`: one chat turn over a WebSocket.
//!
//! Deltas go out as raw text frames; control frames are JSON objects. The
//! frontend treats any frame that parses as JSON as a control frame, so a
//! delta that happens to be valid JSON (`42`, ` true`) is held back and
//! coalesced with the following text.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::envelope::{Envelope, ErrorData};
use crate::http::extract::{ApiPath, ApiQuery, ClientIp, bearer_token};
use crate::services::chat::{Failure, ReplyEvent, Transport, TurnOutcome, TurnRequest};

/// Largest frame a client may send (one question).
const MAX_CLIENT_FRAME_BYTES: usize = 64 * 1024;

/// Read buffer of each socket (see `chat_socket`).
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

/// `?token=` for browsers, which cannot set headers on a WebSocket.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SocketParams {
    /// JWT, as an alternative to the `Authorization` header.
    pub token: Option<String>,
}

/// Chat over a WebSocket (`0` = new conversation).
///
/// Client sends one text frame `{"message": "..."}`. Server sends raw text
/// deltas, then `{"event":"done","conversation_id","messages"}`, or
/// `{"event":"guardrails",...}` / `{"event":"error","message"}`, then closes.
#[utoipa::path(get, path = "/api/chat/ws/{conversation_id}", tag = "chat",
    params(("conversation_id" = i64, Path, description = "Conversation id, 0 for a new one"), SocketParams),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", body = Envelope<ErrorData>),
        (status = 422, description = "Non-integer id", body = Envelope<ErrorData>),
        (status = 426, description = "The connection cannot be upgraded", body = Envelope<ErrorData>),
        (status = 429, description = "Too many chat turns", body = Envelope<ErrorData>),
    ))]
pub async fn chat_socket(
    State(state): State<AppState>,
    ApiPath(conversation_id): ApiPath<i64>,
    ApiQuery(params): ApiQuery<SocketParams>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = bearer_token(&headers).map(str::to_owned).or(params.token);
    let tasks = state.tasks.clone();
    upgrade
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        // tungstenite zero-fills its whole read buffer (128 KiB by default) on
        // every read, making it resident for each open socket; clients send
        // one small question, and a larger frame still gets room for its length.
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        // Tracked so shutdown waits for the session to store its partial answer.
        .on_upgrade(move |socket| {
            tasks.track_future(async move {
                Session {
                    socket,
                    state,
                    client_ip,
                }
                .run(conversation_id, token)
                .await;
            })
        })
}

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(default)]
    message: Option<String>,
    /// Optional idempotency key (contract section 14).
    #[serde(default)]
    client_message_id: Option<String>,
}

/// A frame sent mid-answer: `{"action": "stop"}`.
#[derive(Deserialize)]
struct Action {
    #[serde(default)]
    action: Option<String>,
}

struct Session {
    socket: WebSocket,
    state: AppState,
    client_ip: Option<std::net::IpAddr>,
}

impl Session {
    async fn run(mut self, conversation_id: i64, token: Option<String>) {
        let caller = match self.state.auth.optional_caller(token.as_deref()).await {
            Ok(caller) => caller,
            Err(err) => return self.fail(&err.public_message()).await,
        };
        let Some((message, client_message_id)) = self.first_message().await else {
            return;
        };
        let request = TurnRequest {
            caller,
            conversation_id: Some(conversation_id),
            message,
            transport: Transport::WebSocket,
            client_message_id,
            client_ip: self.client_ip,
        };
        let replies = match self.state.chat.start_turn(request).await {
            Ok(TurnOutcome::Streaming(replies)) => replies,
            Ok(TurnOutcome::Refused(view)) => {
                let frame = json!({
                    "event": "guardrails",
                    "conversation_id": view.conversation_id,
                    "messages": view.messages,
                    "status": view.status,
                });
                if self.send(frame.to_string()).await {
                    self.close().await;
                }
                return;
            }
            Err(err) => return self.fail(&socket_error_message(&err)).await,
        };
        let turn = replies.turn.clone();
        let announced = json!({
            "event": "turn",
            "turn_id": &*turn.id,
            "conversation_id": turn.conversation_id,
        });
        if !self.send(announced.to_string()).await {
            return; // client gone: the turn goes on for the grace period
        }
        let mut replies = Box::pin(replies);
        let mut pending = DeltaCoalescer::default();
        loop {
            tokio::select! {
                event = replies.next() => match event {
                    Some((_, ReplyEvent::Delta(delta))) => {
                        if let Some(frame) = pending.push(&delta)
                            && !self.send(frame).await
                        {
                            return; // client gone: dropping `replies` detaches it from the turn
                        }
                    }
                    Some((_, ReplyEvent::Done(view))) => {
                        if let Some(rest) = pending.flush()
                            && !self.send(rest).await
                        {
                            return;
                        }
                        let frame = json!({
                            "event": "done",
                            "conversation_id": view.conversation_id,
                            "messages": view.messages,
                            "status": view.status,
                            "turn_id": &*turn.id,
                        });
                        if self.send(frame.to_string()).await {
                            self.close().await;
                        }
                        return;
                    }
                    Some((_, ReplyEvent::Failed(failure))) => {
                        if let Some(rest) = pending.flush()
                            && !self.send(rest).await
                        {
                            return;
                        }
                        return self.fail(failure.message()).await;
                    }
                    None => return self.close().await,
                },
                incoming = self.socket.recv() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    // `{"action":"stop"}` stops the turn (its `done` follows);
                    // pings are answered by the socket itself; other frames
                    // mid-answer are ignored.
                    Some(Ok(Message::Text(text))) => {
                        if serde_json::from_str::<Action>(text.as_str())
                            .is_ok_and(|action| action.action.as_deref() == Some("stop"))
                        {
                            turn.request_stop();
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Waits for the question frame: the message and its client message id.
    async fn first_message(&mut self) -> Option<(String, Option<String>)> {
        let idle: Duration = self.state.config.ws_idle_timeout;
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            let shutdown = self.state.shutdown.clone();
            let incoming = tokio::select! {
                () = shutdown.cancelled() => {
                    self.fail(Failure::Shutdown.message()).await;
                    return None;
                }
                received = tokio::time::timeout_at(deadline, self.socket.recv()) => match received {
                    Ok(incoming) => incoming,
                    Err(_) => {
                        self.fail("Timed out waiting for a message").await;
                        return None;
                    }
                },
            };
            match incoming {
                Some(Ok(Message::Text(text))) => {
                    let parsed = serde_json::from_str::<ClientMessage>(text.as_str());
                    return match parsed {
                        Ok(ClientMessage {
                            message: Some(message),
                            client_message_id,
                        }) if !message.trim().is_empty() => Some((message, client_message_id)),
                        Ok(_) => {
                            self.fail("Missing 'message'").await;
                            None
                        }
                        Err(_) => {
                            self.fail("Invalid JSON: expected {\"message\": \"...\"}")
                                .await;
                            None
                        }
                    };
                }
                Some(Ok(Message::Binary(_))) => {
                    self.fail("Expected a text frame with {\"message\": \"...\"}")
                        .await;
                    return None;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            }
        }
    }

    /// Sends a text frame; false when the client is gone.
    async fn send(&mut self, text: String) -> bool {
        self.socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .is_ok()
    }

    async fn fail(&mut self, message: &str) {
        let frame = json!({ "event": "error", "message": message });
        if self.send(frame.to_string()).await {
            self.close().await;
        }
    }

    async fn close(&mut self) {
        let frame = CloseFrame {
            code: close_code::NORMAL,
            reason: Utf8Bytes::from_static(""),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
}

/// The sentence of an error frame: the contract's short messages.
fn socket_error_message(err: &AppError) -> String {
    match err {
        // The contract's sentence for a bad message; a bad client message id
        // says what is wrong with it.
        AppError::Validation(errors) => errors
            .first()
            .filter(|error| {
                error
                    .loc
                    .last()
                    .is_some_and(|field| field == "client_message_id")
            })
            .map_or_else(
                || "Missing 'message'".to_string(),
                |error| error.msg.clone(),
            ),
        other => {
            if other.status() >= 500 {
                tracing::warn!(error = %other, "websocket turn failed");
            }
            other.public_message()
        }
    }
}

/// Holds back delta text while it would parse as JSON.
#[derive(Debug, Default)]
pub struct DeltaCoalescer {
    pending: String,
}

impl DeltaCoalescer {
    /// Adds a delta; returns a frame to send when the held text is safe.
    pub fn push(&mut self, delta: &str) -> Option<String> {
        self.pending.push_str(delta);
        if self.pending.is_empty() || looks_like_json(&self.pending) {
            None
        } else {
            Some(std::mem::take(&mut self.pending))
        }
    }

    /// Whatever is still held (sent at the end even if it is valid JSON:
    /// the `done` frame carries the full text anyway).
    pub fn flush(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// Would `JSON.parse` accept this? Conservative: anything serde_json accepts,
/// plus any quoted string (JS accepts lone surrogates that serde rejects).
fn looks_like_json(text: &str) -> bool {
    let trimmed = text.trim();
    let Some(first) = trimmed.chars().next() else {
        return false;
    };
    if !matches!(first, '{' | '[' | '"' | '-' | '0'..='9' | 't' | 'f' | 'n') {
        return false;
    }
    if first == '"' && trimmed.len() >= 2 && trimmed.ends_with('"') {
        return true;
    }
    serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_looking_deltas_are_coalesced_without_loss() {
        let deltas = [
            "The", " answer", " is", " 42", " 2024", "true", " null", "\"", "x\"", " done", "7",
        ];
        let mut coalescer = DeltaCoalescer::default();
        let mut frames = Vec::new();
        for delta in deltas {
            frames.extend(coalescer.push(delta));
        }
        frames.extend(coalescer.flush());
        assert_eq!(frames.concat(), deltas.concat());
        // Every frame but the final flush must not parse as JSON.
        for frame in &frames[..frames.len() - 1] {
            assert!(
                serde_json::from_str::<serde_json::Value>(frame).is_err(),
                "{frame:?}"
            );
        }
    }

    #[test]
    fn plain_text_passes_straight_through() {
        let mut coalescer = DeltaCoalescer::default();
        assert_eq!(coalescer.push("Hello"), Some("Hello".into()));
        assert_eq!(coalescer.push(" "), Some(" ".into()));
        assert_eq!(coalescer.push("42"), None);
        assert_eq!(coalescer.push("%"), Some("42%".into()));
        assert_eq!(coalescer.flush(), None);
    }
}
