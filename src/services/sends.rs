//! Idempotent sends (contract section 14, `client_message_id`): while a
//! send with a given id is starting (up to its question being stored), a
//! repeat of it waits; after that, the repeat finds the stored question
//! and reattaches to its turn.
//!
//! In-process with a lock per key; across servers (Redis) the first server
//! to `SET NX` the key starts the send and the others wait for its stored
//! question ([`claim_shared`]); the stored question's unique index keeps
//! one turn per id in a conversation even when Redis is down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::OwnedMutexGuard;

use crate::error::AppError;

/// How long a shared claim holds (a send's start takes milliseconds to a
/// few seconds: the model's first response); a repeat waits at most this.
pub const SHARED_CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Claims a send across servers: false when another server claimed it
/// first (and the claim has not expired). True when Redis is down: each
/// server then goes by its own claims.
pub async fn claim_shared(redis: &crate::clients::redis::Redis, key: &str) -> bool {
    let key = format!("eloquent:send:{key}");
    redis
        .run("send claim", |mut connection| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(SHARED_CLAIM_TTL.as_millis() as u64)
                .query_async::<Option<String>>(&mut connection)
                .await
        })
        .await
        .is_none_or(|set| set.is_some())
}

/// Longest `client_message_id` accepted.
pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 64;

/// Checks a client message id: 1 to 64 characters, not blank.
pub fn validate(id: &str) -> Result<(), AppError> {
    if id.trim().is_empty() || id.chars().count() > MAX_CLIENT_MESSAGE_ID_CHARS {
        return Err(AppError::invalid(
            &["body", "client_message_id"],
            format!(
                "client_message_id must be 1 to {MAX_CLIENT_MESSAGE_ID_CHARS} characters, not blank"
            ),
        ));
    }
    Ok(())
}

/// Who sent a message that starts a conversation: the key its id is unique
/// under (`user:<id>`, else `ip:<address>`).
pub fn sender_key(caller: Option<i64>, client_ip: Option<std::net::IpAddr>) -> String {
    match (caller, client_ip) {
        (Some(user), _) => format!("user:{user}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "ip:unknown".to_string(),
    }
}

/// One lock per send key while a send with it is starting.
#[derive(Default)]
pub struct SendClaims {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// Held while a send starts; a repeat of it waits for the holder.
pub type SendClaim = OwnedMutexGuard<()>;

impl SendClaims {
    /// Waits until no other send with `key` is starting, then claims it.
    pub async fn claim(&self, key: String) -> SendClaim {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            if locks.len() > 1024 {
                locks.retain(|_, lock| lock.strong_count() > 0);
            }
            match locks.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_second_claim_of_a_key_waits_for_the_first() {
        let claims = Arc::new(SendClaims::default());
        let first = claims.claim("conversation:1:abc".into()).await;
        let other_key = claims.claim("conversation:1:xyz".into()).await;
        let waiting = {
            let claims = claims.clone();
            tokio::spawn(async move { claims.claim("conversation:1:abc".into()).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("claimed once released")
            .expect("join");
        drop((second, other_key));
    }

    #[test]
    fn ids_are_one_to_sixty_four_characters() {
        assert!(validate("a").is_ok());
        assert!(validate(&"é".repeat(64)).is_ok());
        assert!(validate(&"a".repeat(65)).is_err());
        assert!(validate("  ").is_err());
        assert_eq!(sender_key(Some(3), None), "user:3");
        assert_eq!(
            sender_key(None, Some("10.0.0.1".parse().expect("ip"))),
            "ip:10.0.0.1"
        );
    }
}
