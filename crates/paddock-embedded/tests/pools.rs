//! Root-only tests of warm pools that size themselves: a burst drains the pool, the pool
//! grows past its minimum, and shrinks back after an idle period, killing the surplus.

mod support;

use std::time::{Duration, Instant};

use paddock_embedded::EmbeddedInfra;
use paddock_embedded::config::OnEmpty;
use paddock_infra::{CreateSandbox, Infra, SandboxInfo};

const MIN: usize = 2;
const MAX: usize = 10;
const BURST: usize = 8;

fn req() -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        ..Default::default()
    }
}

/// Polls `cond` every 20 ms until it holds; fails with `what` after `secs` seconds.
async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until nothing of the torn-down sandboxes is left, then asserts it: a pool tears its
/// surplus members down in the background, and their cgroups go before their firewall
/// entries, so "no cgroup left" does not yet mean "nothing left". A real leak still fails,
/// with the list, after `secs`.
async fn assert_nothing_left(env: &support::Env, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let leaks = env.leaks().await;
        if leaks.is_empty() || Instant::now() >= deadline {
            assert_eq!(leaks, Vec::<String>::new());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sandbox cgroups of this environment: one per live sandbox, pooled or handed out.
fn cgroups(env: &support::Env) -> usize {
    paddock_cgroups::Hierarchy::detect(&env.cfg.cgroup_parent)
        .and_then(|h| h.list())
        .map_or(0, |l| l.len())
}

async fn burst(infra: &EmbeddedInfra, n: usize) -> Vec<SandboxInfo> {
    let creates = (0..n).map(|_| infra.create(req()));
    futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("every create of the burst succeeds"))
        .collect()
}

fn tune(cfg: &mut paddock_embedded::EmbeddedConfig, on_empty: OnEmpty) {
    cfg.templates[0].pool_size = MIN;
    cfg.pool.max = Some(MAX);
    cfg.pool.idle = Duration::from_secs(8);
    cfg.pool.fill_concurrency = 4;
    cfg.pool.on_empty = on_empty;
}

/// A burst larger than the pool drains it; every create still succeeds (those that found it
/// empty wait for the members it makes for them); the pool grows past its minimum to serve
/// the next burst warm, then, once idle, shrinks back to its minimum and kills the surplus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_grows_the_pool_and_idleness_shrinks_it() {
    if support::skip_unless_root() {
        return;
    }
    let mut env = support::Env::new(0);
    tune(&mut env.cfg, OnEmpty::Wait);
    support::with_env(env, |infra, env| async move {
        let f = infra.pool_figures("base");
        assert_eq!((f.min, f.max, f.target), (MIN, MAX, MIN));
        infra.start_pools();
        wait_for(120, "the pool to fill", || infra.pool_len("base") >= MIN).await;

        let first = burst(&infra, BURST).await;
        let warm = first.iter().filter(|s| s.from_pool).count();
        assert!(
            (1..=MIN).contains(&warm),
            "a pool of {MIN} serves at most {MIN} of the first burst warm, served {warm}"
        );
        let f = infra.pool_figures("base");
        assert!(f.target > MIN, "the burst grew the pool's target: {f:?}");
        assert!(f.target <= MAX, "never past the ceiling: {f:?}");
        let templates = Infra::templates(&infra).await.expect("templates");
        let base = templates.iter().find(|t| t.name == "base").expect("base");
        assert_eq!((base.pool_min, base.pool_max), (MIN, MAX));
        assert!(
            base.pool_size > MIN,
            "the templates list shows the target: {base:?}"
        );

        // The pool fills up past its minimum ...
        wait_for(120, "the pool to grow past its minimum", || {
            infra.pool_len("base") > MIN
        })
        .await;
        // ... and a second burst of the same size is served warm in part at least.
        let grown = infra.pool_len("base");
        let second = burst(&infra, BURST).await;
        let warm = second.iter().filter(|s| s.from_pool).count();
        assert!(
            warm > MIN,
            "the grown pool ({grown} ready) served more than {MIN} warm, served {warm}"
        );
        for s in first.iter().chain(&second) {
            infra.kill(&s.id).await.expect("kill");
        }

        // Idle: back to the minimum, the surplus members killed.
        wait_for(120, "the pool to shrink to its minimum", || {
            let f = infra.pool_figures("base");
            f.target == MIN && f.ready == MIN && f.filling == 0 && cgroups(&env) == MIN
        })
        .await;
        assert!(infra.list().await.expect("list").is_empty());
        infra.kill_all().await.expect("kill all");
        assert_nothing_left(&env, 120).await;
    })
    .await;
}

/// With `cold` on empty, creates that find the pool empty make their own sandbox; the
/// burst still grows the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_on_empty_creates_its_own_and_still_grows_the_pool() {
    if support::skip_unless_root() {
        return;
    }
    let mut env = support::Env::new(1);
    tune(&mut env.cfg, OnEmpty::Cold);
    support::with_env(env, |infra, env| async move {
        infra.start_pools();
        wait_for(120, "the pool to fill", || infra.pool_len("base") >= MIN).await;
        let first = burst(&infra, BURST).await;
        assert!(first.iter().filter(|s| s.from_pool).count() <= MIN);
        assert!(infra.pool_figures("base").target > MIN);
        wait_for(120, "the pool to grow past its minimum", || {
            infra.pool_len("base") > MIN
        })
        .await;
        for s in &first {
            infra.kill(&s.id).await.expect("kill");
        }
        infra.kill_all().await.expect("kill all");
        assert_nothing_left(&env, 120).await;
    })
    .await;
}

/// A pool whose minimum is zero and whose ceiling is not: no member while idle, members
/// made when creates come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_minimum_grows_on_demand_and_empties_when_idle() {
    if support::skip_unless_root() {
        return;
    }
    let mut env = support::Env::new(2);
    tune(&mut env.cfg, OnEmpty::Wait);
    env.cfg.templates[0].pool_size = 0;
    support::with_env(env, |infra, env| async move {
        infra.start_pools();
        assert_eq!(infra.pool_figures("base").target, 0);
        let first = burst(&infra, 3).await;
        assert!(first.iter().all(|s| !s.from_pool), "nothing was ready");
        assert_eq!(infra.pool_figures("base").target, 3);
        wait_for(120, "the pool to grow", || infra.pool_len("base") == 3).await;
        for s in &first {
            infra.kill(&s.id).await.expect("kill");
        }
        wait_for(120, "the pool to empty", || {
            let f = infra.pool_figures("base");
            f.target == 0 && f.ready == 0 && f.filling == 0 && cgroups(&env) == 0
        })
        .await;
        assert_nothing_left(&env, 120).await;
    })
    .await;
}
