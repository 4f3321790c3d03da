//! `Idempotency-Key` on create: a retried create with the same key (and the
//! same body) gets the first one's answer instead of a second sandbox, even
//! when the retry arrives while the first is still being created.
//!
//! The memory is bounded (audit L2): answers are kept for [`TTL`], at most
//! [`MAX_ENTRIES`] of them (the oldest go first), expiry costs only the entries
//! that expire, and a create that fails is forgotten at once, so the key can be
//! retried with another body.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error::ApiError;

/// How long an answer is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How many answers are remembered at most, all teams together.
pub const MAX_ENTRIES: usize = 10_000;

type Key = (String, String);

struct Entry {
    fingerprint: [u8; 32],
    created: Instant,
    answer: OnceCell<(u16, Value)>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<Key, Arc<Entry>>,
    /// Keys in the order they were added, with when: the oldest is at the front.
    order: VecDeque<(Key, Instant)>,
}

impl Table {
    /// Drops `key` if it still maps to the entry made at `created` (a newer
    /// entry under the same key stays).
    fn remove_if(&mut self, key: &Key, created: Instant) {
        if self.entries.get(key).is_some_and(|e| e.created == created) {
            self.entries.remove(key);
        }
    }

    /// Drops expired entries, then the oldest while over `max`.
    fn prune(&mut self, ttl: Duration, max: usize) {
        // Failed creates leave their place in `order` behind; compact now and
        // then so those cannot pile up either.
        if self.order.len() > 2 * max {
            let entries = &self.entries;
            self.order
                .retain(|(k, c)| entries.get(k).is_some_and(|e| e.created == *c));
        }
        while let Some((key, created)) = self.order.front().cloned() {
            if created.elapsed() < ttl && self.entries.len() < max {
                break;
            }
            self.order.pop_front();
            self.remove_if(&key, created);
        }
    }
}

pub struct Idempotency {
    table: Mutex<Table>,
    ttl: Duration,
    max: usize,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::with_limits(TTL, MAX_ENTRIES)
    }
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
    /// Remembers answers for `ttl`, at most `max` of them.
    pub fn with_limits(ttl: Duration, max: usize) -> Self {
        Self {
            table: Mutex::default(),
            ttl,
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many answers (or creates in progress) are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }

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
        let id: Key = (team.to_string(), key.to_string());
        let entry = {
            let mut t = self.lock();
            t.prune(self.ttl, self.max);
            match t.entries.get(&id) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Entry {
                        fingerprint,
                        created: Instant::now(),
                        answer: OnceCell::new(),
                    });
                    t.entries.insert(id.clone(), e.clone());
                    t.order.push_back((id.clone(), e.created));
                    e
                }
            }
        };
        if entry.fingerprint != fingerprint {
            return Err(ApiError::new(
                http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("Idempotency-Key '{key}' was already used with a different request body"),
            ));
        }
        let result = entry.answer.get_or_try_init(create).await.cloned();
        if result.is_err() && !entry.answer.initialized() {
            // Nothing to replay: forget the key (its body included) rather than
            // hold it for a day. A concurrent waiter still holds the entry and
            // retries the create itself.
            self.lock().remove_if(&id, entry.created);
        }
        result
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

    /// Audit L2: a failed create left its entry (and its body's fingerprint) for
    /// 24 hours, so retrying the key with a corrected body was refused (422).
    #[tokio::test]
    async fn a_failed_create_frees_its_key_for_another_body() {
        let idem = Idempotency::default();
        let fail = || async { Err(ApiError::bad_request("bad template")) };
        assert!(
            idem.run("t", "k", b"{\"templateID\":\"nope\"}", fail)
                .await
                .is_err()
        );
        assert_eq!(idem.len(), 0, "nothing is kept for a failure");
        let ok = || async { Ok((201, serde_json::json!({}))) };
        idem.run("t", "k", b"{\"templateID\":\"base\"}", ok)
            .await
            .expect("the key is free again");
    }

    /// Audit L2: the map never shrank; now it holds at most `max` answers, and
    /// expired ones go.
    #[tokio::test]
    async fn memory_is_bounded_by_count_and_age() {
        let idem = Idempotency::with_limits(TTL, 3);
        let ok = || async { Ok((201, serde_json::json!({}))) };
        for k in ["a", "b", "c", "d", "e"] {
            idem.run("t", k, b"{}", ok).await.unwrap();
        }
        assert_eq!(idem.len(), 3);
        // The oldest went first: "a" is a new request again, "e" is remembered.
        let calls = AtomicU32::new(0);
        let counted = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok((201, serde_json::json!({})))
        };
        idem.run("t", "e", b"{}", counted).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        idem.run("t", "a", b"{}", counted).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let short = Idempotency::with_limits(Duration::ZERO, 100);
        for k in ["a", "b", "c"] {
            short.run("t", k, b"{}", ok).await.unwrap();
        }
        assert!(short.len() <= 1, "expired answers are dropped");
    }

    #[tokio::test]
    async fn failures_do_not_pile_up_in_the_expiry_queue() {
        let idem = Idempotency::with_limits(TTL, 2);
        let fail = || async { Err(ApiError::bad_request("no")) };
        for i in 0..50 {
            let _ = idem.run("t", &format!("k{i}"), b"{}", fail).await;
        }
        assert!(idem.lock().order.len() <= 5, "{}", idem.lock().order.len());
    }

    #[test]
    fn keys_are_checked() {
        assert!(validate("abc-123").is_ok());
        assert!(validate("").is_err());
        assert!(validate("has space").is_err());
        assert!(validate(&"a".repeat(256)).is_err());
    }
}
