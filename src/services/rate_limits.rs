//! Rate limits (`RATE_LIMIT_AUTH_PER_MINUTE`, `RATE_LIMIT_CHAT_PER_MINUTE`,
//! contract sections 11 and 15): requests per minute per key, counted in
//! this process (governor's keyed GCRA limiter) or, with Redis, once across
//! every server.
//!
//! With Redis each check is one Lua script (`INCR` and, for a new window,
//! `PEXPIRE`, atomically): a fixed one-minute window per key, so a client
//! can make up to twice the limit across a window's edge. When Redis fails
//! the check falls back to this process's limiter, so a Redis outage never
//! refuses or fails a request by itself.
//!
//! Chat turns are checked by the pipeline once it knows a send starts a
//! turn, not by a layer in front of the routes: a repeated send
//! (`client_message_id`), a resume and a stop must not count (contract
//! section 14), and only the pipeline can tell a repeat from a new send.

use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::clients::redis::Redis;
use crate::error::AppError;

/// One window's count for a key; the milliseconds to wait when over, or -1.
static WINDOW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if count > tonumber(ARGV[2]) then
  local wait = redis.call('PTTL', KEYS[1])
  if wait < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    wait = tonumber(ARGV[1])
  end
  return wait
end
return -1
",
    )
});

/// Requests per minute per key in one scope (`auth`, `chat`); no limit
/// when the configured number is 0.
#[derive(Clone)]
pub struct RateLimit {
    scope: &'static str,
    per_minute: u32,
    local: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    redis: Option<Redis>,
}

impl RateLimit {
    /// Idle keys are forgotten every minute until `shutdown`.
    pub fn new(
        scope: &'static str,
        per_minute: u32,
        redis: Option<Redis>,
        shutdown: &CancellationToken,
    ) -> Self {
        let local = NonZeroU32::new(per_minute).map(|per_minute| {
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
            limiter
        });
        Self {
            scope,
            per_minute,
            local,
            redis,
        }
    }

    pub fn scope(&self) -> &'static str {
        self.scope
    }

    /// Counts a request of `key`; 429 with the wait when over the limit.
    pub async fn check(&self, key: &str) -> Result<(), AppError> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        if let Some(redis) = &self.redis {
            let redis_key = format!("eloquent:limit:{}:{key}", self.scope);
            let per_minute = self.per_minute;
            let waited = redis
                .run("rate limit", |mut connection| async move {
                    WINDOW
                        .key(redis_key)
                        .arg(60_000)
                        .arg(per_minute)
                        .invoke_async::<i64>(&mut connection)
                        .await
                })
                .await;
            if let Some(wait) = waited {
                return match u64::try_from(wait) {
                    Ok(wait) => Err(AppError::TooManyRequests {
                        retry_after: Duration::from_millis(wait).max(Duration::from_secs(1)),
                    }),
                    Err(_) => Ok(()),
                };
            }
        }
        local.check_key(&key.to_owned()).map_err(|not_until| {
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
    async fn each_key_has_its_own_budget_and_zero_turns_the_limit_off() {
        let shutdown = CancellationToken::new();
        let limits = RateLimit::new("chat", 2, None, &shutdown);
        assert!(limits.check("user:1").await.is_ok());
        assert!(limits.check("user:1").await.is_ok());
        assert!(matches!(
            limits.check("user:1").await,
            Err(AppError::TooManyRequests { retry_after }) if retry_after >= Duration::from_secs(1)
        ));
        assert!(limits.check("ip:127.0.0.1").await.is_ok());
        let off = RateLimit::new("chat", 0, None, &shutdown);
        for _ in 0..100 {
            assert!(off.check("user:1").await.is_ok());
        }
        shutdown.cancel();
    }
}
