//! Root-only tests of the security review's embedded findings
//! (/work/shared/research/security-audit.md): H5 (filling the host disk), M2 (stale routes)
//! and M4 (pool tokens).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_contract::InitRequest;
use paddock_contract::client::{InitError, RuntimeClient};
use paddock_embedded::EmbeddedInfra;
use paddock_infra::{CreateSandbox, Infra, InfraError, Limits, SandboxState};

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
    support::with_env(env, f).await
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
        // Kill the runtime (tini's only child; not PID 2, which the boot id hook took):
        // tini exits, so the sandbox dies.
        let out = infra
            .exec(
                &dead.id,
                &["/bin/sh", "-c", "kill -9 $(cat /proc/1/task/1/children)"],
            )
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

/// Host disk used under `dir`, in bytes, without crossing into other file systems (the
/// sandboxes' overlay roots and disk mounts): what a sandbox could make the host store.
fn host_bytes_under(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-sx", "--block-size=1"])
        .arg(dir)
        .output()
        .expect("du");
    assert!(
        out.status.success(),
        "du: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output")
}

fn limits_with_disk(bytes: Option<u64>) -> Limits {
    Limits {
        disk_bytes: bytes,
        ..Limits::default()
    }
}

/// Security review H5 (filling the host disk): a sandbox whose template and request set no
/// disk limit still gets one (the configured default, 2 GiB here), so its root file system is
/// not the host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_never_runs_without_a_disk_limit() {
    let tune = |cfg: &mut paddock_embedded::EmbeddedConfig| {
        for t in &mut cfg.templates {
            t.limits.disk_bytes = None;
        }
    };
    with_tuned_infra(2, tune, |infra, env| async move {
        for limits in [None, Some(limits_with_disk(None))] {
            let s = infra
                .create(CreateSandbox { limits, ..req() })
                .await
                .expect("create");
            let out = infra
                .exec(&s.id, &["/bin/df", "-B1", "--output=size", "/"])
                .await
                .expect("df");
            let text = String::from_utf8_lossy(&out.stdout);
            let size: u64 = text
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("df: {text} {}", String::from_utf8_lossy(&out.stderr)));
            assert!(
                size <= 2 << 30,
                "the root file system has {size} bytes: no disk limit"
            );
            infra.kill(&s.id).await.expect("kill");
        }
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// Security review H5: a disk limit that cannot be put in place fails the create with an error
/// naming the limit (here one far past what a file on the host can hold), instead of the
/// sandbox running with a limit that is not enforced; and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_limit_that_cannot_be_enforced_fails_the_create() {
    with_tuned_infra(
        3,
        |_| {},
        |infra, env| async move {
            let huge = 1u64 << 60;
            let r = infra
                .create(CreateSandbox {
                    limits: Some(limits_with_disk(Some(huge))),
                    ..req()
                })
                .await;
            match r {
                Err(e) => assert!(e.to_string().contains(&huge.to_string()), "{e}"),
                Ok(s) => panic!(
                    "{} runs with an unenforceable disk limit of {huge} bytes",
                    s.id
                ),
            }
            assert!(infra.list().await.expect("list").is_empty());
            assert_eq!(env.leaks().await, Vec::<String>::new());
        },
    )
    .await;
}

/// Security review H5: with an 8 MiB disk limit, sandbox root writing 100 MiB to the init's
/// stdout and 100 MiB to its stderr (`/proc/1/fd/1` and `/proc/1/fd/2`) grows the host's data
/// dir by less than the 2 MiB log cap (plus 1 MiB of slack for the store), and the logs still
/// show the runtime's lines written after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inits_output_cannot_fill_the_host_disk() {
    with_tuned_infra(
        4,
        |_| {},
        |infra, env| async move {
            let s = infra
                .create(CreateSandbox {
                    limits: Some(limits_with_disk(Some(8 << 20))),
                    ..req()
                })
                .await
                .expect("create");
            let before = host_bytes_under(env.dir.path());
            let flood = "yes 'stdout flood' | head -c 104857600 > /proc/1/fd/1 && \
                     yes 'stderr flood' | head -c 104857600 > /proc/1/fd/2";
            let out = infra
                .exec(&s.id, &["/bin/sh", "-c", flood])
                .await
                .expect("exec");
            assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
            // Make the runtime log a line after the flood: an authorised `/init`.
            let token = s.bootstrap_token.clone().expect("bootstrap token");
            let init = InitRequest {
                access_token: Some(token.clone()),
                ..Default::default()
            };
            RuntimeClient::new()
                .init(s.address, &init, Some(&token))
                .await
                .expect("init");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let lines = infra.logs(&s.id).await.expect("logs");
                if lines.iter().any(|l| l.message.contains("applied /init")) {
                    assert!(
                        lines.iter().any(|l| l.message.contains("flood")),
                        "the flood's tail is in the log too"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the runtime's line after the flood is not in the logs; last: {:?}",
                    lines.last()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let grown = host_bytes_under(env.dir.path()).saturating_sub(before);
            assert!(
                grown < (2 << 20) + (1 << 20),
                "the data dir grew by {grown} bytes after 200 MiB written to the init's output"
            );
            infra.kill(&s.id).await.expect("kill");
            assert_eq!(env.leaks().await, Vec::<String>::new());
        },
    )
    .await;
}

/// Security review H5: an upload through the runtime's `/files` larger than the sandbox's disk
/// limit is refused with envd's error body, and leaves no partial file: 413 from the runtime's
/// upload cap, which the infra sets to the disk limit (507 when the disk fills first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_the_disk_limit_is_refused_and_leaves_nothing() {
    with_tuned_infra(
        5,
        |_| {},
        |infra, env| async move {
            let s = infra
                .create(CreateSandbox {
                    limits: Some(limits_with_disk(Some(8 << 20))),
                    ..req()
                })
                .await
                .expect("create");
            let token = s.bootstrap_token.clone().expect("bootstrap token");
            // From inside, to the sandbox's own runtime: the host has no HTTP client here.
            let upload = format!(
                "head -c 16777216 /dev/urandom > /tmp/big && \
             curl -s -o /tmp/resp -w '%{{http_code}}' -H 'X-Access-Token: {token}' \
               -H 'Content-Type: application/octet-stream' --data-binary @/tmp/big \
               'http://{addr}/files?path=/root/big&username=root'; echo; cat /tmp/resp; echo; \
             if test -e /root/big; then echo PARTIAL; fi",
                addr = s.address
            );
            let out = infra
                .exec(&s.id, &["/bin/sh", "-c", &upload])
                .await
                .expect("exec");
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let status = lines.next().unwrap_or_default();
            assert!(matches!(status, "413" | "507"), "{text}");
            let body: serde_json::Value =
                serde_json::from_str(lines.next().unwrap_or_default()).expect("JSON error body");
            assert_eq!(body["code"].to_string(), status, "{body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            assert!(
                !text.contains("PARTIAL"),
                "a partial upload was left behind: {text}"
            );
            infra.kill(&s.id).await.expect("kill");
            assert_eq!(env.leaks().await, Vec::<String>::new());
        },
    )
    .await;
}
