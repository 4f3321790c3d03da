//! Configuration of the embedded infrastructure.

use std::path::PathBuf;
use std::time::Duration;

use crate::disk::DiskBackend;
use crate::network::NetConfig;
use crate::template::TemplateSpec;

/// Environment variable overriding the data dir (default `/var/lib/paddock`).
pub const DATA_DIR_ENV: &str = "PADDOCK_DATA_DIR";
/// Environment variable overriding where templates are cached (default `<data dir>/templates`);
/// lets test runs share one cache.
pub const TEMPLATE_CACHE_ENV: &str = "PADDOCK_TEMPLATE_CACHE";
/// Default data dir.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/paddock";
/// Default init binary, from Debian's `tini` package.
pub const DEFAULT_INIT: &str = "/usr/bin/tini-static";
/// Disk limit of a sandbox whose template and request set none (security review H5).
pub const DEFAULT_DISK_BYTES: u64 = 2 << 30;
/// Cold creations per second by default: the install guide's chart value of `maxCreateQPS`.
pub const DEFAULT_MAX_CREATE_QPS: f64 = 200.0;

/// Everything [`crate::EmbeddedInfra`] needs to know.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Root of Paddock's state: `sandboxes/`, `containers/`, `paddock.redb`.
    pub data_dir: PathBuf,
    /// Template build cache.
    pub template_cache: PathBuf,
    /// Static runtime binary bind-mounted into every sandbox.
    pub runtime_binary: PathBuf,
    /// Arguments for the runtime.
    pub runtime_args: Vec<String>,
    /// Static init binary (tini) that runs as PID 1 of every sandbox.
    pub init_binary: PathBuf,
    /// Binary that runs libcontainer in a single-threaded helper process; it must call
    /// [`crate::container::run_helper_if_requested`] first thing in `main`. Defaults to the
    /// current executable.
    pub helper_binary: PathBuf,
    /// Binary each sandbox's `createContainer` hook executes to bind its boot id (see
    /// [`crate::spec::BootId`]): one that answers [`paddock_contract::bootid::BOOT_ID_ARGS`],
    /// as the runtime binary and [`Self::helper_binary`] both do. Defaults to the runtime
    /// binary: it is static and small, so executing it once per boot costs about a third of
    /// the CPU of executing Paddock's own large, dynamically relocated binary.
    pub hook_binary: PathBuf,
    /// Binary that runs each sandbox's log relay on the host (see [`crate::logrelay`]):
    /// `paddock-logrelay` beside the runtime binary when it is there, else the runtime binary.
    pub relay_binary: PathBuf,
    /// Bridge, address range and firewall names.
    pub net: NetConfig,
    /// Name of the cgroup under this process's own cgroup that holds sandbox cgroups.
    pub cgroup_parent: String,
    /// Templates offered.
    pub templates: Vec<TemplateSpec>,
    /// How long a new sandbox may take to answer `/health`.
    pub ready_timeout: Duration,
    /// Disk limit given to every template (and request) that sets none: no sandbox runs
    /// without one (security review H5).
    pub default_disk_bytes: u64,
    /// How disk limits are enforced.
    pub disk_backend: DiskBackend,
    /// Size of each sandbox's `/tmp` tmpfs (counts against its memory limit).
    pub tmp_bytes: u64,
    /// Host file bind-mounted as the sandboxes' `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// Cold creations per second, pool refills included (`maxCreateQPS`); 0 = unlimited.
    pub max_create_qps: f64,
    /// The host ids sandbox ids map to: every sandbox runs in its own user namespace, its
    /// root an unprivileged host uid (see [`crate::userns`]). `None` runs sandboxes without
    /// one (sandbox root is host root, confined by capabilities, seccomp and cgroups only).
    pub userns: Option<crate::userns::IdRange>,
    /// How warm pools size and refill themselves.
    pub pool: PoolConfig,
}

/// How warm pools size and refill themselves. Each template's pool keeps at least its
/// [`TemplateSpec::pool_size`] members, grows with demand up to [`Self::max`], and shrinks
/// back after [`Self::idle`] (see `infra/pool/policy.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Ceiling of each template's pool (never below its minimum). `None`: derived from host
    /// memory (at most 128) for templates with a minimum, and 0 (no pool, every create cold)
    /// for templates without one.
    pub max: Option<usize>,
    /// The idle period: at the end of each, a pool shrinks to what that period's busiest
    /// moment needed (its minimum if nothing was claimed).
    pub idle: Duration,
    /// Pool members being made at once, all templates together.
    pub fill_concurrency: usize,
    /// What a create does when its template's pool has nothing ready.
    pub on_empty: OnEmpty,
    /// How long after a claim the refill it set off waits while the pool still has members
    /// ready (none wait for one): a refill is a cold create, and on a small host it takes
    /// the CPU and the kernel's cgroup and mount locks from the claimed sandbox's `/init`
    /// and first command. An empty pool, or a create waiting, refills at once.
    pub refill_grace: Duration,
}

/// What a create does when its template's pool has nothing ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnEmpty {
    /// Queue for the next member the pool makes (the pool makes one more for each waiting
    /// create); a create whose member fails to come is made cold.
    #[default]
    Wait,
    /// Create a sandbox of its own at once, besides the pool's refills.
    Cold,
}

impl std::str::FromStr for OnEmpty {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wait" => Ok(Self::Wait),
            "cold" => Ok(Self::Cold),
            other => Err(format!("{other:?}: expected `wait` or `cold`")),
        }
    }
}

/// Default [`PoolConfig::refill_grace`]: a warm create and its first command take about
/// 10 ms; the grace covers them with room to spare and is small next to a refill's 100 ms.
pub const DEFAULT_REFILL_GRACE: Duration = Duration::from_millis(50);

/// Default idle period of warm pools.
pub const DEFAULT_POOL_IDLE: Duration = Duration::from_secs(300);

/// Default number of pool members made at once: creates mostly wait on the kernel and the
/// sandbox's start, so a few per core keep the host busy without thrashing it.
pub fn default_fill_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 4
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max: None,
            idle: DEFAULT_POOL_IDLE,
            fill_concurrency: default_fill_concurrency(),
            on_empty: OnEmpty::default(),
            refill_grace: DEFAULT_REFILL_GRACE,
        }
    }
}

impl EmbeddedConfig {
    /// The templates offered, each with a disk limit: the template's own, else
    /// [`Self::default_disk_bytes`].
    pub fn templates_with_disk_limits(&self) -> Vec<TemplateSpec> {
        let mut t = self.templates.clone();
        for spec in &mut t {
            spec.limits
                .disk_bytes
                .get_or_insert(self.default_disk_bytes);
        }
        t
    }

    /// Defaults, with the data dir and template cache taken from the environment when set.
    pub fn from_env(runtime_binary: PathBuf) -> Self {
        let data_dir: PathBuf = std::env::var_os(DATA_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let template_cache = std::env::var_os(TEMPLATE_CACHE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("templates"));
        Self {
            data_dir,
            template_cache,
            hook_binary: runtime_binary.clone(),
            relay_binary: crate::logrelay::beside(&runtime_binary),
            runtime_binary,
            runtime_args: Vec::new(),
            init_binary: DEFAULT_INIT.into(),
            helper_binary: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
            net: NetConfig::default(),
            cgroup_parent: "paddock".into(),
            templates: vec![TemplateSpec::base(), TemplateSpec::code_interpreter()],
            ready_timeout: Duration::from_secs(30),
            default_disk_bytes: DEFAULT_DISK_BYTES,
            disk_backend: DiskBackend::default(),
            tmp_bytes: 256 << 20,
            resolv_conf: Some("/etc/resolv.conf".into()),
            max_create_qps: DEFAULT_MAX_CREATE_QPS,
            userns: Some(crate::userns::IdRange::default()),
            pool: PoolConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Security review H5: every template, built-in or added without one, has a disk limit.
    #[test]
    fn every_template_has_a_disk_limit() {
        let mut cfg = EmbeddedConfig::from_env("/bin/true".into());
        for t in &cfg.templates {
            assert!(
                t.limits.disk_bytes.is_some(),
                "built-in {} has none",
                t.name
            );
        }
        let mut bare = TemplateSpec::base();
        bare.name = "bare".into();
        bare.limits.disk_bytes = None;
        cfg.templates.push(bare);
        cfg.default_disk_bytes = 8 << 20;
        let t = cfg.templates_with_disk_limits();
        assert!(t.iter().all(|t| t.limits.disk_bytes.is_some()));
        assert_eq!(
            t.iter()
                .find(|t| t.name == "bare")
                .map(|t| t.limits.disk_bytes),
            Some(Some(8 << 20))
        );
    }
}
