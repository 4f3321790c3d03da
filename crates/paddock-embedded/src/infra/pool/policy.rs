//! How big one template's warm pool should be: pure logic, driven by the claims it sees and
//! the time its members take to make, so it can be tested with a paused clock.
//!
//! The pool is kept at a *target* between a minimum and a ceiling:
//! - **growth**: the demand is the number of claims in the last *window*, where the window is
//!   how long a member takes to make (a moving average, at least [`MIN_WINDOW`]): that many
//!   claims would find the pool empty before a refill lands. The target rises at once to the
//!   demand plus the minimum (the minimum stays as headroom), up to the ceiling. A steady
//!   rate `r` thus keeps `r × refill latency + minimum` members, and a burst of `n` leaves a
//!   pool of `n + minimum` for the next one.
//! - **shrink**: time is cut into idle periods; at the end of each, the target falls to the
//!   busiest demand of that period plus the minimum, and to the minimum when nothing was
//!   claimed for a whole period. A growth starts a new period, so a burst keeps its pool for
//!   at least one whole period.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The shortest demand window: claims closer together than this count as one burst even
/// when members are made faster.
pub(crate) const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest demand window, whatever refills take.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(30);

/// The shortest idle period.
pub(crate) const MIN_IDLE: Duration = Duration::from_secs(1);

/// The bounds of one template's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Members kept however idle the pool is.
    pub(crate) min: usize,
    /// Members never exceeded, however high the demand (at least `min`).
    pub(crate) max: usize,
    /// Length of the periods at whose end the target is lowered.
    pub(crate) idle: Duration,
}

/// A change of target, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resize {
    pub(crate) from: usize,
    pub(crate) to: usize,
    /// Claims in the window (growth) or the period's busiest window (shrink).
    pub(crate) demand: usize,
}

/// The sizing state of one template's pool.
#[derive(Debug)]
pub(crate) struct Sizer {
    bounds: Bounds,
    target: usize,
    /// Claims within the current window, oldest first.
    claims: VecDeque<Instant>,
    /// Moving average of the time a member takes to make; `None` before the first.
    refill: Option<Duration>,
    period_start: Instant,
    /// The highest demand seen in the current period.
    period_peak: usize,
    /// The last claim, or the last create served after waiting.
    last_demand: Option<Instant>,
}

impl Sizer {
    pub(crate) fn new(bounds: Bounds, now: Instant) -> Self {
        let bounds = Bounds {
            max: bounds.max.max(bounds.min),
            // Periods shorter than that would only make the pool task spin.
            idle: bounds.idle.max(MIN_IDLE),
            ..bounds
        };
        Self {
            bounds,
            target: bounds.min,
            claims: VecDeque::new(),
            refill: None,
            period_start: now,
            period_peak: 0,
            last_demand: None,
        }
    }

    /// Members the pool should hold now (ready and in the making).
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    pub(crate) fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The window demand is counted over: the refill latency, within [`MIN_WINDOW`] and
    /// [`MAX_WINDOW`].
    pub(crate) fn window(&self) -> Duration {
        self.refill
            .unwrap_or(MIN_WINDOW)
            .clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// A member took `took` to make.
    pub(crate) fn on_refill(&mut self, took: Duration) {
        // Weight 1/4 for the newest: follows a change of load within a few members without
        // jumping on one slow create.
        self.refill = Some(match self.refill {
            None => took,
            Some(avg) => (avg * 3 + took) / 4,
        });
    }

    /// A create that waited got its member: the demand lasts until then.
    pub(crate) fn on_served(&mut self, now: Instant) {
        self.last_demand = Some(now);
    }

    /// A create asked for a member (whether or not one was ready). Returns the growth, if any.
    pub(crate) fn on_claim(&mut self, now: Instant) -> Option<Resize> {
        self.claims.push_back(now);
        self.last_demand = Some(now);
        let demand = self.demand(now);
        self.period_peak = self.period_peak.max(demand);
        let want = demand.saturating_add(self.bounds.min).min(self.bounds.max);
        if want <= self.target {
            return None;
        }
        let r = Resize {
            from: self.target,
            to: want,
            demand,
        };
        self.target = want;
        // The demand that raised the target holds it for a whole period.
        self.period_start = now;
        self.period_peak = demand;
        Some(r)
    }

    /// When [`Self::tick`] has something to do next.
    pub(crate) fn next_tick(&self) -> Instant {
        self.period_start + self.bounds.idle
    }

    /// Ends the idle period if it is over. Returns the shrink, if any.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Resize> {
        if now < self.next_tick() {
            return None;
        }
        // No claim for a whole period (a tick may come late): back to the minimum.
        let idle = self
            .last_demand
            .is_none_or(|t| now.saturating_duration_since(t) >= self.bounds.idle);
        let demand = if idle { 0 } else { self.period_peak };
        let want = demand
            .saturating_add(self.bounds.min)
            .min(self.bounds.max)
            .min(self.target);
        self.period_start = now;
        // The next period starts with what is still in the window.
        self.period_peak = self.demand(now);
        if want == self.target {
            return None;
        }
        let r = Resize {
            from: self.target,
            to: want,
            demand,
        };
        self.target = want;
        Some(r)
    }

    /// Claims within the window ending `now`.
    fn demand(&mut self, now: Instant) -> usize {
        let window = self.window();
        while self
            .claims
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.claims.pop_front();
        }
        self.claims.len()
    }
}

/// The ceiling of every template's pool when none is configured: 128 members each, fewer on
/// a small host so that all pools at their ceiling, counted at [`MEMBER_BUDGET`] each (an idle
/// member uses a few MiB; the rest is room for the first commands), fit in a quarter of its
/// memory.
pub(crate) fn default_ceiling(host_memory_bytes: u64, templates: usize) -> usize {
    let per_template = host_memory_bytes / 4 / MEMBER_BUDGET / templates.max(1) as u64;
    usize::try_from(per_template)
        .unwrap_or(usize::MAX)
        .clamp(1, DEFAULT_CEILING)
}

/// Default ceiling of a template's pool on a host with memory to spare.
pub(crate) const DEFAULT_CEILING: usize = 128;
/// Host memory set aside per pool member when the ceiling is derived from host memory.
pub(crate) const MEMBER_BUDGET: u64 = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(min: usize, max: usize) -> Bounds {
        Bounds {
            min,
            max,
            idle: Duration::from_secs(60),
        }
    }

    fn claims(s: &mut Sizer, n: usize) -> Option<Resize> {
        let mut last = None;
        for _ in 0..n {
            last = s.on_claim(Instant::now()).or(last);
        }
        last
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_the_minimum_and_a_burst_grows_it_to_demand_plus_minimum() {
        let mut s = Sizer::new(bounds(4, 128), Instant::now());
        assert_eq!(s.target(), 4);
        let r = claims(&mut s, 100).expect("a burst grows the pool");
        assert_eq!(s.target(), 104);
        assert_eq!(
            r,
            Resize {
                from: 103,
                to: 104,
                demand: 100
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn growth_stops_at_the_ceiling() {
        let mut s = Sizer::new(bounds(4, 32), Instant::now());
        claims(&mut s, 100);
        assert_eq!(s.target(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ceiling_below_the_minimum_is_the_minimum() {
        let s = Sizer::new(bounds(8, 2), Instant::now());
        assert_eq!(s.bounds().max, 8);
        assert_eq!(s.target(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_keeps_rate_times_refill_latency_plus_minimum() {
        let mut s = Sizer::new(bounds(2, 128), Instant::now());
        // Members take 2 s to make; 10 claims a second for a while.
        for _ in 0..8 {
            s.on_refill(Duration::from_secs(2));
        }
        assert_eq!(s.window(), Duration::from_secs(2));
        for _ in 0..100 {
            s.on_claim(Instant::now());
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // 2 s of claims at 10/s, plus the minimum (the window's edge may hold one more).
        assert!((22..=23).contains(&s.target()), "{}", s.target());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_claims_do_not_grow_the_pool() {
        let mut s = Sizer::new(bounds(2, 128), Instant::now());
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(5)).await;
            s.on_claim(Instant::now());
        }
        // One claim in any window: demand 1, so the pool holds one more than its minimum.
        assert_eq!(s.target(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_follows_refill_latency_within_bounds() {
        let mut s = Sizer::new(bounds(0, 10), Instant::now());
        assert_eq!(s.window(), MIN_WINDOW);
        s.on_refill(Duration::from_millis(50));
        assert_eq!(s.window(), MIN_WINDOW, "never shorter than the minimum");
        for _ in 0..50 {
            s.on_refill(Duration::from_secs(600));
        }
        assert_eq!(s.window(), MAX_WINDOW, "never longer than the maximum");
        let mut s = Sizer::new(bounds(0, 10), Instant::now());
        s.on_refill(Duration::from_secs(4));
        s.on_refill(Duration::from_secs(8));
        assert_eq!(s.window(), Duration::from_secs(5), "3/4 old + 1/4 new");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_period_brings_it_back_to_the_minimum() {
        let mut s = Sizer::new(bounds(4, 128), Instant::now());
        claims(&mut s, 50);
        assert_eq!(s.target(), 54);
        // Within the idle period: kept.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(s.tick(Instant::now()), None);
        assert_eq!(s.target(), 54);
        // A whole period without claims: back to the minimum.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            s.tick(Instant::now()),
            Some(Resize {
                from: 54,
                to: 4,
                demand: 0
            })
        );
        assert_eq!(s.target(), 4);
        // And it stays there.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(s.tick(Instant::now()), None);
        assert_eq!(s.target(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tick_still_sees_the_idle_period() {
        let mut s = Sizer::new(bounds(0, 16), Instant::now());
        claims(&mut s, 3);
        assert_eq!(s.target(), 3);
        tokio::time::advance(Duration::from_secs(600)).await;
        s.tick(Instant::now());
        assert_eq!(s.target(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quieter_period_shrinks_it_to_that_periods_demand() {
        let mut s = Sizer::new(bounds(2, 128), Instant::now());
        claims(&mut s, 40);
        // Then bursts of 5 every 15 s: the first period (its busiest moment: 40) keeps the
        // pool, the second (5) shrinks it.
        for k in 1..=8 {
            tokio::time::advance(Duration::from_secs(15)).await;
            claims(&mut s, 5);
            let r = s.tick(Instant::now());
            match k {
                4 => assert_eq!(r, None, "the period of the 40 keeps the pool"),
                8 => {
                    let r = r.expect("shrinks");
                    assert_eq!((r.from, r.to, r.demand), (42, 7, 5));
                }
                _ => {}
            }
        }
        assert_eq!(s.target(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn regular_bursts_keep_their_pool() {
        let mut s = Sizer::new(bounds(4, 128), Instant::now());
        for _ in 0..10 {
            claims(&mut s, 100);
            for _ in 0..4 {
                tokio::time::advance(Duration::from_secs(5)).await;
                s.tick(Instant::now());
            }
            assert_eq!(s.target(), 104);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_minimum_pool_grows_from_nothing_and_empties_again() {
        let mut s = Sizer::new(bounds(0, 16), Instant::now());
        assert_eq!(s.target(), 0);
        claims(&mut s, 3);
        assert_eq!(s.target(), 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        s.tick(Instant::now());
        assert_eq!(s.target(), 0);
    }

    #[test]
    fn the_default_ceiling_comes_from_host_memory() {
        // Plenty of memory: the fixed default.
        assert_eq!(default_ceiling(64 << 30, 2), DEFAULT_CEILING);
        // 2 GiB, two templates: a quarter is 512 MiB, 256 MiB each, 16 members of 16 MiB.
        assert_eq!(default_ceiling(2 << 30, 2), 16);
        // Never zero.
        assert_eq!(default_ceiling(1 << 20, 2), 1);
        assert_eq!(default_ceiling(0, 0), 1);
    }
}
