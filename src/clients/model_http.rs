//! The HTTP transport under the model client: reqwest, plus a response body
//! that lets an HTTP/2 stream end cleanly after the model's `data: [DONE]`.
//!
//! async-openai stops reading a streamed answer at `data: [DONE]` and drops
//! the response, often before the frame that ends the HTTP/2 stream has
//! arrived. Dropping an unfinished stream resets it (`RST_STREAM`), and when
//! the peer's closing frame then arrives for a stream the connection has
//! already forgotten (it remembers only the last 50 resets for 1 s), h2
//! answers with a reset of its own that counts against a per-connection
//! budget of 1,024. Past that budget h2 closes the whole connection, failing
//! every answer in flight on it. Measured with the bench at 10,000 concurrent
//! streams over one connection: 2,846 answers cut off by
//! "locally-reset streams reached limit". So once `[DONE]` has been seen, a
//! dropped body is read to its end in the background (briefly) instead.
//! A body dropped before `[DONE]` (the client went away) is still reset at
//! once: that is what cancels the upstream answer.
//!
//! Requests are spread over [`Connections`] lanes; a body holds its lane slot
//! until it has been read to the end or dropped.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use memchr::memmem;

use crate::clients::connections::{Connections, LaneSlot};

/// The end-of-answer marker, looked for in each chunk (SIMD search).
static DONE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"[DONE]"));

/// How long a finished answer's stream may take to deliver its last frame.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// A tower service for async-openai: plain reqwest (no retry layer; the model
/// client retries itself) over [`Connections`], with [`FinishAfterDone`] bodies.
#[derive(Clone, Debug)]
pub(crate) struct ModelHttp {
    connections: Arc<Connections>,
}

impl ModelHttp {
    pub(crate) fn new(connections: Arc<Connections>) -> Self {
        Self { connections }
    }
}

impl tower::Service<HttpRequestFactory> for ModelHttp {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future =
        Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let connections = Arc::clone(&self.connections);
        Box::pin(async move {
            let request = factory.build().await?;
            let slot = connections.acquire().await.map_err(OpenAIError::Reqwest)?;
            let response = slot
                .client()
                .execute(request)
                .await
                .map_err(OpenAIError::Reqwest)?;
            let response: http::Response<reqwest::Body> = response.into();
            Ok(reqwest::Response::from(response.map(|body| {
                reqwest::Body::wrap(FinishAfterDone {
                    inner: Some(body),
                    slot: Some(slot),
                    saw_done: false,
                    ended: false,
                })
            })))
        })
    }
}

/// A response body that, dropped after carrying `[DONE]` but before its end,
/// reads the rest in a background task instead of resetting the stream.
struct FinishAfterDone {
    inner: Option<reqwest::Body>,
    /// Freed when the body ends, or after the background read.
    slot: Option<LaneSlot>,
    saw_done: bool,
    ended: bool,
}

impl Body for FinishAfterDone {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                this.ended = true;
                this.slot = None;
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && DONE.find(data).is_some()
                {
                    this.saw_done = true;
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for FinishAfterDone {
    fn drop(&mut self) {
        if !self.saw_done || self.ended {
            return;
        }
        let (Some(mut body), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let slot = self.slot.take();
        runtime.spawn(async move {
            let _slot = slot;
            let rest = async { while let Some(Ok(_)) = body.frame().await {} };
            // On timeout the body is dropped, i.e. reset after all.
            let _ = tokio::time::timeout(FINISH_TIMEOUT, rest).await;
        });
    }
}
