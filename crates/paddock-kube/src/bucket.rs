//! A token bucket: at most `rate` new Sandboxes per second per replica (`--max-create-qps`),
//! with a burst of one second's worth.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token now, or says how long until one is there (and reserves it).
    fn reserve(&self, now: Instant) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *st;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.burst)
            - 1.0;
        *st = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let b = TokenBucket::new(2.0);
        let t = Instant::now();
        assert_eq!(b.reserve(t), Duration::ZERO);
        assert_eq!(b.reserve(t), Duration::ZERO);
        // The third waits half a second, the fourth a full one (each reserves its token).
        assert_eq!(b.reserve(t), Duration::from_millis(500));
        assert_eq!(b.reserve(t), Duration::from_secs(1));
        // Two seconds later the debt is paid and one token is back.
        assert_eq!(b.reserve(t + Duration::from_secs(2)), Duration::ZERO);
    }
}
