//! Shared fixtures of the root-only integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use paddock_embedded::network::{Cidr, NetConfig};
use paddock_embedded::{EmbeddedConfig, EmbeddedInfra, TemplateSpec};

/// False when this process is not root, after printing why the calling test is skipped: the
/// embedded tests make namespaces, mounts, cgroups, bridges and nft tables, which need root, and
/// a plain `cargo test` as another user must still pass. Call first in every such test:
/// `if support::skip_unless_root() { return; }`.
pub fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    eprintln!(
        "skipping {test}: needs root (namespaces, mounts, cgroups, a bridge); run it as root or through hack/test"
    );
    true
}

/// Template cache shared by all tests (and CI runs): `PADDOCK_TEMPLATE_CACHE` or
/// `/var/tmp/paddock-test-templates`.
pub fn template_cache() -> PathBuf {
    std::env::var_os(paddock_embedded::TEMPLATE_CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/paddock-test-templates".into())
}

/// The runtime binary: `PADDOCK_RUNTIME_BIN` if set, else the workspace's static release
/// build of `paddock-runtime` if present (`cargo build --release --target
/// x86_64-unknown-linux-musl -p paddock-runtime`), else a static stand-in.
pub fn runtime_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PADDOCK_RUNTIME_BIN") {
        return p.into();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-musl/release/paddock-runtime");
    if built.is_file() {
        return built;
    }
    standin_binary()
}

/// The sandbox seccomp profile compiled once for this test binary, for specs a test builds
/// itself.
pub fn seccomp_program() -> &'static paddock_embedded::seccomp::Program {
    static PROGRAM: OnceLock<paddock_embedded::seccomp::Program> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seccomp");
        std::fs::create_dir_all(&dir).expect("seccomp dir");
        paddock_embedded::seccomp::Program::compile_into(&dir).expect("compile the profile")
    })
}

/// File name of the built stand-in runtime.
const STANDIN_NAME: &str = "paddock-runtime-standin";

/// A static stand-in for the runtime (answers 204 to everything on :49983), compiled once.
/// Works in any root filesystem, even an empty one.
pub fn standin_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(STANDIN_NAME);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/standin.rs");
        let status = std::process::Command::new("rustc")
            .args([
                "--edition",
                "2021",
                "-O",
                "--target",
                "x86_64-unknown-linux-musl",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run rustc");
        assert!(status.success(), "building the runtime stand-in failed");
        out
    })
    .clone()
}

/// How many environment indices one test process may use.
pub const SLOT_WIDTH: u8 = 40;
/// How many test processes may run embedded tests at once on one host.
const SLOTS: u8 = 6;

/// This process's slot: the first of [`SLOTS`] host-wide lock files it could lock. The lock is
/// held until the process exits (the kernel drops it even on a crash), so two test processes
/// running at once — two test binaries, or two checkouts — never share a bridge, CIDR, nft
/// table or cgroup parent.
pub fn slot() -> u8 {
    static SLOT: OnceLock<u8> = OnceLock::new();
    *SLOT.get_or_init(|| {
        let dir = Path::new("/run/paddock-test-slots");
        std::fs::create_dir_all(dir).expect("create /run/paddock-test-slots");
        loop {
            for k in 0..SLOTS {
                let f = std::fs::File::create(dir.join(format!("{k}.lock"))).expect("slot file");
                if f.try_lock().is_ok() {
                    // Held for the life of the process.
                    std::mem::forget(f);
                    return k;
                }
            }
            eprintln!("all {SLOTS} embedded test slots are taken; waiting for one");
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    })
}

/// A test environment: its own data dir, bridge, CIDR, nft table and cgroup parent, so tests
/// can run in parallel; the template cache is shared.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub cfg: EmbeddedConfig,
}

impl Env {
    /// `n` picks the bridge/CIDR among this test binary's environments (unique per test of the
    /// binary, below [`SLOT_WIDTH`]); the process's [`slot`] keeps concurrently running test
    /// processes (other binaries, other checkouts) apart.
    pub fn new(n: u8) -> Self {
        assert!(
            n < SLOT_WIDTH,
            "environment index {n} must be below {SLOT_WIDTH}"
        );
        let n = slot() * SLOT_WIDTH + n;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    "paddock_embedded=info,libcontainer=warn,libcgroups=warn".into()
                }),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::Builder::new()
            .prefix("paddock-test")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let mut cfg = EmbeddedConfig::from_env(runtime_binary());
        cfg.data_dir = dir.path().to_owned();
        cfg.helper_binary = env!("CARGO_BIN_EXE_paddock-embedded").into();
        // The stand-in cannot bind a boot id; the helper binary can.
        if cfg.runtime_binary.ends_with(STANDIN_NAME) {
            cfg.hook_binary = cfg.helper_binary.clone();
        }
        cfg.template_cache = template_cache();
        cfg.net = NetConfig {
            bridge: format!("pdktbr{n}"),
            cidr: format!("10.214.{n}.0/24").parse::<Cidr>().expect("cidr"),
            nft_table: format!("paddock_test{n}"),
            veth_prefix: format!("pdt{n:02x}"),
        };
        cfg.cgroup_parent = format!("paddock-test{n}");
        let mut base = TemplateSpec::base();
        base.pool_size = 0;
        let mut ci = TemplateSpec::code_interpreter();
        ci.pool_size = 0;
        cfg.templates = vec![base, ci];
        Self { dir, cfg }
    }

    pub async fn start(&self) -> EmbeddedInfra {
        EmbeddedInfra::start(self.cfg.clone())
            .await
            .expect("start infra")
    }

    /// Where sandbox `id`'s disk and root are mounted (`disk/upper`, `rootfs`): on the run
    /// tmpfs.
    #[allow(dead_code)] // not every test binary that includes this module looks there
    pub fn run_dir(&self, id: &paddock_infra::SandboxId) -> std::path::PathBuf {
        paddock_embedded::rundir::sandboxes(self.dir.path()).join(id.as_str())
    }

    /// Everything this environment could have left behind; empty when clean.
    pub async fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        let data = self.dir.path().to_string_lossy().into_owned();
        // The run tmpfs itself is Paddock's while it runs, not a sandbox's (a stop with no
        // sandbox left unmounts it); what is mounted in it is.
        let run = paddock_embedded::rundir::path(self.dir.path());
        for m in paddock_embedded::mounts::mounts_under(self.dir.path()) {
            if m != run {
                out.push(format!("mount {}", m.display()));
            }
        }
        for l in paddock_embedded::disk::loops_under(self.dir.path()) {
            out.push(format!("loop device backed by {}", l.display()));
        }
        for p in relays_under(self.dir.path()) {
            out.push(format!("log relay {p}"));
        }
        let h = paddock_cgroups::Hierarchy::detect(&self.cfg.cgroup_parent).expect("cgroups");
        for c in h.list().expect("list cgroups") {
            out.push(format!("cgroup {c}"));
        }
        for v in paddock_embedded::network::host_veths(&self.cfg.net)
            .await
            .expect("veths")
        {
            out.push(format!("veth {v}"));
        }
        // The host's pinned neighbour entries of sandboxes (network::pin_addresses).
        if let Ok(o) = std::process::Command::new("ip")
            .args([
                "-4",
                "neigh",
                "show",
                "dev",
                &self.cfg.net.bridge,
                "nud",
                "permanent",
            ])
            .output()
        {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                out.push(format!("neighbour entry {l}"));
            }
        }
        for sub in ["sandboxes", "containers", "run/sandboxes", "run/containers"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.path().join(sub)) {
                for e in rd.flatten() {
                    out.push(format!(
                        "dir {}/{sub}/{}",
                        data,
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
        let set = std::process::Command::new("nft")
            .args(["list", "set", "inet", &self.cfg.net.nft_table, "egress"])
            .output()
            .expect("nft");
        let text = String::from_utf8_lossy(&set.stdout);
        if text.contains("elements") {
            out.push(format!("nft egress elements: {text}"));
        }
        let ports = std::process::Command::new("nft")
            .args(["list", "set", "bridge", &self.cfg.net.nft_table, "ports"])
            .output()
            .expect("nft");
        let text = String::from_utf8_lossy(&ports.stdout);
        if text.contains("elements") {
            out.push(format!("nft port bindings: {text}"));
        }
        out
    }

    /// Removes the host-level network pieces of this environment.
    pub async fn cleanup(&self, infra: Option<&EmbeddedInfra>) {
        if let Some(i) = infra {
            let _ = i.kill_all().await;
        }
        let _ = paddock_embedded::network::teardown_host(&self.cfg.net).await;
        if let Ok(h) = paddock_cgroups::Hierarchy::detect(&self.cfg.cgroup_parent) {
            for c in h.list().unwrap_or_default() {
                let cg = h.sandbox(&c);
                let _ = cg.kill_all();
                let _ = cg.remove();
            }
            // Paddock's own cgroup for warming the migration lock (v1), then the parent
            // directories (one per v1 hierarchy an OCI runtime may have joined).
            let warm = h.root().join("pids").join(h.base());
            let _ = std::fs::remove_dir(warm.join(paddock_cgroups::WARM_CGROUP));
            for e in std::fs::read_dir(h.root()).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(e.path().join(h.base()));
            }
        }
        let _ = paddock_embedded::mounts::unmount_all_under(self.dir.path());
    }
}

/// Runs `f` with a started infra and always cleans the environment afterwards, even when
/// `f` panics.
pub async fn with_infra<F, Fut>(n: u8, f: F)
where
    F: FnOnce(EmbeddedInfra, std::sync::Arc<Env>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_env(Env::new(n), f).await
}

/// [`with_infra`] for an environment the caller has adjusted first.
pub async fn with_env<F, Fut>(env: Env, f: F)
where
    F: FnOnce(EmbeddedInfra, std::sync::Arc<Env>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let env = std::sync::Arc::new(env);
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

/// Runs a shell script in a sandbox: (exit code, stdout, stderr).
#[allow(dead_code)] // not every test binary that includes this module runs scripts
pub async fn sh(
    infra: &EmbeddedInfra,
    id: &paddock_infra::SandboxId,
    script: &str,
) -> (i32, String, String) {
    let out = infra
        .exec(id, &["/bin/sh", "-c", script])
        .await
        .expect("exec");
    (
        out.code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Live log relays (see `paddock_embedded::logrelay`) writing under `dir`: pid and command line.
pub fn relays_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_relay = args.get(1).map(String::as_str)
                == Some(paddock_embedded::container::HELPER_ARG)
                && args.get(2).map(String::as_str) == Some(paddock_embedded::logrelay::RELAY_CMD)
                && args.get(3).is_some_and(|l| l.starts_with(&dir));
            // A zombie has an empty command line and holds nothing.
            is_relay.then(|| format!("{} {}", e.file_name().to_string_lossy(), args.join(" ")))
        })
        .collect()
}

/// A hardware address as `ip` and `/proc/net/arp` print it (`02:ab:...`).
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
