//! Clients for the outside world: the chat model and the retrieval index.

mod connections;
pub mod model;
mod model_http;
pub mod retrieval;
