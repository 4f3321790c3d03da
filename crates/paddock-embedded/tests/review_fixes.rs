//! Root-only tests of the security review's embedded findings
//! (/work/shared/research/security-audit.md): M2 (stale routes) and M4 (pool tokens).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_contract::InitRequest;
use paddock_contract::client::{InitError, RuntimeClient};
use paddock_embedded::EmbeddedInfra;
use paddock_infra::{CreateSandbox, Infra, InfraError, SandboxState};

fn req() -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        ..Default::default()
    }
}

/// Like `support::with_infra`, with the configuration adjusted before the infra starts.
async fn with_tuned_infra<T, F, Fut>(n: u8, tune: T, f: F)
where
    T: FnOnce(&mut paddock_embedded::EmbeddedConfig),
    F: FnOnce(EmbeddedInfra, Arc<support::Env>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut env = support::Env::new(n);
    tune(&mut env.cfg);
    let env = Arc::new(env);
    let infra = env.start().await;
    let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(f(
        infra.clone(),
        env.clone(),
    )))
    .await;
    env.cleanup(Some(&infra)).await;
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// A /29: five sandbox addresses, so the sixth sandbox needs a dead one's address.
fn small_cidr(cfg: &mut paddock_embedded::EmbeddedConfig) {
    let net = cfg.net.cidr.to_string().replace("/24", "/29");
    cfg.net.cidr = net.parse().expect("cidr");
}

/// Security review M2 (stale routes): a sandbox whose init dies is reported on `ended`, and
/// its address goes to no other sandbox until its user has been told and has called `kill`,
/// so a route the user still holds can never lead to another tenant's sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sandboxs_address_is_not_reused_before_its_user_forgets_it() {
    with_tuned_infra(0, small_cidr, |infra, env| async move {
        let mut ended = infra.ended();
        let dead = infra.create(req()).await.expect("create");
        // Kill the runtime (PID 2, tini's only child): tini exits, so the sandbox dies.
        let out = infra
            .exec(&dead.id, &["/bin/kill", "-9", "2"])
            .await
            .expect("exec");
        // 137: the kill itself was killed when the dying init took the pid namespace down.
        assert!(
            matches!(out.code, 0 | 137),
            "kill: {} {}",
            out.code,
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let ev = loop {
            match ended.try_recv() {
                Ok(ev) => break ev,
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "death not reported on `ended`");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("ended: {e}"),
            }
        };
        assert_eq!(ev.id, dead.id);
        assert_eq!(
            infra.get(&dead.id).await.expect("tombstone").state,
            SandboxState::Dead
        );
        // The four other addresses of the /29.
        let mut others = Vec::new();
        for _ in 0..4 {
            let s = infra.create(req()).await.expect("create");
            assert_ne!(s.address, dead.address);
            others.push(s.id);
        }
        // The only free address left is the dead sandbox's: not before its user forgets it.
        match infra.create(req()).await {
            Err(InfraError::Capacity(_)) => {}
            Ok(s) => panic!(
                "{} got the address {} of dead sandbox {} while it may still be routed to",
                s.id, s.address, dead.id
            ),
            Err(e) => panic!("unexpected error: {e}"),
        }
        infra.kill(&dead.id).await.expect("forget the dead sandbox");
        let next = infra.create(req()).await.expect("create after forgetting");
        assert_eq!(next.address, dead.address, "the address is free again");
        others.push(next.id);
        for id in &others {
            infra.kill(id).await.expect("kill");
        }
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// Security review M4 (pool tokens): a warm-pool sandbox's runtime refuses requests without
/// its bootstrap token; its claimer gets that token, rotates it with `/init`, and from then
/// on only the new token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_runtimes_need_their_bootstrap_token_until_the_claim_rotates_it() {
    let tune = |cfg: &mut paddock_embedded::EmbeddedConfig| {
        small_cidr(cfg);
        cfg.templates[0].pool_size = 1;
    };
    with_tuned_infra(1, tune, |infra, env| async move {
        infra.start_pools();
        let deadline = Instant::now() + Duration::from_secs(120);
        while infra.pool_len("base") < 1 {
            assert!(Instant::now() < deadline, "the pool did not fill");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The pool's only member has the range's first address.
        let pooled_ip = env.cfg.net.cidr.host(0).expect("first address");
        let addr = SocketAddr::new(pooled_ip.into(), paddock_embedded::spec::RUNTIME_PORT);
        let client = RuntimeClient::new();
        let init = |token: &str| InitRequest {
            access_token: Some(token.to_owned()),
            ..Default::default()
        };
        // Anyone on the host network, before the claim: refused.
        let e = client
            .init(addr, &init("planted-by-someone-else"), None)
            .await
            .expect_err("a pooled runtime accepted /init without a token");
        assert!(matches!(e, InitError::Unauthorized { .. }), "{e}");
        let claimed = infra.create(req()).await.expect("claim");
        assert!(claimed.from_pool);
        assert_eq!(claimed.address, addr);
        let bootstrap = claimed.bootstrap_token.clone().expect("bootstrap token");
        client
            .init(addr, &init("the-tenants-token"), Some(&bootstrap))
            .await
            .expect("the claimer's /init with the bootstrap token");
        let e = client
            .init(addr, &init("again"), Some(&bootstrap))
            .await
            .expect_err("the bootstrap token still works after the claim");
        assert!(matches!(e, InitError::Unauthorized { .. }), "{e}");
        client
            .init(addr, &init("the-tenants-token"), Some("the-tenants-token"))
            .await
            .expect("the issued token works");
        infra.kill(&claimed.id).await.expect("kill");
    })
    .await;
}
