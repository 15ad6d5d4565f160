//! The sign-up/login rate limit (tower_governor): per client IP, in this
//! process. (Chat turns are limited by the pipeline: services::turn_limits.)

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use governor::clock::QuantaInstant;
use governor::middleware::NoOpMiddleware;
use tokio_util::sync::CancellationToken;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

/// Client IP from the socket, or from the last `X-Forwarded-For` hop (the one
/// our own proxy appended) when `TRUST_FORWARDED_FOR` says a proxy is in front.
/// The leftmost entry is never used: clients can forge it.
#[derive(Clone)]
pub struct ClientKeyExtractor {
    trust_forwarded_for: bool,
}

impl ClientKeyExtractor {
    fn client_ip<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        client_ip(
            request.headers(),
            request.extensions(),
            self.trust_forwarded_for,
        )
    }
}

/// The client's address: the socket's, or the last `X-Forwarded-For` hop
/// (the one our own proxy appended) when `trust_forwarded_for`.
pub fn client_ip(
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
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

impl KeyExtractor for ClientKeyExtractor {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        self.client_ip(request)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

type Config = GovernorConfig<ClientKeyExtractor, NoOpMiddleware<QuantaInstant>>;

/// A layer allowing `per_minute` requests per key (bursts up to that many),
/// or `None` when the limit is 0 (disabled).
/// Counts a limiter's refusals in the metrics under its scope.
pub struct Refused {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub scope: &'static str,
}

pub fn layer(
    per_minute: u32,
    trust_forwarded_for: bool,
    shutdown: &CancellationToken,
    refused: Refused,
) -> Option<GovernorLayer<ClientKeyExtractor, NoOpMiddleware<QuantaInstant>, Body>> {
    if per_minute == 0 {
        return None;
    }
    let period = Duration::from_secs(60) / per_minute;
    let config: Arc<Config> = Arc::new(
        GovernorConfigBuilder::default()
            .period(period)
            .burst_size(per_minute)
            .key_extractor(ClientKeyExtractor {
                trust_forwarded_for,
            })
            .finish()?,
    );
    // Forget idle clients now and then so the key map does not grow forever.
    let limiter = config.limiter().clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => limiter.retain_recent(),
            }
        }
    });
    Some(
        GovernorLayer::new(config).error_handler(move |error: GovernorError| {
            if matches!(error, GovernorError::TooManyRequests { .. }) {
                refused.metrics.rate_limited(refused.scope);
            }
            axum::http::Response::<Body>::from(error)
        }),
    )
}
