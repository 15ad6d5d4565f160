//! The webhook receiver (`WEBHOOK_URL`): one signed POST per delivery
//! attempt (contract section 17).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clients::ClientSetupError;
use crate::clients::connections::Connections;
use crate::config::WebhookConfig;

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "Eloquent-Signature";

/// Posts events to the configured receiver.
#[derive(Clone, Debug)]
pub struct WebhookClient {
    client: reqwest::Client,
    url: String,
    secret: crate::config::Secret,
    timeout: Duration,
}

/// Why a delivery attempt did not count as delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the receiver: {0}")]
    Transport(String),
}

impl WebhookClient {
    pub fn new(config: &WebhookConfig) -> Result<Self, ClientSetupError> {
        let timeout = config.timeout;
        // The TLS configuration every upstream shares (system roots, or
        // SSL_CERT_FILE / SSL_CERT_DIR), one connection pool.
        let connections = Connections::new(1, move || {
            reqwest::Client::builder()
                .connect_timeout(timeout)
                .timeout(timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("Eloquent-Webhooks/", env!("CARGO_PKG_VERSION")))
        })?;
        Ok(Self {
            client: connections.first_client(),
            url: config.url.clone(),
            secret: config.secret.clone(),
            timeout,
        })
    }

    /// One attempt: POSTs `body` signed for `now_secs`; Ok on any 2xx.
    pub async fn deliver(
        &self,
        event_id: &str,
        event_type: &str,
        body: &str,
        now_secs: i64,
    ) -> Result<(), DeliveryError> {
        let signature = signature_header(self.secret.expose(), now_secs, body);
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("Eloquent-Event-Id", event_id)
            .header("Eloquent-Event-Type", event_type)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|err| {
                if err.is_timeout() {
                    DeliveryError::Timeout(self.timeout)
                } else {
                    DeliveryError::Transport(error_chain(&err))
                }
            })?;
        let status = response.status();
        // The answer's body is not read: nothing in it matters, and a
        // receiver streaming a large one must not hold the attempt.
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with secret>`.
pub fn signature_header(secret: &str, t: i64, body: &str) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return format!("t={t},v1=");
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An error and its sources on one line (reqwest's own message omits the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // echo -n '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test
        let header = signature_header("whsec_test", 1_700_000_000, r#"{"id":"evt_1"}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925"
        );
    }
}
