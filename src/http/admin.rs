//! Admin routes (`ADMIN_EMAILS`): `GET /api/admin/feedback`.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::envelope::{Envelope, ErrorData, Reply};
use crate::http::extract::{AdminUser, ApiQuery};
use crate::http::feedback::Rating;
use crate::services::operator::RatedAnswer;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(feedback))
}

/// `?rating=&limit=&offset=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedbackQuery {
    /// Only `up` or only `down` (both when absent).
    pub rating: Option<Rating>,
    /// At most this many items (default 50, at most 200).
    #[param(minimum = 0, maximum = 200)]
    pub limit: Option<i64>,
    /// Skip this many first.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// `data` of the feedback list.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackList {
    pub items: Vec<RatedAnswer>,
    pub limit: i64,
    pub offset: i64,
}

/// Rated answers, newest rating first: what users found wrong (or right).
#[utoipa::path(get, path = "/api/admin/feedback", tag = "admin",
    params(FeedbackQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rated answers", body = Envelope<FeedbackList>),
        (status = 401, description = "Not authenticated, invalid or expired token", body = Envelope<ErrorData>),
        (status = 403, description = "Not an admin", body = Envelope<ErrorData>),
        (status = 422, description = "Bad rating, limit or offset", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn feedback(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    ApiQuery(query): ApiQuery<FeedbackQuery>,
) -> Result<Reply<FeedbackList>, AppError> {
    let limit = query.limit.unwrap_or(50);
    let offset = query.offset.unwrap_or(0);
    if !(0..=200).contains(&limit) {
        return Err(AppError::invalid(
            &["query", "limit"],
            "limit must be 0 to 200",
        ));
    }
    if offset < 0 {
        return Err(AppError::invalid(
            &["query", "offset"],
            "offset must not be negative",
        ));
    }
    let rating = query.rating.map(Rating::as_str);
    let items = state.operator.feedback(rating, limit, offset).await?;
    Ok(Reply::ok(FeedbackList {
        items,
        limit,
        offset,
    }))
}
