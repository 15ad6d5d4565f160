//! The sign-up/login rate limit: per client address, through the shared
//! `services::rate_limits` (in this process, or across servers with Redis).
//! Chat turns are limited by the pipeline itself (see there).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Extensions, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::AppState;

/// The client's address: the socket's, or the last `X-Forwarded-For` hop
/// (the one our own proxy appended) when `trust_forwarded_for`. The
/// leftmost entry is never used: clients can forge it.
pub fn client_ip(
    headers: &HeaderMap,
    extensions: &Extensions,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .next_back();
        if forwarded.is_some() {
            return forwarded;
        }
    }
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Middleware on sign-up and login: `RATE_LIMIT_AUTH_PER_MINUTE` per client
/// address; over it, the 429 envelope with `Retry-After`.
pub async fn limit_sign_in(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let address = client_ip(
        request.headers(),
        request.extensions(),
        state.config.trust_forwarded_for,
    )
    .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    if let Err(refused) = state.sign_in_limit.check(&address).await {
        state.metrics.rate_limited(state.sign_in_limit.scope());
        return refused.into_response();
    }
    next.run(request).await
}
