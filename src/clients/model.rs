//! OpenAI-compatible chat-completions client (async-openai), streaming and one-shot.
//!
//! Uses async-openai's "bring your own types" calls with lenient response
//! types: OpenAI-compatible servers (Ollama, vLLM, llama.cpp) differ in small
//! ways (e.g. an empty `finish_reason`) that strict types would reject.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clients::ClientSetupError;
use crate::clients::connections::Connections;
use crate::clients::model_http::ModelHttp;
use crate::config::ModelConfig;

/// One message of a prompt, as sent upstream.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PromptMessage {
    pub role: &'static str,
    pub content: String,
}

/// Why a model call failed; the detail is for logs, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("upstream rejected our credentials (HTTP {status}): check OPENAI_API_KEY")]
    Credentials { status: u16 },
    #[error("upstream rate limit (HTTP 429)")]
    RateLimited,
    #[error("upstream answered HTTP {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("upstream unreachable or broken: {0}")]
    Transport(String),
    #[error("upstream sent nothing for {0:?}")]
    IdleTimeout(Duration),
    #[error("upstream answer exceeded the total time limit of {0:?}")]
    TotalTimeout(Duration),
}

impl ModelError {
    /// Worth one more try: the connection failed or the upstream had a 5xx.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Pause before the single retry of a failed stream opening.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// Text deltas of one answer, in order. Dropping it closes the upstream connection.
pub type TokenStream = Pin<Box<dyn Stream<Item = Result<String, ModelError>> + Send>>;

/// A configured chat-completions endpoint.
#[derive(Clone, Debug)]
pub struct ModelClient {
    client: Client<OpenAIConfig>,
    model: String,
    idle_timeout: Duration,
    total_timeout: Duration,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [PromptMessage],
    stream: bool,
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<CompletionChoice>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    message: CompletionMessage,
}

#[derive(Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
}

impl ModelClient {
    /// `None` when no API key is configured (chat routes then answer 503).
    pub fn new(config: &ModelConfig) -> Result<Option<Self>, ClientSetupError> {
        let Some(api_key) = &config.api_key else {
            return Ok(None);
        };
        // Explicit key and base: OpenAIConfig::new() would read the environment behind our back.
        let openai_config = OpenAIConfig::default()
            .with_api_key(api_key.expose())
            .with_api_base(&config.base_url);
        let connect_timeout = config.connect_timeout;
        let connections = Connections::new(config.streams_per_connection, move || {
            // No total timeout on the HTTP client: it would cap every stream.
            reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(60))
        })?;
        Ok(Some(Self {
            // Our reqwest service (see `model_http`), without async-openai's built-in retry
            // layer (3 retries, honouring long Retry-After on 429): we retry a
            // 5xx or a failed connect once ourselves and turn a 429 into a 503.
            client: Client::build(connections.first_client(), openai_config)
                .with_http_service(ModelHttp::new(Arc::new(connections))),
            model: config.model.clone(),
            idle_timeout: config.idle_timeout,
            total_timeout: config.total_timeout,
        }))
    }

    /// Opens a streamed completion. Errors before the first chunk (non-2xx,
    /// connect failure) are returned here; later ones arrive in the stream.
    pub async fn stream_chat(&self, messages: &[PromptMessage]) -> Result<TokenStream, ModelError> {
        let request = ChatRequest {
            model: &self.model,
            messages,
            stream: true,
        };
        let started = Instant::now();
        let mut chunks = match self.open_stream(&request).await {
            // A flaky connection or a 5xx before the first token: one retry after a short pause.
            Err(err) if err.is_retryable() => {
                tracing::warn!(error = %err, "model call failed before streaming; retrying once");
                tokio::time::sleep(RETRY_BACKOFF).await;
                self.open_stream(&request).await?
            }
            other => other?,
        };
        let idle_timeout = self.idle_timeout;
        let deadline = started + self.total_timeout;
        let total_timeout = self.total_timeout;
        Ok(Box::pin(async_stream::stream! {
            // One timer per answer, pushed forward on each chunk (an atomic
            // update) rather than a fresh timeout per chunk, which would
            // register with and leave the timer wheel for every token.
            let silence = tokio::time::sleep_until((Instant::now() + idle_timeout).min(deadline));
            tokio::pin!(silence);
            loop {
                let next = tokio::select! {
                    biased;
                    next = chunks.next() => Some(next),
                    () = &mut silence => None,
                };
                let Some(next) = next else {
                    if Instant::now() >= deadline {
                        yield Err(ModelError::TotalTimeout(total_timeout));
                    } else {
                        yield Err(ModelError::IdleTimeout(idle_timeout));
                    }
                    break;
                };
                silence
                    .as_mut()
                    .reset((Instant::now() + idle_timeout).min(deadline));
                match next {
                    None => break,
                    Some(Err(err)) => {
                        yield Err(map_error(err));
                        break;
                    }
                    Some(Ok(chunk)) => {
                        let text: String = chunk
                            .choices
                            .into_iter()
                            .filter_map(|choice| choice.delta.and_then(|delta| delta.content))
                            .collect();
                        if !text.is_empty() {
                            yield Ok(text);
                        }
                    }
                }
            }
        }))
    }

    async fn open_stream(
        &self,
        request: &ChatRequest<'_>,
    ) -> Result<async_openai::types::stream::StreamResponse<StreamChunk>, ModelError> {
        let chat = self.client.chat();
        let opening = chat.create_stream_byot::<_, StreamChunk>(request);
        tokio::time::timeout(self.idle_timeout, opening)
            .await
            .map_err(|_| ModelError::IdleTimeout(self.idle_timeout))?
            .map_err(map_error)
    }

    /// One non-streamed completion (summaries).
    pub async fn complete(&self, messages: &[PromptMessage]) -> Result<String, ModelError> {
        let request = ChatRequest {
            model: &self.model,
            messages,
            stream: false,
        };
        let chat = self.client.chat();
        let call = chat.create_byot::<_, Completion>(request);
        let completion = tokio::time::timeout(self.total_timeout, call)
            .await
            .map_err(|_| ModelError::TotalTimeout(self.total_timeout))?
            .map_err(map_error)?;
        Ok(completion
            .choices
            .into_iter()
            .filter_map(|choice| choice.message.content)
            .collect())
    }
}

fn map_error(err: OpenAIError) -> ModelError {
    match err {
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            match status {
                401 | 403 => ModelError::Credentials { status },
                429 => ModelError::RateLimited,
                _ => ModelError::Status {
                    status,
                    detail: api.api_error.message,
                },
            }
        }
        other => ModelError::Transport(other.to_string()),
    }
}
