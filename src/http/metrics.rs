//! `GET /metrics` (Prometheus / OpenMetrics text) and the middleware that
//! records every HTTP request by its route template.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::extract::bearer_token;
use crate::metrics::{CONTENT_TYPE, Metrics};

/// The route, outside the OpenAPI document (it is not part of the API).
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(exposition))
}

async fn exposition(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if let Some(expected) = &state.config.metrics_token {
        let given = bearer_token(&headers).ok_or(AppError::Unauthorized("Not authenticated"))?;
        // Compared in constant time: the token guards operational data.
        if !constant_time_eq::constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
            return Err(AppError::Forbidden);
        }
    }
    let text = state
        .metrics
        .render(
            state.db.connection_usage(),
            state.redis.as_ref().map_or(("disabled", 0), |redis| {
                (redis.state().as_str(), redis.failures())
            }),
        )
        .map_err(|err| AppError::Internal(format!("encoding the metrics: {err}")))?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response())
}

/// Counts the request under its route template (`unmatched` for paths no
/// route knows: a raw path may hold ids or tokens) and times it to the
/// response head.
pub async fn record_http(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    metrics.http_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
