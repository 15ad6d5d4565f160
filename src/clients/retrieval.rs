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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    pub id: String,
    pub category: Option<String>,
    pub text: String,
}

/// Searches one Pinecone namespace.
#[derive(Clone, Debug)]
pub struct RetrievalClient {
    connections: Arc<Connections>,
    search_url: String,
    config: PineconeConfig,
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
        let search_url = format!(
            "{}/records/namespaces/{}/search",
            config.base_url,
            utf8_percent_encode(&config.namespace, PATH_SEGMENT)
        );
        Ok(Self {
            connections: Arc::new(connections),
            search_url,
            config,
        })
    }

    /// Top passages for `text`. Never fails the chat turn: any problem is
    /// logged and answered with no passages.
    pub async fn search(&self, text: &str) -> Vec<Passage> {
        match self.try_search(text).await {
            Ok(passages) => passages,
            Err(err) => {
                tracing::warn!(error = %err, "retrieval failed; answering without context");
                Vec::new()
            }
        }
    }

    async fn try_search(&self, text: &str) -> Result<Vec<Passage>, String> {
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
                id: hit.id,
            })
            .collect())
    }
}

fn field_text(fields: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}
