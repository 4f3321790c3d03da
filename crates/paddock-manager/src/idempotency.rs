//! `Idempotency-Key` on create: a retried create with the same key (and the
//! same body) gets the first one's answer instead of a second sandbox, even
//! when the retry arrives while the first is still being created.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error::ApiError;

/// How long an answer is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

struct Entry {
    fingerprint: [u8; 32],
    created: Instant,
    answer: OnceCell<(u16, Value)>,
}

#[derive(Default)]
pub struct Idempotency {
    entries: Mutex<HashMap<(String, String), Arc<Entry>>>,
}

/// Checks a presented key: 1–255 printable ASCII characters.
pub fn validate(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(())
}

impl Idempotency {
    /// Runs `create` once per (team, key): later calls with the same key wait
    /// for and return the first successful answer. A failed create is not
    /// remembered, so it can be retried.
    pub async fn run<F, Fut>(
        &self,
        team: &str,
        key: &str,
        request: &[u8],
        create: F,
    ) -> Result<(u16, Value), ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(u16, Value), ApiError>>,
    {
        let fingerprint: [u8; 32] = Sha256::digest(request).into();
        let entry = {
            let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, e| e.created.elapsed() < TTL);
            map.entry((team.to_string(), key.to_string()))
                .or_insert_with(|| {
                    Arc::new(Entry {
                        fingerprint,
                        created: Instant::now(),
                        answer: OnceCell::new(),
                    })
                })
                .clone()
        };
        if entry.fingerprint != fingerprint {
            return Err(ApiError::new(
                http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("Idempotency-Key '{key}' was already used with a different request body"),
            ));
        }
        entry.answer.get_or_try_init(create).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn one_create_per_key_and_failures_are_not_remembered() {
        let idem = Idempotency::default();
        let calls = AtomicU32::new(0);
        let make = || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Ok((201, serde_json::json!({ "n": n })))
        };
        let (a, b) = tokio::join!(
            idem.run("t", "k1", b"{}", make),
            idem.run("t", "k1", b"{}", make)
        );
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another team's identical key is its own.
        idem.run("u", "k1", b"{}", make).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A different body under the same key is refused.
        let err = idem.run("t", "k1", b"{\"x\":1}", make).await.unwrap_err();
        assert_eq!(err.status, http::StatusCode::UNPROCESSABLE_ENTITY);
        // A failure is not cached.
        let fail = || async { Err(ApiError::internal("boom", "cause")) };
        assert!(idem.run("t", "k2", b"{}", fail).await.is_err());
        idem.run("t", "k2", b"{}", make).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn keys_are_checked() {
        assert!(validate("abc-123").is_ok());
        assert!(validate("").is_err());
        assert!(validate("has space").is_err());
        assert!(validate(&"a".repeat(256)).is_err());
    }
}
