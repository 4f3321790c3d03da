//! Template build steps (`apt-get`, `pip`) run in a container with a sandbox's isolation.
//!
//! A package's maintainer scripts and a pip sdist's `setup.py` run as root. In a plain chroot
//! that root is the host's (security review M6): `/proc/1/root` is the host's `/`, every device
//! can be opened and every capability is kept. Here each step is a run-to-completion container
//! made from the sandbox spec ([`crate::spec::build_job`]): new mount, pid, ipc, uts, cgroup and
//! network namespaces, its own `/proc`, Docker's capabilities, the sandbox seccomp profile, the
//! device rules and masked paths, and a cgroup with memory and pids limits under Paddock's
//! cgroup parent. libcontainer runs in the single-threaded helper process
//! ([`crate::container::RUN_CMD`]).
//!
//! The network namespace is the container's own; a [`BuildNetwork`] (the embedded
//! infrastructure's) connects it to the sandbox bridge with internet egress, so a step reaches
//! the package mirrors through the same firewall as an internet-enabled sandbox: not the host,
//! not private or link-local ranges, not other sandboxes. Without one the step has no network.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use paddock_cgroups::{CgroupLimits, Hierarchy};

use crate::container;

/// Undoes what [`BuildNetwork::connect`] did.
pub trait NetLease: Send {
    /// Disconnects and frees the address.
    fn release(self: Box<Self>);
}

/// Connects a build container's network namespace to the outside.
pub trait BuildNetwork: Send + Sync + std::fmt::Debug {
    /// Gives the network namespace of `pid` a way to the package mirrors.
    fn connect(&self, pid: i32) -> Result<Box<dyn NetLease>, BoxError>;
}

/// A boxed error from a [`BuildNetwork`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Memory limit of a build step (tmpfs `/tmp` included).
pub const BUILD_MEMORY_BYTES: u64 = 4 << 30;
/// Task limit of a build step.
pub const BUILD_PIDS: u32 = 4096;
/// Size of a build step's `/tmp` tmpfs (charged to its memory).
pub const BUILD_TMP_BYTES: u64 = 1 << 30;

/// Everything needed to run build steps in containers.
#[derive(Debug, Clone)]
pub struct BuildBox {
    /// Binary that serves [`container::HELPER_ARG`].
    pub helper_binary: PathBuf,
    /// Static init (tini), PID 1 of each step.
    pub init_binary: PathBuf,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// Where the steps' cgroups go (next to the sandboxes').
    pub cgroups: Hierarchy,
    /// Host file bind-mounted read-only as the step's `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// Limits of each step's cgroup.
    pub limits: CgroupLimits,
    /// Connects a step to the mirrors; `None` = no network.
    pub network: Option<Arc<dyn BuildNetwork>>,
    /// The sandboxes' compiled seccomp profile, which every step runs under.
    pub seccomp: crate::seccomp::Program,
}

/// Why a build step failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildContainerError {
    /// The step ran and exited unsuccessfully.
    #[error("exit code {code}; last output:\n{output}")]
    Failed {
        /// Its exit code (128 + signal if killed).
        code: i32,
        /// Its last lines of merged output.
        output: String,
    },
    /// The container could not be made or run.
    #[error("build container {id}: {message}")]
    Helper {
        /// Container id.
        id: String,
        /// What the helper reported.
        message: String,
    },
    /// The step's cgroup could not be made, limited or emptied.
    #[error(transparent)]
    Cgroup(#[from] paddock_cgroups::CgroupError),
    /// The step's network could not be connected.
    #[error("build container network: {0}")]
    Network(#[source] BoxError),
    /// Local file or process error.
    #[error("build container {what}: {source}")]
    Io {
        /// What we did.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildContainerError {
    move |source| BuildContainerError::Io { what, source }
}

/// Lines of output kept for the error of a failed step.
const TAIL_LINES: usize = 20;

impl BuildBox {
    /// Runs `args` as root in a container whose root is `rootfs` (writes land there), with
    /// `env` added to the sandbox defaults. Output lines go to `progress`; the exit code
    /// decides success. Leaves no container state, cgroup, process or network behind, failed
    /// or not; `bundle` is a scratch directory for the spec (removed).
    pub fn run(
        &self,
        id: &str,
        rootfs: &Path,
        bundle: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(), BuildContainerError> {
        let cg = self.cgroups.sandbox(id);
        let _span = tracing::info_span!("build_step", id, cmd = ?args).entered();
        // A leftover of a crashed build under the same id.
        self.clean(id, cg.as_ref(), bundle);
        let r = self.run_in(id, cg.as_ref(), rootfs, bundle, args, env, progress);
        self.clean(id, cg.as_ref(), bundle);
        r
    }

    /// Kills whatever is left in the step's cgroup and removes it, its state and its bundle.
    fn clean(&self, id: &str, cg: &dyn paddock_cgroups::Cgroup, bundle: &Path) {
        if cg.exists() {
            if let Err(e) = cg.kill_all() {
                tracing::warn!(id, error = %e, "cannot empty build cgroup");
            }
            if let Err(e) = cg.remove() {
                tracing::warn!(id, error = %e, "cannot remove build cgroup");
            }
        }
        container::forget(&self.state_root, id);
        if let Err(e) = std::fs::remove_dir_all(bundle)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(id, error = %e, "cannot remove build bundle");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_in(
        &self,
        id: &str,
        cg: &dyn paddock_cgroups::Cgroup,
        rootfs: &Path,
        bundle: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(), BuildContainerError> {
        cg.create()?;
        cg.apply(&self.limits)?;
        let spec = crate::spec::build_job(&crate::spec::JobInput {
            hostname: "paddock-build",
            rootfs,
            cgroup_path: cg.oci_path(),
            init_binary: &self.init_binary,
            args,
            env,
            resolv_conf: self.resolv_conf.as_deref(),
            tmp_bytes: BUILD_TMP_BYTES,
            seccomp: &self.seccomp,
        });
        crate::spec::write(bundle, &spec).map_err(io("write spec"))?;
        progress(&format!("$ {}", args.join(" ")));

        let (reader, writer) = std::io::pipe().map_err(io("output pipe"))?;
        let mut child = std::process::Command::new(&self.helper_binary)
            .arg(container::HELPER_ARG)
            .arg(container::RUN_CMD)
            .arg(&self.state_root)
            .arg(id)
            .arg(bundle)
            .stdin(std::process::Stdio::piped())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io("start helper"))?;
        // The Command (a temporary) is gone, and with it our copy of the write end: EOF comes
        // when the helper and the container's processes are gone.
        let (Some(stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io("helper pipes")(std::io::Error::other("missing")));
        };

        let mut stdin = Some(stdin);
        let mut lease: Option<Box<dyn NetLease>> = None;
        let mut exit: Option<i32> = None;
        let mut messages: Vec<String> = Vec::new();
        let mut net_error: Option<BoxError> = None;
        let tail = std::thread::scope(|s| {
            let out = s.spawn(move || {
                let mut tail: VecDeque<String> = VecDeque::new();
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    progress(&line);
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Vec::from(tail).join("\n")
            });
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pid) = line
                    .strip_prefix(container::RUN_CREATED)
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    let go = match &self.network {
                        None => true,
                        Some(net) => match net.connect(pid) {
                            Ok(l) => {
                                lease = Some(l);
                                true
                            }
                            Err(e) => {
                                net_error = Some(e);
                                false
                            }
                        },
                    };
                    // Anything but `start` (here: EOF) kills the init unstarted. Once started,
                    // stdin stays open until the helper is gone: its EOF (our death) would
                    // kill the container.
                    if go {
                        if let Some(s) = stdin.as_mut() {
                            let _ = writeln!(s, "{}", container::RUN_START);
                            let _ = s.flush();
                        }
                    } else {
                        stdin = None;
                    }
                } else if let Some(code) = line
                    .strip_prefix(container::RUN_EXIT)
                    .and_then(|c| c.trim().parse::<i32>().ok())
                {
                    exit = Some(code);
                } else {
                    messages.push(line);
                }
            }
            out.join().unwrap_or_default()
        });
        let status = child.wait().map_err(io("wait helper"))?;
        drop(stdin);
        if let Some(l) = lease {
            l.release();
        }
        if let Some(e) = net_error {
            return Err(BuildContainerError::Network(e));
        }
        match exit {
            Some(0) => Ok(()),
            Some(code) => Err(BuildContainerError::Failed { code, output: tail }),
            None => Err(BuildContainerError::Helper {
                id: id.to_owned(),
                message: if messages.is_empty() {
                    format!("helper ended ({status}) without an exit report")
                } else {
                    messages.join("\n")
                },
            }),
        }
    }
}
