//! The OCI runtime spec of a sandbox: namespaces, mounts, capabilities, seccomp, masked paths.
//!
//! Built as `config.json` text and parsed back with `oci-spec`, so what we hand the runtime is
//! exactly the documented OCI format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Where the init binary is mounted inside every sandbox.
pub const INIT_PATH: &str = "/.paddock/init";
/// Where the runtime binary is mounted inside every sandbox.
pub const RUNTIME_PATH: &str = "/.paddock/paddock-runtime";
/// Port the runtime listens on.
pub use paddock_contract::RUNTIME_PORT;

/// Inputs of [`build`].
#[derive(Debug)]
pub struct SpecInput<'a> {
    /// Sandbox id, used as hostname.
    pub hostname: &'a str,
    /// The overlay mount that becomes `/`.
    pub rootfs: &'a Path,
    /// `linux.cgroupsPath`.
    pub cgroup_path: &'a Path,
    /// Static init binary on the host (tini).
    pub init_binary: &'a Path,
    /// Static runtime binary on the host.
    pub runtime_binary: &'a Path,
    /// Extra arguments for the runtime.
    pub runtime_args: &'a [String],
    /// Environment of the runtime.
    pub env: &'a BTreeMap<String, String>,
    /// `(uid, gid)` of the runtime.
    pub user: (u32, u32),
    /// File bind-mounted read-only as `/etc/resolv.conf`, if any.
    pub resolv_conf: Option<&'a Path>,
    /// Size of the `/tmp` tmpfs in bytes (charged to the sandbox's memory cgroup).
    pub tmp_bytes: u64,
}

/// The capability set of Docker's default, nothing more.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// System calls refused with EPERM: the ones the Docker default profile leaves out of its
/// allow-list on x86_64 (kernel modules, clocks, keyrings, mounts, namespaces, BPF, perf,
/// kexec, swap, quotas, accounting, ...). Everything else is allowed, as in that profile.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// `clone` flags that create namespaces; a `clone` with any of them is refused.
const NAMESPACE_CLONE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

fn seccomp() -> Value {
    let mut syscalls = vec![
        json!({ "names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }),
        // clone3 hides its flags behind a pointer that seccomp cannot read: answer ENOSYS so
        // libc falls back to clone, whose flags are checked below.
        json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }),
    ];
    for flag in NAMESPACE_CLONE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{ "index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}

/// The sandbox's OCI spec as `config.json` JSON.
pub fn build(input: &SpecInput<'_>) -> Value {
    let caps = DEFAULT_CAPS;
    // Raising a hard limit needs CAP_SYS_RESOURCE, which Paddock may not have (it does not on
    // the project's VMs): give the sandbox our own hard limit, as high as we may go.
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/root".into(),
        "LANG=C.UTF-8".into(),
    ];
    env.extend(input.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut args = vec![INIT_PATH.to_string(), "--".into(), RUNTIME_PATH.into()];
    args.extend(input.runtime_args.iter().cloned());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={}", input.tmp_bytes)]}),
        json!({"destination": INIT_PATH, "type": "bind", "source": input.init_binary, "options": ["rbind", "ro", "nosuid", "nodev"]}),
        json!({"destination": RUNTIME_PATH, "type": "bind", "source": input.runtime_binary, "options": ["rbind", "ro", "nosuid", "nodev"]}),
    ];
    if let Some(resolv) = input.resolv_conf {
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": resolv, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    json!({
        "ociVersion": "1.0.2",
        "hostname": input.hostname,
        "root": { "path": input.rootfs, "readonly": false },
        "process": {
            "terminal": false,
            "user": { "uid": input.user.0, "gid": input.user.1 },
            "args": args,
            "env": env,
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile }],
        },
        "mounts": mounts,
        "linux": {
            "cgroupsPath": input.cgroup_path,
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"},
            ],
            "seccomp": seccomp(),
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

/// Writes `config.json` into `bundle`, checking it parses as an OCI spec.
pub fn write(bundle: &Path, spec: &Value) -> std::io::Result<PathBuf> {
    let text = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    let _: oci_spec::runtime::Spec =
        serde_json::from_slice(&text).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(bundle)?;
    let path = bundle.join("config.json");
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(env: &'a BTreeMap<String, String>) -> SpecInput<'a> {
        SpecInput {
            hostname: "sbx1",
            rootfs: Path::new("/data/sbx1/rootfs"),
            cgroup_path: Path::new("/own/paddock/sbx1"),
            init_binary: Path::new("/usr/bin/tini-static"),
            runtime_binary: Path::new("/opt/paddock-runtime"),
            runtime_args: &[],
            env,
            user: (0, 0),
            resolv_conf: None,
            tmp_bytes: 1 << 20,
        }
    }

    #[test]
    fn spec_parses_and_carries_the_isolation_settings() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let v = build(&input(&env));
        let d = tempfile::tempdir().expect("tempdir");
        let path = write(d.path(), &v).expect("write");
        let spec = oci_spec::runtime::Spec::load(path).expect("parses");
        assert_eq!(spec.hostname().as_deref(), Some("sbx1"));
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.no_new_privileges(), Some(true));
        assert!(
            process
                .env()
                .as_ref()
                .expect("env")
                .contains(&"A=1".to_string())
        );
        assert_eq!(process.args().as_ref().expect("args")[0], INIT_PATH);
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(linux.namespaces().as_ref().expect("ns").len(), 6);
        let seccomp = linux.seccomp().as_ref().expect("seccomp");
        let denied: Vec<&String> = seccomp
            .syscalls()
            .as_ref()
            .expect("rules")
            .iter()
            .flat_map(|r| r.names())
            .collect();
        for must in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "kexec_load",
            "init_module",
            "clone3",
        ] {
            assert!(denied.iter().any(|n| *n == must), "{must} not denied");
        }
        let caps = process.capabilities().as_ref().expect("caps");
        assert_eq!(
            caps.bounding().as_ref().expect("bounding").len(),
            DEFAULT_CAPS.len()
        );
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .expect("masked")
                .contains(&"/proc/kcore".to_string())
        );
    }
}
