//! Clients for the outside world: the chat model, the retrieval index, Redis.

mod connections;
pub mod model;
mod model_http;
pub mod redis;
pub mod retrieval;
pub mod webhook;

/// Why an upstream client could not be built at startup.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cannot load the system's root certificates (SSL_CERT_FILE, SSL_CERT_DIR): {0}")]
    RootCertificates(#[from] rustls::Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}
