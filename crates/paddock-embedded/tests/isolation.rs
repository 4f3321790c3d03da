//! Root-only tests of limits, isolation and pause against real kernel features.

mod support;

use support::sh;

use std::time::Duration;

use paddock_infra::{CreateSandbox, Infra, Limits, SandboxState};

fn req(limits: Option<Limits>) -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        limits,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_inside_the_sandbox() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(10, |infra, env| async move {
        let limits = Limits { cpu_millis: 200, memory_bytes: 96 << 20, pids: 48, disk_bytes: None };
        let sbx = infra.create(req(Some(limits))).await.expect("create");

        // Fork bomb: stops at the pids limit, the host is unaffected.
        let bomb = "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('stopped', n, e.errno)\n";
        let (code, out, err) = sh(&infra, &sbx.id, &format!("python3 -c \"{bomb}\"")).await;
        assert_eq!(code, 0, "{err}");
        let n: u32 = out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("count");
        assert!(out.starts_with("stopped") && n < 48, "fork bomb must stop below the limit: {out}");
        let m = infra.metrics(&sbx.id).await.expect("metrics");
        assert!(m.pids <= 48, "{m:?}");
        // Forks work again on the host.
        assert!(std::process::Command::new("true").status().expect("host fork").success());
        let (code, _, _) = sh(&infra, &sbx.id, "pkill python3; true").await;
        assert_eq!(code, 0);

        // Memory hog: OOM-killed inside the sandbox; the sandbox survives and reports it.
        let (code, _, _) = sh(&infra, &sbx.id, "python3 -c 'b = bytearray(300 * 1024 * 1024); print(len(b))'").await;
        assert_eq!(code, 137, "the hog is SIGKILLed");
        let m = infra.metrics(&sbx.id).await.expect("metrics");
        assert!(m.oom_kills >= 1, "oom kill is reported: {m:?}");
        assert_eq!(infra.get(&sbx.id).await.expect("get").state, SandboxState::Running);
        let (code, out, _) = sh(&infra, &sbx.id, "echo alive").await;
        assert_eq!((code, out.trim()), (0, "alive"));

        // CPU: a busy loop gets at most ~0.2 CPU.
        let before = infra.metrics(&sbx.id).await.expect("metrics").cpu_usage_ns;
        let start = std::time::Instant::now();
        let (code, _, _) = sh(&infra, &sbx.id, "timeout 2 sh -c 'while :; do :; done'; true").await;
        assert_eq!(code, 0);
        let wall = start.elapsed().as_nanos() as f64;
        let used = (infra.metrics(&sbx.id).await.expect("metrics").cpu_usage_ns - before) as f64;
        assert!(used / wall < 0.4, "cpu share {:.2} exceeds the 0.2 CPU limit", used / wall);
        assert!(used / wall > 0.05, "the loop did run ({:.2})", used / wall);

        infra.kill(&sbx.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_see_neither_the_host_nor_each_other() {
    if support::skip_unless_root() {
        return;
    }
    // A file on the host outside the data dir.
    let secret = tempfile::Builder::new()
        .prefix("paddock-secret")
        .tempfile_in("/var/tmp")
        .expect("secret");
    // Listeners on the host: loopback only, and all addresses.
    let lo = std::net::TcpListener::bind("127.0.0.1:0").expect("bind lo");
    let any = std::net::TcpListener::bind("0.0.0.0:0").expect("bind any");
    let (lo_port, any_port) = (
        lo.local_addr().expect("addr").port(),
        any.local_addr().expect("addr").port(),
    );
    let secret_path = secret.path().to_owned();
    support::with_infra(11, move |infra, env| async move {
        let a = infra.create(req(None)).await.expect("create a");
        let b = infra.create(req(None)).await.expect("create b");
        let gw = env.cfg.net.cidr.gateway();

        let (code, _, _) = sh(&infra, &a.id, &format!("test -e {}", secret_path.display())).await;
        assert_ne!(code, 0, "host file must be invisible");
        let (_, out, _) = sh(&infra, &a.id, "ls /var/tmp | wc -l").await;
        assert_eq!(out.trim(), "0", "the sandbox's /var/tmp is its own");

        let curl = |target: String| {
            format!(
                "curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 {target}; echo \" rc=$?\""
            )
        };
        // Sanity: the sandbox reaches its own runtime, the host reaches both.
        let (_, out, _) = sh(&infra, &a.id, &curl(format!("http://{}/health", a.address))).await;
        assert!(out.starts_with("204"), "own runtime: {out}");
        let (_, out, _) = sh(
            &infra,
            &a.id,
            &curl(format!("http://127.0.0.1:{}/health", a.address.port())),
        )
        .await;
        assert!(out.starts_with("204"), "own loopback: {out}");
        // A cannot reach B.
        let (_, out, _) = sh(&infra, &a.id, &curl(format!("http://{}/health", b.address))).await;
        assert!(!out.starts_with("204"), "a reached b: {out}");
        // Nor the host's services, on loopback or via the gateway address.
        for target in [
            format!("http://127.0.0.1:{lo_port}/"),
            format!("http://{gw}:{any_port}/"),
            format!("http://{gw}:{lo_port}/"),
        ] {
            let (_, out, _) = sh(&infra, &a.id, &curl(target.clone())).await;
            assert!(out.starts_with("000"), "{target} reachable: {out}");
        }

        for id in [&a.id, &b.id] {
            infra.kill(id).await.expect("kill");
        }
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
    drop((lo, any));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_fails_writes_not_the_sandbox() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(13, |infra, env| async move {
        let limits = Limits {
            disk_bytes: Some(8 << 20),
            ..Limits::default()
        };
        let s = infra.create(req(Some(limits))).await.expect("create");
        let (code, _, err) = sh(&infra, &s.id, "dd if=/dev/zero of=/root/big bs=1M count=32").await;
        assert_ne!(code, 0, "writing past the disk limit must fail");
        assert!(err.contains("No space left"), "{err}");
        let m = infra.metrics(&s.id).await.expect("metrics");
        assert!(m.disk_bytes >= 4 << 20 && m.disk_bytes <= 8 << 20, "{m:?}");
        let (code, out, _) = sh(&infra, &s.id, "rm /root/big && echo ok").await;
        assert_eq!((code, out.trim()), (0, "ok"), "the sandbox keeps working");
        infra.kill(&s.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_a_counter_and_resume_continues_it() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(12, |infra, env| async move {
        let s = infra.create(req(None)).await.expect("create");
        let (code, _, err) =
            sh(&infra, &s.id, "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/c; sleep 0.02; done' >/dev/null 2>&1 &").await;
        assert_eq!(code, 0, "{err}");
        let counter = env.run_dir(&s.id).join("disk/upper/root/c");
        let read = || std::fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        while read() < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let p = infra.pause(&s.id).await.expect("pause");
        assert_eq!(p.state, SandboxState::Paused);
        let frozen_at = read();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(read(), frozen_at, "counter moved while paused");
        assert!(infra.pause(&s.id).await.is_err(), "pausing twice is illegal");
        let mem = infra.metrics(&s.id).await.expect("metrics while paused").memory_bytes;
        assert!(mem > 0, "memory is kept");
        infra.resume(&s.id).await.expect("resume");
        while read() <= frozen_at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(infra.resume(&s.id).await.is_err(), "resuming a running sandbox is illegal");
        // Kill works on a paused sandbox too.
        infra.pause(&s.id).await.expect("pause again");
        infra.kill(&s.id).await.expect("kill paused");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// A stand-in for "the internet": a network namespace we create, reachable from the host
/// through a veth, with an HTTP listener. Removed on drop. Its addresses are in 198.18/15
/// (set aside for benchmarking, routed nowhere): private ranges are denied to sandboxes.
struct FakeInternet {
    ns: String,
    host_if: String,
    server: std::process::Child,
}

impl FakeInternet {
    const ADDR: &'static str = "198.18.14.2:8080";

    fn new() -> Self {
        let (ns, host_if, peer) = ("pdktnet14".to_string(), "pdkte14a".to_string(), "pdkte14b");
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &host_if])
            .status();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", peer,
        ]);
        ip(&["link", "set", peer, "netns", &ns]);
        ip(&["addr", "add", "198.18.14.1/24", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "addr", "add", "198.18.14.2/24", "dev", peer]);
        ip(&["-n", &ns, "link", "set", peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(support::standin_binary())
            .args(["--listen", Self::ADDR])
            .spawn()
            .expect("server");
        Self {
            ns,
            host_if,
            server,
        }
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_only_when_internet_access_is_allowed() {
    if support::skip_unless_root() {
        return;
    }
    let net = FakeInternet::new();
    support::with_infra(14, |infra, env| async move {
        let closed = infra.create(req(None)).await.expect("create");
        let open = infra
            .create(CreateSandbox {
                allow_internet_access: true,
                ..req(None)
            })
            .await
            .expect("create");
        let curl = format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://{}/; true",
            FakeInternet::ADDR
        );
        // The listener may take a moment to start: wait until the open sandbox gets through.
        let mut got = String::new();
        for _ in 0..50 {
            got = sh(&infra, &open.id, &curl).await.1;
            if got == "204" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got, "204", "allowed sandbox reaches the outside");
        let (_, out, _) = sh(&infra, &closed.id, &curl).await;
        assert_eq!(out, "000", "sandbox without internet access got out");
        infra.kill(&open.id).await.expect("kill");
        infra.kill(&closed.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
    drop(net);
}

/// The bridge is the sandboxes' gateway. Were its hardware address to follow
/// its ports (the kernel's default), every veth that comes or goes could
/// change it, and sandboxes that resolved it earlier would send their replies
/// to an address nobody accepts until their neighbour entry expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_keeps_its_hardware_address_while_sandboxes_come_and_go() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(15, |infra, env| async move {
        let mac = support::mac_text(env.cfg.net.bridge_mac());
        let sysfs = format!("/sys/class/net/{}/address", env.cfg.net.bridge);
        let bridge_address = || std::fs::read_to_string(&sysfs).expect("bridge address");
        let first = infra.create(req(None)).await.expect("create");
        let mut others = Vec::new();
        for _ in 0..6 {
            others.push(infra.create(req(None)).await.expect("create"));
            assert_eq!(bridge_address().trim(), mac, "after a veth joined");
        }
        for o in others.drain(..3) {
            infra.kill(&o.id).await.expect("kill");
            assert_eq!(bridge_address().trim(), mac, "after a veth left");
        }
        // What the first sandbox believes the gateway's address is: it
        // resolved it while answering the health checks at start.
        let gw = env.cfg.net.cidr.gateway().to_string();
        let (code, out, err) = sh(&infra, &first.id, "cat /proc/net/arp").await;
        assert_eq!(code, 0, "{err}");
        let entry = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(gw.as_str()))
            .unwrap_or_else(|| panic!("no neighbour entry for {gw}: {out}"));
        assert!(
            entry.contains(&mac),
            "sandbox sends to {entry:?}, bridge is {mac}"
        );
        for o in others.into_iter().chain([first]) {
            infra.kill(&o.id).await.expect("kill");
        }
    })
    .await;
}

/// Disk usage is what the sandbox's disk holds, as `df` counts it: a sparse file costs
/// nothing, written data counts, deleted data stops counting. Every id asked for in one
/// read gets its own answer, an unknown one `NotFound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_usage_counts_blocks_in_use_and_a_batch_answers_each_sandbox() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(16, |infra, env| async move {
        let a = infra.create(req(None)).await.expect("create a");
        let b = infra.create(req(None)).await.expect("create b");
        let base = infra.metrics(&a.id).await.expect("metrics").disk_bytes;
        // A walk of the writable layer counted this file's length: a whole GiB.
        let (code, _, err) = sh(&infra, &a.id, "truncate -s 1G /root/sparse").await;
        assert_eq!(code, 0, "{err}");
        let sparse = infra.metrics(&a.id).await.expect("metrics").disk_bytes;
        assert!(
            sparse < base + (1 << 20),
            "a sparse file holds no blocks: {base} -> {sparse}"
        );
        let (code, _, err) = sh(
            &infra,
            &a.id,
            "head -c 6M /dev/urandom > /root/data && sync",
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let unknown = paddock_infra::SandboxId::new("nosuchsandbox0000000").expect("id");
        let many = infra
            .metrics_many(vec![a.id.clone(), unknown.clone(), b.id.clone()])
            .await;
        let ids: Vec<_> = many.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, vec![a.id.clone(), unknown.clone(), b.id.clone()]);
        let written = many[0].1.as_ref().expect("a's metrics").disk_bytes;
        assert!(
            written >= base + (6 << 20),
            "6 MiB written: {base} -> {written}"
        );
        assert!(
            matches!(&many[1].1, Err(paddock_infra::InfraError::NotFound(id)) if *id == unknown),
            "{:?}",
            many[1].1
        );
        let other = many[2].1.as_ref().expect("b's metrics");
        assert!(other.memory_bytes > 0 && other.pids > 0, "{other:?}");
        assert!(
            other.disk_bytes < base + (1 << 20),
            "b wrote nothing: {other:?}"
        );
        let (code, _, err) = sh(&infra, &a.id, "rm /root/data /root/sparse && sync").await;
        assert_eq!(code, 0, "{err}");
        let after = infra.metrics(&a.id).await.expect("metrics").disk_bytes;
        assert!(
            after < base + (1 << 20),
            "deleted data stops counting: {after}"
        );
        for s in [a, b] {
            infra.kill(&s.id).await.expect("kill");
        }
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}
