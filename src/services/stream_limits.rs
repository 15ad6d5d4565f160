//! Caps on answers in progress: in total (protects the process) and per
//! signed-in user (one account cannot take every slot).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::AppError;

/// Answers in progress per signed-in user.
type UserCounts = Arc<Mutex<HashMap<i64, usize>>>;

/// Counts answers in progress; cheap to clone.
#[derive(Clone)]
pub struct StreamLimits {
    total: Arc<Semaphore>,
    per_user_max: usize,
    per_user: UserCounts,
}

/// Held for as long as an answer is in progress.
pub struct StreamSlot {
    _total: OwnedSemaphorePermit,
    user: Option<(i64, UserCounts)>,
}

const BUSY: AppError = AppError::Unavailable {
    message: "Too many answers in progress. Please try again shortly.",
    retry_after: Some(Duration::from_secs(1)),
};

impl StreamLimits {
    /// `max_total` answers at once; `per_user_max` per signed-in user (0 = no per-user cap).
    pub fn new(max_total: usize, per_user_max: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            per_user_max,
            per_user: Arc::default(),
        }
    }

    /// A slot for one answer, or 503 when a cap is reached. Anonymous callers
    /// only count against the total: they may share one proxy address.
    pub fn acquire(&self, caller: Option<i64>) -> Result<StreamSlot, AppError> {
        let total = self.total.clone().try_acquire_owned().map_err(|_| BUSY)?;
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
        })
    }

    /// Answers in progress right now (for tests and metrics).
    pub fn in_progress(&self, max_total: usize) -> usize {
        max_total.saturating_sub(self.total.available_permits())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
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

    #[test]
    fn caps_total_and_per_user_and_releases_on_drop() {
        let limits = StreamLimits::new(3, 2);
        let a1 = limits.acquire(Some(1)).expect("first");
        let _a2 = limits.acquire(Some(1)).expect("second");
        assert!(limits.acquire(Some(1)).is_err(), "per-user cap");
        let _anon = limits.acquire(None).expect("anonymous");
        assert!(limits.acquire(Some(2)).is_err(), "total cap");
        drop(a1);
        assert!(limits.acquire(Some(1)).is_ok());
        assert_eq!(limits.in_progress(3), 2);
    }
}
