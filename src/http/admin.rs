//! Admin routes (`ADMIN_EMAILS`): `GET /api/admin/analytics`,
//! `GET /api/admin/feedback`.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::envelope::{Envelope, ErrorData, Reply};
use crate::http::extract::{AdminUser, ApiQuery};
use crate::http::feedback::Rating;
use crate::services::operator::{Analytics, MAX_TOP_QUESTIONS, RatedAnswer};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(analytics))
        .routes(routes!(feedback))
}

/// `?from=&to=&top=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// Start of the period (RFC 3339, inclusive); default: 7 days before `to`.
    #[param(example = "2026-11-27T00:00:00Z")]
    pub from: Option<String>,
    /// End of the period (RFC 3339, exclusive); default: now.
    #[param(example = "2026-12-04T00:00:00Z")]
    pub to: Option<String>,
    /// How many of the most frequent ungrounded questions (default 10, at most 100).
    #[param(minimum = 0, maximum = 100)]
    pub top: Option<i64>,
}

/// An RFC 3339 time from a query string. A `+` in an offset arrives as a
/// space when the client did not encode it (`?from=2026-12-01T00:00:00+01:00`
/// typed into curl): read as the `+` it was.
fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, AppError> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|err| DateTime::parse_from_rfc3339(&value.replace(' ', "+")).map_err(|_| err))
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| {
            AppError::invalid(
                &["query", field],
                format!("{field} must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"),
            )
        })
}

/// What users asked and how it went in a period: turns, users, refusals,
/// grounding, feedback, time to first token, and the questions the
/// knowledge base had nothing for (the list to grow it from).
#[utoipa::path(get, path = "/api/admin/analytics", tag = "admin",
    params(AnalyticsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The period's analytics", body = Envelope<Analytics>),
        (status = 401, description = "Not authenticated, invalid or expired token", body = Envelope<ErrorData>),
        (status = 403, description = "Not an admin", body = Envelope<ErrorData>),
        (status = 422, description = "Bad from, to or top, or from not before to", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn analytics(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    ApiQuery(query): ApiQuery<AnalyticsQuery>,
) -> Result<Reply<Analytics>, AppError> {
    let to = match &query.to {
        Some(to) => parse_time("to", to)?,
        None => Utc::now(),
    };
    let from = match &query.from {
        Some(from) => parse_time("from", from)?,
        None => to.checked_sub_signed(Duration::days(7)).ok_or_else(|| {
            AppError::invalid(&["query", "to"], "to is too early for a 7-day period")
        })?,
    };
    if from >= to {
        return Err(AppError::invalid(
            &["query", "from"],
            "from must be before to",
        ));
    }
    let top = query.top.unwrap_or(10);
    if !(0..=MAX_TOP_QUESTIONS).contains(&top) {
        return Err(AppError::invalid(&["query", "top"], "top must be 0 to 100"));
    }
    let analytics = state.operator.analytics(from, to, top).await?;
    Ok(Reply::ok(analytics))
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
