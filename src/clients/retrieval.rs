//! Pinecone records-search client (REST, integrated embedding).

use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clients::ClientSetupError;
use crate::clients::connections::Connections;
use crate::config::PineconeConfig;

/// Characters left as-is in a path segment (RFC 3986 unreserved).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One retrieved passage.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub id: String,
    pub title: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
    pub text: String,
    /// Higher is better: Pinecone's `_score` as given, the local backend's 0..1.
    pub score: f64,
}

/// Searches (and fills) one Pinecone namespace.
#[derive(Clone, Debug)]
pub struct RetrievalClient {
    connections: Arc<Connections>,
    search_url: String,
    upsert_url: String,
    config: PineconeConfig,
}

/// Most ids per delete request (Pinecone's limit).
pub const DELETE_BATCH: usize = 1000;

/// Most records per upsert request (Pinecone's limit for integrated embedding).
pub const UPSERT_BATCH: usize = 96;

/// Attempts per upsert batch before giving up (429 and 5xx are retried).
const UPSERT_ATTEMPTS: u32 = 6;

/// A record to upsert: its text goes in the configured text field, to be
/// embedded by the index.
#[derive(Debug, Clone)]
pub struct UpsertRecord {
    pub id: String,
    pub text: String,
    pub title: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertSummary {
    pub records: usize,
    pub requests: usize,
    pub retries: usize,
}

#[derive(Serialize)]
struct SearchRequest<'a> {
    query: SearchQuery<'a>,
    fields: [&'a str; 2],
}

#[derive(Serialize)]
struct SearchQuery<'a> {
    inputs: SearchInputs<'a>,
    top_k: u32,
}

#[derive(Serialize)]
struct SearchInputs<'a> {
    text: &'a str,
}

#[derive(Deserialize)]
struct SearchResponse {
    result: SearchResult,
}

#[derive(Deserialize)]
struct SearchResult {
    #[serde(default)]
    hits: Vec<Hit>,
}

#[derive(Deserialize)]
struct Hit {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_score", default)]
    score: f64,
    #[serde(default)]
    fields: serde_json::Map<String, Value>,
}

impl RetrievalClient {
    pub fn new(config: PineconeConfig) -> Result<Self, ClientSetupError> {
        let timeout = config.timeout;
        let connections = Connections::new(config.streams_per_connection, move || {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
        })?;
        let namespace_url = format!(
            "{}/records/namespaces/{}",
            config.base_url,
            utf8_percent_encode(&config.namespace, PATH_SEGMENT)
        );
        Ok(Self {
            connections: Arc::new(connections),
            search_url: format!("{namespace_url}/search"),
            upsert_url: format!("{namespace_url}/upsert"),
            config,
        })
    }

    /// Top passages for `text`; the caller decides what a failure means
    /// for the turn (`Retrieval` answers without context).
    pub async fn search(&self, text: &str) -> Result<Vec<Passage>, String> {
        let body = SearchRequest {
            query: SearchQuery {
                inputs: SearchInputs { text },
                top_k: self.config.top_k,
            },
            fields: [&self.config.text_field, &self.config.category_field],
        };
        // Held until the response has been read.
        let slot = self
            .connections
            .acquire()
            .await
            .map_err(|err| format!("no connection: {err}"))?;
        let response = slot
            .client()
            .post(&self.search_url)
            .header("Api-Key", self.config.api_key.expose())
            .header("X-Pinecone-API-Version", &self.config.api_version)
            .json(&body)
            .send()
            .await
            .map_err(|err| format!("request failed: {}", err.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("Pinecone answered HTTP {status}"));
        }
        let parsed: SearchResponse = response
            .json()
            .await
            .map_err(|err| format!("unreadable response: {}", err.without_url()))?;
        Ok(parsed
            .result
            .hits
            .into_iter()
            .map(|hit| Passage {
                text: field_text(&hit.fields, &self.config.text_field).unwrap_or_default(),
                category: field_text(&hit.fields, &self.config.category_field),
                title: None,
                url: None,
                score: hit.score,
                id: hit.id,
            })
            .collect())
    }
}

impl RetrievalClient {
    /// Upserts records in batches of at most [`UPSERT_BATCH`], as NDJSON;
    /// a batch answered 429 or 5xx (or not answered) is retried with
    /// exponential backoff (honouring `Retry-After`), other answers fail.
    pub async fn upsert(&self, records: &[UpsertRecord]) -> Result<UpsertSummary, String> {
        let mut summary = UpsertSummary::default();
        for batch in records.chunks(UPSERT_BATCH) {
            let body = self.ndjson(batch)?;
            let (_, attempts) = self
                .send("upsert", |client| {
                    client
                        .post(&self.upsert_url)
                        .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                        .body(body.clone())
                })
                .await?;
            summary.requests += attempts;
            summary.retries += attempts - 1;
            summary.records += batch.len();
        }
        Ok(summary)
    }

    /// How many records the namespace holds (`POST /describe_index_stats`).
    pub async fn count(&self) -> Result<u64, String> {
        let url = format!("{}/describe_index_stats", self.config.base_url);
        let (response, _) = self
            .send("describe_index_stats", |client| {
                client.post(&url).json(&serde_json::json!({}))
            })
            .await?;
        let stats: Value = response
            .json()
            .await
            .map_err(|err| format!("Pinecone index stats: {}", err.without_url()))?;
        Ok(stats["namespaces"][&self.config.namespace]["vectorCount"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Deletes records by id (`POST /vectors/delete`, at most
    /// [`DELETE_BATCH`] a request; ids that do not exist are no error).
    pub async fn delete(&self, ids: &[String]) -> Result<(), String> {
        let url = format!("{}/vectors/delete", self.config.base_url);
        for batch in ids.chunks(DELETE_BATCH) {
            let body = serde_json::json!({"ids": batch, "namespace": self.config.namespace});
            self.send("delete", |client| client.post(&url).json(&body))
                .await?;
        }
        Ok(())
    }

    /// The ids that start with `prefix` (`GET /vectors/list`, page by page;
    /// serverless indexes only).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        let url = format!("{}/vectors/list", self.config.base_url);
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("namespace", self.config.namespace.clone()),
                ("prefix", prefix.to_string()),
                ("limit", "100".to_string()),
            ];
            if let Some(token) = &token {
                query.push(("paginationToken", token.clone()));
            }
            let (response, _) = self
                .send("list", |client| client.get(&url).query(&query))
                .await?;
            let page: Value = response
                .json()
                .await
                .map_err(|err| format!("Pinecone list: {}", err.without_url()))?;
            ids.extend(
                page["vectors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|vector| vector["id"].as_str().map(str::to_string)),
            );
            match page["pagination"]["next"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => return Ok(ids),
            }
        }
    }

    /// Sends a request built by `build` (with the key and API version
    /// added) until it succeeds: 429, 5xx and unanswered requests are
    /// retried with exponential backoff (honouring `Retry-After`), up to
    /// [`UPSERT_ATTEMPTS`] attempts; other answers fail. Returns the
    /// response and the attempts made.
    async fn send(
        &self,
        operation: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, usize), String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let wait = match self.send_once(operation, &build).await {
                Ok(response) => return Ok((response, attempt as usize)),
                Err(Failure::Retry(after)) if attempt < UPSERT_ATTEMPTS => after,
                Err(Failure::Retry(_)) => {
                    return Err(format!(
                        "Pinecone {operation} still failing after {UPSERT_ATTEMPTS} attempts"
                    ));
                }
                Err(Failure::Fatal(reason)) => return Err(reason),
            };
            let backoff = self.config.retry_base * 2u32.saturating_pow(attempt - 1);
            tokio::time::sleep(wait.unwrap_or(backoff).max(backoff)).await;
        }
    }

    fn ndjson(&self, batch: &[UpsertRecord]) -> Result<String, String> {
        let mut body = String::new();
        for record in batch {
            let mut object = serde_json::Map::new();
            object.insert("_id".into(), Value::String(record.id.clone()));
            object.insert(
                self.config.text_field.clone(),
                Value::String(record.text.clone()),
            );
            // Pinecone refuses null metadata: absent fields are left out.
            for (name, value) in [
                (self.config.category_field.as_str(), &record.category),
                ("title", &record.title),
                ("url", &record.url),
            ] {
                if let Some(value) = value {
                    object.insert(name.to_string(), Value::String(value.clone()));
                }
            }
            body.push_str(
                &serde_json::to_string(&object)
                    .map_err(|err| format!("record {}: {err}", record.id))?,
            );
            body.push('\n');
        }
        Ok(body)
    }

    async fn send_once(
        &self,
        operation: &str,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let slot = self.connections.acquire().await.map_err(|err| {
            Failure::Retry(None).or_log(operation, &format!("no connection: {err}"))
        })?;
        let response = build(slot.client())
            .header("Api-Key", self.config.api_key.expose())
            .header("X-Pinecone-API-Version", &self.config.api_version)
            .send()
            .await
            .map_err(|err| {
                Failure::Retry(None)
                    .or_log(operation, &format!("request failed: {}", err.without_url()))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            tracing::warn!(%status, operation, "Pinecone refused a request; retrying");
            return Err(Failure::Retry(after));
        }
        let detail: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(Failure::Fatal(format!(
            "Pinecone answered HTTP {status} to a {operation} request: {detail}"
        )))
    }
}

/// How a request to the index failed.
enum Failure {
    /// Worth another try, after the wait the server asked for, if any.
    Retry(Option<std::time::Duration>),
    Fatal(String),
}

impl Failure {
    fn or_log(self, operation: &str, reason: &str) -> Self {
        tracing::warn!(reason, operation, "Pinecone request failed; retrying");
        self
    }
}

fn field_text(fields: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}
