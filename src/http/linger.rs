//! Lingering on a refused body, as nginx's `lingering_close` does.
//!
//! A request whose body is over `MAX_BODY_BYTES` is answered `413` before
//! its body has been read (at once when `Content-Length` says so, or once
//! the limit is crossed). Closing the connection with unread data in it
//! makes the kernel send a reset, so a client that writes its whole body
//! before reading (Python's `http.client` and `requests`) gets a broken pipe
//! or a reset instead of the `413` envelope. Here the rest of the body is
//! read and thrown away first, up to [`LINGER_BYTES`] or [`LINGER_TIME`],
//! and the answer says `Connection: close`.
//!
//! tower-http's limit layer has no such option; this is the one piece it
//! needs: the request body goes in behind a shared handle, so that it can be
//! drained after the inner layers have answered (they drop their end).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// Most bytes read and thrown away after a `413`.
pub const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// Longest time spent reading them.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// The request body, readable by the inner layers and, after them, here.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<Option<Body>>>);

impl SharedBody {
    fn take(&self) -> Option<Body> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or_else(SizeHint::default, http_body::Body::size_hint)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }
}

/// Middleware: requests with a body keep a handle on it; a `413` answer
/// drains what is left of it before going out.
pub async fn linger_on_refused_body(request: Request, next: Next) -> Response {
    let has_body = request.headers().contains_key(header::CONTENT_LENGTH)
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let shared = SharedBody(Arc::new(Mutex::new(Some(body))));
    let mut response = next
        .run(Request::from_parts(parts, Body::new(shared.clone())))
        .await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && let Some(rest) = shared.take()
    {
        let drained = tokio::time::timeout(LINGER_TIME, drain(rest)).await;
        if drained.is_err() {
            tracing::debug!("stopped reading a refused body after {LINGER_TIME:?}");
        }
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads and drops up to [`LINGER_BYTES`] of `body`.
async fn drain(mut body: Body) {
    let mut read = 0;
    while read < LINGER_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => break,
        }
    }
}
