//! Typed configuration, loaded once at startup from the environment (and `.env`).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::Algorithm;

/// The Python version's JWT secret, kept as the default so its tokens stay valid.
pub const DEFAULT_JWT_SECRET: &str = "eloquentaioperator";

/// A configuration problem, rendered as one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

/// A string that never prints its value (API keys, JWT secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The raw value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the data lives, parsed from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A SQLite file (created when missing).
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database.
    SqliteMemory,
    /// A PostgreSQL URL, normalised to the `postgres://` scheme.
    Postgres(String),
}

impl DatabaseTarget {
    /// Accepts the SQLAlchemy spellings of the Python version as well as sqlx's.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        for prefix in [
            "postgresql+psycopg2://",
            "postgresql+psycopg://",
            "postgresql+asyncpg://",
            "postgresql://",
            "postgres://",
        ] {
            if let Some(rest) = url.strip_prefix(prefix) {
                if rest.is_empty() {
                    return Err("PostgreSQL URL has no host".into());
                }
                return Ok(Self::Postgres(format!("postgres://{rest}")));
            }
        }
        let Some(rest) = url.strip_prefix("sqlite:") else {
            return Err(format!(
                "unsupported URL {:?}: expected sqlite:///FILE or postgresql://...",
                scheme_of(url)
            ));
        };
        // Query options (e.g. `?mode=rwc`) are sqlx's; we always create the file.
        let rest = rest.split('?').next().unwrap_or_default();
        let path = match rest {
            "" | "//" | ":memory:" | "///:memory:" | "//:memory:" => return Ok(Self::SqliteMemory),
            // SQLAlchemy: four slashes = absolute path, three = relative to the cwd.
            r if r.starts_with("////") => format!("/{}", &r[4..]),
            r if r.starts_with("///") => r[3..].to_string(),
            r if r.starts_with("//") => r[2..].to_string(),
            r => r.to_string(),
        };
        if path.trim().is_empty() {
            return Err("SQLite URL has no file name".into());
        }
        Ok(Self::SqliteFile(PathBuf::from(path)))
    }
}

fn scheme_of(url: &str) -> &str {
    url.split(':').next().unwrap_or(url)
}

/// Origins allowed by CORS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

/// Pinecone records-search settings; present only when key and host are both set.
#[derive(Debug, Clone)]
pub struct PineconeConfig {
    pub api_key: Secret,
    /// Base URL with scheme, without trailing slash.
    pub base_url: String,
    pub namespace: String,
    pub top_k: u32,
    pub text_field: String,
    pub category_field: String,
    pub api_version: String,
    pub timeout: Duration,
    /// First wait before retrying an upsert answered 429 or 5xx (doubling after).
    pub retry_base: Duration,
    /// Searches carried at once by one connection before another is opened.
    pub streams_per_connection: usize,
}

/// Where answers' context comes from (`RETRIEVAL_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrievalBackend {
    /// A Pinecone index (needs `PINECONE_API_KEY` and `PINECONE_HOST`).
    Pinecone,
    /// The knowledge base in the server's own database (`eloquent kb ingest`).
    Local,
    /// No retrieval: every answer has an empty context.
    None,
}

/// Retrieval settings shared by the backends.
#[derive(Debug, Clone)]
pub struct RetrievalConfig {
    pub backend: RetrievalBackend,
    /// Hits taken from the local backend (Pinecone's count is `PINECONE_TOP_K`).
    pub top_k: usize,
    /// Hits scoring below this are dropped (scores are higher-is-better).
    pub min_score: f64,
    /// The local search's synonym list (`RETRIEVAL_SYNONYMS`: unset = the
    /// built-in list, `none` = none, else a file of the same format).
    pub synonyms: Option<String>,
}

/// `RETRIEVAL_MIN_SCORE` when unset. Local scores are the covered share of
/// the query's IDF (storage::knowledge); Pinecone's are passed through and
/// not filtered unless asked.
pub const DEFAULT_LOCAL_MIN_SCORE: f64 = 0.35;

/// OpenAI-compatible model settings.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub api_key: Option<Secret>,
    pub base_url: String,
    pub model: String,
    pub connect_timeout: Duration,
    /// Longest silence allowed from the upstream, before the first token and between tokens.
    pub idle_timeout: Duration,
    /// Longest a whole answer may take.
    pub total_timeout: Duration,
    /// Answers streamed at once over one connection before another is opened.
    pub streams_per_connection: usize,
}

/// The optional model judge of the input guardrails (`GUARDRAIL_JUDGE=model`).
#[derive(Debug, Clone)]
pub struct JudgeConfig {
    /// Its own base URL, model and key (`GUARDRAIL_JUDGE_BASE_URL`,
    /// `GUARDRAIL_JUDGE_MODEL`, `GUARDRAIL_JUDGE_API_KEY`), each defaulting
    /// to the chat model's.
    pub model: ModelConfig,
    /// Longest wait for a verdict (`GUARDRAIL_JUDGE_TIMEOUT_MS`).
    pub timeout: Duration,
    /// What an error or a timeout means (`GUARDRAIL_JUDGE_FAIL`): `true`
    /// refuses the message (`closed`), `false` lets it through (`open`).
    pub fail_closed: bool,
}

/// Human handoff (contract section 17).
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// Consecutive ungrounded turns that hand a conversation to a person
    /// (`HANDOFF_AFTER_UNGROUNDED`; 0: never).
    pub after_ungrounded: u32,
    /// The answer to the turn that hands the conversation over (`HANDOFF_REPLY`).
    pub reply: String,
    /// The answer to a user message while a person owns the conversation
    /// (`HANDOFF_ACK_REPLY`).
    pub ack_reply: String,
    /// Agents' addresses (`AGENT_EMAILS`, comma-separated), lower-cased.
    pub agent_emails: Vec<String>,
}

/// Default `HANDOFF_REPLY`.
pub const DEFAULT_HANDOFF_REPLY: &str = "I'm passing this conversation to a member of our \
     support team. A person will reply here as soon as possible; you can keep writing in the \
     meantime.";
/// Default `HANDOFF_ACK_REPLY`.
pub const DEFAULT_HANDOFF_ACK_REPLY: &str =
    "Thanks, your message has been passed on. A member of our support team will reply here.";

/// Signed webhooks (`WEBHOOK_URL`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Secret,
    /// Deliveries tried per event before it is given up (`WEBHOOK_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// The first retry's delay; each later one doubles it
    /// (`WEBHOOK_RETRY_BASE_SECS`, decimals allowed).
    pub retry_base: Duration,
    /// How long one delivery may take (`WEBHOOK_TIMEOUT_SECS`).
    pub timeout: Duration,
}

/// Everything the server reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub app_env: String,
    pub host: IpAddr,
    pub port: u16,
    pub database: DatabaseTarget,
    pub db_pool_size: u32,
    pub db_acquire_timeout: Duration,
    pub db_idle_timeout: Duration,
    pub db_max_lifetime: Duration,
    pub model: ModelConfig,
    pub pinecone: Option<PineconeConfig>,
    pub retrieval: RetrievalConfig,
    /// Answered without calling the model when no record cleared the minimum score.
    pub ungrounded_reply: Option<String>,
    /// Admins' addresses (`ADMIN_EMAILS`, comma-separated), lower-cased.
    pub admin_emails: Vec<String>,
    /// `GET /metrics` is served (`METRICS_ENABLED`, default true).
    pub metrics_enabled: bool,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    pub jwt_secret: Secret,
    pub jwt_algorithm: Algorithm,
    pub jwt_expire_minutes: i64,
    pub bcrypt_cost: u32,
    pub cors_allow_origins: CorsOrigins,
    /// Shared state for several servers (`REDIS_URL`: `redis://` or
    /// `rediss://`); `None`: everything in this process.
    pub redis_url: Option<Secret>,
    pub rate_limit_auth_per_minute: u32,
    pub rate_limit_chat_per_minute: u32,
    pub trust_forwarded_for: bool,
    pub max_body_bytes: usize,
    pub max_message_chars: usize,
    pub history_max_messages: usize,
    pub max_streams_total: usize,
    pub max_streams_per_user: usize,
    pub request_timeout: Duration,
    pub sse_keepalive: Duration,
    pub ws_idle_timeout: Duration,
    /// How long a turn nobody follows keeps streaming for a client to resume.
    pub stream_resume_grace: Duration,
    /// How long an ended turn's events can be replayed.
    pub stream_replay_ttl: Duration,
    pub log_format: LogFormat,
    pub handoff: HandoffConfig,
    /// `None` when `GUARDRAIL_JUDGE` is `off` (the default).
    pub judge: Option<JudgeConfig>,
    /// `None` when `WEBHOOK_URL` is unset: no events are recorded.
    pub webhooks: Option<WebhookConfig>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Reads the process environment (after loading `.env` when present).
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is an error worth stopping for.
        if let Err(err) = dotenvy::dotenv()
            && !err.not_found()
        {
            return Err(ConfigError {
                variable: ".env",
                reason: err.to_string(),
            });
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any variable lookup (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        // HTTP/2 servers must allow at least 100 concurrent streams per
        // connection (RFC 9113 recommends no fewer); beyond their limit a
        // request would wait for another to finish.
        let streams_per_connection =
            env.parse_in("UPSTREAM_STREAMS_PER_CONNECTION", 100, 1..=1_000_000)?;
        let pinecone_key = env.optional("PINECONE_API_KEY");
        let pinecone_host = env.optional("PINECONE_HOST");
        let pinecone = match (pinecone_key, pinecone_host) {
            (Some(key), Some(host)) => Some(PineconeConfig {
                api_key: Secret::new(key),
                base_url: pinecone_base_url(&host).map_err(|reason| ConfigError {
                    variable: "PINECONE_HOST",
                    reason,
                })?,
                namespace: env.string("PINECONE_NAMESPACE", "__default__"),
                top_k: env.parse_in("PINECONE_TOP_K", 10, 1..=1000)?,
                text_field: env.string("PINECONE_TEXT_FIELD", "text"),
                category_field: env.string("PINECONE_CATEGORY_FIELD", "category"),
                api_version: env.string("PINECONE_API_VERSION", "2025-04"),
                timeout: env.millis_in("PINECONE_TIMEOUT_MS", 5000, 1..=120_000)?,
                retry_base: env.millis_in("PINECONE_RETRY_BASE_MS", 500, 1..=60_000)?,
                streams_per_connection,
            }),
            _ => None,
        };
        let backend = match env.optional("RETRIEVAL_BACKEND").as_deref() {
            None if pinecone.is_some() => RetrievalBackend::Pinecone,
            None => RetrievalBackend::Local,
            Some("pinecone") if pinecone.is_some() => RetrievalBackend::Pinecone,
            Some("pinecone") => {
                return Err(ConfigError {
                    variable: "RETRIEVAL_BACKEND",
                    reason: "pinecone needs PINECONE_API_KEY and PINECONE_HOST".into(),
                });
            }
            Some("local") => RetrievalBackend::Local,
            Some("none") => RetrievalBackend::None,
            Some(other) => {
                return Err(ConfigError {
                    variable: "RETRIEVAL_BACKEND",
                    reason: format!("{other:?} is not one of pinecone, local, none"),
                });
            }
        };
        let default_min_score = match backend {
            RetrievalBackend::Local => DEFAULT_LOCAL_MIN_SCORE,
            RetrievalBackend::Pinecone | RetrievalBackend::None => 0.0,
        };
        let retrieval = RetrievalConfig {
            backend,
            top_k: env.parse_in("RETRIEVAL_TOP_K", 5, 1..=100)?,
            min_score: env.parse_in("RETRIEVAL_MIN_SCORE", default_min_score, 0.0..=1000.0)?,
            synonyms: match env.optional("RETRIEVAL_SYNONYMS").as_deref() {
                None => Some(crate::services::knowledge::synonyms::BUILT_IN.to_string()),
                Some("none") => None,
                Some(path) => Some(std::fs::read_to_string(path).map_err(|err| ConfigError {
                    variable: "RETRIEVAL_SYNONYMS",
                    reason: format!("cannot read {path}: {err}"),
                })?),
            },
        };
        let base_url = env.string("OPENAI_BASE_URL", "https://api.openai.com/v1");
        url::Url::parse(&base_url).map_err(|err| ConfigError {
            variable: "OPENAI_BASE_URL",
            reason: format!("not a URL ({err})"),
        })?;
        let model = ModelConfig {
            api_key: env.optional("OPENAI_API_KEY").map(Secret::new),
            base_url: base_url.trim_end_matches('/').to_string(),
            model: env.string("OPENAI_MODEL", "gpt-4o"),
            connect_timeout: env.secs_in("MODEL_CONNECT_TIMEOUT_SECS", 10, 1..=600)?,
            idle_timeout: env.secs_in("MODEL_IDLE_TIMEOUT_SECS", 60, 1..=3600)?,
            total_timeout: env.secs_in("MODEL_TOTAL_TIMEOUT_SECS", 300, 1..=86_400)?,
            streams_per_connection,
        };
        let database_url = env.string("DATABASE_URL", "sqlite:///./chat.db");
        let database = DatabaseTarget::parse(&database_url).map_err(|reason| ConfigError {
            variable: "DATABASE_URL",
            reason,
        })?;
        let jwt_algorithm = match env.string("JWT_ALGORITHM", "HS256").as_str() {
            "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            other => {
                return Err(ConfigError {
                    variable: "JWT_ALGORITHM",
                    reason: format!("{other:?} is not supported (use HS256, HS384 or HS512)"),
                });
            }
        };
        let app_env = env.string("APP_ENV", "development");
        let jwt_secret = Secret::new(env.string("JWT_SECRET", DEFAULT_JWT_SECRET));
        if app_env == "production" && jwt_secret.expose() == DEFAULT_JWT_SECRET {
            return Err(ConfigError {
                variable: "JWT_SECRET",
                reason: "the built-in default secret is refused when APP_ENV=production".into(),
            });
        }
        let redis_url = match env.optional("REDIS_URL") {
            Some(url) => {
                ::redis::Client::open(url.as_str()).map_err(|err| ConfigError {
                    variable: "REDIS_URL",
                    reason: format!("not a Redis URL (redis://host:port/db or rediss://…): {err}"),
                })?;
                Some(Secret::new(url))
            }
            None => None,
        };
        let cors_allow_origins = {
            let raw = env.string("CORS_ALLOW_ORIGINS", "*");
            let origins: Vec<String> = raw
                .split(',')
                .map(|origin| origin.trim().trim_end_matches('/').to_string())
                .filter(|origin| !origin.is_empty())
                .collect();
            if origins.is_empty() || origins.iter().any(|origin| origin == "*") {
                CorsOrigins::Any
            } else {
                for origin in &origins {
                    http::HeaderValue::from_str(origin).map_err(|_| ConfigError {
                        variable: "CORS_ALLOW_ORIGINS",
                        reason: format!("{origin:?} is not a valid origin"),
                    })?;
                }
                CorsOrigins::List(origins)
            }
        };
        let log_format = match env.string("LOG_FORMAT", "text").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError {
                    variable: "LOG_FORMAT",
                    reason: format!("{other:?} is not text or json"),
                });
            }
        };
        let handoff = HandoffConfig {
            after_ungrounded: env.parse_in("HANDOFF_AFTER_UNGROUNDED", 2, 0..=1000)?,
            reply: env.string("HANDOFF_REPLY", DEFAULT_HANDOFF_REPLY),
            ack_reply: env.string("HANDOFF_ACK_REPLY", DEFAULT_HANDOFF_ACK_REPLY),
            agent_emails: email_list(env.optional("AGENT_EMAILS")),
        };
        let webhooks = match env.optional("WEBHOOK_URL") {
            None => None,
            Some(url) => {
                let parsed = url::Url::parse(&url).map_err(|err| ConfigError {
                    variable: "WEBHOOK_URL",
                    reason: format!("not a URL ({err})"),
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError {
                        variable: "WEBHOOK_URL",
                        reason: format!("{:?} is not http or https", parsed.scheme()),
                    });
                }
                let secret = env.optional("WEBHOOK_SECRET").ok_or(ConfigError {
                    variable: "WEBHOOK_SECRET",
                    reason: "required with WEBHOOK_URL (receivers verify the signature with it)"
                        .into(),
                })?;
                let base: f64 = env.parse_in("WEBHOOK_RETRY_BASE_SECS", 20.0, 0.01..=86_400.0)?;
                Some(WebhookConfig {
                    url,
                    secret: Secret::new(secret),
                    max_attempts: env.parse_in("WEBHOOK_MAX_ATTEMPTS", 10, 1..=100)?,
                    retry_base: Duration::from_secs_f64(base),
                    timeout: env.secs_in("WEBHOOK_TIMEOUT_SECS", 10, 1..=300)?,
                })
            }
        };
        let judge = match env.string("GUARDRAIL_JUDGE", "off").as_str() {
            "off" => None,
            "model" => {
                let base_url = match env.optional("GUARDRAIL_JUDGE_BASE_URL") {
                    Some(url) => {
                        url::Url::parse(&url).map_err(|err| ConfigError {
                            variable: "GUARDRAIL_JUDGE_BASE_URL",
                            reason: format!("not a URL ({err})"),
                        })?;
                        url.trim_end_matches('/').to_string()
                    }
                    None => model.base_url.clone(),
                };
                let api_key = env
                    .optional("GUARDRAIL_JUDGE_API_KEY")
                    .map(Secret::new)
                    .or_else(|| model.api_key.clone());
                if api_key.is_none() {
                    return Err(ConfigError {
                        variable: "GUARDRAIL_JUDGE_API_KEY",
                        reason: "GUARDRAIL_JUDGE=model needs a key (this or OPENAI_API_KEY)".into(),
                    });
                }
                let timeout = env.millis_in("GUARDRAIL_JUDGE_TIMEOUT_MS", 2000, 10..=60_000)?;
                let fail_closed = match env.string("GUARDRAIL_JUDGE_FAIL", "open").as_str() {
                    "open" => false,
                    "closed" => true,
                    other => {
                        return Err(ConfigError {
                            variable: "GUARDRAIL_JUDGE_FAIL",
                            reason: format!("{other:?} is not open or closed"),
                        });
                    }
                };
                Some(JudgeConfig {
                    model: ModelConfig {
                        api_key,
                        base_url,
                        model: env.string("GUARDRAIL_JUDGE_MODEL", &model.model),
                        idle_timeout: timeout,
                        total_timeout: timeout,
                        ..model.clone()
                    },
                    timeout,
                    fail_closed,
                })
            }
            other => {
                return Err(ConfigError {
                    variable: "GUARDRAIL_JUDGE",
                    reason: format!("{other:?} is not off or model"),
                });
            }
        };
        Ok(Self {
            judge,
            handoff,
            webhooks,
            app_env,
            host: env.parse("HOST", IpAddr::from([0, 0, 0, 0]))?,
            port: env.parse("PORT", 8000)?,
            database,
            db_pool_size: env.parse_in("DB_POOL_SIZE", 30, 1..=10_000)?,
            db_acquire_timeout: env.secs_in("DB_ACQUIRE_TIMEOUT_SECS", 5, 1..=600)?,
            db_idle_timeout: env.secs_in("DB_IDLE_TIMEOUT_SECS", 600, 1..=86_400)?,
            db_max_lifetime: env.secs_in("DB_MAX_LIFETIME_SECS", 1800, 1..=604_800)?,
            model,
            pinecone,
            retrieval,
            ungrounded_reply: env.optional("UNGROUNDED_REPLY"),
            admin_emails: email_list(env.optional("ADMIN_EMAILS")),
            metrics_enabled: env.parse("METRICS_ENABLED", true)?,
            metrics_token: env.optional("METRICS_TOKEN").map(Secret::new),
            jwt_secret,
            jwt_algorithm,
            jwt_expire_minutes: env.parse_in("JWT_EXPIRE_MINUTES", 60, 1..=525_600)?,
            bcrypt_cost: env.parse_in("BCRYPT_COST", 12, 4..=31)?,
            cors_allow_origins,
            redis_url,
            rate_limit_auth_per_minute: env.parse("RATE_LIMIT_AUTH_PER_MINUTE", 10)?,
            rate_limit_chat_per_minute: env.parse("RATE_LIMIT_CHAT_PER_MINUTE", 30)?,
            trust_forwarded_for: env.parse("TRUST_FORWARDED_FOR", false)?,
            max_body_bytes: env.parse_in("MAX_BODY_BYTES", 65_536, 256..=64 * 1024 * 1024)?,
            max_message_chars: env.parse_in("MAX_MESSAGE_CHARS", 8000, 1..=1_000_000)?,
            history_max_messages: env.parse_in("HISTORY_MAX_MESSAGES", 20, 0..=10_000)?,
            max_streams_total: env.parse_in("MAX_STREAMS_TOTAL", 20_000, 1..=1_000_000)?,
            max_streams_per_user: env.parse_in("MAX_STREAMS_PER_USER", 10, 0..=100_000)?,
            request_timeout: env.secs_in("REQUEST_TIMEOUT_SECS", 120, 1..=3600)?,
            sse_keepalive: env.secs_in("SSE_KEEPALIVE_SECS", 15, 1..=600)?,
            ws_idle_timeout: env.secs_in("WS_IDLE_TIMEOUT_SECS", 60, 1..=3600)?,
            stream_resume_grace: env.secs_in("STREAM_RESUME_GRACE_SECS", 30, 0..=3600)?,
            stream_replay_ttl: env.secs_in("STREAM_REPLAY_TTL_SECS", 300, 0..=86_400)?,
            log_format,
        })
    }

    /// True when `JWT_SECRET` was left at the Python default.
    pub fn uses_default_jwt_secret(&self) -> bool {
        self.jwt_secret.expose() == DEFAULT_JWT_SECRET
    }
}

/// A bare host means HTTPS; a value with a scheme is used as given.
fn pinecone_base_url(host: &str) -> Result<String, String> {
    let host = host.trim().trim_end_matches('/');
    let url = if host.contains("://") {
        host.to_string()
    } else {
        format!("https://{host}")
    };
    url::Url::parse(&url).map_err(|err| format!("not a host or URL ({err})"))?;
    Ok(url)
}

/// A comma-separated list of addresses, lower-cased.
fn email_list(raw: Option<String>) -> Vec<String> {
    raw.unwrap_or_default()
        .split(',')
        .map(|email| email.trim().to_lowercase())
        .filter(|email| !email.is_empty())
        .collect()
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_string())
    }

    fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| ConfigError {
                variable: name,
                reason: format!("{raw:?} is not a valid {}", short_type_name::<T>()),
            }),
        }
    }

    /// Whole seconds within `range`.
    fn secs_in(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.parse_in(name, default, range).map(Duration::from_secs)
    }

    /// Whole milliseconds within `range`.
    fn millis_in(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.parse_in(name, default, range)
            .map(Duration::from_millis)
    }

    fn parse_in<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let value = self.parse(name, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError {
                variable: name,
                reason: format!(
                    "{value} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            })
        }
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn database_url_forms() {
        let cases = [
            (
                "sqlite:///./chat.db",
                DatabaseTarget::SqliteFile("./chat.db".into()),
            ),
            (
                "sqlite:///chat.db",
                DatabaseTarget::SqliteFile("chat.db".into()),
            ),
            (
                "sqlite:////tmp/x.db",
                DatabaseTarget::SqliteFile("/tmp/x.db".into()),
            ),
            (
                "sqlite:data.db",
                DatabaseTarget::SqliteFile("data.db".into()),
            ),
            (
                "sqlite://data.db?mode=rwc",
                DatabaseTarget::SqliteFile("data.db".into()),
            ),
            ("sqlite://", DatabaseTarget::SqliteMemory),
            ("sqlite::memory:", DatabaseTarget::SqliteMemory),
            (
                "postgresql+psycopg2://u:p@h:5432/db",
                DatabaseTarget::Postgres("postgres://u:p@h:5432/db".into()),
            ),
            (
                "postgresql://u@h/db",
                DatabaseTarget::Postgres("postgres://u@h/db".into()),
            ),
            (
                "postgres://u@h/db",
                DatabaseTarget::Postgres("postgres://u@h/db".into()),
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(DatabaseTarget::parse(url), Ok(expected), "{url}");
        }
        assert!(DatabaseTarget::parse("mysql://x").is_err());
    }

    #[test]
    fn defaults_load_without_any_variable() {
        let config = load(&[]).expect("defaults are valid");
        assert_eq!(config.port, 8000);
        assert_eq!(
            config.database,
            DatabaseTarget::SqliteFile("./chat.db".into())
        );
        assert!(config.pinecone.is_none());
        assert!(config.model.api_key.is_none());
        assert_eq!(config.model.model, "gpt-4o");
        assert_eq!(config.model.streams_per_connection, 100);
        assert!(config.uses_default_jwt_secret());
        assert_eq!(config.cors_allow_origins, CorsOrigins::Any);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PORT", "eighty"),
            ("DATABASE_URL", "mysql://x"),
            ("JWT_ALGORITHM", "RS256"),
            ("OPENAI_BASE_URL", "not a url"),
            ("BCRYPT_COST", "2"),
            ("MAX_BODY_BYTES", "-1"),
            ("UPSTREAM_STREAMS_PER_CONNECTION", "0"),
        ] {
            let err = load(&[(name, value)]).expect_err(name);
            assert_eq!(err.variable, name);
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn default_secret_refused_in_production() {
        let err = load(&[("APP_ENV", "production")]).expect_err("must refuse");
        assert_eq!(err.variable, "JWT_SECRET");
        assert!(load(&[("APP_ENV", "production"), ("JWT_SECRET", "s3cret-long")]).is_ok());
    }

    #[test]
    fn pinecone_host_forms() {
        let bare = load(&[
            ("PINECONE_API_KEY", "k"),
            ("PINECONE_HOST", "idx.svc.pinecone.io"),
        ])
        .expect("valid");
        assert_eq!(
            bare.pinecone.expect("configured").base_url,
            "https://idx.svc.pinecone.io"
        );
        let full = load(&[
            ("PINECONE_API_KEY", "k"),
            ("PINECONE_HOST", "http://127.0.0.1:9000/"),
        ])
        .expect("valid");
        assert_eq!(
            full.pinecone.expect("configured").base_url,
            "http://127.0.0.1:9000"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let config = load(&[
            ("JWT_SECRET", "topsecretvalue"),
            ("OPENAI_API_KEY", "sk-abc"),
        ])
        .expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("topsecretvalue"));
        assert!(!printed.contains("sk-abc"));
    }
}
