//! Per-object exponential backoff for failed reconciles.
//!
//! kube-runtime requeues whatever `error_policy` returns; a fixed delay either hammers the API
//! server for a persistently broken object or makes transient failures slow. This doubles the
//! delay per consecutive failure of the same object and forgets it on the first success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before retrying `key` after another failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        delay(*n)
    }

    pub fn reset(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }
}

fn delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST.saturating_mul(factor).min(CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_failure_up_to_the_cap_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.next("a"), Duration::from_millis(500));
        assert_eq!(b.next("a"), Duration::from_secs(1));
        assert_eq!(b.next("a"), Duration::from_secs(2));
        assert_eq!(b.next("b"), Duration::from_millis(500));
        for _ in 0..30 {
            b.next("a");
        }
        assert_eq!(b.next("a"), CAP);
        b.reset("a");
        assert_eq!(b.next("a"), Duration::from_millis(500));
    }
}
