//! HTTP layer: routers, extractors, the envelope, middleware.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod envelope;
pub mod extract;
pub mod feedback;
pub mod handoff;
pub mod health;
pub mod linger;
pub mod metrics;
pub mod rate_limit;
pub mod redoc;
pub mod turns;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::clients::redis::Redis;
use crate::config::{Config, CorsOrigins};
use crate::metrics::Metrics;
use crate::services::auth::AuthService;
use crate::services::chat::ChatService;
use crate::services::handoff::Handoff;
use crate::services::operator::OperatorService;
use crate::services::rate_limits::RateLimit;
use crate::storage::Database;

/// Everything a handler needs. Axum clones the state for every request, so
/// it is one shared pointer: the services it holds own keys, URLs and
/// configuration strings that would otherwise be copied each time.
#[derive(Clone)]
pub struct AppState(Arc<AppServices>);

impl AppState {
    pub fn new(services: AppServices) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct AppServices {
    pub config: Arc<Config>,
    pub auth: AuthService,
    pub chat: ChatService,
    /// Fired on shutdown so open streams end (and store their partial text).
    pub shutdown: CancellationToken,
    /// Work that must finish before the process exits (WebSocket sessions, partial-answer stores).
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
    pub operator: OperatorService,
    /// For the metrics' connection gauges.
    pub db: Database,
    /// `RATE_LIMIT_AUTH_PER_MINUTE` on sign-up and login.
    pub sign_in_limit: RateLimit,
    /// Shared with the other servers, when `REDIS_URL` is set.
    pub redis: Option<Redis>,
    /// Agents' side of the human handoff.
    pub handoff: Handoff,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Eloquent",
        description = "Fintech customer-support chat API. Every JSON body is an envelope `{data, status_code}`.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "chat", description = "Conversations, answers, streams"),
        (name = "health", description = "Liveness"),
        (name = "admin", description = "For the addresses in ADMIN_EMAILS"),
        (name = "handoff", description = "Human handoff: the owner's request and the agents' routes (AGENT_EMAILS and admins)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router(None).split_for_parts().1
}

/// What the API routes need beyond their handlers: rate limiters and the timeout.
struct RouteLimits {
    state: AppState,
}

fn api_router(limits: Option<RouteLimits>) -> OpenApiRouter<AppState> {
    let mut credentials = auth::credentials_router();
    let turns = chat::turn_router();
    let streams = chat::streaming_router();
    let mut bounded = OpenApiRouter::new()
        .merge(auth::router())
        .merge(chat::router())
        .merge(feedback::router())
        .merge(admin::router())
        .merge(handoff::router())
        .merge(turns::router())
        .merge(health::router());
    if let Some(RouteLimits { state }) = limits {
        let config = &state.config;
        if config.rate_limit_auth_per_minute > 0 {
            credentials = credentials.layer(axum::middleware::from_fn_with_state(
                state.clone(),
                rate_limit::limit_sign_in,
            ));
        }
        // The chat-turn limit is the pipeline's (services::turn_limits): only
        // it can tell a new turn from a repeated send.
        // Non-streaming requests get a deadline; streams have their own timeouts.
        let timeout =
            TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, config.request_timeout);
        bounded = bounded.merge(credentials).merge(turns).layer(timeout);
    } else {
        bounded = bounded.merge(credentials).merge(turns);
    }
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(bounded)
        .merge(streams)
        // Resuming is not a new turn: no chat rate limit, no request timeout.
        .merge(turns::streaming_router())
}

/// The whole application: routes, docs, and middleware.
pub fn app(state: AppState) -> Router {
    let config = state.config.clone();
    let limits = RouteLimits {
        state: state.clone(),
    };
    let (routes, api) = api_router(Some(limits)).split_for_parts();
    let docs = Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api.clone()))
        .merge(redoc::router(api));
    let request_id = HeaderName::from_static("x-request-id");
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let id = request
                    .extensions()
                    .get::<RequestId>()
                    .and_then(|id| id.header_value().to_str().ok())
                    .unwrap_or("-");
                // The path only: query strings may carry a token.
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CatchPanicLayer::custom(envelope::panic_response))
        .layer(middleware::from_fn(envelope::envelope_foreign_errors))
        .layer(security_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(security_header(header::REFERRER_POLICY, "no-referrer"))
        .layer(cors(&config.cors_allow_origins))
        .layer(middleware::from_fn(linger::linger_on_refused_body))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    let mut router = Router::new().merge(routes).merge(docs);
    if config.metrics_enabled {
        router = router.merge(metrics::router());
    }
    router
        .fallback(envelope::not_found)
        .method_not_allowed_fallback(envelope::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::record_http,
        ))
        .with_state(state)
        .layer(middleware)
}

fn security_header(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

fn cors(origins: &CorsOrigins) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static(chat::TURN_ID_HEADER),
        ])
        .max_age(Duration::from_secs(600));
    match origins {
        // Credentials are never allowed with a wildcard origin.
        CorsOrigins::Any => layer.allow_origin(Any),
        CorsOrigins::List(list) => {
            let values: Vec<HeaderValue> = list
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok())
                .collect();
            layer
                .allow_origin(AllowOrigin::list(values))
                .allow_credentials(true)
        }
    }
}
