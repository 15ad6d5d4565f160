//! Caps on answers in progress: in total (protects the process) and per
//! signed-in user (one account cannot take every slot).
//!
//! With Redis the per-user cap is counted once across servers (contract
//! section 15): each answer is a member of the user's sorted set, scored
//! with when it is forgotten even if its server dies without removing it
//! ([`SLOT_TTL`]); one Lua script drops the forgotten members, counts, and
//! adds, atomically. When Redis fails, this process counts alone.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clients::redis::Redis;
use crate::error::AppError;

/// How long a shared slot counts when its server never removes it (it died):
/// longer than any answer (`MODEL_TOTAL_TIMEOUT_SECS` plus the resume grace).
const SLOT_TTL: Duration = Duration::from_secs(3600);

/// Takes a shared slot: 1, or 0 when the user has `ARGV[1]` already.
static TAKE_SLOT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});

/// Answers in progress per signed-in user.
type UserCounts = Arc<Mutex<HashMap<i64, usize>>>;

/// Counts answers in progress; cheap to clone.
#[derive(Clone)]
pub struct StreamLimits {
    total: Arc<Semaphore>,
    per_user_max: usize,
    per_user: UserCounts,
    redis: Option<Redis>,
}

/// Held for as long as an answer is in progress.
pub struct StreamSlot {
    _total: OwnedSemaphorePermit,
    user: Option<(i64, UserCounts)>,
    /// The shared slot: the user's set and this slot's member.
    shared: Option<(Redis, String, String)>,
}

const BUSY: AppError = AppError::Unavailable {
    message: "Too many answers in progress. Please try again shortly.",
    retry_after: Some(Duration::from_secs(1)),
};

impl StreamLimits {
    /// `max_total` answers at once; `per_user_max` per signed-in user (0 = no per-user cap).
    pub fn new(max_total: usize, per_user_max: usize, redis: Option<Redis>) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            per_user_max,
            per_user: Arc::default(),
            redis,
        }
    }

    /// A slot for one answer, or 503 when a cap is reached. Anonymous callers
    /// only count against the total: they may share one proxy address.
    pub async fn acquire(&self, caller: Option<i64>) -> Result<StreamSlot, AppError> {
        let total = self.total.clone().try_acquire_owned().map_err(|_| BUSY)?;
        if let (Some(user_id), Some(redis)) = (caller, &self.redis)
            && self.per_user_max > 0
        {
            let key = format!("eloquent:streams:user:{user_id}");
            let member = crate::services::live::new_turn_id();
            let (max, ttl) = (self.per_user_max, SLOT_TTL.as_millis() as u64);
            let taken = redis
                .run("stream cap", |mut connection| {
                    let (key, member) = (key.clone(), member.clone());
                    async move {
                        TAKE_SLOT
                            .key(key)
                            .arg(max)
                            .arg(ttl)
                            .arg(member)
                            .invoke_async::<i64>(&mut connection)
                            .await
                    }
                })
                .await;
            match taken {
                Some(1) => {
                    return Ok(StreamSlot {
                        _total: total,
                        user: None,
                        shared: Some((redis.clone(), key, member)),
                    });
                }
                Some(_) => return Err(BUSY),
                None => {} // Redis is down: count in this process.
            }
        }
        let user = match caller {
            Some(user_id) if self.per_user_max > 0 => {
                let mut counts = self.per_user.lock().map_err(|_| BUSY)?;
                let count = counts.entry(user_id).or_default();
                if *count >= self.per_user_max {
                    return Err(BUSY);
                }
                *count += 1;
                Some((user_id, self.per_user.clone()))
            }
            _ => None,
        };
        Ok(StreamSlot {
            _total: total,
            user,
            shared: None,
        })
    }

    /// Answers in progress right now (for tests and metrics).
    pub fn in_progress(&self, max_total: usize) -> usize {
        max_total.saturating_sub(self.total.available_permits())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((redis, key, member)) = self.shared.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Best effort: a slot left behind is forgotten after SLOT_TTL.
            runtime.spawn(async move {
                redis
                    .run("stream cap release", |mut connection| async move {
                        redis::cmd("ZREM")
                            .arg(&key)
                            .arg(&member)
                            .query_async::<i64>(&mut connection)
                            .await
                    })
                    .await;
            });
        }
        if let Some((user_id, counts)) = self.user.take()
            && let Ok(mut counts) = counts.lock()
            && let Some(count) = counts.get_mut(&user_id)
        {
            *count -= 1;
            if *count == 0 {
                counts.remove(&user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_total_and_per_user_and_releases_on_drop() {
        let limits = StreamLimits::new(3, 2, None);
        let a1 = limits.acquire(Some(1)).await.expect("first");
        let _a2 = limits.acquire(Some(1)).await.expect("second");
        assert!(limits.acquire(Some(1)).await.is_err(), "per-user cap");
        let _anon = limits.acquire(None).await.expect("anonymous");
        assert!(limits.acquire(Some(2)).await.is_err(), "total cap");
        drop(a1);
        assert!(limits.acquire(Some(1)).await.is_ok());
        assert_eq!(limits.in_progress(3), 2);
    }
}
