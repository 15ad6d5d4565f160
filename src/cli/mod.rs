//! The command-line tools beside `serve`: `eloquent kb …` (the knowledge
//! base) and `eloquent webhooks …` (the webhook outbox). Each prints for
//! people on stderr and, with `--json`, for scripts on stdout; the exit
//! status tells success.

mod kb;
mod webhooks;

pub use kb::{KbCommand, kb};
pub use webhooks::{WebhooksCommand, webhooks};
