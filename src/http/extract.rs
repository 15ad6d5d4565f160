//! Extractors whose rejections are `AppError`s (so they render the envelope),
//! and the two auth extractors.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use crate::error::{AppError, FieldError};
use crate::http::AppState;
use crate::services::auth::Role;
use crate::storage::users::UserRecord;

/// A JSON body. Any content type is accepted (old curl scripts omit it);
/// errors name the failing field as `["body", ...]`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                        AppError::PayloadTooLarge
                    } else {
                        AppError::BadRequest("Could not read the request body")
                    }
                })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, turning serde's error into a located validation error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let invalid = |loc: Vec<String>, msg: String, kind: &str| {
        AppError::Validation(vec![FieldError {
            loc,
            msg,
            kind: kind.to_string(),
        }])
    };
    let body = || vec!["body".to_string()];
    // Syntax first (serde_json also caps nesting depth here).
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| invalid(body(), strip_position(&err.to_string()), "json_invalid"))?;
    // serde fills structs from arrays too; every body of this API is an object.
    if !value.is_object() {
        return Err(invalid(
            body(),
            "Input should be a valid dictionary or object".into(),
            "dict_type",
        ));
    }
    // PostgreSQL text cannot hold NUL; refuse it the same way on every backend.
    let mut path = body();
    if contains_nul(&value, &mut path) {
        return Err(invalid(
            path,
            "text must not contain NUL characters".into(),
            "string_nul",
        ));
    }
    serde_path_to_error::deserialize(&value).map_err(|err| {
        let mut loc = body();
        let path = err.path().to_string();
        if path != "." {
            loc.extend(path.split('.').map(str::to_string));
        }
        let message = err.into_inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let kind = match missing {
            Some(field) => {
                loc.push(field.to_string());
                "missing"
            }
            None => "type_error",
        };
        invalid(loc, strip_position(&message), kind)
    })
}

/// Finds a string containing NUL; `path` is left pointing at it.
fn contains_nul(value: &serde_json::Value, path: &mut Vec<String>) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().enumerate().any(|(index, item)| {
            path.push(index.to_string());
            let found = contains_nul(item, path);
            if !found {
                path.pop();
            }
            found
        }),
        serde_json::Value::Object(fields) => fields.iter().any(|(key, item)| {
            path.push(key.clone());
            let found = key.contains('\0') || contains_nul(item, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    }
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

/// An integer path parameter; anything else is a 422 naming the parameter.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                // Name the route's own parameter (`id`, `conversation_id`).
                let name = RawPathParams::from_request_parts(parts, state)
                    .await
                    .ok()
                    .and_then(|params| params.iter().next().map(|(key, _)| key.to_string()))
                    .unwrap_or_else(|| "id".to_string());
                let rejection: PathRejection = rejection;
                Err(AppError::Validation(vec![FieldError::new(
                    &["path", &name],
                    rejection.body_text(),
                    "int_parsing",
                )]))
            }
        }
    }
}

/// Query parameters; a bad value is a 422 naming the query.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        // axum's `Query` with the failing field's path kept (it folds it
        // into one message): `loc` names the parameter, as for bodies.
        let query = parts.uri.query().unwrap_or_default();
        let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(pairs)
            .map(ApiQuery)
            .map_err(|err| {
                let mut loc = vec!["query".to_string()];
                let path = err.path().to_string();
                if path != "." {
                    loc.push(path);
                }
                AppError::Validation(vec![FieldError {
                    loc,
                    msg: err.into_inner().to_string(),
                    kind: "value_error".to_string(),
                }])
            })
    }
}

/// The bearer token of a request, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A caller that must be signed in (401 otherwise).
pub struct AuthUser(pub UserRecord);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if parts.headers.get(header::AUTHORIZATION).is_none() {
            return Err(AppError::Unauthorized("Not authenticated"));
        }
        let token = bearer_token(&parts.headers).ok_or(AppError::Unauthorized("Invalid token"))?;
        let claims = state.auth.decode(token)?;
        Ok(AuthUser(state.auth.user_for_claims(&claims).await?))
    }
}

/// A signed-in admin (`ADMIN_EMAILS`): 401 without a valid token, 403 for
/// everyone else.
pub struct AdminUser(pub UserRecord);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        match state.auth.role_of(&user.email) {
            Role::Admin => Ok(AdminUser(user)),
            Role::Agent | Role::User => Err(AppError::Forbidden),
        }
    }
}

/// A signed-in agent (`AGENT_EMAILS`) or admin (admins act as agents): 401
/// without a valid token, 403 for everyone else.
pub struct AgentUser(pub UserRecord);

impl FromRequestParts<AppState> for AgentUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        match state.auth.role_of(&user.email) {
            Role::Admin | Role::Agent => Ok(AgentUser(user)),
            Role::User => Err(AppError::Forbidden),
        }
    }
}

/// A caller who may be anonymous. No header, `Bearer null` or a token that is
/// not a valid JWT mean anonymous; an expired token is a 401 so the client
/// logs in again instead of silently losing ownership. (`Option<AuthUser>`
/// would not do: it would turn an expired token into an anonymous caller.)
pub struct MaybeAuthUser(pub Option<i64>);

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Ok(MaybeAuthUser(
            state
                .auth
                .optional_caller(bearer_token(&parts.headers))
                .await?,
        ))
    }
}

/// The client's address (see [`crate::http::rate_limit::client_ip`]).
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(ClientIp(crate::http::rate_limit::client_ip(
            &parts.headers,
            &parts.extensions,
            state.config.trust_forwarded_for,
        )))
    }
}
