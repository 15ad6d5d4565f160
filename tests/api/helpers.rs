//! `spawn_app()`: the real server on an ephemeral port with a fresh database
//! and fake upstreams, plus HTTP, SSE and WebSocket client helpers.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use eloquent::config::DatabaseTarget;
use eloquent::storage::{Database, PoolSettings};
use eloquent::{Application, Config};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::fakes::{FakeOpenAi, FakePinecone};

pub const JWT_SECRET: &str = "test-secret-for-the-suite";

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub openai: FakeOpenAi,
    pub pinecone: FakePinecone,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<std::io::Result<()>>>,
    pub database_url: String,
    _dir: tempfile::TempDir,
}

/// A response: status, headers, parsed body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts the envelope shape and returns `data`.
    pub fn data(&self) -> &Value {
        assert_eq!(
            self.body["status_code"].as_u64(),
            Some(u64::from(self.status.as_u16())),
            "envelope status_code mismatch: {}",
            self.body
        );
        assert!(self.body.get("data").is_some(), "no data: {}", self.body);
        &self.body["data"]
    }

    pub fn message(&self) -> &str {
        self.data()["message"].as_str().unwrap_or_default()
    }

    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        self.data()
    }
}

/// A fresh database per test: a new PostgreSQL database when
/// `TEST_DATABASE_URL` names a server, a SQLite file otherwise.
pub async fn test_database_url(sqlite_path: &std::path::Path) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    match std::env::var("TEST_DATABASE_URL") {
        Ok(admin_url) if !admin_url.is_empty() => {
            let name = format!(
                "eloquent_t{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst),
                chrono::Utc::now().timestamp_subsec_nanos()
            );
            let admin = sqlx::PgPool::connect(&admin_url)
                .await
                .expect("TEST_DATABASE_URL is set but PostgreSQL is unreachable");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .expect("create test database");
            admin.close().await;
            let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
            url.set_path(&name);
            url.to_string()
        }
        _ => {
            assert!(
                std::env::var("EXPECT_POSTGRES").as_deref() != Ok("1"),
                "EXPECT_POSTGRES=1 but TEST_DATABASE_URL is not set: refusing to silently test SQLite"
            );
            format!("sqlite:///{}", sqlite_path.display())
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the app; `overrides` replace or add environment variables
/// (an empty value removes the default).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = test_database_url(&dir.path().join("test.db")).await;
    try_spawn_app_on(dir, &database_url, overrides)
        .await
        .expect("app builds")
}

/// Starts the app on an existing database (kept by `dir`, when a file);
/// the startup error when it refuses to start.
pub async fn try_spawn_app_on(
    dir: tempfile::TempDir,
    database_url: &str,
    overrides: &[(&str, &str)],
) -> Result<TestApp, eloquent::startup::StartupError> {
    if std::env::var("TEST_LOG").is_ok() {
        eloquent::telemetry::init(eloquent::config::LogFormat::Text);
    }
    let openai = FakeOpenAi::start().await;
    let pinecone = FakePinecone::start().await;
    let database_url = database_url.to_string();
    let mut vars: HashMap<String, String> = [
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".to_string()),
        ("DATABASE_URL", database_url.clone()),
        ("DB_POOL_SIZE", "8".to_string()),
        ("OPENAI_API_KEY", "sk-test-key-not-real".to_string()),
        ("OPENAI_BASE_URL", openai.base_url.clone()),
        ("OPENAI_MODEL", "fake-model".to_string()),
        ("PINECONE_API_KEY", "pc-test-key".to_string()),
        ("PINECONE_HOST", pinecone.base_url.clone()),
        ("PINECONE_NAMESPACE", "support docs".to_string()),
        ("JWT_SECRET", JWT_SECRET.to_string()),
        ("BCRYPT_COST", "4".to_string()),
        ("RATE_LIMIT_AUTH_PER_MINUTE", "0".to_string()),
        ("RATE_LIMIT_CHAT_PER_MINUTE", "0".to_string()),
        // A client that leaves cancels its answer at once (as before resume
        // existed); the resume tests set their own grace.
        ("STREAM_RESUME_GRACE_SECS", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (name, value) in overrides {
        if value.is_empty() {
            vars.remove(*name);
        } else {
            vars.insert(name.to_string(), value.to_string());
        }
    }
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("valid test config");
    let app = Application::build(config).await?;
    let port = app.port();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    Ok(TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::new(),
        openai,
        pinecone,
        shutdown,
        server: Some(server),
        database_url,
        _dir: dir,
    })
}

impl TestApp {
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        content_type: &str,
    ) -> Answer {
        let request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", content_type)
            .body(body);
        self.send(request).await
    }

    /// Signs up a fresh user; returns (token, id).
    pub async fn signup(&self, email: &str) -> (String, i64) {
        let answer = self
            .post(
                "/api/auth/signup",
                &json!({"email": email, "name": "Test User", "password": "s3cret-pass"}),
                None,
            )
            .await;
        let data = answer.expect(201);
        (
            data["access_token"].as_str().expect("token").to_string(),
            data["user"]["id"].as_i64().expect("id"),
        )
    }

    /// One-shot chat turn.
    pub async fn create(
        &self,
        conversation_id: Value,
        message: &str,
        token: Option<&str>,
    ) -> Answer {
        self.post(
            "/api/chat/create",
            &json!({"conversation_id": conversation_id, "message": message}),
            token,
        )
        .await
    }

    /// Starts a new conversation with one answered turn; returns its id.
    pub async fn new_conversation(&self, token: Option<&str>) -> i64 {
        let answer = self
            .create(Value::Null, "How do I freeze my card?", token)
            .await;
        answer.expect(200)["conversation_id"].as_i64().expect("id")
    }

    /// Opens an SSE stream; returns the response (status checked by caller).
    pub async fn open_stream(&self, body: &Value, token: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api/chat/stream", self.address))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("stream request")
    }

    /// Runs an SSE stream to its end; returns the events.
    pub async fn stream_events(&self, body: &Value, token: Option<&str>) -> Vec<SseEvent> {
        let response = self.open_stream(body, token).await;
        assert_eq!(response.status(), 200);
        read_sse(response, usize::MAX).await
    }

    pub fn ws_url(&self, conversation_id: &str, token: Option<&str>) -> String {
        let mut url = format!("ws://127.0.0.1:{}/api/chat/ws/{conversation_id}", self.port);
        if let Some(token) = token {
            url.push_str(&format!("?token={token}"));
        }
        url
    }

    /// Runs one WebSocket turn; returns every text frame until close.
    pub async fn ws_turn(
        &self,
        conversation_id: &str,
        token: Option<&str>,
        first_frame: &str,
    ) -> Vec<String> {
        let (mut socket, _) = tokio_tungstenite::connect_async(self.ws_url(conversation_id, token))
            .await
            .expect("ws connect");
        socket
            .send(Message::Text(first_frame.into()))
            .await
            .expect("ws send");
        let mut frames = Vec::new();
        while let Some(message) = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("ws frame in time")
        {
            match message.expect("ws frame") {
                Message::Text(text) => frames.push(text.to_string()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        frames
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
    }

    /// A direct connection to the app's database (tests only).
    pub async fn db(&self) -> Database {
        let target = DatabaseTarget::parse(&self.database_url).expect("test database URL");
        let settings = PoolSettings::small(Duration::from_secs(10));
        Database::connect(&target, settings)
            .await
            .expect("open test database")
    }

    /// Every message row of a conversation: (role, content, user_message).
    pub async fn stored_messages(
        &self,
        conversation_id: i64,
    ) -> Vec<(String, String, Option<String>)> {
        const SQL: &str = "SELECT role, content, user_message FROM messages WHERE conversation_id = $1 ORDER BY id";
        let db = self.db().await;
        let rows = match &db {
            Database::Sqlite(pool) => {
                sqlx::query_as(SQL)
                    .bind(conversation_id)
                    .fetch_all(pool)
                    .await
            }
            Database::Postgres(pool) => {
                sqlx::query_as(SQL)
                    .bind(conversation_id)
                    .fetch_all(pool)
                    .await
            }
        };
        db.close().await;
        rows.expect("query messages")
    }

    /// Number of rows in a table.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let db = self.db().await;
        let count: Result<(i64,), sqlx::Error> = match &db {
            Database::Sqlite(pool) => sqlx::query_as(&sql).fetch_one(pool).await,
            Database::Postgres(pool) => sqlx::query_as(&sql).fetch_one(pool).await,
        };
        db.close().await;
        count.expect("count").0
    }

    /// Waits until the conversation holds an assistant message (stored after a disconnect).
    pub async fn wait_for_assistant(&self, conversation_id: i64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.stored_messages(conversation_id).await;
            if let Some((_, content, _)) =
                rows.iter().rev().find(|(role, _, _)| role == "assistant")
            {
                return content.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no assistant message stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

use futures::SinkExt;

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
    /// The `id:` line (`<turn_id>:<seq>`).
    pub id: String,
}

/// Reads up to `max` events (comments skipped) with a real SSE parser.
pub async fn read_sse(response: reqwest::Response, max: usize) -> Vec<SseEvent> {
    use eventsource_stream::Eventsource;
    let mut events = Vec::new();
    let mut stream = response.bytes_stream().eventsource();
    while events.len() < max {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("sse event in time");
        let Some(event) = next else { break };
        let event = event.expect("sse parse");
        events.push(SseEvent {
            event: event.event,
            data: serde_json::from_str(&event.data).expect("sse data is JSON"),
            id: event.id,
        });
    }
    events
}

/// Concatenated `delta`s of an event list.
pub fn deltas(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|event| event.event == "message")
        .map(|event| event.data["delta"].as_str().expect("delta").to_string())
        .collect()
}

/// Signs a token the way the Python version did.
pub fn python_style_token(
    user_id: &str,
    email: &str,
    exp: i64,
    secret: &str,
    alg: jsonwebtoken::Algorithm,
) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &json!({"user_id": user_id, "email": email, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A private `redis-server` on a loopback port, stopped when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    /// Starts one; `None` when `redis-server` is not installed (then the
    /// Redis tests skip, unless `EXPECT_REDIS=1`, as CI sets, makes that a
    /// failure).
    pub async fn start() -> Option<Self> {
        let installed = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        if !installed {
            assert!(
                std::env::var("EXPECT_REDIS").is_err(),
                "EXPECT_REDIS is set but redis-server is not installed"
            );
            eprintln!("redis-server is not installed: skipping this Redis test");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let mut server = Self { port, child: None };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again) on its port and waits until it answers.
    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut reply = [0u8; 7];
                if socket.write_all(b"PING\r\n").await.is_ok()
                    && socket.read_exact(&mut reply).await.is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it (as a crash would: no shutdown save).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}
