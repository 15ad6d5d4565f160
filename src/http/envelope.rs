//! The `{data, status_code}` envelope: success bodies, `AppError` rendering,
//! and a middleware that envelopes the bodies of errors produced outside
//! our handlers (405, 408, 413 from layers, panics).

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::error::{AppError, FieldError};

/// Every JSON body: `data` plus the HTTP status repeated.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Envelope<T> {
    pub data: T,
    pub status_code: u16,
}

/// The `data` of an error envelope.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorData {
    pub message: String,
    /// Present on 422 validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// A successful response: status plus enveloped data.
pub struct Reply<T> {
    status: StatusCode,
    data: T,
    /// Bytes reserved for the rendered body, so that a large one is written
    /// once instead of through a chain of growing buffers.
    expected_bytes: usize,
}

/// What axum's `Json` reserves.
const SMALL_BODY: usize = 128;

impl<T: Serialize> Reply<T> {
    pub fn ok(data: T) -> Self {
        Self::with_status(StatusCode::OK, data)
    }

    pub fn created(data: T) -> Self {
        Self::with_status(StatusCode::CREATED, data)
    }

    fn with_status(status: StatusCode, data: T) -> Self {
        Self {
            status,
            data,
            expected_bytes: SMALL_BODY,
        }
    }

    /// Reserves about `bytes` for the body (envelope included).
    pub fn expecting_bytes(mut self, bytes: usize) -> Self {
        self.expected_bytes = bytes.max(SMALL_BODY);
        self
    }
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            status_code: self.status.as_u16(),
            data: self.data,
        };
        let mut body = Vec::with_capacity(self.expected_bytes);
        match serde_json::to_writer(&mut body, &envelope) {
            Ok(()) => (
                self.status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(err) => AppError::Internal(format!("rendering a response: {err}")).into_response(),
        }
    }
}

/// Renders an error envelope with the given status and message.
pub fn error_response(
    status: StatusCode,
    message: String,
    errors: Option<Vec<FieldError>>,
) -> Response {
    let body = Envelope {
        status_code: status.as_u16(),
        data: ErrorData { message, errors },
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The cause goes to the log only; the client gets the public sentence.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let retry_after = match &self {
            AppError::TooManyRequests { retry_after } => Some(*retry_after),
            AppError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let message = self.public_message();
        let errors = match self {
            AppError::Validation(errors) => Some(errors),
            _ => None,
        };
        let mut response = error_response(status, message, errors);
        if let Some(after) = retry_after {
            let seconds = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// Envelopes any error response whose body is not already JSON (axum's 405,
/// tower-http's 413 and 408, the panic handler's 500).
pub async fn envelope_foreign_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let message = match status {
        StatusCode::INTERNAL_SERVER_ERROR => "Internal Server Error".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "Request body too large".to_string(),
        StatusCode::REQUEST_TIMEOUT => "Request timed out".to_string(),
        other => other.canonical_reason().unwrap_or("Error").to_string(),
    };
    let (mut parts, _) = response.into_parts();
    let enveloped = error_response(status, message, None);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (_, body) = enveloped.into_parts();
    Response::from_parts(parts, Body::new(body))
}

/// The panic handler: a 500 envelope, details only in the log.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error".into(),
        None,
    )
}

/// Unknown routes.
pub async fn not_found() -> AppError {
    AppError::NotFound("Not Found")
}

/// Builds an envelope value for places that need it as JSON (WebSocket, SSE).
pub fn envelope_json<T: Serialize>(status: u16, data: T) -> serde_json::Value {
    json!({ "data": data, "status_code": status })
}

/// Known routes called with the wrong method.
pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::to_bytes;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;

    use super::*;

    /// The layer `app()` installs: a panicking handler becomes a 500
    /// envelope and its message stays out of the response.
    #[tokio::test]
    async fn a_panicking_handler_answers_a_500_envelope_without_details() {
        async fn explode() -> &'static str {
            panic!("secret detail: sk-live-123")
        }
        let router = Router::new()
            .route("/explode", get(explode))
            .layer(CatchPanicLayer::custom(panic_response));
        let request = Request::get("/explode")
            .body(Body::empty())
            .expect("request");
        let response = router.oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON body");
        assert_eq!(
            body,
            json!({"data": {"message": "Internal Server Error"}, "status_code": 500})
        );
        assert!(!String::from_utf8_lossy(&bytes).contains("secret"));
    }
}
