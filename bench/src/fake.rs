//! The fake upstreams: OpenAI chat completions (streamed in OpenAI's chunk
//! format, ending in `data: [DONE]`) and Pinecone records search, on one
//! loopback port over TLS with ALPN `h2`/`http/1.1` (as api.openai.com and
//! Pinecone are reached), and on a second port over plain HTTP/1.1 (as a
//! local vLLM or Ollama is). Answers follow the configured [`Behaviour`];
//! tagged questions get their prompt size and upstream timings recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// Marks a question so the fake can tell requests apart: `benchref` + letters.
pub const TAG_MARKER: &str = "benchref";

/// How the fake model answers.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Request received → first token.
    pub ttft: Duration,
    /// Content chunks per answer.
    pub tokens: usize,
    /// Between consecutive tokens.
    pub delay: Duration,
}

impl Behaviour {
    /// When the last token goes out, counted from the request.
    pub fn ideal(&self) -> Duration {
        self.ttft + self.delay * (self.tokens.saturating_sub(1) as u32)
    }
}

/// Upstream timings of one tagged turn.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// The Pinecone search arrived.
    pub search: Option<Instant>,
    /// The chat completion request arrived.
    pub received: Option<Instant>,
    pub first_token: Option<Instant>,
}

/// What the server sent upstream for one tagged turn.
#[derive(Debug, Clone, Copy)]
pub struct PromptStat {
    pub messages: usize,
    pub chars: usize,
    pub context_blocks: usize,
}

struct Answer {
    behaviour: Behaviour,
    chunks: Arc<Vec<Bytes>>,
    text: Arc<str>,
}

/// `SETTINGS_MAX_CONCURRENT_STREAMS` of the fake's HTTP/2 connections.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;

struct FakeState {
    answer: RwLock<Answer>,
    timings: Mutex<HashMap<String, Timing>>,
    prompts: Mutex<HashMap<String, PromptStat>>,
    search_body: Bytes,
    completions: AtomicU64,
    searches: AtomicU64,
    /// TCP connections accepted, on both listeners.
    connections: AtomicU64,
    /// How long the guardrail judge's verdicts take, in milliseconds.
    judge_delay_ms: AtomicU64,
}

/// Both fakes, running on loopback inside the bench process.
pub struct Fake {
    /// TLS (ALPN h2 and http/1.1).
    pub tls_addr: SocketAddr,
    /// Plain HTTP/1.1.
    pub plain_addr: SocketAddr,
    /// The CA that signed the TLS certificate (the server trusts it through `SSL_CERT_FILE`).
    pub ca_pem: String,
    state: Arc<FakeState>,
}

impl Fake {
    pub async fn start() -> Result<Self, String> {
        let initial = Behaviour {
            ttft: Duration::ZERO,
            tokens: 10,
            delay: Duration::ZERO,
        };
        let state = Arc::new(FakeState {
            answer: RwLock::new(render(initial)),
            timings: Mutex::default(),
            prompts: Mutex::default(),
            search_body: search_body(),
            completions: AtomicU64::new(0),
            searches: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            judge_delay_ms: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/records/namespaces/{namespace}/search", post(search))
            .with_state(state.clone());
        let (tls_config, ca_pem) = tls_config()?;
        let tls = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| format!("bind fake: {err}"))?;
        let plain = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| format!("bind fake: {err}"))?;
        let tls_addr = tls.local_addr().map_err(|err| err.to_string())?;
        let plain_addr = plain.local_addr().map_err(|err| err.to_string())?;
        tokio::spawn(serve(
            tls,
            router.clone(),
            Some(TlsAcceptor::from(Arc::new(tls_config))),
            state.clone(),
        ));
        tokio::spawn(serve(plain, router, None, state.clone()));
        Ok(Self {
            tls_addr,
            plain_addr,
            ca_pem,
            state,
        })
    }

    /// The guardrail judge's verdicts ("benign") come after `delay`.
    pub fn set_judge_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.judge_delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.state.answer.write().expect("lock") = render(behaviour);
    }

    /// The full text of the current answer.
    pub fn answer_text(&self) -> Arc<str> {
        self.state.answer.read().expect("lock").text.clone()
    }

    /// Upstream timings of a tagged request, removed from the record.
    pub fn take_timing(&self, tag: &str) -> Option<Timing> {
        self.state.timings.lock().expect("lock").remove(tag)
    }

    pub fn clear_timings(&self) {
        self.state.timings.lock().expect("lock").clear();
    }

    pub fn prompt(&self, tag: &str) -> Option<PromptStat> {
        self.state.prompts.lock().expect("lock").get(tag).copied()
    }

    pub fn clear_prompts(&self) {
        self.state.prompts.lock().expect("lock").clear();
    }

    /// (chat completions, searches, connections accepted) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.state.completions.load(Ordering::Relaxed),
            self.state.searches.load(Ordering::Relaxed),
            self.state.connections.load(Ordering::Relaxed),
        )
    }
}

/// `benchref` + lowercase letters, unique per `n` (letters only: the
/// guardrails redact long digit runs that look like phone numbers).
pub fn tag(n: u64) -> String {
    let mut letters = [b'a'; 7];
    let mut rest = n;
    for slot in letters.iter_mut().rev() {
        *slot = b'a' + (rest % 26) as u8;
        rest /= 26;
    }
    format!(
        "{TAG_MARKER}{}",
        std::str::from_utf8(&letters).expect("ascii")
    )
}

fn find_tag(text: &str) -> Option<&str> {
    let start = text.rfind(TAG_MARKER)?;
    let rest = &text[start..];
    let end = rest
        .char_indices()
        .skip(TAG_MARKER.len())
        .find(|(_, c)| !c.is_ascii_lowercase())
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

/// Words of a plausible support answer, cycled to make any number of tokens.
const WORDS: &[&str] = &[
    "To",
    " dispute",
    " a",
    " card",
    " payment,",
    " open",
    " the",
    " app,",
    " choose",
    " the",
    " transaction",
    " and",
    " tap",
    " Report",
    " a",
    " problem.",
    " We",
    " usually",
    " reply",
    " within",
    " five",
    " business",
    " days;",
    " meanwhile",
    " you",
    " can",
    " freeze",
    " the",
    " card",
    " from",
    " Settings.",
];

fn chunk(content: &str) -> Bytes {
    // The shape and size of OpenAI's own chunks.
    let body = json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1_741_569_952,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_eb9dce56a8",
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": null, "finish_reason": null}],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

fn render(behaviour: Behaviour) -> Answer {
    let mut chunks = Vec::with_capacity(behaviour.tokens);
    let mut text = String::new();
    for i in 0..behaviour.tokens {
        let word = WORDS[i % WORDS.len()];
        text.push_str(word);
        chunks.push(chunk(word));
    }
    Answer {
        behaviour,
        chunks: Arc::new(chunks),
        text: text.into(),
    }
}

const ROLE_CHUNK: &str = "data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const LAST_CHUNKS: &str = "data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

async fn completions(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    let received = Instant::now();
    state.completions.fetch_add(1, Ordering::Relaxed);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let no_messages = Vec::new();
    let messages = request["messages"].as_array().unwrap_or(&no_messages);
    let last = messages
        .last()
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default();
    let tag = find_tag(last).map(str::to_string);
    if let Some(tag) = &tag {
        let mut chars = 0;
        let mut context_blocks = 0;
        for message in messages {
            let content = message["content"].as_str().unwrap_or_default();
            chars += content.chars().count();
            context_blocks += content.matches("<context>").count();
        }
        let stat = PromptStat {
            messages: messages.len(),
            chars,
            context_blocks,
        };
        state
            .prompts
            .lock()
            .expect("lock")
            .insert(tag.clone(), stat);
        state
            .timings
            .lock()
            .expect("lock")
            .entry(tag.clone())
            .or_default()
            .received = Some(received);
    }
    let (behaviour, chunks, text) = {
        let answer = state.answer.read().expect("lock");
        (answer.behaviour, answer.chunks.clone(), answer.text.clone())
    };
    if !request["stream"].as_bool().unwrap_or(false) {
        // The guardrail judge (its fixed prompt names it): a verdict after the set delay.
        let judged = request["messages"][0]["content"]
            .as_str()
            .is_some_and(|prompt| prompt.contains("security filter"));
        let text: Arc<str> = if judged {
            let delay = state.judge_delay_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Arc::from(r#"{"verdict": "benign"}"#)
        } else {
            text
        };
        let body = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_741_569_952,
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": &*text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        });
        return axum::Json(body).into_response();
    }
    let start = tokio::time::Instant::from_std(received);
    let stream = async_stream::stream! {
        for (i, chunk) in chunks.iter().enumerate() {
            // Absolute deadlines: no drift from timer rounding over 100 tokens.
            tokio::time::sleep_until(start + behaviour.ttft + behaviour.delay * i as u32).await;
            if i == 0 {
                if let Some(tag) = &tag
                    && let Some(timing) = state.timings.lock().expect("lock").get_mut(tag)
                {
                    timing.first_token = Some(Instant::now());
                }
                yield Ok::<_, std::io::Error>(Bytes::from_static(ROLE_CHUNK.as_bytes()));
            }
            yield Ok(chunk.clone());
        }
        yield Ok(Bytes::from_static(LAST_CHUNKS.as_bytes()));
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// Ten hits of typical knowledge-base chunk size (Pinecone's default top_k is 10).
fn search_body() -> Bytes {
    let topics = [
        (
            "kb-disputes",
            "payments",
            "Card payment disputes can be opened in the app within 120 days of the transaction. Choose the transaction, tap Report a problem and follow the steps. We acknowledge every dispute within one business day and usually resolve it within five business days; complex cases with the card network can take up to 45 days.",
        ),
        (
            "kb-freeze",
            "security",
            "You can freeze and unfreeze your card at any time from Settings > Cards. A frozen card declines new card payments and ATM withdrawals, while direct debits and incoming transfers keep working. Unfreezing takes effect immediately.",
        ),
        (
            "kb-transfer-fees",
            "payments",
            "Domestic transfers in the account currency are free. International transfers carry a fixed fee shown before you confirm, plus the exchange-rate margin of your plan. Fees are never deducted from the amount the recipient receives.",
        ),
        (
            "kb-pin-reset",
            "security",
            "To reset your card PIN, open Settings > Cards > Reset PIN and confirm with your passcode or biometrics. The new PIN works at once for contactless and online payments; some ATMs need one chip-and-PIN payment before they accept it.",
        ),
        (
            "kb-limits",
            "account",
            "Daily card spending limits depend on your plan and can be lowered at any time in the app. Raising a limit above the plan default requires identity verification and may take up to one business day to be reviewed.",
        ),
        (
            "kb-kyc",
            "compliance",
            "We are required by law to verify your identity before you can use all features. Verification needs a valid photo ID and a selfie; most checks finish within minutes, but manual reviews can take up to two business days.",
        ),
        (
            "kb-fraud",
            "security",
            "If you see a payment you do not recognise, freeze your card immediately and report the transaction in the app. Never share one-time codes: our staff will never ask for them by phone, email or chat.",
        ),
        (
            "kb-statements",
            "account",
            "Monthly statements are available as PDF under Account > Statements for the last seven years. You can also export transactions as CSV for any date range, which is accepted by most accounting tools.",
        ),
        (
            "kb-app-login",
            "technical",
            "If you cannot log in, check that the app is up to date and that your device date and time are set automatically. After five wrong passcodes the app locks for 30 minutes; you can unlock it sooner by verifying your identity again.",
        ),
        (
            "kb-refund-timing",
            "payments",
            "Merchant refunds usually appear within three to five business days, depending on the merchant and the card network. A pending refund is shown in the transaction list as soon as the merchant initiates it.",
        ),
    ];
    let hits: Vec<Value> = topics
        .iter()
        .enumerate()
        .map(|(i, (id, category, text))| {
            json!({"_id": id, "_score": 0.9 - i as f64 * 0.03, "fields": {"text": text, "category": category}})
        })
        .collect();
    let body =
        json!({"result": {"hits": hits}, "usage": {"read_units": 6, "embed_total_tokens": 12}});
    Bytes::from(body.to_string())
}

async fn search(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    let received = Instant::now();
    state.searches.fetch_add(1, Ordering::Relaxed);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(tag) = request["query"]["inputs"]["text"]
        .as_str()
        .and_then(find_tag)
    {
        state
            .timings
            .lock()
            .expect("lock")
            .entry(tag.to_string())
            .or_default()
            .search = Some(received);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.search_body.clone(),
    )
        .into_response()
}

async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    state: Arc<FakeState>,
) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("fake upstream: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        state.connections.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // What HTTP/2 servers are asked to allow at least (RFC 9113):
            // more concurrent requests need more connections, as with the
            // CDNs and load balancers in front of the real upstreams.
            builder
                .http2()
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(err) => {
                        eprintln!("fake upstream: TLS handshake failed: {err}");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(tcp), service).await,
            };
        });
    }
}

/// A throwaway CA and a certificate for 127.0.0.1/localhost signed by it.
fn tls_config() -> Result<(rustls::ServerConfig, String), String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let err = |err: rcgen::Error| format!("certificate generation: {err}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "eloquent bench CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    let leaf_key = KeyPair::generate().map_err(err)?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(err)?
        .signed_by(&leaf_key, &ca)
        .map_err(err)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .map_err(|err| err.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, ca.pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let tag = tag(123_456);
        let text = format!("Question: How do I dispute a card payment? {tag}");
        assert_eq!(find_tag(&text), Some(tag.as_str()));
        assert_ne!(super::tag(1), super::tag(2));
    }
}
