//! A token bucket for cold sandbox creation (`maxCreateQPS`): a burst of
//! creates is spread out instead of all hitting the kernel at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    /// Tokens left (negative: slots already promised to waiters) and when
    /// that was computed.
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `per_sec` creates per second, with bursts of up to `per_sec` (at least one).
    pub fn new(per_sec: f64) -> Self {
        let per_sec = if per_sec.is_finite() && per_sec > 0.0 {
            per_sec
        } else {
            f64::MAX
        };
        let burst = per_sec.clamp(1.0, 1e9);
        Self {
            per_sec,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a slot and says how long to wait before using it.
    pub fn reserve_at(&self, now: Instant) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = *st;
        let refilled = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        let left = refilled - 1.0;
        *st = (left, now.max(at));
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.per_sec)
        }
    }

    pub async fn acquire(&self) {
        let wait = self.reserve_at(Instant::now());
        if !wait.is_zero() {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "create rate limit: waiting"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_spaces_requests_out() {
        let r = RateLimiter::new(2.0);
        let t0 = Instant::now();
        assert_eq!(r.reserve_at(t0), Duration::ZERO);
        assert_eq!(r.reserve_at(t0), Duration::ZERO);
        // Third and fourth at the same instant wait 0.5 s and 1 s.
        assert_eq!(r.reserve_at(t0), Duration::from_millis(500));
        assert_eq!(r.reserve_at(t0), Duration::from_millis(1000));
        // Two seconds later the debt is paid and the bucket is full again.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(r.reserve_at(t2), Duration::ZERO);
        assert_eq!(r.reserve_at(t2), Duration::ZERO);
        assert_eq!(r.reserve_at(t2), Duration::from_millis(500));
    }

    #[test]
    fn zero_means_unlimited() {
        let r = RateLimiter::new(0.0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(r.reserve_at(t0), Duration::ZERO);
        }
    }
}
