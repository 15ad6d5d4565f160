//! Retrieval for a turn (and for `eloquent kb search`): the configured
//! backend's hits for the redacted question, weak ones dropped.

use std::sync::Arc;

use crate::clients::ClientSetupError;
use crate::clients::retrieval::{Passage, RetrievalClient};
use crate::config::{Config, RetrievalBackend};
use crate::storage::Database;

use super::local::LocalSearch;

/// Where a turn's context comes from.
#[derive(Clone, Debug)]
pub enum Retriever {
    Pinecone(Box<RetrievalClient>),
    Local {
        search: Arc<LocalSearch>,
        top_k: usize,
    },
    None,
}

/// A configured retriever and the score below which hits are dropped.
#[derive(Clone, Debug)]
pub struct Retrieval {
    pub retriever: Retriever,
    pub min_score: f64,
}

impl Retrieval {
    /// The backend `config` names, on `db` when local.
    pub fn new(config: &Config, db: &Database) -> Result<Self, ClientSetupError> {
        let retriever = match (config.retrieval.backend, &config.pinecone) {
            (RetrievalBackend::Pinecone, Some(pinecone)) => {
                Retriever::Pinecone(Box::new(RetrievalClient::new(pinecone.clone())?))
            }
            (RetrievalBackend::Local, _) => Retriever::Local {
                search: Arc::new(LocalSearch::new(
                    db.clone(),
                    config.retrieval.synonyms.as_deref(),
                )),
                top_k: config.retrieval.top_k,
            },
            _ => Retriever::None,
        };
        Ok(Self {
            retriever,
            min_score: config.retrieval.min_score,
        })
    }

    /// `pinecone`, `local` or `none`, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.retriever {
            Retriever::Pinecone(_) => "pinecone",
            Retriever::Local { .. } => "local",
            Retriever::None => "none",
        }
    }

    /// The passages for `text` scoring at least the minimum, best first.
    /// Never fails the turn: a failure is logged and answered with none.
    pub async fn search(&self, text: &str) -> Vec<Passage> {
        self.search_reporting(text).await.0
    }

    /// [`Retrieval::search`], and whether the search failed.
    pub async fn search_reporting(&self, text: &str) -> (Vec<Passage>, bool) {
        let (mut passages, failed) = match &self.retriever {
            Retriever::Pinecone(client) => match client.search(text).await {
                Ok(passages) => (passages, false),
                Err(reason) => {
                    tracing::warn!(error = %reason, "retrieval failed; answering without context");
                    (Vec::new(), true)
                }
            },
            Retriever::Local { search, top_k } => match search.search(text, *top_k).await {
                Ok(passages) => (passages, false),
                Err(err) => {
                    tracing::warn!(error = %err, "local retrieval failed; answering without context");
                    (Vec::new(), true)
                }
            },
            Retriever::None => (Vec::new(), false),
        };
        passages.retain(|passage| passage.score >= self.min_score);
        (passages, failed)
    }

    /// Whether there is a knowledge base for answers to be grounded in:
    /// Pinecone's index, or a local one with records. Without one, every
    /// turn is ungrounded and that says nothing about the question.
    pub async fn has_knowledge(&self) -> bool {
        match &self.retriever {
            Retriever::Pinecone(_) => true,
            Retriever::Local { search, .. } => search.has_records().await,
            Retriever::None => false,
        }
    }

    /// The backend's name for the metrics; `None` when there is none.
    pub fn metered_backend(&self) -> Option<&'static str> {
        match self.retriever {
            Retriever::None => None,
            _ => Some(self.backend_name()),
        }
    }
}
