//! `/health` and `/`.

use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;
use crate::http::envelope::{Envelope, Reply};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(root))
}

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthData {
    /// Always `healthy`.
    pub status: &'static str,
}

/// Welcome answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RootData {
    pub message: &'static str,
}

/// Liveness check.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Healthy", body = Envelope<HealthData>)))]
async fn health() -> Reply<HealthData> {
    Reply::ok(HealthData { status: "healthy" })
}

/// Welcome message.
#[utoipa::path(get, path = "/", tag = "health",
    responses((status = 200, description = "Welcome", body = Envelope<RootData>)))]
async fn root() -> Reply<RootData> {
    Reply::ok(RootData {
        message: "Eloquent chat API is running. See /docs.",
    })
}
