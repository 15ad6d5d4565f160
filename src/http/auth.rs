//! `/api/auth/*`: signup, login, me.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::AppState;
use crate::http::envelope::{Envelope, ErrorData, Reply};
use crate::http::extract::{ApiJson, AuthUser};
use crate::services::auth::Session;
use crate::storage::users::UserRecord;

/// Signup and login: rate-limited per client IP.
pub fn credentials_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
}

/// The rest of `/api/auth`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

/// Signup body; unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignupRequest {
    /// Stored trimmed and lower-cased; unique regardless of case.
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    pub email: String,
    #[schema(example = "Ada", max_length = 200)]
    pub name: String,
    /// At most 72 bytes (bcrypt's limit).
    #[schema(
        example = "correct horse battery staple",
        min_length = 1,
        max_length = 72
    )]
    pub password: String,
}

/// Login body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    pub password: String,
}

/// A user as clients see it (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<UserRecord> for UserView {
    fn from(user: UserRecord) -> Self {
        Self {
            id: user.id,
            email: user.email,
            name: user.name,
            created_at: user.created_at,
        }
    }
}

/// Signup and login answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionData {
    pub message: &'static str,
    pub user: UserView,
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
}

impl SessionData {
    fn new(message: &'static str, session: Session) -> Self {
        Self {
            message,
            user: session.user.into(),
            access_token: session.access_token,
            token_type: "bearer",
        }
    }
}

/// `/api/auth/me` answer: the user exactly as Part I shows it (`<User>`),
/// and their role beside it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeData {
    pub user: UserView,
    /// `admin` when the address is in `ADMIN_EMAILS`, `agent` when in
    /// `AGENT_EMAILS`, else `user`.
    #[schema(example = "user")]
    pub role: &'static str,
}

/// Create an account and sign in.
#[utoipa::path(post, path = "/api/auth/signup", tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "User created", body = Envelope<SessionData>),
        (status = 400, description = "User already exists", body = Envelope<ErrorData>),
        (status = 413, description = "Request body too large", body = Envelope<ErrorData>),
        (status = 422, description = "Validation error", body = Envelope<ErrorData>),
        (status = 429, description = "Too many attempts", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn signup(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SignupRequest>,
) -> Result<Reply<SessionData>, AppError> {
    let session = state
        .auth
        .signup(&body.email, &body.name, &body.password)
        .await?;
    Ok(Reply::created(SessionData::new("User created", session)))
}

/// Sign in with email and password.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "User logged in", body = Envelope<SessionData>),
        (status = 401, description = "Invalid email or password", body = Envelope<ErrorData>),
        (status = 413, description = "Request body too large", body = Envelope<ErrorData>),
        (status = 422, description = "Validation error", body = Envelope<ErrorData>),
        (status = 429, description = "Too many attempts", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Reply<SessionData>, AppError> {
    let session = state.auth.login(&body.email, &body.password).await?;
    Ok(Reply::ok(SessionData::new("User logged in", session)))
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Envelope<MeData>),
        (status = 401, description = "Not authenticated, invalid or expired token, or its user does not exist", body = Envelope<ErrorData>),
        (status = 503, description = "Database unavailable or request timed out", body = Envelope<ErrorData>),
    ))]
async fn me(State(state): State<AppState>, AuthUser(user): AuthUser) -> Reply<MeData> {
    let role = state.auth.role_of(&user.email).as_str();
    Reply::ok(MeData {
        user: user.into(),
        role,
    })
}
