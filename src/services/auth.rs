//! Accounts: signup, login, and the JWTs that identify callers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::AppError;
use crate::storage::Database;
use crate::storage::users::{self, InsertOutcome, UserRecord};

/// bcrypt only reads the first 72 bytes; longer passwords are refused, never truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;
pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_NAME_CHARS: usize = 200;

/// JWT claims, identical to the Python version's so its tokens stay valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(deserialize_with = "id_as_string")]
    pub user_id: String,
    #[serde(default)]
    pub email: String,
    pub exp: i64,
}

// Tokens from other issuers may carry the id as a number; accept both.
fn id_as_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(i64),
    }
    Ok(match Id::deserialize(deserializer)? {
        Id::Text(text) => text,
        Id::Number(number) => number.to_string(),
    })
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

impl From<TokenError> for AppError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Expired => AppError::Unauthorized("Token expired"),
            TokenError::Invalid => AppError::Unauthorized("Invalid token"),
        }
    }
}

/// A signed-in user and their fresh token.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: UserRecord,
    pub access_token: String,
}

/// Signs and checks tokens; hashes and verifies passwords off the async runtime.
/// What a user may do (contract section 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// Answers handed-over conversations (`AGENT_EMAILS`, section 17).
    Agent,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Agent => "agent",
            Self::User => "user",
        }
    }
}

#[derive(Clone)]
pub struct AuthService {
    db: Database,
    /// `ADMIN_EMAILS`, lower-cased.
    admins: Arc<[String]>,
    /// `AGENT_EMAILS`, lower-cased.
    agents: Arc<[String]>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    algorithm: Algorithm,
    expire_minutes: i64,
    bcrypt_cost: u32,
    /// Verified against when the email is unknown, so timing does not reveal accounts.
    dummy_hash: Arc<str>,
    /// Caps concurrent bcrypt work at one hash per core: a login flood then
    /// cannot take every blocking thread, and more hashes than cores would
    /// only queue in the OS scheduler, ahead of the async workers (measured:
    /// `/health` p99 during the bench's login flood 8.6 ms at 2 per core,
    /// 4.9 ms at 1, same logins/s).
    hash_permits: Arc<Semaphore>,
    /// Users recently named by valid tokens (see [`USER_CACHE_TTL`]).
    recent_users: Arc<quick_cache::sync::Cache<i64, (Instant, UserRecord)>>,
}

/// How many users [`AuthService::user_for_claims`] keeps in memory (a few MiB at most).
const USER_CACHE_CAPACITY: usize = 10_000;
/// How long a cached user row is trusted. Rows never change once written
/// (no route updates or deletes a user), so a hit saves a database round trip
/// per authenticated request; the expiry bounds how long a row removed by an
/// operator keeps authenticating. Unknown users are never cached.
const USER_CACHE_TTL: Duration = Duration::from_secs(60);

impl AuthService {
    /// A user's role: `admin` when their address is in `ADMIN_EMAILS`,
    /// `agent` when in `AGENT_EMAILS` (compared without case), else `user`.
    pub fn role_of(&self, email: &str) -> Role {
        let email = email.trim().to_lowercase();
        if self.admins.contains(&email) {
            Role::Admin
        } else if self.agents.contains(&email) {
            Role::Agent
        } else {
            Role::User
        }
    }

    pub async fn new(config: &Config, db: Database) -> Result<Self, AppError> {
        let secret = config.jwt_secret.expose().as_bytes();
        let cost = config.bcrypt_cost;
        let dummy_hash =
            tokio::task::spawn_blocking(move || bcrypt::hash("not-a-real-password", cost))
                .await
                .map_err(|err| AppError::Internal(err.to_string()))?
                .map_err(|err| AppError::Internal(err.to_string()))?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            db,
            admins: config.admin_emails.clone().into(),
            agents: config.handoff.agent_emails.clone().into(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            algorithm: config.jwt_algorithm,
            expire_minutes: config.jwt_expire_minutes,
            bcrypt_cost: cost,
            dummy_hash: dummy_hash.into(),
            hash_permits: Arc::new(Semaphore::new(workers)),
            recent_users: Arc::new(quick_cache::sync::Cache::new(USER_CACHE_CAPACITY)),
        })
    }

    /// Creates an account; 400 when the (normalised) email is taken.
    pub async fn signup(
        &self,
        email: &str,
        name: &str,
        password: &str,
    ) -> Result<Session, AppError> {
        let email = normalize_email(email)?;
        let name = name.trim();
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(AppError::invalid(
                &["body", "name"],
                format!("name must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        validate_password(password)?;
        let hash = self.hash_password(password.to_owned()).await?;
        match users::insert(&self.db, &email, name, &hash).await? {
            InsertOutcome::Created(user) => self.session_for(user),
            InsertOutcome::EmailTaken => Err(AppError::BadRequest("User already exists")),
        }
    }

    /// Checks credentials; one answer for unknown email and wrong password.
    pub async fn login(&self, email: &str, password: &str) -> Result<Session, AppError> {
        const INVALID: AppError = AppError::Unauthorized("Invalid email or password");
        let user = match normalize_email(email) {
            Ok(normalized) => users::find_for_login(&self.db, &normalized, email.trim()).await?,
            Err(_) => None,
        };
        let hash = user.as_ref().map_or_else(
            || self.dummy_hash.to_string(),
            |user| user.password_hash.clone(),
        );
        let matches = self.verify_password(password.to_owned(), hash).await?
            // bcrypt would compare only the first 72 bytes; signup never accepts longer.
            && password.len() <= MAX_PASSWORD_BYTES;
        match user {
            Some(user) if matches => self.session_for(user),
            _ => Err(INVALID),
        }
    }

    /// Decodes and checks a token's signature, algorithm and expiry.
    pub fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    /// Optional auth: the caller's id, `None` for no token or one that is not
    /// a valid JWT (the frontend sends `Bearer null`); 401 when expired, or
    /// when the token is valid but its user does not exist (any later write
    /// in the caller's name would fail).
    pub async fn optional_caller(&self, token: Option<&str>) -> Result<Option<i64>, AppError> {
        let Some(token) = token.filter(|token| !token.is_empty()) else {
            return Ok(None);
        };
        match self.decode(token) {
            Ok(claims) => match claims.user_id.parse::<i64>() {
                Ok(_) => Ok(Some(self.user_for_claims(&claims).await?.id)),
                Err(_) => Ok(None),
            },
            Err(TokenError::Expired) => Err(TokenError::Expired.into()),
            Err(TokenError::Invalid) => Ok(None),
        }
    }

    /// The user a valid token names; 401 "User not found" when it no longer exists.
    pub async fn user_for_claims(&self, claims: &Claims) -> Result<UserRecord, AppError> {
        let id: i64 = claims
            .user_id
            .parse()
            .map_err(|_| AppError::Unauthorized("Invalid token"))?;
        if let Some((cached_at, user)) = self.recent_users.get(&id)
            && cached_at.elapsed() < USER_CACHE_TTL
        {
            return Ok(user);
        }
        let user = users::find_by_id(&self.db, id)
            .await?
            .ok_or(AppError::Unauthorized("User not found"))?;
        self.recent_users.insert(id, (Instant::now(), user.clone()));
        Ok(user)
    }

    /// Signs a token for a user.
    pub fn issue_token(&self, user: &UserRecord) -> Result<String, AppError> {
        let claims = Claims {
            user_id: user.id.to_string(),
            email: user.email.clone(),
            exp: chrono::Utc::now().timestamp() + self.expire_minutes * 60,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .map_err(|err| AppError::Internal(format!("signing a token failed: {err}")))
    }

    fn session_for(&self, user: UserRecord) -> Result<Session, AppError> {
        let access_token = self.issue_token(&user)?;
        Ok(Session { user, access_token })
    }

    async fn hash_password(&self, password: String) -> Result<String, AppError> {
        let cost = self.bcrypt_cost;
        self.blocking(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|err| AppError::Internal(format!("bcrypt hash failed: {err}")))
    }

    async fn verify_password(&self, password: String, hash: String) -> Result<bool, AppError> {
        // A malformed stored hash or an over-long password simply does not match.
        self.blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|err| AppError::Internal(err.to_string()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|err| AppError::Internal(format!("blocking task failed: {err}")))
    }
}

/// Trimmed, lower-cased, syntactically valid email (422 otherwise).
pub fn normalize_email(raw: &str) -> Result<String, AppError> {
    let email = raw.trim().to_lowercase();
    let domain_has_dot = email
        .rsplit_once('@')
        .is_some_and(|(_, domain)| domain.contains('.') && !domain.ends_with('.'));
    if email.chars().count() > MAX_EMAIL_CHARS
        || !domain_has_dot
        || !email_address::EmailAddress::is_valid(&email)
    {
        return Err(AppError::invalid(
            &["body", "email"],
            "value is not a valid email address",
        ));
    }
    Ok(email)
}

fn validate_password(password: &str) -> Result<(), AppError> {
    if password.is_empty() {
        return Err(AppError::invalid(
            &["body", "password"],
            "password must not be empty",
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::invalid(
            &["body", "password"],
            format!("password must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}
