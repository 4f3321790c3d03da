//! The OCI runtime spec of a sandbox: namespaces, mounts, capabilities, seccomp, masked paths.
//!
//! Built as `config.json` text and parsed back with `oci-spec`, so what we hand the runtime is
//! exactly the documented OCI format. The seccomp filter is the exception: the spec names the
//! profile compiled once ([`crate::seccomp::Program`], in the
//! [`crate::seccomp::PROGRAM_ANNOTATION`] annotation) instead of carrying `linux.seccomp`,
//! which libcontainer would compile again for every sandbox; the container helper refuses a
//! spec without it.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
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
    /// This boot's own `/proc/sys/kernel/random/boot_id`, if any.
    pub boot_id: Option<BootId<'a>>,
    /// Run in a user namespace mapping the sandbox's ids to this host range (`None`: sandbox
    /// root is host root).
    pub userns: Option<crate::userns::IdRange>,
    /// The compiled seccomp profile every process of the sandbox runs under.
    pub seccomp: &'a crate::seccomp::Program,
}

/// A file to show as `/proc/sys/kernel/random/boot_id` inside the sandbox. A container
/// otherwise shows the host's, the same on every boot of the sandbox. libcontainer refuses OCI
/// mounts under `/proc` (but a few), so a `createContainer` hook (see
/// [`paddock_contract::bootid`], run in the sandbox's mount namespace once `/proc` is
/// mounted, before `pivot_root`) binds it.
#[derive(Debug, Clone, Copy)]
pub struct BootId<'a> {
    /// The file holding this boot's id.
    pub file: &'a Path,
    /// The binary the hook executes: one that answers [`paddock_contract::bootid::BOOT_ID_ARGS`]
    /// (see [`crate::config::EmbeddedConfig::hook_binary`]).
    pub hook: &'a Path,
}

/// Where a user-namespaced sandbox's init finds the host paths its spec needs (see
/// [`Stage`]).
pub const STAGE_DIR: &str = "/run/paddock-userns";
/// The name under [`STAGE_DIR`] of a sandbox's root filesystem.
const STAGE_ROOTFS: &str = "root";
/// The spec annotation that lists a [`Stage`].
pub const STAGE_ANNOTATION: &str = "org.paddock.stage";

/// Host paths bound under [`STAGE_DIR`] for a user-namespaced sandbox: its root filesystem,
/// the bind mounts' sources and the hook's binary and file. The sandbox's init runs as an
/// unprivileged host uid and cannot walk the host's private directories (the 0700 data dir,
/// `/root`) to them, so the container helper binds each into a tmpfs of its own mount
/// namespace ([`Stage::mount_here`]) and the spec names those copies. Carried in the spec as
/// the [`STAGE_ANNOTATION`] annotation.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    /// `(host path, name under STAGE_DIR)`.
    pub binds: Vec<(PathBuf, String)>,
    /// The host uid (and gid) of the sandbox's root.
    pub root: u32,
}

impl Stage {
    /// Adds `host` as `name` and returns the staged path.
    fn add(&mut self, host: &Path, name: &str) -> PathBuf {
        self.binds.push((host.to_owned(), name.to_owned()));
        Path::new(STAGE_DIR).join(name)
    }

    /// The stage of a `config.json` text, if it has one.
    pub fn from_spec_json(text: &[u8]) -> std::io::Result<Option<Self>> {
        let v: Value = serde_json::from_slice(text).map_err(std::io::Error::other)?;
        match v["annotations"][STAGE_ANNOTATION].as_str() {
            None => Ok(None),
            Some(s) => serde_json::from_str(s)
                .map(Some)
                .map_err(std::io::Error::other),
        }
    }

    /// Makes the stage in a new mount namespace of this (single-threaded) process: a tmpfs
    /// on [`STAGE_DIR`] holding a bind of each path. Mounts made here never reach the host's
    /// namespace. `rootfs`, if given, is a detached mount of the root filesystem, attached in
    /// the stage instead of a bind of its host path (see [`crate::forkserver`]).
    pub fn mount_here(&self, rootfs: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(STAGE_DIR)?;
        crate::mounts::own_mount_namespace(MsFlags::MS_SLAVE)?;
        mount(
            Some("tmpfs"),
            STAGE_DIR,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=64k"),
        )?;
        for (host, name) in &self.binds {
            let target = Path::new(STAGE_DIR).join(name);
            if std::fs::metadata(host)?.is_dir() {
                std::fs::create_dir(&target)?;
            } else {
                std::fs::File::create(&target)?;
            }
            match rootfs {
                Some(tree) if name == STAGE_ROOTFS => crate::mounts::attach_tree(tree, &target)?,
                _ => mount(
                    Some(host.as_path()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?,
            }
        }
        Ok(())
    }
}

/// The `root.path` of a `config.json` text.
pub fn root_path_from_spec_json(text: &[u8]) -> std::io::Result<PathBuf> {
    let v: Value = serde_json::from_slice(text).map_err(std::io::Error::other)?;
    v["root"]["path"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| std::io::Error::other("config.json has no root.path"))
}

/// The sandbox-side path of the boot id.
pub const BOOT_ID_PATH: &str = paddock_contract::bootid::BOOT_ID_PATH;

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

/// Device rules of every sandbox (`linux.resources.devices`), applied by libcontainer through
/// the sandbox's devices cgroup on v1 and an eBPF device program on v2. The first rule refuses
/// every device; the rest re-allow runc's default set: the memory devices, the tty and the
/// pseudo-terminal multiplexer and its slaves. Without a rule a sandbox root with CAP_MKNOD can
/// make and open a node for the host's disk. (libcgroups appends its own defaults, the same
/// nodes plus `/dev/console`, `/dev/net/tun` and mknod-only `m` rights, which open nothing.)
pub const DEVICE_RULES: [DeviceRule; 9] = [
    DeviceRule::deny_all(),
    DeviceRule::char(1, Some(3)), // /dev/null
    DeviceRule::char(1, Some(5)), // /dev/zero
    DeviceRule::char(1, Some(7)), // /dev/full
    DeviceRule::char(1, Some(8)), // /dev/random
    DeviceRule::char(1, Some(9)), // /dev/urandom
    DeviceRule::char(5, Some(0)), // /dev/tty
    DeviceRule::char(5, Some(2)), // /dev/ptmx
    DeviceRule::char(136, None),  // /dev/pts/*
];

/// One entry of `linux.resources.devices`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow (true) or deny.
    pub allow: bool,
    /// `a` (all), `c` or `b`.
    pub kind: &'static str,
    /// Major number; `None` = any.
    pub major: Option<i64>,
    /// Minor number; `None` = any.
    pub minor: Option<i64>,
}

impl DeviceRule {
    /// Refuses read, write and mknod of every device.
    const fn deny_all() -> Self {
        Self {
            allow: false,
            kind: "a",
            major: None,
            minor: None,
        }
    }

    /// Allows read, write and mknod of a character device.
    const fn char(major: i64, minor: Option<i64>) -> Self {
        Self {
            allow: true,
            kind: "c",
            major: Some(major),
            minor,
        }
    }

    fn to_json(self) -> Value {
        let mut rule = json!({ "allow": self.allow, "type": self.kind, "access": "rwm" });
        if let Some(m) = self.major {
            rule["major"] = json!(m);
        }
        if let Some(m) = self.minor {
            rule["minor"] = json!(m);
        }
        rule
    }
}

fn device_rules() -> Vec<Value> {
    DEVICE_RULES.iter().map(|r| r.to_json()).collect()
}

/// Open files per process: 1024 soft, as Docker and containerd give containers (`select()`
/// users stay safe), and a fixed hard limit a process may raise its soft limit to. The hard
/// limit is not taken from Paddock's own (a host setting that may be huge): it is this value,
/// or Paddock's own hard limit when that is lower (raising a hard limit needs
/// CAP_SYS_RESOURCE, which Paddock may not have).
pub const NOFILE_SOFT: u64 = 1024;
/// See [`NOFILE_SOFT`]: the hard limit, systemd's and Docker's default.
pub const NOFILE_HARD: u64 = 524_288;

/// The `process.rlimits` of a sandbox: the file limits above, and no core dumps (a crashing
/// process must not write its memory to the sandbox's disk, nor feed a host-side
/// `core_pattern` handler).
fn rlimits() -> Value {
    let own_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(NOFILE_SOFT);
    let hard = NOFILE_HARD.min(own_hard);
    let soft = NOFILE_SOFT.min(hard);
    json!([
        { "type": "RLIMIT_NOFILE", "hard": hard, "soft": soft },
        { "type": "RLIMIT_CORE", "hard": 0, "soft": 0 },
    ])
}

/// The sandbox's OCI spec as `config.json` JSON.
pub fn build(input: &SpecInput<'_>) -> Value {
    let caps = DEFAULT_CAPS;
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/root".into(),
        "LANG=C.UTF-8".into(),
    ];
    env.extend(input.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut args = vec![INIT_PATH.to_string(), "--".into(), RUNTIME_PATH.into()];
    args.extend(input.runtime_args.iter().cloned());
    // With a user namespace every host path the init opens is a staged copy (see `Stage`).
    let mut stage = Stage {
        root: input.userns.map(|r| r.host_base).unwrap_or_default(),
        ..Stage::default()
    };
    let mut host = |p: &Path, name: &str| -> PathBuf {
        if input.userns.is_some() {
            stage.add(p, name)
        } else {
            p.to_owned()
        }
    };
    let rootfs = host(input.rootfs, STAGE_ROOTFS);
    let init_binary = host(input.init_binary, "init");
    let runtime_binary = host(input.runtime_binary, "runtime");
    let resolv_conf = input.resolv_conf.map(|r| host(r, "resolv.conf"));
    // The hook is usually the runtime binary, already staged: one bind less per boot.
    let boot_id = input.boot_id.map(|b| {
        let hook = if b.hook == input.runtime_binary {
            runtime_binary.clone()
        } else {
            host(b.hook, "hook")
        };
        (hook, host(b.file, "boot_id"))
    });
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={}", input.tmp_bytes)]}),
        json!({"destination": INIT_PATH, "type": "bind", "source": init_binary, "options": ["rbind", "ro", "nosuid", "nodev"]}),
        json!({"destination": RUNTIME_PATH, "type": "bind", "source": runtime_binary, "options": ["rbind", "ro", "nosuid", "nodev"]}),
    ];
    if let Some(resolv) = resolv_conf {
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": resolv, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    let hooks = match &boot_id {
        Some((hook, file)) => json!({ "createContainer": [{
            "path": hook,
            "args": [
                hook, paddock_contract::bootid::BOOT_ID_ARGS[0],
                paddock_contract::bootid::BOOT_ID_ARGS[1], file, rootfs,
            ],
        }]}),
        None => json!({}),
    };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    let mut v = json!({
        "ociVersion": "1.0.2",
        "hooks": hooks,
        "hostname": input.hostname,
        "root": { "path": rootfs, "readonly": false },
        "process": {
            "terminal": false,
            "user": { "uid": input.user.0, "gid": input.user.1 },
            "args": args,
            "env": env,
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "rlimits": rlimits(),
        },
        "mounts": mounts,
        "linux": {
            "cgroupsPath": input.cgroup_path,
            "namespaces": [],
            "resources": { "devices": device_rules() },
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
        "annotations": {
            crate::seccomp::PROGRAM_ANNOTATION: input.seccomp.to_annotation(),
        },
    });
    if let Some(range) = input.userns {
        // Made first by libcontainer, so it owns the other namespaces (sysfs needs the
        // network namespace owned by the user namespace mounting it).
        namespaces.push(json!({"type": "user"}));
        let map = json!([{ "containerID": 0, "hostID": range.host_base, "size": range.size }]);
        v["linux"]["uidMappings"] = map.clone();
        v["linux"]["gidMappings"] = map;
        let text = serde_json::to_string(&stage).unwrap_or_default();
        v["annotations"][STAGE_ANNOTATION] = json!(text);
    }
    v["linux"]["namespaces"] = json!(namespaces);
    v
}

/// Inputs of [`build_job`].
#[derive(Debug)]
pub struct JobInput<'a> {
    /// Hostname inside the container.
    pub hostname: &'a str,
    /// The directory (normally an overlay mount) that becomes `/`; the job writes into it.
    pub rootfs: &'a Path,
    /// `linux.cgroupsPath`.
    pub cgroup_path: &'a Path,
    /// Static init binary on the host (tini).
    pub init_binary: &'a Path,
    /// The command, run as root under the init.
    pub args: &'a [String],
    /// Extra environment.
    pub env: &'a BTreeMap<String, String>,
    /// File bind-mounted read-only as `/etc/resolv.conf`, if any.
    pub resolv_conf: Option<&'a Path>,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_bytes: u64,
    /// The compiled seccomp profile (the sandboxes').
    pub seccomp: &'a crate::seccomp::Program,
}

/// The OCI spec of a run-to-completion job (a template build step): a sandbox's spec — the
/// same namespaces, capabilities, seccomp profile, device rules, masked and read-only paths
/// — whose init runs `args` as root instead of the runtime, and without the runtime's mount.
pub fn build_job(input: &JobInput<'_>) -> Value {
    let mut v = build(&SpecInput {
        hostname: input.hostname,
        rootfs: input.rootfs,
        cgroup_path: input.cgroup_path,
        init_binary: input.init_binary,
        // Replaced below: a job has no runtime.
        runtime_binary: input.init_binary,
        runtime_args: &[],
        env: input.env,
        user: (0, 0),
        resolv_conf: input.resolv_conf,
        tmp_bytes: input.tmp_bytes,
        // A build step is not a boot of any sandbox.
        boot_id: None,
        // Build steps write the template's layers, which are stored in host ids.
        userns: None,
        seccomp: input.seccomp,
    });
    let mut args = vec![INIT_PATH.to_string(), "--".into()];
    args.extend(input.args.iter().cloned());
    v["process"]["args"] = json!(args);
    if let Some(mounts) = v["mounts"].as_array_mut() {
        mounts.retain(|m| m["destination"] != RUNTIME_PATH);
    }
    v
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

    static PROGRAM: std::sync::LazyLock<crate::seccomp::Program> =
        std::sync::LazyLock::new(|| crate::seccomp::Program {
            path: "/data/seccomp-0123456789abcdef.bpf".into(),
            sha256: "0123456789abcdef".repeat(4),
        });

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
            boot_id: None,
            userns: None,
            seccomp: &PROGRAM,
        }
    }

    /// The `createContainer` hooks of the spec built from `input`, written under `dir` and
    /// loaded back as a runtime would.
    fn create_container_hooks(dir: &Path, input: &SpecInput<'_>) -> Vec<oci_spec::runtime::Hook> {
        let path = write(dir, &build(input)).expect("write");
        let spec = oci_spec::runtime::Spec::load(path).expect("parses");
        spec.hooks()
            .as_ref()
            .and_then(|h| h.create_container().clone())
            .unwrap_or_default()
    }

    /// A boot id becomes one `createContainer` hook running the configured hook binary's
    /// boot-id command with the file and the rootfs; without one there is no hook.
    #[test]
    fn boot_id_is_bound_by_a_create_container_hook() {
        let env = BTreeMap::new();
        let d = tempfile::tempdir().expect("tempdir");
        assert!(create_container_hooks(d.path(), &input(&env)).is_empty());
        let mut with = input(&env);
        with.boot_id = Some(BootId {
            file: Path::new("/data/sbx1/boot_id"),
            hook: Path::new("/opt/paddock-runtime"),
        });
        let hooks = create_container_hooks(d.path(), &with);
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].path(), Path::new("/opt/paddock-runtime"));
        assert_eq!(
            hooks[0].args().clone().expect("args"),
            [
                "/opt/paddock-runtime",
                crate::container::HELPER_ARG,
                crate::container::BOOT_ID_CMD,
                "/data/sbx1/boot_id",
                "/data/sbx1/rootfs"
            ]
        );
        // Another binary (a stand-in runtime cannot bind the id) is named as given.
        with.boot_id = Some(BootId {
            file: Path::new("/data/sbx1/boot_id"),
            hook: Path::new("/usr/bin/paddock"),
        });
        let hooks = create_container_hooks(d.path(), &with);
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].path(), Path::new("/usr/bin/paddock"));
    }

    /// Security review C1: the device policy starts by refusing every device, so only the
    /// listed nodes can be opened.
    #[test]
    fn first_device_rule_denies_every_device() {
        let env = BTreeMap::new();
        let d = tempfile::tempdir().expect("tempdir");
        let path = write(d.path(), &build(&input(&env))).expect("write");
        let spec = oci_spec::runtime::Spec::load(path).expect("parses");
        let linux = spec.linux().as_ref().expect("linux");
        let rules = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_ref())
            .expect("device rules");
        let first = &rules[0];
        assert!(!first.allow(), "first rule must deny: {first:?}");
        assert_eq!(first.access().as_deref(), Some("rwm"));
        assert!(matches!(
            first.typ(),
            None | Some(oci_spec::runtime::LinuxDeviceType::A)
        ));
        assert_eq!((first.major(), first.minor()), (None, None));
        // The rest only allow, and never a block device or a wildcard type.
        for r in &rules[1..] {
            assert!(r.allow(), "{r:?}");
            assert_eq!(
                r.typ(),
                Some(oci_spec::runtime::LinuxDeviceType::C),
                "{r:?}"
            );
        }
        let allowed: Vec<(i64, Option<i64>)> = rules[1..]
            .iter()
            .map(|r| (r.major().expect("major"), r.minor()))
            .collect();
        for node in [(1, Some(3)), (1, Some(9)), (5, Some(2)), (136, None)] {
            assert!(allowed.contains(&node), "{node:?} not allowed");
        }
    }

    /// Security review L5: the sandbox's file limit is fixed rather than Paddock's own hard
    /// limit, and core dumps are off.
    #[test]
    fn rlimits_are_fixed_and_core_dumps_off() {
        let env = BTreeMap::new();
        let d = tempfile::tempdir().expect("tempdir");
        let path = write(d.path(), &build(&input(&env))).expect("write");
        let spec = oci_spec::runtime::Spec::load(path).expect("parses");
        let rl = spec
            .process()
            .as_ref()
            .and_then(|p| p.rlimits().clone())
            .expect("rlimits");
        let get = |t| {
            rl.iter()
                .find(|r| r.typ() == t)
                .map(|r| (r.soft(), r.hard()))
                .expect("rlimit present")
        };
        use oci_spec::runtime::PosixRlimitType as T;
        assert_eq!(get(T::RlimitCore), (0, 0));
        let (soft, hard) = get(T::RlimitNofile);
        assert!(hard <= NOFILE_HARD, "hard {hard}");
        assert_eq!(soft, NOFILE_SOFT.min(hard));
    }

    /// Security review M6: a build step's spec is a sandbox's, running the step instead of
    /// the runtime.
    #[test]
    fn job_spec_keeps_the_sandbox_isolation_and_runs_the_command() {
        let env = BTreeMap::new();
        let args = vec!["apt-get".to_string(), "update".into()];
        let job = build_job(&JobInput {
            hostname: "build",
            rootfs: Path::new("/data/t/merged"),
            cgroup_path: Path::new("/own/paddock/build"),
            init_binary: Path::new("/usr/bin/tini-static"),
            args: &args,
            env: &env,
            resolv_conf: None,
            tmp_bytes: 1 << 20,
            seccomp: &PROGRAM,
        });
        let sandbox = build(&input(&env));
        for key in ["namespaces", "resources", "maskedPaths", "readonlyPaths"] {
            assert_eq!(job["linux"][key], sandbox["linux"][key], "{key}");
        }
        // The same compiled seccomp profile, named the same way.
        let a = crate::seccomp::PROGRAM_ANNOTATION;
        assert_eq!(job["annotations"][a], sandbox["annotations"][a]);
        let text = serde_json::to_vec(&job).expect("json");
        assert_eq!(
            crate::seccomp::Program::from_spec_json(&text).expect("program"),
            *PROGRAM
        );
        assert_eq!(
            job["process"]["capabilities"],
            sandbox["process"]["capabilities"]
        );
        assert_eq!(job["process"]["noNewPrivileges"], json!(true));
        assert_eq!(
            job["process"]["args"],
            json!([INIT_PATH, "--", "apt-get", "update"])
        );
        let mounts = job["mounts"].as_array().expect("mounts");
        assert!(mounts.iter().all(|m| m["destination"] != RUNTIME_PATH));
        assert!(mounts.iter().any(|m| m["destination"] == "/proc"));
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), &job).expect("parses as an OCI spec");
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
        // The filter is the compiled profile the annotation names, not `linux.seccomp`
        // (which libcontainer would compile again).
        assert!(linux.seccomp().is_none());
        let text = serde_json::to_vec(&v).expect("json");
        assert_eq!(
            crate::seccomp::Program::from_spec_json(&text).expect("program"),
            *PROGRAM
        );
        let seccomp: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(crate::seccomp::profile()).expect("profile");
        let denied: Vec<&String> = seccomp
            .syscalls()
            .as_ref()
            .expect("rules")
            .iter()
            .filter(|r| r.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActErrno)
            .flat_map(|r| r.names())
            .collect();
        for must in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "kexec_load",
            "init_module",
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
