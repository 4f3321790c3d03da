//! Embedded-mode sandbox infrastructure: each sandbox is a Linux container on this host.
//!
//! [`EmbeddedInfra`] implements [`paddock_infra::Infra`]. A sandbox is: an overlayfs root
//! (read-only template layers + a writable upper under the data dir), a youki `libcontainer`
//! container (user, pid, mount, uts, ipc, net and cgroup namespaces — sandbox root is an
//! unprivileged host uid, see [`userns`]; Docker's default capabilities;
//! a seccomp filter; `no_new_privs`; masked and read-only kernel paths), a cgroup nested under
//! ours with CPU, memory and pids limits, and a veth on the Paddock bridge. Its PID 1 is tini,
//! whose first child is the static `paddock-runtime`; the sandbox is ready when the runtime
//! answers `GET /health`.

pub mod build_container;
pub mod config;
pub mod container;
pub mod disk;
pub mod firewall;
pub mod forkserver;
pub mod host_limits;
mod infra;
pub mod instance_lock;
pub mod logrelay;
mod logs;
pub mod mounts;
mod netlink;
pub mod network;
pub mod nfset;
pub mod oci;
pub mod private_dir;
pub mod proc;
mod ratelimit;
mod readiness;
mod rtnl;
pub mod rundir;
pub mod seccomp;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod template;
pub mod userns;

pub use config::{DATA_DIR_ENV, EmbeddedConfig, TEMPLATE_CACHE_ENV};
pub use container::ExecOutput;
pub use infra::{EmbeddedError, EmbeddedInfra, PoolFigures};
pub use template::{TemplateError, TemplateSource, TemplateSpec, Templates};
