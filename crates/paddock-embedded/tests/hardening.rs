//! Root-only tests of the security review's container findings (C1, H1, M5, L5), each run as
//! sandbox root against the real kernel.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use support::sh;

use paddock_infra::{CreateSandbox, Infra};

fn base() -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        ..Default::default()
    }
}

/// `maj:min` of the block device holding the host's root file system (from our mountinfo), or
/// of the first disk the kernel lists when `/` is on a virtual file system.
fn host_root_disk() -> (u32, u32) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let parse = |s: &str| -> Option<(u32, u32)> {
        let (a, b) = s.split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    if let Some(dev) = info
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .and_then(|f| parse(f[2]))
        .filter(|(major, _)| *major != 0)
    {
        return dev;
    }
    std::fs::read_dir("/sys/dev/block")
        .expect("/sys/dev/block")
        .flatten()
        .filter_map(|e| parse(&e.file_name().to_string_lossy()))
        .find(|(major, _)| *major != 7)
        .expect("a block device")
}

/// Security review C1: sandbox root can make a node for the host's disk (CAP_MKNOD) but the
/// device policy refuses to open it, while the allowed nodes and PTYs still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_host_block_devices_cannot_be_opened() {
    let (major, minor) = host_root_disk();
    support::with_infra(30, move |infra, env| async move {
        let sbx = infra.create(base()).await.expect("create");
        // /dev is the one place without `nodev`: only the device policy stands in the way.
        let script = format!(
            r#"
import os, stat
def try_open(path, kind, major, minor):
    try:
        os.mknod(path, 0o600 | kind, os.makedev(major, minor))
    except OSError as e:
        return "mknod errno %d" % e.errno
    try:
        fd = os.open(path, os.O_RDONLY)
        n = len(os.read(fd, 512))
        return "read %d" % n
    except OSError as e:
        return "errno %d" % e.errno
print("disk", try_open("/dev/hostdisk", stat.S_IFBLK, {major}, {minor}))
print("mem", try_open("/dev/hostmem", stat.S_IFCHR, 1, 1))
print("kmsg", try_open("/dev/hostkmsg", stat.S_IFCHR, 1, 11))
print("rootfs", try_open("/root/hostdisk", stat.S_IFBLK, {major}, {minor}))
"#
        );
        let (code, out, err) = sh(&infra, &sbx.id, &format!("python3 -c '{script}'")).await;
        assert_eq!(code, 0, "{out}{err}");
        for dev in ["disk", "mem", "kmsg"] {
            let line = out.lines().find(|l| l.starts_with(dev)).expect(dev);
            assert!(
                line.ends_with("errno 1"),
                "{dev} ({major}:{minor} for the disk) must be refused with EPERM: {out}"
            );
        }
        let rootfs = out.lines().find(|l| l.starts_with("rootfs")).expect("rootfs");
        assert!(rootfs.contains("errno"), "a node on the root must not open: {out}");

        // What a sandbox needs still works: the memory devices and pseudo-terminals.
        let (code, out, err) = sh(
            &infra,
            &sbx.id,
            "echo x > /dev/null && head -c 16 /dev/urandom | wc -c && head -c 4 /dev/zero | wc -c \
             && python3 -c 'import os; m, s = os.openpty(); os.write(s, b\"pty\\n\"); print(os.read(m, 16))'",
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["16", "4", "b'pty\\r\\n'"],
            "{err}"
        );
        infra.kill(&sbx.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// Security review H1: a setuid program that sandbox root plants cannot be run by a host user,
/// even when the data dir was left 0755; the sandbox's root is mounted nosuid,nodev.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_host_users_cannot_run_setuid_files_a_sandbox_planted() {
    let env = std::sync::Arc::new(support::Env::new(31));
    // As an older Paddock, or `mkdir` under umask 022, would have left it.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let infra = env.start().await;
    let test = async {
        let sbx = infra.create(base()).await.expect("create");
        let (code, _, err) = sh(
            &infra,
            &sbx.id,
            "cp /usr/bin/id /usr/local/bin/s && chmod 4755 /usr/local/bin/s",
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let data = env.dir.path();
        for dir in [
            data.to_owned(),
            data.join("sandboxes"),
            data.join("containers"),
        ] {
            let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        let rootfs = data.join("sandboxes").join(sbx.id.as_str()).join("rootfs");
        let planted = rootfs.join("usr/local/bin/s");
        // The host user `nobody` tries it, by the rootfs and by the writable layer.
        for path in [
            planted.clone(),
            data.join("sandboxes")
                .join(sbx.id.as_str())
                .join("disk/upper/usr/local/bin/s"),
        ] {
            let r = std::process::Command::new(&path)
                .uid(65534)
                .gid(65534)
                .output();
            match r {
                Err(e) => assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied,
                    "{}: {e}",
                    path.display()
                ),
                Ok(out) => panic!(
                    "nobody ran {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stdout)
                ),
            }
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(rootfs.to_str().expect("utf-8")))
            .expect("rootfs mounted");
        let opts: Vec<&str> = line
            .split(' ')
            .nth(5)
            .expect("options")
            .split(',')
            .collect();
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{line}"
        );
        infra.kill(&sbx.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    };
    let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(test)).await;
    env.cleanup(Some(&infra)).await;
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// What `tests/support/probe.py` reports from inside a sandbox, where it runs in place of the
/// runtime: as a child of the sandbox's init, like every process a user starts, so with the
/// sandbox's seccomp filter and limits. (`infra.exec` cannot check those: libcontainer's exec
/// path installs neither.)
async fn probe(n: u8) -> Vec<(String, i64)> {
    let mut env = support::Env::new(n);
    env.cfg.runtime_binary =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/probe.py");
    let env = std::sync::Arc::new(env);
    let infra = env.start().await;
    let test = async {
        let sbx = infra.create(base()).await.expect("create");
        let (code, out, err) = sh(&infra, &sbx.id, "cat /tmp/probe.txt").await;
        assert_eq!(code, 0, "{err}");
        infra.kill(&sbx.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
        out
    };
    let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(test)).await;
    env.cleanup(Some(&infra)).await;
    let out = r.unwrap_or_else(|p| std::panic::resume_unwind(p));
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn value(report: &[(String, i64)], key: &str) -> i64 {
    report
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("{key} missing from {report:?}"))
}

/// Security review M5: io_uring, the mount calls, namespaces, vsock sockets and system calls
/// newer than the profile are refused for sandbox root; threads and child processes still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m5_io_uring_new_syscalls_and_vsock_are_refused() {
    let report = probe(32).await;
    assert_eq!(value(&report, "euid"), 0, "the probe runs as sandbox root");
    for name in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "open_tree",
        "move_mount",
        "fsopen",
        "fsmount",
        "mount_setattr",
        "unshare",
    ] {
        assert_eq!(
            value(&report, name),
            1,
            "{name} must fail with EPERM: {report:?}"
        );
    }
    // Newer than the profile, and vsock sockets: the default answer (ENOSYS), or EPERM where
    // libseccomp knows the name.
    for name in ["listmount", "open_tree_attr", "vsock"] {
        assert!(
            [1, 38].contains(&value(&report, name)),
            "{name} was not refused: {report:?}"
        );
    }
    assert_eq!(value(&report, "thread"), 0, "{report:?}");
    assert_eq!(value(&report, "child"), 0, "{report:?}");
}

/// Security review L5: a sandbox's open-file limit is fixed (not Paddock's own hard limit) and
/// core dumps are off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l5_file_and_core_limits_are_fixed() {
    let report = probe(33).await;
    let own_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit")
        .1;
    let hard = paddock_embedded::spec::NOFILE_HARD.min(own_hard);
    let soft = paddock_embedded::spec::NOFILE_SOFT.min(hard);
    assert_eq!(value(&report, "nofile_soft"), soft as i64, "{report:?}");
    assert_eq!(value(&report, "nofile_hard"), hard as i64, "{report:?}");
    assert_eq!(value(&report, "core_soft"), 0, "{report:?}");
    assert_eq!(value(&report, "core_hard"), 0, "{report:?}");
}
