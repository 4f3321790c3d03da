//! Warm pools: ready sandboxes per template, made in the background and sized by demand.
//!
//! One task (started by [`EmbeddedInfra::start_pools`]) keeps every pool at the target its
//! [`policy::Sizer`] sets: it starts up to [`crate::config::PoolConfig::fill_concurrency`]
//! creates at once, hands members to creates that wait for one, and kills the surplus when a
//! target falls. Creates only touch the pool's state under the infra's lock (no I/O).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use paddock_infra::{SandboxId, SandboxState};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::EmbeddedInfra;
use crate::config::OnEmpty;
use crate::store::SandboxRecord;
use crate::template::TemplateSpec;

mod policy;

use policy::{Bounds, Sizer};

/// A create waiting for a member: gets its id, or `None` when none is coming (a failed make,
/// a shutdown) and it should make its own.
type Waiter = oneshot::Sender<Option<SandboxId>>;

/// Wait after a failed make before the next, doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The pool task looks at the pools at least this often, whatever it is told.
const RESCAN: Duration = Duration::from_secs(2);

/// One template's pool.
#[derive(Debug, Default)]
pub(super) struct TemplatePool {
    /// Members ready to claim, oldest first.
    pub(super) ready: VecDeque<SandboxId>,
    /// Members being made.
    filling: usize,
    /// Creates waiting for the next member, first come first served.
    waiters: VecDeque<Waiter>,
    /// How big the pool should be (`None` for a pool found at recovery of a template that
    /// is no longer offered).
    sizer: Option<Sizer>,
    /// Whether the pool task runs (and so whether a create may wait for a member).
    running: bool,
    /// After a failed make: when to try again, and the wait that gave.
    backoff: Option<(Instant, Duration)>,
    /// The target last logged.
    logged_target: usize,
    /// When a create last took a ready member (see [`crate::config::PoolConfig::refill_grace`]).
    last_claim: Option<Instant>,
}

impl TemplatePool {
    fn waiting(&mut self) -> usize {
        self.waiters.retain(|w| !w.is_closed());
        self.waiters.len()
    }

    fn target(&self) -> usize {
        self.sizer.as_ref().map_or(0, Sizer::target)
    }

    /// Gives a new member to the first create still waiting, else to the ready queue.
    fn deliver(&mut self, mut id: SandboxId) {
        while let Some(w) = self.waiters.pop_front() {
            match w.send(Some(id)) {
                Ok(()) => {
                    if let Some(s) = self.sizer.as_mut() {
                        s.on_served(Instant::now());
                    }
                    return;
                }
                Err(back) => id = back.expect("sent Some"),
            }
        }
        self.ready.push_back(id);
    }

    /// Tells the first waiting create that its member is not coming.
    fn disappoint_one(&mut self) {
        while let Some(w) = self.waiters.pop_front() {
            if w.send(None).is_ok() {
                return;
            }
        }
    }

    fn disappoint_all(&mut self) {
        for w in self.waiters.drain(..) {
            let _ = w.send(None);
        }
    }
}

/// Pool figures of one template, for the templates list and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFigures {
    /// Members ready to claim.
    pub ready: usize,
    /// Members being made.
    pub filling: usize,
    /// Members the pool is kept at now.
    pub target: usize,
    /// The pool's minimum.
    pub min: usize,
    /// The pool's ceiling.
    pub max: usize,
}

/// Total host memory, from `/proc/meminfo`.
fn host_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

impl EmbeddedInfra {
    /// The bounds of `spec`'s pool under this configuration.
    fn pool_bounds(&self, spec: &TemplateSpec) -> Bounds {
        let cfg = &self.inner.cfg.pool;
        let max = match cfg.max {
            Some(m) => m,
            None if spec.pool_size == 0 => 0,
            None => {
                let with_pools = self
                    .inner
                    .templates
                    .specs()
                    .filter(|s| s.pool_size > 0)
                    .count();
                // Unknown memory: the plain default.
                let mem = host_memory_bytes().unwrap_or(u64::MAX);
                policy::default_ceiling(mem, with_pools)
            }
        };
        Bounds {
            min: spec.pool_size,
            max: max.max(spec.pool_size),
            idle: cfg.idle,
        }
    }

    /// Sets every template's pool at its minimum (before any claim; the pool task is not
    /// started yet, so nothing is made and no create waits).
    pub(super) fn init_pools(&self) {
        let now = Instant::now();
        let specs: Vec<TemplateSpec> = self.inner.templates.specs().cloned().collect();
        let bounds: Vec<Bounds> = specs.iter().map(|s| self.pool_bounds(s)).collect();
        let mut st = self.state();
        for (spec, bounds) in specs.iter().zip(bounds) {
            let p = st.pools.entry(spec.name.clone()).or_default();
            p.sizer = Some(Sizer::new(bounds, now));
            p.logged_target = bounds.min;
        }
    }

    /// Starts the background task that keeps each template's warm pool at its target.
    pub fn start_pools(&self) {
        let specs: Vec<TemplateSpec> = self.inner.templates.specs().cloned().collect();
        {
            let mut st = self.state();
            for spec in &specs {
                let Some(p) = st.pools.get_mut(&spec.name) else {
                    continue;
                };
                let Some(bounds) = p.sizer.as_ref().map(Sizer::bounds) else {
                    continue;
                };
                info!(
                    template = %spec.name,
                    pool_min = bounds.min,
                    pool_max = bounds.max,
                    idle_secs = bounds.idle.as_secs(),
                    "warm pool"
                );
                p.running = true;
            }
        }
        let me = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    break;
                }
                let next = me.pool_round(&specs);
                tokio::select! {
                    _ = me.inner.pool_wakeup.notified() => {}
                    _ = tokio::time::sleep_until(next) => {}
                    _ = stop.changed() => {}
                }
            }
            // Nobody makes members any more: creates still waiting make their own.
            for p in me.state().pools.values_mut() {
                p.running = false;
                p.disappoint_all();
            }
        });
    }

    /// One look at every pool: resize, start makes, kill the surplus. Returns when to look
    /// again at the latest.
    fn pool_round(&self, specs: &[TemplateSpec]) -> Instant {
        let now = Instant::now();
        let mut next = now + RESCAN;
        let mut makes: Vec<&TemplateSpec> = Vec::new();
        let mut surplus: Vec<SandboxId> = Vec::new();
        {
            let mut st = self.state();
            let in_flight: usize = st.pools.values().map(|p| p.filling).sum();
            let mut free = self
                .inner
                .cfg
                .pool
                .fill_concurrency
                .max(1)
                .saturating_sub(in_flight);
            // What each pool needs made: for waiting creates first, then up to the target.
            let mut wants: Vec<(usize, usize, usize)> = Vec::new();
            for (i, spec) in specs.iter().enumerate() {
                let Some(p) = st.pools.get_mut(&spec.name) else {
                    continue;
                };
                if !p.running {
                    continue;
                }
                let waiting = p.waiting();
                let Some(sizer) = p.sizer.as_mut() else {
                    continue;
                };
                // Not idle while creates wait.
                if waiting == 0
                    && let Some(r) = sizer.tick(now)
                {
                    debug!(template = %spec.name, from = r.from, to = r.to, demand = r.demand, "warm pool shrinks");
                }
                next = next.min(sizer.next_tick().max(now + Duration::from_millis(10)));
                let target = sizer.target();
                if let Some((at, _)) = p.backoff
                    && at > now
                {
                    next = next.min(at);
                    // No member is coming soon: waiting creates make their own.
                    p.disappoint_all();
                    continue;
                }
                // Members in the making go to waiting creates first.
                let have = p.ready.len() + p.filling;
                let needed = (target + waiting).saturating_sub(have);
                let for_waiters = waiting.saturating_sub(p.filling).min(needed);
                let mut for_target = needed - for_waiters;
                // Right after a claim, with members still ready and nobody waiting, the refill
                // steps aside for the claimed sandbox's first requests.
                if let Some(until) = refill_deferred_until(
                    p.last_claim,
                    self.inner.cfg.pool.refill_grace,
                    waiting,
                    p.ready.len(),
                    now,
                ) && for_target > 0
                {
                    for_target = 0;
                    next = next.min(until);
                }
                if waiting == 0 && have > target {
                    let n = (have - target).min(p.ready.len());
                    surplus.extend(p.ready.drain(..n));
                }
                if target != p.logged_target {
                    info!(
                        template = %spec.name,
                        pool_ready = p.ready.len(),
                        pool_filling = p.filling,
                        pool_target = target,
                        previous_target = p.logged_target,
                        "warm pool resized"
                    );
                    p.logged_target = target;
                }
                wants.push((i, for_waiters, for_target));
            }
            for pass in 0..2 {
                for (i, for_waiters, for_target) in &wants {
                    let n = (if pass == 0 { *for_waiters } else { *for_target }).min(free);
                    free -= n;
                    if n > 0 {
                        if let Some(p) = st.pools.get_mut(&specs[*i].name) {
                            p.filling += n;
                        }
                        makes.extend(std::iter::repeat_n(&specs[*i], n));
                    }
                }
            }
        }
        for spec in makes {
            let me = self.clone();
            let spec = spec.clone();
            tokio::spawn(async move { me.make_member(spec).await });
        }
        for id in surplus {
            let me = self.clone();
            tokio::spawn(async move {
                debug!(%id, "killing a surplus pool member");
                me.mark_dead(&id);
                if let Err(e) = me.teardown(&id).await {
                    warn!(%id, error = %e, "killing a surplus pool member");
                }
            });
        }
        next
    }

    /// Makes one member of `spec`'s pool (its `filling` was counted up for it).
    async fn make_member(&self, spec: TemplateSpec) {
        let started = Instant::now();
        let r = self
            .cold_create(
                &spec.name,
                spec.limits.clone(),
                false,
                Default::default(),
                true,
            )
            .await;
        {
            let mut st = self.state();
            let p = st.pools.entry(spec.name.clone()).or_default();
            p.filling = p.filling.saturating_sub(1);
            match r {
                Ok(info) => {
                    if let Some(s) = p.sizer.as_mut() {
                        s.on_refill(started.elapsed());
                    }
                    p.backoff = None;
                    p.deliver(info.id);
                }
                Err(e) => {
                    let wait = p
                        .backoff
                        .map_or(FIRST_BACKOFF, |(_, d)| (d * 2).min(MAX_BACKOFF));
                    p.backoff = Some((Instant::now() + wait, wait));
                    p.disappoint_one();
                    warn!(template = %spec.name, error = %e, retry_ms = wait.as_millis() as u64, "pool refill failed");
                }
            }
        }
        self.inner.pool_wakeup.notify_one();
    }

    /// Ready sandboxes waiting in the pool of `template`.
    pub fn pool_len(&self, template: &str) -> usize {
        self.state()
            .pools
            .get(template)
            .map_or(0, |p| p.ready.len())
    }

    /// The pool figures of `template` (all zero for one without a pool).
    pub fn pool_figures(&self, template: &str) -> PoolFigures {
        let st = self.state();
        let p = st.pools.get(template);
        let bounds = p.and_then(|p| p.sizer.as_ref()).map(Sizer::bounds);
        PoolFigures {
            ready: p.map_or(0, |p| p.ready.len()),
            filling: p.map_or(0, |p| p.filling),
            target: p.map_or(0, TemplatePool::target),
            min: bounds.map_or(0, |b| b.min),
            max: bounds.map_or(0, |b| b.max),
        }
    }

    /// Waits until no pool member is being made (after [`Self::shutdown`], none starts).
    pub(super) async fn pool_makes_done(&self) {
        while self.state().pools.values().any(|p| p.filling > 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Takes a ready member of `template`'s pool. When none is ready and `wait` allows it (and
    /// the pool is configured to), waits for the next member the pool makes. `None`: the
    /// create is made cold.
    pub(super) async fn claim(&self, template: &str, wait: bool) -> Option<Claimed> {
        let rx = {
            let mut guard = self.state();
            let st = &mut *guard;
            let p = st.pools.get_mut(template)?;
            if let Some(s) = p.sizer.as_mut() {
                s.on_claim(Instant::now());
            }
            // Members that died in the pool are skipped (the monitor releases them).
            while let Some(id) = p.ready.pop_front() {
                let rec = st.sandboxes.get(&id).and_then(|e| usable(&e.rec));
                if let Some(rec) = rec {
                    p.last_claim = Some(Instant::now());
                    drop(guard);
                    // A refill, and perhaps a bigger pool.
                    self.inner.pool_wakeup.notify_one();
                    return Some(Claimed { rec, ready: true });
                }
            }
            let may_wait = wait
                && self.inner.cfg.pool.on_empty == OnEmpty::Wait
                && p.running
                && p.sizer.as_ref().is_some_and(|s| s.bounds().max > 0)
                && p.backoff.is_none();
            if !may_wait {
                drop(guard);
                self.inner.pool_wakeup.notify_one();
                return None;
            }
            let (tx, rx) = oneshot::channel();
            p.waiters.push_back(tx);
            rx
        };
        self.inner.pool_wakeup.notify_one();
        let id = WaitForMember {
            infra: self,
            template,
            rx: Some(rx),
        }
        .recv()
        .await?;
        let rec = self
            .state()
            .sandboxes
            .get(&id)
            .and_then(|e| usable(&e.rec))?;
        Some(Claimed { rec, ready: false })
    }
}

/// Until when a refill for the pool's target waits after the last claim: `None` when it may
/// start now (no recent claim, a create waiting, or nothing left ready).
fn refill_deferred_until(
    last_claim: Option<Instant>,
    grace: Duration,
    waiting: usize,
    ready: usize,
    now: Instant,
) -> Option<Instant> {
    let until = last_claim? + grace;
    (waiting == 0 && ready > 0 && until > now).then_some(until)
}

/// A pool member taken by a create.
pub(super) struct Claimed {
    pub(super) rec: SandboxRecord,
    /// Whether it was ready when asked for (else the create waited for it to be made).
    pub(super) ready: bool,
}

/// The record of a pool member that can be handed out.
fn usable(rec: &SandboxRecord) -> Option<SandboxRecord> {
    (rec.state == SandboxState::Running && rec.pooled).then(|| rec.clone())
}

/// A create waiting for a member. Dropped before it got one (its create was cancelled), it
/// puts a member handed to it meanwhile back in the pool.
struct WaitForMember<'a> {
    infra: &'a EmbeddedInfra,
    template: &'a str,
    rx: Option<oneshot::Receiver<Option<SandboxId>>>,
}

impl WaitForMember<'_> {
    async fn recv(mut self) -> Option<SandboxId> {
        let rx = self.rx.as_mut()?;
        let got = rx.await.ok().flatten();
        self.rx = None;
        got
    }
}

impl Drop for WaitForMember<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        if let Ok(Some(id)) = rx.try_recv() {
            let mut st = self.infra.state();
            st.pools
                .entry(self.template.to_owned())
                .or_default()
                .ready
                .push_front(id);
        }
    }
}

/// Per-template pool state, kept in the infra's [`super::State`].
pub(super) type Pools = HashMap<String, TemplatePool>;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SandboxId {
        SandboxId::new(s.to_owned()).expect("id")
    }

    #[test]
    fn a_new_member_goes_to_the_first_create_still_waiting() {
        let mut p = TemplatePool::default();
        let (gone, gone_rx) = oneshot::channel();
        let (first, mut first_rx) = oneshot::channel();
        let (second, mut second_rx) = oneshot::channel();
        p.waiters.extend([gone, first, second]);
        drop(gone_rx);
        p.deliver(id("aaaa"));
        assert_eq!(first_rx.try_recv().ok(), Some(Some(id("aaaa"))));
        assert!(second_rx.try_recv().is_err(), "one member, one create");
        assert!(p.ready.is_empty());
        assert_eq!(p.waiting(), 1);
        // The last waiting create gives up: the next member is kept ready.
        drop(second_rx);
        p.deliver(id("bbbb"));
        assert_eq!(p.ready, [id("bbbb")]);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn a_failed_make_sends_one_waiting_create_to_make_its_own() {
        let mut p = TemplatePool::default();
        let (a, mut a_rx) = oneshot::channel();
        let (b, mut b_rx) = oneshot::channel();
        p.waiters.extend([a, b]);
        p.disappoint_one();
        assert_eq!(a_rx.try_recv().ok(), Some(None));
        assert!(b_rx.try_recv().is_err());
        p.disappoint_all();
        assert_eq!(b_rx.try_recv().ok(), Some(None));
    }

    #[test]
    fn a_refill_waits_out_the_grace_only_while_members_are_ready_and_nobody_waits() {
        let t0 = Instant::now();
        let grace = Duration::from_millis(50);
        let soon = t0 + Duration::from_millis(10);
        // Just claimed, three left, nobody waiting: wait until the grace is over.
        assert_eq!(
            refill_deferred_until(Some(t0), grace, 0, 3, soon),
            Some(t0 + grace)
        );
        // Past the grace, never claimed, no grace: at once.
        assert_eq!(
            refill_deferred_until(Some(t0), grace, 0, 3, t0 + grace),
            None
        );
        assert_eq!(refill_deferred_until(None, grace, 0, 3, soon), None);
        assert_eq!(
            refill_deferred_until(Some(t0), Duration::ZERO, 0, 3, soon),
            None
        );
        // A create waiting, or nothing left ready: at once.
        assert_eq!(refill_deferred_until(Some(t0), grace, 1, 3, soon), None);
        assert_eq!(refill_deferred_until(Some(t0), grace, 0, 0, soon), None);
    }
}
