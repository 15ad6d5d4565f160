//! Retrieval for a turn (and for `eloquent kb search`): the configured
//! backend's hits for the redacted question, weak ones dropped.

use crate::clients::ClientSetupError;
use crate::clients::retrieval::{Passage, RetrievalClient};
use crate::config::{Config, RetrievalBackend};
use crate::storage::{Database, knowledge};

/// How many records the local engine ranks before they are scored: enough
/// that a record covering the query well is among them even when the
/// engine's own rank put common-word matches first.
const LOCAL_CANDIDATES: usize = 50;

/// At most this many query terms are searched (a pasted essay would otherwise
/// mean hundreds of index lookups).
const MAX_TERMS: usize = 32;

/// Words that carry no topic: left out of local queries, or every "how do I"
/// question would match every record that says "how".
const STOP_WORDS: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "get", "got", "had", "has", "have", "hello",
    "hey", "hi", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "my", "of", "on",
    "or", "our", "please", "should", "so", "some", "than", "thank", "thanks", "that", "the",
    "their", "them", "then", "there", "these", "they", "this", "to", "too", "us", "was", "we",
    "were", "what", "when", "where", "which", "who", "why", "will", "with", "would", "you", "your",
];

/// Where a turn's context comes from.
#[derive(Clone, Debug)]
pub enum Retriever {
    Pinecone(Box<RetrievalClient>),
    Local { db: Database, top_k: usize },
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
                db: db.clone(),
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
        let mut passages = match &self.retriever {
            Retriever::Pinecone(client) => client.search(text).await,
            Retriever::Local { db, top_k } => match search_local(db, text, *top_k).await {
                Ok(passages) => passages,
                Err(err) => {
                    tracing::warn!(error = %err, "local retrieval failed; answering without context");
                    Vec::new()
                }
            },
            Retriever::None => Vec::new(),
        };
        passages.retain(|passage| passage.score >= self.min_score);
        passages
    }
}

/// The local knowledge base's best `top_k` records for `text`, unfiltered.
pub async fn search_local(
    db: &Database,
    text: &str,
    top_k: usize,
) -> Result<Vec<Passage>, sqlx::Error> {
    let terms = query_terms(text);
    let hits = knowledge::search(db, &terms, top_k, LOCAL_CANDIDATES).await?;
    Ok(hits
        .into_iter()
        .map(|hit| Passage {
            id: hit.id,
            title: hit.title,
            category: hit.category,
            url: hit.url,
            text: hit.text,
            score: hit.score,
        })
        .collect())
}

/// The words of a question worth searching for: lower-cased, split at
/// anything not a letter or digit, stop words and single characters
/// dropped, each once, in order.
pub fn query_terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
    {
        if word.chars().count() < 2 || STOP_WORDS.contains(&word.as_str()) || terms.contains(&word)
        {
            continue;
        }
        terms.push(word);
        if terms.len() == MAX_TERMS {
            break;
        }
    }
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_terms_keep_the_topic_words_once() {
        assert_eq!(
            query_terms("How do I reset my PIN? My PIN-code, please!"),
            ["reset", "pin", "code"]
        );
        assert_eq!(
            query_terms("Überweisung ins Ausland"),
            ["überweisung", "ins", "ausland"]
        );
        assert!(query_terms("how do I ... ?").is_empty());
        assert_eq!(query_terms(&"word ".repeat(100)).len(), 1);
    }
}
