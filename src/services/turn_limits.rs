//! The chat-turn rate limit (`RATE_LIMIT_CHAT_PER_MINUTE`, contract section
//! 11): turns per user, or per client address when anonymous, shared by the
//! three transports.
//!
//! Checked by the pipeline once it knows the send starts a turn, not by a
//! layer in front of the routes: a repeated send (`client_message_id`), a
//! resume and a stop must not count (contract section 14), and only the
//! pipeline can tell a repeat from a new send.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::error::AppError;

/// Turns per minute per sender; `None` when the limit is off.
#[derive(Clone)]
pub struct TurnLimits {
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl TurnLimits {
    /// `per_minute` turns (in bursts of as many), or no limit when 0.
    /// Idle senders are forgotten every minute until `shutdown`.
    pub fn new(per_minute: u32, shutdown: &CancellationToken) -> Self {
        let Some(per_minute) = NonZeroU32::new(per_minute) else {
            return Self { limiter: None };
        };
        let limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute)));
        let kept = limiter.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => kept.retain_recent(),
                }
            }
        });
        Self {
            limiter: Some(limiter),
        }
    }

    /// Counts a turn of `sender` (`user:<id>` / `ip:<address>`); 429 with
    /// the wait when over the limit.
    pub fn check(&self, sender: &str) -> Result<(), AppError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&sender.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AppError::TooManyRequests {
                retry_after: wait.max(Duration::from_secs(1)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_sender_has_its_own_budget_and_zero_turns_the_limit_off() {
        let shutdown = CancellationToken::new();
        let limits = TurnLimits::new(2, &shutdown);
        assert!(limits.check("user:1").is_ok());
        assert!(limits.check("user:1").is_ok());
        assert!(matches!(
            limits.check("user:1"),
            Err(AppError::TooManyRequests { retry_after }) if retry_after >= Duration::from_secs(1)
        ));
        assert!(limits.check("ip:127.0.0.1").is_ok());
        let off = TurnLimits::new(0, &shutdown);
        for _ in 0..100 {
            assert!(off.check("user:1").is_ok());
        }
        shutdown.cancel();
    }
}
