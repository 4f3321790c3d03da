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
        let rootfs = out
            .lines()
            .find(|l| l.starts_with("rootfs"))
            .expect("rootfs");
        assert!(
            rootfs.contains("errno"),
            "a node on the root must not open: {out}"
        );

        // What a sandbox needs still works: the memory devices and pseudo-terminals.
        // The pty hands the echoed line to its master side asynchronously, so one read may see
        // only part of it: read until the line's end.
        let (code, out, err) = sh(
            &infra,
            &sbx.id,
            "echo x > /dev/null && head -c 16 /dev/urandom | wc -c && head -c 4 /dev/zero | wc -c \
             && python3 -c 'import os; m, s = os.openpty(); os.write(s, b\"pty\\n\"); \
             b = b\"\"\nwhile not b.endswith(b\"\\n\"): b += os.read(m, 16)\nprint(b)'",
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
        let rootfs = env.run_dir(&sbx.id).join("rootfs");
        let planted = rootfs.join("usr/local/bin/s");
        // The host user `nobody` tries it, by the rootfs and by the writable layer.
        for path in [
            planted.clone(),
            env.run_dir(&sbx.id).join("disk/upper/usr/local/bin/s"),
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
        for dir in [
            data.to_owned(),
            data.join("sandboxes"),
            data.join("run"),
            data.join("run/sandboxes"),
            data.join("run/containers"),
        ] {
            let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", dir.display());
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

/// The seccomp profile is compiled once, at start, into the data dir, and each sandbox's init
/// installs that program before it execs tini. Fail closed: a program that is damaged or gone
/// stops sandboxes from starting (none runs without the filter), and leaves nothing behind;
/// the same create succeeds once the program is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_without_its_seccomp_program_does_not_start() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(34, |infra, env| async move {
        let programs: Vec<std::path::PathBuf> = std::fs::read_dir(env.dir.path())
            .expect("data dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("seccomp-") && name.ends_with(".bpf")
            })
            .collect();
        assert_eq!(programs.len(), 1, "one compiled program: {programs:?}");
        let program = &programs[0];
        let good = std::fs::read(program).expect("read program");
        // One instruction changed: still a program the kernel would take, and a weaker one
        // (its first return answers "allow").
        let mut damaged = good.clone();
        let last = damaged.len() - 8;
        damaged[last + 4..].copy_from_slice(&0x7fff_0000u32.to_ne_bytes());
        for (what, content) in [("damaged", Some(damaged)), ("missing", None)] {
            match content {
                Some(c) => std::fs::write(program, c).expect("write"),
                None => std::fs::remove_file(program).expect("remove"),
            }
            let e = infra.create(base()).await.expect_err(what);
            assert!(e.to_string().contains("seccomp program"), "{what}: {e}");
            assert!(infra.list().await.expect("list").is_empty(), "{what}");
            assert_eq!(env.leaks().await, Vec::<String>::new(), "{what}");
        }
        std::fs::write(program, &good).expect("restore");
        let sbx = infra
            .create(base())
            .await
            .expect("create with the program back");
        let (code, out, err) = sh(&infra, &sbx.id, "grep Seccomp /proc/1/status").await;
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("Seccomp:\t2") && out.contains("Seccomp_filters:\t1"),
            "{out}"
        );
        infra.kill(&sbx.id).await.expect("kill");
    })
    .await;
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

/// A cgroup2 hierarchy: the host's (`/sys/fs/cgroup` or a hybrid layout's `unified`), else one
/// mounted for the test. `None` with the reason when the kernel offers none.
fn cgroup2_root() -> Result<std::path::PathBuf, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-");
        if dash.and_then(|d| fields.get(d + 1)) == Some(&"cgroup2") {
            return Ok(fields[4].into());
        }
    }
    let dir = std::path::PathBuf::from("/run/paddock-test-cgroup2");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    nix::mount::mount(
        Some("cgroup2"),
        &dir,
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("this kernel cannot mount cgroup2: {e}"))?;
    Ok(dir)
}

/// Opens `node` in a child moved into cgroup `cg` first (or left where it is): "ok" or the
/// error number.
fn open_in(cg: Option<&std::path::Path>, node: &std::path::Path) -> String {
    let join = cg
        .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
        .unwrap_or_default();
    let script = format!(
        "{join}exec python3 -c 'import os\ntry:\n    os.close(os.open(\"{}\", os.O_RDONLY | os.O_NONBLOCK)); print(\"ok\")\nexcept OSError as e:\n    print(e.errno)'",
        node.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Attaches the device program for `rules` to cgroup `cg` as libcontainer does on a v2 host.
/// libcgroups first raises RLIMIT_MEMLOCK to 128 MiB, which fails without CAP_SYS_RESOURCE
/// when the hard limit is lower (as on the project's VMs; kernels since 5.11 do not need it):
/// then the same program is built, loaded and attached by hand.
fn attach_device_program(
    cg: &std::path::Path,
    rules: Vec<libcontainer::oci_spec::runtime::LinuxDeviceCgroup>,
) -> Result<(), String> {
    use libcgroups::v2::devices::{bpf::BpfError, controller::DevicesControllerError};
    match libcgroups::v2::devices::Devices::apply_devices(cg, &Some(rules.clone())) {
        Err(DevicesControllerError::Bpf(BpfError::FailedToIncreaseRLimit)) => {
            eprintln!("libcgroups cannot raise RLIMIT_MEMLOCK here; attaching by hand");
        }
        other => return other.map_err(|e| e.to_string()),
    }
    let mut emulator = libcgroups::v2::devices::emulator::Emulator::with_default_allow(false);
    emulator.add_rules(&rules);
    let prog = libcgroups::v2::devices::program::Program::from_rules(
        &emulator.rules,
        emulator.default_allow,
    )
    .map_err(|e| e.to_string())?;
    let prog_fd = libcgroups::v2::devices::bpf::prog::load("Apache", prog.bytecodes())
        .map_err(|e| e.to_string())?;
    let dir = std::fs::File::open(cg).map_err(|e| e.to_string())?;
    let r =
        libcgroups::v2::devices::bpf::prog::attach(prog_fd, std::os::fd::AsRawFd::as_raw_fd(&dir))
            .map_err(|e| e.to_string());
    // The attachment holds the program; our descriptor can go.
    let _ = nix::unistd::close(prog_fd);
    r
}

/// Security review C1 on cgroup v2: the spec's device rules, turned into the eBPF device
/// program libcontainer attaches on a v2 host, refuse a device the list leaves out and still
/// allow `/dev/null`. Runs in the host's cgroup2 hierarchy (a hybrid host has one too).
#[test]
fn c1_v2_device_program_refuses_unlisted_devices() {
    let root = match cgroup2_root() {
        Ok(r) => r,
        Err(why) => {
            eprintln!("skipped: no cgroup2 hierarchy: {why}");
            return;
        }
    };
    let nodes = tempfile::Builder::new()
        .prefix("paddock-devtest")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let (loop0, null) = (nodes.path().join("loop0"), nodes.path().join("null"));
    for (path, kind, dev) in [
        (
            &loop0,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::makedev(7, 0),
        ),
        (
            &null,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::makedev(1, 3),
        ),
    ] {
        nix::sys::stat::mknod(
            path,
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            dev,
        )
        .expect("mknod");
    }
    // Control: outside the test cgroup both open, so a refusal below is the program's doing.
    assert_eq!(open_in(None, &loop0), "ok", "loop0 must open on the host");
    assert_eq!(open_in(None, &null), "ok");

    let env = std::collections::BTreeMap::new();
    let spec = paddock_embedded::spec::build(&paddock_embedded::spec::SpecInput {
        hostname: "devtest",
        rootfs: std::path::Path::new("/"),
        cgroup_path: std::path::Path::new("/devtest"),
        init_binary: std::path::Path::new("/bin/true"),
        runtime_binary: std::path::Path::new("/bin/true"),
        runtime_args: &[],
        env: &env,
        user: (0, 0),
        resolv_conf: None,
        tmp_bytes: 1 << 20,
        boot_id: None,
        userns: None,
        seccomp: support::seccomp_program(),
    });
    let rules: Vec<libcontainer::oci_spec::runtime::LinuxDeviceCgroup> =
        serde_json::from_value(spec["linux"]["resources"]["devices"].clone())
            .expect("device rules");
    let cg = root.join(format!("paddock-devtest-{}", std::process::id()));
    std::fs::create_dir(&cg).expect("create test cgroup");
    let applied = attach_device_program(&cg, rules);
    let results = applied
        .as_ref()
        .ok()
        .map(|()| (open_in(Some(&cg), &loop0), open_in(Some(&cg), &null)));
    // The children have exited: the cgroup is empty and goes, its program with it.
    std::fs::remove_dir(&cg).expect("remove test cgroup");
    applied.expect("attach the device program");
    let (loop_result, null_result) = results.expect("results");
    assert_eq!(
        loop_result, "1",
        "a block device must be refused with EPERM"
    );
    assert_eq!(null_result, "ok", "/dev/null must stay usable");
}

/// The mount source of a `/proc/<pid>/mountinfo` line (the field after the file system type).
fn mount_source(line: &str) -> Option<&str> {
    line.split(" - ").nth(1).and_then(|t| t.split(' ').nth(1))
}

/// Of the run tmpfs (every sandbox's bundle, boot id, container state and mount points) a
/// sandbox sees one file: its own boot id, bound read-only where the kernel's is. No other
/// part of it is in the sandbox's mount namespace, and its path leads nowhere inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_tmpfs_is_not_in_a_sandbox() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(35, |infra, env| async move {
        let sbx = infra.create(base()).await.expect("create");
        let run = paddock_embedded::rundir::path(env.dir.path());
        let host = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            host.lines()
                .any(|l| mount_source(l) == Some("paddock-run")
                    && l.contains(&*run.to_string_lossy())),
            "the host has no run tmpfs at {} to look for",
            run.display()
        );
        let script = format!(
            "cat /proc/self/mountinfo; echo ---; ls -d {} 2>&1 || true",
            run.display()
        );
        let (code, out, err) = sh(&infra, &sbx.id, &script).await;
        assert_eq!(code, 0, "{err}");
        let (inside, ls) = out.split_once("---\n").expect("both parts");
        assert!(inside.lines().count() > 3, "{inside}");
        let own_boot_id = format!("/sandboxes/{}/boot_id", sbx.id.as_str());
        let of_run: Vec<&str> = inside
            .lines()
            .filter(|l| mount_source(l) == Some("paddock-run"))
            .collect();
        // (Once per `/proc` the sandbox has mounted.)
        assert!(!of_run.is_empty(), "no boot id bound: {inside}");
        for line in of_run {
            // Fields: id, parent, dev, root in its file system, mount point, options.
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(
                (f[3], f[4]),
                (own_boot_id.as_str(), "/proc/sys/kernel/random/boot_id"),
                "{line}"
            );
            assert!(f[5].split(',').any(|o| o == "ro"), "{line}");
        }
        assert!(ls.contains("No such file"), "{ls}");
        infra.kill(&sbx.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}
