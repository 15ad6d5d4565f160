//! The one application error type. Services return it; `http::envelope` renders it.

use std::time::Duration;

use serde::Serialize;

/// One failed field of a validation error: where (`["body","email"]`) and what.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    pub fn new(loc: &[&str], msg: impl Into<String>, kind: &str) -> Self {
        Self {
            loc: loc.iter().map(|part| part.to_string()).collect(),
            msg: msg.into(),
            kind: kind.to_string(),
        }
    }
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("validation error")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("Forbidden")]
    Forbidden,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("Request body too large")]
    PayloadTooLarge,
    #[error("Too Many Requests")]
    TooManyRequests { retry_after: Duration },
    #[error("Model not configured")]
    ModelNotConfigured,
    #[error("upstream model error: {0}")]
    UpstreamModel(String),
    #[error("{message}")]
    Unavailable {
        message: &'static str,
        retry_after: Option<Duration>,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// A single-field 422.
    pub fn invalid(loc: &[&str], msg: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(loc, msg, "value_error")])
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Validation(_) => 422,
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::TooManyRequests { .. } => 429,
            Self::ModelNotConfigured | Self::Unavailable { .. } => 503,
            Self::UpstreamModel(_) => 502,
            Self::Database(err) if is_pool_exhaustion(err) => 503,
            Self::Database(_) | Self::Internal(_) => 500,
        }
    }

    /// The sentence shown to the client. Never carries internal details.
    pub fn public_message(&self) -> String {
        match self {
            Self::Validation(_) => "Validation error".into(),
            Self::BadRequest(msg)
            | Self::Unauthorized(msg)
            | Self::NotFound(msg)
            | Self::Conflict(msg) => (*msg).into(),
            Self::Unavailable { message, .. } => (*message).into(),
            Self::UpstreamModel(_) => "Upstream model error".into(),
            Self::Database(err) if is_pool_exhaustion(err) => {
                "Service temporarily unavailable".into()
            }
            Self::Database(_) | Self::Internal(_) => "Internal Server Error".into(),
            other => other.to_string(),
        }
    }
}

/// Pool timeouts, lost connections and a database shutting down mean "try
/// again", not "bug": SQLSTATE classes 08 (connection exception) and 57
/// (operator intervention, e.g. admin shutdown).
fn is_pool_exhaustion(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}
