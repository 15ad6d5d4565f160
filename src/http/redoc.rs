//! `/redoc`: ReDoc served from the binary (see `docs/README.md`), so the
//! page works offline as Swagger UI at `/docs` does.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::OpenApi;
use utoipa_redoc::{Redoc, Servable};

const PAGE: &str = include_str!("docs/redoc.html");
const BUNDLE: &[u8] = include_bytes!("docs/redoc.standalone.js");
const BUNDLE_PATH: &str = "/redoc/redoc.standalone.js";

pub fn router<S: Clone + Send + Sync + 'static>(api: OpenApi) -> Router<S> {
    Router::new()
        .merge(Redoc::with_url("/redoc", api).custom_html(PAGE))
        .route(BUNDLE_PATH, get(bundle))
}

async fn bundle() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            // The file changes only with the binary.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        BUNDLE,
    )
}
