//! Building and running the application: bind, serve, shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clients::ClientSetupError;
use crate::clients::model::ModelClient;
use crate::clients::redis::Redis;
use crate::config::Config;
use crate::http::{self, AppServices, AppState};
use crate::metrics::Metrics;
use crate::services::adoption::{self, AdoptionError, Mode, Outcome};
use crate::services::auth::AuthService;
use crate::services::chat::{ChatService, ChatSettings, Lifecycle, Models};
use crate::services::handoff::Handoff;
use crate::services::judge::Judge;
use crate::services::knowledge::{
    self,
    retrieve::{Retrieval, Retriever},
};
use crate::services::operator::OperatorService;
use crate::services::rate_limits::RateLimit;
use crate::services::webhooks::Webhooks;
use crate::storage::{Database, PoolSettings, legacy};

/// Why the server could not start; one line each.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database (DATABASE_URL): {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Adoption(#[from] AdoptionError),
    #[error("cannot back up the SQLite file before adopting the Python service's tables: {0}")]
    Backup(sqlx::Error),
    #[error("cannot bind {addr} (HOST/PORT): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build an HTTP client: {0}")]
    HttpClient(#[from] ClientSetupError),
    #[error("cannot initialise: {0}")]
    Init(String),
}

/// Opens the database of `config`, applies its migrations and adopts the
/// Python service's tables if it finds rows there not adopted yet (on a
/// SQLite file, after a `VACUUM INTO` copy of it).
pub async fn open_database(config: &Config) -> Result<Database, StartupError> {
    let settings = PoolSettings {
        max_connections: config.db_pool_size,
        acquire_timeout: config.db_acquire_timeout,
        idle_timeout: config.db_idle_timeout,
        max_lifetime: config.db_max_lifetime,
    };
    let db = Database::connect(&config.database, settings).await?;
    // The copy comes before the first change, migrations included.
    let backup = if adoption::pending(&db).await? {
        legacy::backup_sqlite(&db)
            .await
            .map_err(StartupError::Backup)?
            .map(|path| path.display().to_string())
    } else {
        None
    };
    db.migrate().await?;
    match adoption::adopt(&db, Mode::Apply, backup.clone()).await? {
        Outcome::Adopted(adopted) => tracing::info!(
            backup = backup
                .as_deref()
                .unwrap_or("none (PostgreSQL: take your own)"),
            elapsed_ms = adopted.elapsed.as_millis() as u64,
            "adopted the Python service's data: {adopted}"
        ),
        Outcome::NoLegacyTables => {}
        outcome => tracing::info!("{outcome}"),
    }
    let started = std::time::Instant::now();
    let reanalyzed = knowledge::ingest::reanalyze(&db).await.map_err(|err| {
        StartupError::Init(format!("cannot re-analyse the knowledge base: {err}"))
    })?;
    if reanalyzed > 0 {
        tracing::info!(
            records = reanalyzed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "re-analysed the knowledge base for this version's search"
        );
    }
    Ok(db)
}

/// What adoption would do on the database of `config`, changing nothing
/// (SQLite files are opened read-only; PostgreSQL in a read-only transaction).
pub async fn adoption_dry_run(config: &Config) -> Result<Outcome, StartupError> {
    let Some(db) = legacy::open_read_only(&config.database).await? else {
        return Ok(Outcome::NoLegacyTables);
    };
    let outcome = adoption::adopt(&db, Mode::DryRun, None).await;
    // Not `Database::close`: that would also close the writer and readers a
    // server in this process keeps for the same file.
    match db {
        Database::Sqlite(pool) => pool.close().await,
        Database::Postgres(pool) => pool.close().await,
    }
    Ok(outcome?)
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    db: Database,
    tasks: TaskTracker,
}

/// Planner statistics now and every hour (`Database::optimize`); a failure
/// is a warning: queries still answer, only perhaps slower.
fn keep_statistics(db: Database, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(err) = db.optimize().await {
                tracing::warn!(error = %err, "refreshing the planner statistics failed");
            }
        }
    });
}

impl Application {
    /// Connects, migrates, builds the clients and binds the listener (port 0 = any).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let db = open_database(&config).await?;
        let shutdown = CancellationToken::new();
        keep_statistics(db.clone(), shutdown.clone());
        let redis = match &config.redis_url {
            Some(url) => Some(
                Redis::new(url.expose())
                    .map_err(|err| StartupError::Init(format!("REDIS_URL: {err}")))?,
            ),
            None => None,
        };
        let model = ModelClient::new(&config.model)?;
        if model.is_none() {
            tracing::warn!(
                "OPENAI_API_KEY is not set: chat routes will answer 503 Model not configured"
            );
        }
        let retrieval = Retrieval::new(&config, &db)?;
        match retrieval.retriever {
            Retriever::None => {
                tracing::warn!("RETRIEVAL_BACKEND=none: answers will use no retrieved context")
            }
            Retriever::Local { ref search, .. } => {
                tracing::info!(
                    min_score = retrieval.min_score,
                    "retrieval from the local knowledge base (fill it with `eloquent kb ingest PATH`)"
                );
                let search = search.clone();
                tokio::spawn(async move {
                    if let Err(err) = search.warm().await {
                        tracing::warn!(error = %err, "cannot read the knowledge base's vocabulary");
                    }
                });
            }
            Retriever::Pinecone(_) => {}
        }
        if config.uses_default_jwt_secret() {
            tracing::warn!(
                "JWT_SECRET is the built-in default: anyone can forge tokens. Set JWT_SECRET in production"
            );
        }
        let tasks = TaskTracker::new();
        let metrics = Arc::new(Metrics::new());
        let auth = AuthService::new(&config, db.clone())
            .await
            .map_err(|err| StartupError::Init(err.to_string()))?;
        let webhooks = Webhooks::start(
            db.clone(),
            config.webhooks.as_ref(),
            metrics.clone(),
            &tasks,
            shutdown.clone(),
        )?;
        let handoff = Handoff::new(
            db.clone(),
            model.clone(),
            webhooks,
            config.handoff.clone(),
            metrics.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        let judge = Judge::new(config.judge.as_ref(), metrics.clone())?;
        if judge.is_some() {
            tracing::info!("the guardrail judge reads every message the rules let through");
        }
        let chat = ChatService::new(
            db.clone(),
            Models {
                answer: model,
                judge,
            },
            handoff.clone(),
            retrieval,
            config.ungrounded_reply.clone(),
            ChatSettings {
                history_max_messages: config.history_max_messages,
                max_message_chars: config.max_message_chars,
                max_streams_total: config.max_streams_total,
                max_streams_per_user: config.max_streams_per_user,
                resume_grace: config.stream_resume_grace,
                replay_ttl: config.stream_replay_ttl,
                turns_per_minute: config.rate_limit_chat_per_minute,
            },
            Lifecycle {
                tasks: tasks.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                redis: redis.clone(),
            },
        );
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let sign_in_limit = RateLimit::new(
            "auth",
            config.rate_limit_auth_per_minute,
            redis.clone(),
            &shutdown,
        );
        let state = AppState::new(AppServices {
            config: Arc::new(config),
            auth,
            chat,
            shutdown,
            tasks: tasks.clone(),
            metrics,
            operator: OperatorService::new(db.clone()),
            db: db.clone(),
            sign_in_limit,
            redis,
            handoff,
        });
        tracing::info!(backend = db.backend_name(), "database ready");
        Ok(Self {
            listener,
            state,
            db,
            tasks,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |addr| addr.port())
    }

    /// Fires when shutdown starts; cancel it to stop the server.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until `signal` completes (or the shutdown token is cancelled),
    /// then ends open streams, waits for their stores, and closes the pool.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let router = http::app(self.state);
        let trigger = shutdown.clone();
        // Tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds
        // each one back until the client's (delayed) ACK of the previous write.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = signal => {}
                () = trigger.cancelled() => {}
            }
            tracing::info!("shutting down: ending open streams");
            trigger.cancel();
        })
        .await;
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("shutdown: background stores still running after 30 s");
        }
        self.db.close().await;
        tracing::info!("stopped");
        served
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
