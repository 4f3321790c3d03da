//! Resource-usage history of running sandboxes, for `GET /sandboxes/{id}/metrics`.
//!
//! E2B samples every sandbox at a fixed interval (5 s, on wall-clock multiples of it) and
//! answers a range of those samples. So does this: a background task samples every running
//! sandbox on each tick; a sandbox asked about before its first tick is sampled then, so a
//! fresh sandbox never answers an empty history. Paused sandboxes are not sampled (nothing
//! runs), and a sandbox's history goes with its record.
//!
//! The history lives in this process. On Kubernetes each manager replica keeps its own, so
//! two replicas may answer slightly different histories for one sandbox.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use paddock_infra::{Infra, SandboxId, SandboxMetrics};

use crate::Manager;
use crate::records::ApiState;

/// Time between two samples of a sandbox (E2B's).
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per sandbox, oldest dropped first: two hours of them.
const KEEP: usize = 2 * 3600 / INTERVAL.as_secs() as usize;

/// One reading of a sandbox's usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: SystemTime,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub disk_bytes: u64,
}

impl Sample {
    fn new(at: SystemTime, m: &SandboxMetrics) -> Self {
        Self {
            at,
            cpu_percent: m.cpu_percent,
            memory_bytes: m.memory_bytes,
            memory_limit_bytes: m.memory_limit_bytes,
            disk_bytes: m.disk_bytes,
        }
    }
}

/// Every sandbox's samples, oldest first.
#[derive(Default)]
pub struct Samples {
    by_sandbox: Mutex<HashMap<SandboxId, VecDeque<Sample>>>,
}

impl Samples {
    fn lock(&self) -> MutexGuard<'_, HashMap<SandboxId, VecDeque<Sample>>> {
        self.by_sandbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a sample; one older than the sandbox's newest (a slow read finishing after a
    /// later one) is dropped so the history stays in order.
    pub fn push(&self, id: &SandboxId, sample: Sample) {
        let mut all = self.lock();
        let history = all.entry(id.clone()).or_default();
        if history.back().is_some_and(|last| last.at > sample.at) {
            return;
        }
        if history.len() >= KEEP {
            history.pop_front();
        }
        history.push_back(sample);
    }

    /// Whether `id` has any sample.
    pub fn has_any(&self, id: &SandboxId) -> bool {
        self.lock().get(id).is_some_and(|h| !h.is_empty())
    }

    /// The samples of `id` taken within `[start, end]` (either bound optional), oldest first.
    pub fn range(
        &self,
        id: &SandboxId,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> Vec<Sample> {
        self.lock()
            .get(id)
            .map(|h| {
                h.iter()
                    .filter(|s| start.is_none_or(|t| s.at >= t) && end.is_none_or(|t| s.at <= t))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets the histories of sandboxes not in `alive`.
    fn retain(&self, alive: &HashSet<SandboxId>) {
        self.lock().retain(|id, _| alive.contains(id));
    }
}

/// Reads `id`'s usage now and keeps it as a sample; `false` when the read failed (the
/// sandbox is going away, or its runtime does not answer).
pub async fn sample_now<I: Infra>(manager: &Manager<I>, id: &SandboxId) -> bool {
    match manager.infra.metrics(id).await {
        Ok(m) => {
            manager.samples.push(id, Sample::new(SystemTime::now(), &m));
            true
        }
        Err(e) => {
            tracing::debug!(sandbox = %id, error = %e, "no usage sample");
            false
        }
    }
}

/// How long until the next wall-clock multiple of [`INTERVAL`].
fn until_next_tick(now: SystemTime) -> Duration {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let step = INTERVAL.as_nanos();
    let rest = step - since.as_nanos() % step;
    Duration::from_nanos(rest as u64)
}

/// Samples every running sandbox on each tick, all at once (one slow sandbox does not delay
/// the others' samples), and drops the histories of sandboxes that are gone.
pub fn spawn_sampler<I: Infra>(manager: Arc<Manager<I>>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(until_next_tick(SystemTime::now())).await;
            let records = manager.records.all();
            manager
                .samples
                .retain(&records.iter().map(|r| r.id.clone()).collect());
            let running: Vec<SandboxId> = records
                .into_iter()
                .filter(|r| r.state == ApiState::Running)
                .map(|r| r.id)
                .collect();
            // One request for all of them: the backend reads them together (embedded: one
            // blocking task) or side by side (the default), so one slow sandbox does not
            // delay the others' samples.
            let reads = manager.infra.metrics_many(running).await;
            let at = SystemTime::now();
            for (id, read) in reads {
                match read {
                    Ok(m) => manager.samples.push(&id, Sample::new(at, &m)),
                    Err(e) => tracing::debug!(sandbox = %id, error = %e, "no usage sample"),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Sample {
        Sample {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            cpu_percent: 1.0,
            memory_bytes: secs,
            memory_limit_bytes: 100,
            disk_bytes: 0,
        }
    }

    fn secs(v: &[Sample]) -> Vec<u64> {
        v.iter().map(|s| s.memory_bytes).collect()
    }

    #[test]
    fn ranges_are_inclusive_and_optional() {
        let s = Samples::default();
        let id = SandboxId::new("abc").unwrap();
        for t in [10, 15, 20, 25] {
            s.push(&id, at(t));
        }
        let t = |x| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(x));
        assert_eq!(secs(&s.range(&id, None, None)), [10, 15, 20, 25]);
        assert_eq!(secs(&s.range(&id, t(15), t(20))), [15, 20]);
        assert_eq!(secs(&s.range(&id, t(16), None)), [20, 25]);
        assert_eq!(secs(&s.range(&id, None, t(9))), Vec::<u64>::new());
        assert!(
            s.range(&SandboxId::new("other").unwrap(), None, None)
                .is_empty()
        );
    }

    #[test]
    fn history_stays_ordered_and_bounded() {
        let s = Samples::default();
        let id = SandboxId::new("abc").unwrap();
        s.push(&id, at(20));
        s.push(&id, at(10));
        assert_eq!(secs(&s.range(&id, None, None)), [20]);
        for t in 0..KEEP as u64 + 5 {
            s.push(&id, at(100 + t));
        }
        let all = s.range(&id, None, None);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].memory_bytes, 105);
        s.retain(&HashSet::new());
        assert!(!s.has_any(&id));
    }

    #[test]
    fn ticks_fall_on_multiples_of_the_interval() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_003_500);
        assert_eq!(until_next_tick(t), Duration::from_millis(1_500));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_005);
        assert_eq!(until_next_tick(t), INTERVAL);
    }
}
