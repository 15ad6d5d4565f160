//! Fake upstreams on loopback speaking the real wire formats: OpenAI chat
//! completions (JSON and `text/event-stream` ending in `data: [DONE]`) and
//! Pinecone's records search. They record what the server sent them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// How the fake model answers the next requests.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Stream these tokens, waiting `delay` before each.
    Tokens {
        tokens: Vec<String>,
        delay: Duration,
    },
    /// Answer this HTTP status with an OpenAI error body.
    Status(u16),
    /// Stream `tokens`, then cut the connection without `[DONE]`.
    DropAfter { tokens: Vec<String> },
    /// Stream `tokens`, then go silent forever.
    HangAfter { tokens: Vec<String> },
    /// Stream the words of the question of the current turn back, one per chunk.
    EchoQuestion,
    /// Answer the next `failures` requests with `status`, then stream `tokens`.
    FailThen {
        failures: usize,
        status: u16,
        tokens: Vec<String>,
    },
}

/// `tokens` tokens ` t0`, ` t1`, … each `delay_ms` apart: an answer long
/// enough to leave, resume or stop in the middle of.
pub fn slow(tokens: usize, delay_ms: u64) -> Behaviour {
    Behaviour::Tokens {
        tokens: (0..tokens).map(|i| format!(" t{i}")).collect(),
        delay: Duration::from_millis(delay_ms),
    }
}

#[derive(Default)]
struct OpenAiState {
    behaviour: Mutex<Option<Behaviour>>,
    requests: Mutex<Vec<Value>>,
    /// The client ends of the connections requests came on.
    peers: Mutex<HashSet<SocketAddr>>,
    /// Streams whose body was dropped before it finished (client went away).
    closed_early: AtomicUsize,
    closed_notify: Notify,
    failures_served: AtomicUsize,
}

/// A fake OpenAI-compatible server.
#[derive(Clone)]
pub struct FakeOpenAi {
    pub base_url: String,
    state: Arc<OpenAiState>,
}

impl FakeOpenAi {
    pub async fn start() -> Self {
        let state = Arc::new(OpenAiState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(state.clone());
        let base_url = format!("http://{}/v1", serve(app).await);
        let fake = Self { base_url, state };
        fake.answer(&["Hello", " from", " the", " fake", " model."]);
        fake
    }

    /// Stream these tokens with no delay.
    pub fn answer(&self, tokens: &[&str]) {
        self.behave(Behaviour::Tokens {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            delay: Duration::ZERO,
        });
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().expect("lock") = Some(behaviour);
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// How many connections the requests came on.
    pub fn connections_used(&self) -> usize {
        self.state.peers.lock().expect("lock").len()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    pub fn closed_early(&self) -> usize {
        self.state.closed_early.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` streams were closed before finishing.
    pub async fn wait_closed_early(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.state.closed_notify.notified();
            if self.closed_early() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "upstream saw {} early closes, expected {n}",
                    self.closed_early()
                );
            }
        }
    }
}

struct CloseWatch {
    state: Arc<OpenAiState>,
    finished: bool,
}

impl Drop for CloseWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.state.closed_early.fetch_add(1, Ordering::SeqCst);
            self.state.closed_notify.notify_waiters();
        }
    }
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> Bytes {
    let delta = match content {
        Some(text) => json!({ "content": text }),
        None => json!({}),
    };
    let body = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

async fn completions(
    State(state): State<Arc<OpenAiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.peers.lock().expect("lock").insert(peer);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("Bearer "));
    state.requests.lock().expect("lock").push(request.clone());
    if !authorized {
        return error_response(401);
    }
    let behaviour = state.behaviour.lock().expect("lock").clone();
    let Some(behaviour) = behaviour else {
        return error_response(500);
    };
    let streaming = request["stream"].as_bool().unwrap_or(false);
    let (tokens, delay, ending) = match behaviour {
        Behaviour::Status(status) => return error_response(status),
        Behaviour::Tokens { tokens, delay } => (tokens, delay, Ending::Done),
        Behaviour::DropAfter { tokens } => (tokens, Duration::ZERO, Ending::Drop),
        Behaviour::HangAfter { tokens } => (tokens, Duration::ZERO, Ending::Hang),
        Behaviour::EchoQuestion => (echo_tokens(&request), Duration::ZERO, Ending::Done),
        Behaviour::FailThen {
            failures,
            status,
            tokens,
        } => {
            if state.failures_served.fetch_add(1, Ordering::SeqCst) < failures {
                return error_response(status);
            }
            (tokens, Duration::ZERO, Ending::Done)
        }
    };
    if !streaming {
        // A slow non-streamed answer (a slow judge or summary): one wait.
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let body = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "fake-model",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": tokens.concat() },
                "finish_reason": "stop",
            }],
            "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 },
        });
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let stream = async_stream::stream! {
        let mut watch = CloseWatch { state: state.clone(), finished: false };
        yield Ok::<_, std::io::Error>(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1_700_000_000,"model":"fake-model",
                   "choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})
        )));
        for token in tokens {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            yield Ok(chunk(Some(&token), None));
        }
        match ending {
            Ending::Done => {
                yield Ok(chunk(None, Some("stop")));
                yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
                watch.finished = true;
            }
            Ending::Drop => {
                // Let hyper flush what was sent before the connection is cut.
                tokio::time::sleep(Duration::from_millis(100)).await;
                watch.finished = true;
                yield Err(std::io::Error::other("connection cut by the fake"));
            }
            Ending::Hang => {
                std::future::pending::<()>().await;
            }
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// The words after "Question: " in the last message, each with its leading space.
fn echo_tokens(request: &Value) -> Vec<String> {
    let last = request["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default();
    let question = last.rsplit("Question: ").next().unwrap_or_default();
    question
        .split(' ')
        .enumerate()
        .map(|(i, word)| {
            if i == 0 {
                word.to_string()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

enum Ending {
    Done,
    Drop,
    Hang,
}

fn error_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"message": "fake upstream error with secret detail sk-upstream-detail", "type": "server_error", "param": null, "code": null}});
    (status, axum::Json(body)).into_response()
}

/// One recorded Pinecone search.
#[derive(Clone, Debug)]
pub struct PineconeRequest {
    pub namespace: String,
    pub api_key: Option<String>,
    pub api_version: Option<String>,
    pub body: Value,
}

/// One recorded Pinecone upsert: its content type and NDJSON records.
#[derive(Clone, Debug)]
pub struct PineconeUpsert {
    pub namespace: String,
    pub content_type: Option<String>,
    pub api_key: Option<String>,
    pub records: Vec<Value>,
}

#[derive(Default)]
struct PineconeState {
    hits: Mutex<Value>,
    fail: Mutex<bool>,
    requests: Mutex<Vec<PineconeRequest>>,
    upserts: Mutex<Vec<PineconeUpsert>>,
    /// Statuses the next upserts answer, in order, before succeeding.
    upsert_failures: Mutex<std::collections::VecDeque<u16>>,
    /// What the index holds: (namespace, id) → record, as upserted.
    stored: Mutex<std::collections::BTreeMap<(String, String), Value>>,
    /// Bodies of `POST /vectors/delete`, and the query strings of
    /// `GET /vectors/list`, in order.
    deletes: Mutex<Vec<Value>>,
    lists: Mutex<Vec<String>>,
}

/// A fake Pinecone index host.
#[derive(Clone)]
pub struct FakePinecone {
    pub base_url: String,
    state: Arc<PineconeState>,
}

impl FakePinecone {
    pub async fn start() -> Self {
        let state = Arc::new(PineconeState::default());
        let app = Router::new()
            .route("/records/namespaces/{namespace}/search", post(search))
            .route("/records/namespaces/{namespace}/upsert", post(upsert))
            .route("/describe_index_stats", post(describe_index_stats))
            .route("/vectors/delete", post(delete_vectors))
            .route("/vectors/list", axum::routing::get(list_vectors))
            .with_state(state.clone());
        let base_url = format!("http://{}", serve(app).await);
        let fake = Self { base_url, state };
        fake.set_hits(json!([
            {"_id": "kb-fees", "_score": 0.91, "fields": {"text": "Domestic transfers are free.", "category": "payments"}},
            {"_id": "kb-cards", "_score": 0.72, "fields": {"text": "Cards can be frozen in the app."}},
        ]));
        fake
    }

    /// The hits answered now.
    pub fn hits(&self) -> Value {
        self.state.hits.lock().expect("lock").clone()
    }

    pub fn set_hits(&self, hits: Value) {
        *self.state.hits.lock().expect("lock") = hits;
    }

    pub fn fail(&self, fail: bool) {
        *self.state.fail.lock().expect("lock") = fail;
    }

    pub fn requests(&self) -> Vec<PineconeRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Upsert requests answered with a 2xx, in order (refused ones are not kept).
    pub fn upserts(&self) -> Vec<PineconeUpsert> {
        self.state.upserts.lock().expect("lock").clone()
    }

    /// The next upserts answer these statuses, one each, before succeeding.
    pub fn fail_upserts(&self, statuses: &[u16]) {
        *self.state.upsert_failures.lock().expect("lock") = statuses.iter().copied().collect();
    }

    /// The ids the namespace holds, sorted.
    pub fn stored_ids(&self, namespace: &str) -> Vec<String> {
        self.state
            .stored
            .lock()
            .expect("lock")
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub fn deletes(&self) -> Vec<Value> {
        self.state.deletes.lock().expect("lock").clone()
    }

    pub fn lists(&self) -> Vec<String> {
        self.state.lists.lock().expect("lock").clone()
    }
}

/// `POST /describe_index_stats`: records per namespace.
async fn describe_index_stats(State(state): State<Arc<PineconeState>>) -> Response {
    let mut namespaces = serde_json::Map::new();
    let stored = state.stored.lock().expect("lock");
    for (namespace, _) in stored.keys() {
        let entry = namespaces
            .entry(namespace.clone())
            .or_insert_with(|| json!({"vectorCount": 0}));
        entry["vectorCount"] = json!(entry["vectorCount"].as_u64().unwrap_or(0) + 1);
    }
    axum::Json(json!({
        "namespaces": namespaces,
        "dimension": 1024,
        "indexFullness": 0.0,
        "totalVectorCount": stored.len(),
        "metric": "cosine",
        "vectorType": "dense",
    }))
    .into_response()
}

/// `POST /vectors/delete`: `{"ids": [...], "namespace": ns}`, at most 1,000
/// ids; unknown ids are no error.
async fn delete_vectors(State(state): State<Arc<PineconeState>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid JSON").into_response();
    };
    let (Some(ids), Some(namespace)) = (request["ids"].as_array(), request["namespace"].as_str())
    else {
        return (StatusCode::BAD_REQUEST, "ids and namespace are required").into_response();
    };
    if ids.is_empty() || ids.len() > 1000 {
        return (StatusCode::BAD_REQUEST, "between 1 and 1000 ids").into_response();
    }
    let mut stored = state.stored.lock().expect("lock");
    for id in ids.iter().filter_map(Value::as_str) {
        stored.remove(&(namespace.to_string(), id.to_string()));
    }
    state.deletes.lock().expect("lock").push(request.clone());
    axum::Json(json!({})).into_response()
}

/// `GET /vectors/list?namespace=&prefix=&limit=&paginationToken=`: ids in
/// order, a page at a time; the token is the last id of the page before.
async fn list_vectors(
    State(state): State<Arc<PineconeState>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    state
        .lists
        .lock()
        .expect("lock")
        .push(query.unwrap_or_default());
    let namespace = params.get("namespace").cloned().unwrap_or_default();
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let limit: usize = params
        .get("limit")
        .and_then(|limit| limit.parse().ok())
        .unwrap_or(100);
    let after = params.get("paginationToken").cloned();
    let stored = state.stored.lock().expect("lock");
    let matching: Vec<&String> = stored
        .keys()
        .filter(|(ns, id)| *ns == namespace && id.starts_with(&prefix))
        .map(|(_, id)| id)
        .filter(|id| after.as_ref().is_none_or(|after| *id > after))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|id| json!({"id": id}))
        .collect();
    let mut answer = json!({"vectors": page, "namespace": namespace, "usage": {"readUnits": 1}});
    if matching.len() > limit {
        answer["pagination"] = json!({"next": matching[limit - 1]});
    }
    axum::Json(answer).into_response()
}

/// Pinecone's upsert: NDJSON records, at most 96 per request, 201 Created.
async fn upsert(
    State(state): State<Arc<PineconeState>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(status) = state.upsert_failures.lock().expect("lock").pop_front() {
        let status = StatusCode::from_u16(status).expect("status");
        return (status, axum::Json(json!({"error": {"code": "RESOURCE_EXHAUSTED", "message": "slow down"}, "status": status.as_u16()}))).into_response();
    }
    let text = String::from_utf8_lossy(&body);
    let records: Result<Vec<Value>, _> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect();
    let Ok(records) = records else {
        return (StatusCode::BAD_REQUEST, "invalid NDJSON").into_response();
    };
    if records.is_empty() || records.len() > 96 {
        return (
            StatusCode::BAD_REQUEST,
            "between 1 and 96 records per request",
        )
            .into_response();
    }
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    {
        let mut stored = state.stored.lock().expect("lock");
        for record in &records {
            if let Some(id) = record["_id"].as_str() {
                stored.insert((namespace.clone(), id.to_string()), record.clone());
            }
        }
    }
    state.upserts.lock().expect("lock").push(PineconeUpsert {
        namespace,
        content_type: header_text("content-type"),
        api_key: header_text("api-key"),
        records,
    });
    StatusCode::CREATED.into_response()
}

async fn search(
    State(state): State<Arc<PineconeState>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    state.requests.lock().expect("lock").push(PineconeRequest {
        namespace,
        api_key: header_text("api-key"),
        api_version: header_text("x-pinecone-api-version"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    if *state.fail.lock().expect("lock") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let hits = state.hits.lock().expect("lock").clone();
    axum::Json(json!({"result": {"hits": hits}, "usage": {"read_units": 1}})).into_response()
}

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A webhook receiver as a helpdesk would run one: it checks each
/// delivery's `Eloquent-Signature` itself (HMAC-SHA256 of `"<t>.<body>"`),
/// records it, and answers 500 while told to fail.
#[derive(Clone)]
pub struct FakeReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

#[derive(Default)]
struct ReceiverState {
    secret: String,
    /// Answer 500 to this many more deliveries.
    fail_next: AtomicUsize,
    /// Answer 500 to every delivery while set.
    failing: std::sync::atomic::AtomicBool,
    deliveries: Mutex<Vec<Delivery>>,
    arrived: Notify,
}

/// One delivery attempt as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub body: Value,
    /// The signature verified with the secret.
    pub signature_ok: bool,
    /// `t` of the signature (unix seconds).
    pub t: i64,
    /// What the receiver answered.
    pub status: u16,
    pub event_id_header: Option<String>,
}

impl Delivery {
    pub fn id(&self) -> &str {
        self.body["id"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

impl FakeReceiver {
    pub async fn start(secret: &str) -> Self {
        let state = Arc::new(ReceiverState {
            secret: secret.to_string(),
            ..ReceiverState::default()
        });
        let app = Router::new()
            .route("/hooks/eloquent", post(receive))
            .with_state(state.clone());
        let url = format!("http://{}/hooks/eloquent", serve(app).await);
        Self { url, state }
    }

    /// Answer 500 to the next `n` deliveries.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answer 500 to every delivery (true) or accept them (false).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Every delivery attempt so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().expect("lock").clone()
    }

    /// The deliveries answered 2xx.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|delivery| delivery.status == 200)
            .collect()
    }

    /// Waits (at most `within`) until `done` holds for the deliveries so far.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[Delivery]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            if done(&self.deliveries()) {
                return;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "webhook deliveries not as expected in time: {:#?}",
                    self.deliveries()
                );
            }
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    use hmac::Mac;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let signature = header("eloquent-signature").unwrap_or_default();
    let mut t = 0;
    let mut v1 = String::new();
    for part in signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse().unwrap_or(0),
            Some(("v1", value)) => v1 = value.to_string(),
            _ => {}
        }
    }
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(state.secret.as_bytes()).expect("hmac key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let signature_ok = hex::decode(&v1).is_ok_and(|given| mac.verify_slice(&given).is_ok());
    let failing = state.failing.load(Ordering::SeqCst)
        || state
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state.deliveries.lock().expect("lock").push(Delivery {
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signature_ok,
        t,
        status: status.as_u16(),
        event_id_header: header("eloquent-event-id"),
    });
    state.arrived.notify_waiters();
    status
}
