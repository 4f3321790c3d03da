//! Root-only lifecycle tests: leak checks, init death, restart recovery, warm pools.

mod support;

use std::io::BufRead;
use std::time::{Duration, Instant};

use paddock_embedded::EmbeddedInfra;
use paddock_infra::{CreateSandbox, Infra, InfraError, SandboxId, SandboxState};

fn req() -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_create_pause_kill_cycles_leak_nothing() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(20, |infra, env| async move {
        for i in 0..50 {
            let s = infra.create(req()).await.expect("create");
            if i % 3 == 0 {
                infra.pause(&s.id).await.expect("pause");
            }
            if i % 6 == 0 {
                infra.resume(&s.id).await.expect("resume");
            }
            infra.kill(&s.id).await.expect("kill");
        }
        assert_eq!(infra.list().await.expect("list"), vec![]);
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_whose_init_dies_is_reported_and_cleaned_up() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(21, |infra, env| async move {
        let s = infra.create(req()).await.expect("create");
        // Kill the runtime (tini's only child; not PID 2, which the boot id hook took):
        // tini exits, so the sandbox dies.
        let out = infra
            .exec(
                &s.id,
                &["/bin/sh", "-c", "kill -9 $(cat /proc/1/task/1/children)"],
            )
            .await
            .expect("exec");
        // 137 is a success too: once the runtime is gone tini exits, and the end of the pid
        // namespace SIGKILLs everything left in it, `kill` itself included, if that happens
        // before `kill` got to exit on its own.
        assert!(
            out.code == 0 || out.code == 137,
            "kill exited {}: {}",
            out.code,
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while infra.get(&s.id).await.expect("get").state != SandboxState::Dead {
            assert!(Instant::now() < deadline, "death not noticed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reason = infra.dead_reason(&s.id).expect("reason");
        assert!(reason.contains("init exited"), "{reason}");
        let e = infra
            .pause(&s.id)
            .await
            .expect_err("pausing a dead sandbox");
        assert!(matches!(e, InfraError::IllegalTransition { .. }), "{e}");
        // Everything but the tombstone is gone; kill forgets the tombstone.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !env.leaks().await.is_empty() {
            assert!(Instant::now() < deadline, "leaks: {:?}", env.leaks().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        infra.kill(&s.id).await.expect("kill dead");
        assert!(matches!(
            infra.get(&s.id).await,
            Err(InfraError::NotFound(_))
        ));
        // And creation keeps working.
        let t = infra.create(req()).await.expect("create after death");
        infra.kill(&t.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// Starts the `paddock-embedded up` binary on `env`, waits for `count` sandboxes.
fn spawn_agent(
    env: &support::Env,
    count: usize,
    pool: usize,
) -> (std::process::Child, Vec<(SandboxId, String)>) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paddock-embedded"))
        .arg("up")
        .args(["--runtime", &support::runtime_binary().to_string_lossy()])
        .args(["--data", &env.cfg.data_dir.to_string_lossy()])
        .args(["--bridge", &env.cfg.net.bridge])
        .args(["--cidr", &env.cfg.net.cidr.to_string()])
        .args(["--nft-table", &env.cfg.net.nft_table])
        .args(["--veth-prefix", &env.cfg.net.veth_prefix])
        .args(["--cgroup-parent", &env.cfg.cgroup_parent])
        .args(["--count", &count.to_string(), "--pool", &pool.to_string()])
        .env(
            paddock_embedded::TEMPLATE_CACHE_ENV,
            &env.cfg.template_cache,
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ready = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line == "up" {
            break;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.first() == Some(&"ready") {
            ready.push((SandboxId::new(parts[1]).expect("id"), parts[2].to_string()));
        }
    }
    assert_eq!(ready.len(), count, "agent did not create its sandboxes");
    (child, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_then_restart_adopts_live_sandboxes_and_cleans_the_rest() {
    if support::skip_unless_root() {
        return;
    }
    let env = std::sync::Arc::new(support::Env::new(22));
    let (mut agent, ready) = spawn_agent(&env, 3, 0);
    // Pause one before the crash: it must come back paused.
    let paused = ready[0].0.clone();
    {
        let h = paddock_cgroups::Hierarchy::detect(&env.cfg.cgroup_parent).expect("cgroups");
        assert_eq!(h.list().expect("list").len(), 3);
    }
    agent.kill().expect("kill -9");
    agent.wait().expect("reap agent");
    // Leave a half-made sandbox behind as a crash mid-create would: a directory and a cgroup.
    let half = "halfmade0000000000000";
    std::fs::create_dir_all(env.dir.path().join("sandboxes").join(half).join("upper"))
        .expect("mkdir");
    paddock_cgroups::Hierarchy::detect(&env.cfg.cgroup_parent)
        .expect("cgroups")
        .sandbox(half)
        .create()
        .expect("cg");

    let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        let infra: EmbeddedInfra = env.start().await;
        let listed = infra.list().await.expect("list");
        assert_eq!(listed.len(), 3, "all three adopted: {listed:?}");
        // Adopted sandboxes work: exec, pause, resume, metrics.
        infra.pause(&paused).await.expect("pause adopted");
        infra.resume(&paused).await.expect("resume adopted");
        let out = infra
            .exec(&ready[1].0, &["/bin/hostname"])
            .await
            .expect("exec adopted");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            ready[1].0.as_str()
        );
        assert!(
            infra
                .metrics(&ready[2].0)
                .await
                .expect("metrics")
                .memory_bytes
                > 0
        );
        // The log relays outlived the crash (security review H5): an adopted sandbox's output
        // still reaches its log, and the log stays within its cap.
        let marker = "written-after-the-crash";
        let flood =
            format!("yes flood | head -c 10485760 > /proc/1/fd/1 && echo {marker} > /proc/1/fd/1");
        let out = infra
            .exec(&ready[1].0, &["/bin/sh", "-c", &flood])
            .await
            .expect("exec adopted");
        assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !infra
            .logs(&ready[1].0)
            .await
            .expect("logs")
            .iter()
            .any(|l| l.message.contains(marker))
        {
            assert!(
                Instant::now() < deadline,
                "output written after the crash never reached the log"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dir = env.dir.path().join("sandboxes").join(ready[1].0.as_str());
        let log = dir.join("runtime.log");
        let on_host: u64 = [log.clone(), paddock_embedded::logrelay::rotated(&log)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        assert!(
            on_host <= paddock_embedded::logrelay::LOG_CAP_BYTES,
            "{on_host} bytes of log on the host"
        );
        // The half-made one is gone.
        let leaks = env.leaks().await;
        assert!(!leaks.iter().any(|l| l.contains(half)), "{leaks:?}");
        // An adopted sandbox that dies (no longer our child) is still noticed.
        infra
            .exec(
                &ready[2].0,
                &["/bin/sh", "-c", "kill -9 $(cat /proc/1/task/1/children)"],
            )
            .await
            .expect("exec");
        let deadline = Instant::now() + Duration::from_secs(20);
        while infra.get(&ready[2].0).await.expect("get").state != SandboxState::Dead {
            assert!(
                Instant::now() < deadline,
                "death of adopted sandbox not noticed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (id, _) in &ready {
            infra.kill(id).await.expect("kill adopted");
        }
        assert_eq!(env.leaks().await, Vec::<String>::new());
        infra
    }))
    .await;
    let infra = r.as_ref().ok().cloned();
    env.cleanup(infra.as_ref()).await;
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_claims_are_ready_sandboxes_and_refill() {
    if support::skip_unless_root() {
        return;
    }
    let mut env = support::Env::new(23);
    env.cfg.templates[0].pool_size = 2;
    let env = std::sync::Arc::new(env);
    let infra = env.start().await;
    let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        infra.start_pools();
        let deadline = Instant::now() + Duration::from_secs(60);
        while infra.pool_len("base") < 2 {
            assert!(Instant::now() < deadline, "pool never filled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            infra.list().await.expect("list"),
            vec![],
            "pooled sandboxes are not listed"
        );
        let claimed = infra
            .create(CreateSandbox {
                metadata: [("k".to_string(), "v".to_string())].into(),
                ..req()
            })
            .await
            .expect("claim");
        assert_eq!(infra.pool_len("base"), 1, "claimed from the pool");
        assert_eq!(claimed.metadata.get("k").map(String::as_str), Some("v"));
        let out = infra
            .exec(&claimed.id, &["/bin/true"])
            .await
            .expect("exec in claimed");
        assert_eq!(out.code, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while infra.pool_len("base") < 2 {
            assert!(Instant::now() < deadline, "pool never refilled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(infra.list().await.expect("list").len(), 1);
        infra.kill_all().await.expect("kill all");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    }))
    .await;
    env.cleanup(Some(&infra)).await;
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// Every file and directory under `dir` on `dir`'s own file system (no mount below is entered).
fn files_on_the_same_fs(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).expect("stat").dev();
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                todo.push(e.path());
            }
            out.insert(e.path());
        }
    }
    out
}

/// A sandbox makes three entries in the data dir's file system: its directory, its disk's
/// image and its log. Everything else it needs (bundle, boot id, libcontainer's state, the
/// mount points of its disk and root) is on the run tmpfs, which a restart keeps, with the
/// state of the sandboxes it adopts, and which a stop with no sandbox left unmounts. (Each
/// inode made and freed on a host's ext4 without a journal made every later allocation dearer;
/// see `paddock_embedded::rundir`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_keeps_only_its_disk_image_and_log_in_the_data_dir() {
    if support::skip_unless_root() {
        return;
    }
    let env = std::sync::Arc::new(support::Env::new(24));
    let data = env.dir.path().to_owned();
    let first = env.start().await;
    let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        // The first create also makes what every later one shares (the blank disk image).
        let warm = first.create(req()).await.expect("create");
        first.kill(&warm.id).await.expect("kill");
        let before = files_on_the_same_fs(&data);
        let s = first.create(req()).await.expect("create");
        let made: Vec<_> = files_on_the_same_fs(&data)
            .difference(&before)
            .cloned()
            .collect();
        let dir = data.join("sandboxes").join(s.id.as_str());
        assert_eq!(
            made,
            vec![dir.clone(), dir.join("disk.img"), dir.join("runtime.log")],
            "made in the data dir"
        );
        let run = paddock_embedded::rundir::path(&data);
        for p in [
            env.run_dir(&s.id).join("bundle/config.json"),
            env.run_dir(&s.id).join("boot_id"),
            paddock_embedded::rundir::containers(&data)
                .join(s.id.as_str())
                .join("state.json"),
        ] {
            assert!(p.starts_with(&run) && p.exists(), "{}", p.display());
            let fs = nix::sys::statfs::statfs(&p).expect("statfs");
            assert_eq!(
                fs.filesystem_type(),
                nix::sys::statfs::TMPFS_MAGIC,
                "{}",
                p.display()
            );
        }

        // A restart keeps the tmpfs and what is in it: the adopted sandbox's container is
        // found there.
        first.shutdown();
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(20);
        let second = loop {
            match EmbeddedInfra::start(env.cfg.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("restart: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let out = second
            .exec(&s.id, &["/bin/cat", "/proc/sys/kernel/hostname"])
            .await
            .expect("exec in the adopted sandbox");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), s.id.as_str());

        // A stop with no sandbox left: nothing of Paddock's stays mounted in the data dir.
        second.kill_all().await.expect("kill all");
        assert!(
            !paddock_embedded::mounts::is_mount_point(&run),
            "the run tmpfs outlived the last sandbox"
        );
        assert_eq!(
            paddock_embedded::mounts::mounts_under(&data),
            Vec::<std::path::PathBuf>::new()
        );
        assert_eq!(env.leaks().await, Vec::<String>::new());
        second
    }))
    .await;
    let infra = r.as_ref().ok().cloned();
    env.cleanup(infra.as_ref()).await;
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// On cgroup v1 a sandbox's cpuset comes from its base, copied by the kernel when the
/// sandbox's directory is made (`cgroup.clone_children` on the base), not written by the
/// runtime in every create: such a write checks every sibling and rebuilds the scheduler's
/// domains, a cost that grew with the sandboxes running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_cpusets_are_cloned_from_their_base() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(39, |infra, env| async move {
        let h = paddock_cgroups::Hierarchy::detect(&env.cfg.cgroup_parent).expect("cgroups");
        let mount = h.root().join("cpuset");
        if h.version() != paddock_cgroups::Version::V1 || !mount.join("cpuset.cpus").is_file() {
            eprintln!("skipped: no cgroup v1 cpuset hierarchy on this host");
            return;
        }
        let base = mount.join(h.base());
        let s = infra.create(req()).await.expect("create");
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .trim()
                .to_owned()
        };
        let clone = read(base.join(paddock_cgroups::CLONE_CHILDREN));
        let (cpus, mems) = (
            read(base.join("cpuset.cpus")),
            read(base.join("cpuset.mems")),
        );
        let own = base.join(s.id.as_str());
        let (own_cpus, own_mems) = (read(own.join("cpuset.cpus")), read(own.join("cpuset.mems")));
        let (code, _, err) = support::sh(&infra, &s.id, "true").await;
        infra.kill(&s.id).await.expect("kill");
        assert_eq!(clone, "1", "{}", base.display());
        assert!(
            !cpus.is_empty() && !mems.is_empty(),
            "base cpuset: {cpus:?} {mems:?}"
        );
        assert_eq!((own_cpus, own_mems), (cpus, mems), "the sandbox's cpuset");
        assert_eq!(code, 0, "{err}");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// An idle sandbox's processes are one thread each (init, the runtime, the log relay): the
/// runtime's blocking pool ends its threads after 10 s without work, and nothing else in it
/// keeps a thread. Every thread on the host lengthens the walk the kernel makes over all of
/// them in each new sandbox's `pivot_root`, and costs its stacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_runs_one_thread_per_process() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(25, |infra, env| async move {
        let s = infra.create(req()).await.expect("create");
        // Some work first: a command (which starts blocking-pool threads) and sudo.
        let (code, out, err) = support::sh(&infra, &s.id, "sudo -n true && echo ran").await;
        assert_eq!((code, out.trim()), (0, "ran"), "{err}");
        let cgroup = paddock_cgroups::Hierarchy::detect(&env.cfg.cgroup_parent)
            .expect("cgroups")
            .sandbox(s.id.as_str());
        let threads = || -> Vec<(i32, String, usize)> {
            let pids = cgroup.pids().expect("the sandbox's processes");
            pids.into_iter()
                .filter_map(|pid| {
                    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                    let field = |k: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(k))
                            .map(|v| v.trim().to_owned())
                    };
                    Some((pid, field("Name:")?, field("Threads:")?.parse().ok()?))
                })
                .collect()
        };
        let mut seen = threads();
        for _ in 0..120 {
            if seen.len() >= 3 && seen.iter().all(|(_, _, n)| *n == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            seen = threads();
        }
        infra.kill(&s.id).await.expect("kill");
        assert!(seen.len() >= 3, "init, runtime and log relay: {seen:?}");
        assert!(
            seen.iter().all(|(_, _, n)| *n == 1),
            "threads per process after a minute idle: {seen:?}"
        );
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// The runtime says it listens on a pipe the sandbox's init gets as descriptor 3 (see
/// `paddock_contract::ready`), instead of being probed every few milliseconds. Only the init
/// keeps its end: the runtime (whose commands would inherit it) closed its copy once it had
/// spoken, the log relay never had one, and the host closed its read end once it heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_says_it_listens_on_a_pipe_only_the_init_keeps() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(28, |infra, env| async move {
        if env.cfg.runtime_binary.ends_with("paddock-runtime-standin") {
            eprintln!("skipped: the runtime is the stand-in (no paddock-runtime built)");
            return;
        }
        let s = infra.create(req()).await.expect("create");
        let cgroup = paddock_cgroups::Hierarchy::detect(&env.cfg.cgroup_parent)
            .expect("cgroups")
            .sandbox(s.id.as_str());
        let fds = |pid: &str| -> Vec<(String, String)> {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| {
                            let to = std::fs::read_link(e.path()).ok()?;
                            Some((
                                e.file_name().to_string_lossy().into_owned(),
                                to.to_string_lossy().into_owned(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        /// A process of the sandbox: pid, command line, and where each descriptor leads.
        #[derive(Debug)]
        struct Proc {
            pid: String,
            cmd: String,
            fds: Vec<(String, String)>,
        }
        let procs: Vec<Proc> = cgroup
            .pids()
            .expect("the sandbox's processes")
            .into_iter()
            .map(|pid| {
                let pid = pid.to_string();
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                let fds = fds(&pid);
                Proc { pid, cmd, fds }
            })
            .collect();
        let ours = fds("self");
        infra.kill(&s.id).await.expect("kill");

        let init = procs
            .iter()
            .find(|p| p.cmd.starts_with("/.paddock/init "))
            .unwrap_or_else(|| panic!("the sandbox's init among {procs:?}"));
        let pipe = init
            .fds
            .iter()
            .find(|(n, _)| n == "3")
            .map(|(_, to)| to.clone())
            .unwrap_or_else(|| panic!("the init has no descriptor 3: {init:?}"));
        assert!(
            pipe.starts_with("pipe:"),
            "descriptor 3 of the init: {pipe}"
        );
        for p in procs.iter().filter(|p| p.pid != init.pid) {
            assert!(
                p.fds.iter().all(|(_, to)| to != &pipe),
                "{} ({}) holds the readiness pipe {pipe}: {:?}",
                p.pid,
                p.cmd,
                p.fds
            );
        }
        assert!(
            procs
                .iter()
                .any(|p| p.cmd.starts_with("/.paddock/paddock-runtime")),
            "the runtime among {procs:?}"
        );
        assert!(
            ours.iter().all(|(_, to)| to != &pipe),
            "the host kept its end of {pipe}"
        );
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// A sandbox's log relay runs the relay's own small binary when it is beside the runtime
/// binary (as a build of the `paddock-runtime` package puts it): a relay of the runtime
/// binary kept its own ~296 KiB copy of the runtime's relocated pointer tables for the
/// sandbox's whole life. The sandbox's output still reaches its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_relay_runs_its_own_binary_beside_the_runtime() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(26, |infra, env| async move {
        if env.cfg.runtime_binary.ends_with("paddock-runtime-standin") {
            eprintln!("skipped: the runtime is the stand-in (no paddock-runtime built)");
            return;
        }
        let own = env
            .cfg
            .runtime_binary
            .with_file_name(paddock_embedded::logrelay::RELAY_BINARY);
        assert!(
            own.is_file(),
            "{} is built with the runtime (cargo build -p paddock-runtime)",
            own.display()
        );
        assert_eq!(env.cfg.relay_binary, own);
        let s = infra.create(req()).await.expect("create");
        let sandbox_dir = env.dir.path().join("sandboxes").join(s.id.as_str());
        let relays = support::relays_under(&sandbox_dir);
        assert_eq!(relays.len(), 1, "the sandbox's log relay: {relays:?}");
        let relay = relays[0].split(' ').next().expect("pid").to_owned();
        let exe = std::fs::read_link(format!("/proc/{relay}/exe")).expect("its binary");
        let log = sandbox_dir.join("runtime.log");
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        infra.kill(&s.id).await.expect("kill");
        assert_eq!(exe, own.canonicalize().expect("canonical"), "relay {relay}");
        assert!(!logged.is_empty(), "nothing reached {}", log.display());
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// A sandbox boots with its default user ready-made (the template's user layer): the runtime
/// finds the user and copies none of the account files up into the sandbox's disk; the user
/// has its home, its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_user_comes_with_the_template_not_with_each_boot() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(27, |infra, env| async move {
        let s = infra.create(req()).await.expect("create");
        let user = paddock_contract::DEFAULT_USER;
        let (code, out, err) = support::sh(
            &infra,
            &s.id,
            &format!("id -nu {user} && stat -c '%U %a' /home/{user}"),
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("{user}\n{user} 750\n"));
        let upper = env.run_dir(&s.id).join("disk/upper");
        assert!(upper.is_dir(), "{}", upper.display());
        for file in ["etc/passwd", "etc/group", "etc/shadow"] {
            assert!(
                !upper.join(file).exists(),
                "{file} was copied up into the sandbox's disk"
            );
        }
        infra.kill(&s.id).await.expect("kill");
    })
    .await;
}
