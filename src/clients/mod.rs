//! Clients for the outside world: the chat model and the retrieval index.

pub mod model;
mod model_http;
pub mod retrieval;
