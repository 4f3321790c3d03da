//! The sandbox's seccomp profile: an allow-list, like Docker's default profile.
//!
//! Every system call not named here fails with ENOSYS, so a call added to the kernel after this
//! list was written is refused until someone reviews it, and a program that tries one falls
//! back as it would on an older kernel. Calls known to be dangerous fail with EPERM instead:
//! kernel modules, clocks, keyrings, every mount call (old and new API), namespaces, BPF, perf,
//! io_uring (its own path around seccomp and a long CVE record), kexec, swap, quotas.
//!
//! Only x86_64 names are listed: libseccomp resolves them for the native architecture, and a
//! name it cannot resolve is skipped. 32-bit programs keep the calls they share with x86_64;
//! the 32-bit-only ones (`socketcall`, `*_time64`, ...) answer ENOSYS.
//!
//! The profile is the same for every sandbox, and libseccomp takes about 11 ms of CPU to turn
//! it into a BPF program, so it is compiled once per `paddock up` ([`Program::compile_into`])
//! rather than by libcontainer in every sandbox's init: the container helper reads the
//! compiled program on the host ([`Program::from_spec_json`], [`Program::load`]) and the
//! sandbox's init installs it right before it execs the sandbox's first process
//! ([`FilteringExecutor`]). The spec names the program in an annotation
//! ([`PROGRAM_ANNOTATION`]) instead of carrying `linux.seccomp`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::Digest;

/// ENOSYS: the answer for a call not on the allow-list.
const ENOSYS: u32 = 38;
/// EPERM: the answer for a call refused on purpose.
const EPERM: u32 = 1;

/// Calls allowed without conditions: Docker's default allow-list for x86_64, less the ones we
/// refuse on purpose (see [`DENIED`]), without `clone` and `socket`, which are allowed with
/// conditions (see [`profile`]).
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chroot",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "personality",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Calls refused with EPERM: what Docker's profile leaves out on purpose, and io_uring, which
/// Docker refuses since moby#46762. Listed rather than left to the default so a program sees
/// "not permitted", not "not implemented".
pub const DENIED: &[&str] = &[
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
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
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
    "open_tree_attr",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "setdomainname",
    "sethostname",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
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

/// AF_VSOCK: sockets to the hypervisor and other VMs' agents, no use inside a sandbox
/// (moby#44562).
const AF_VSOCK: u64 = 40;

/// The profile as OCI `linux.seccomp` JSON.
pub fn profile() -> Value {
    let all_ns: u64 = NAMESPACE_CLONE_FLAGS.iter().fold(0, |a, f| a | f);
    let mut syscalls = vec![
        json!({ "names": ALLOWED, "action": "SCMP_ACT_ALLOW" }),
        json!({ "names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM }),
        // clone3 is left to the default ENOSYS on purpose: it hides its flags behind a pointer
        // that seccomp cannot read, and on ENOSYS libc falls back to clone, checked below.
        // clone without any namespace flag is allowed ... (libcontainer reads MASKED_EQ as
        // `arg & valueTwo == value`.)
        json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": 0, "valueTwo": all_ns, "op": "SCMP_CMP_MASKED_EQ" }],
        }),
        // ... and so is any socket but a vsock one, which gets the default answer. (Two
        // ranges, not `!=`; and no EPERM rule for `== AF_VSOCK`: with the 32-bit
        // architectures in the filter libseccomp refuses two actions on one `socket`
        // argument, because 32-bit x86 may also reach `socket` through `socketcall`.)
        json!({
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_LT" }],
        }),
        json!({
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_GT" }],
        }),
    ];
    // ... while a clone with one is refused with EPERM (one rule per flag: each matches when
    // its flag is set).
    for flag in NAMESPACE_CLONE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{ "index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": ENOSYS,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}

/// Why the profile could not be compiled, or a compiled program not be used.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// libseccomp refused the profile.
    #[error("compiling the seccomp profile: {0}")]
    Compile(#[source] libseccomp::error::SeccompError),
    /// The profile uses something [`filter`] does not translate.
    #[error("seccomp profile: {0}")]
    Unsupported(String),
    /// The program file could not be written or read.
    #[error("seccomp program {path}: {source}")]
    Io {
        /// The program file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The program file is not the program the spec names.
    #[error("seccomp program {path}: {reason}")]
    Invalid {
        /// The program file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The spec has no readable program annotation.
    #[error("the spec names no seccomp program ({0}): refusing to run a container without one")]
    Missing(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SeccompError + '_ {
    move |source| SeccompError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The spec annotation that names a sandbox's compiled [`Program`].
pub const PROGRAM_ANNOTATION: &str = "org.paddock.seccomp";

/// Most instructions the kernel takes in one classic BPF program (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;
/// Bytes of one `struct sock_filter`: code (u16), jt (u8), jf (u8), k (u32).
const INSTRUCTION_BYTES: usize = 8;

/// The profile as libseccomp's filter, built as libcontainer 0.7's `initialize_seccomp` builds
/// it from the same OCI JSON (same default, architectures, attributes and rules in the same
/// order), so the exported program is the one libcontainer used to load (a test compares
/// them). What our profile does not use is refused rather than approximated.
fn filter(
    seccomp: &oci_spec::runtime::LinuxSeccomp,
) -> Result<libseccomp::ScmpFilterContext, SeccompError> {
    use libseccomp::{
        ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    };
    use oci_spec::runtime::{Arch, LinuxSeccompAction as A, LinuxSeccompOperator as Op};
    let unsupported = |what: String| SeccompError::Unsupported(what);
    let action = |a: A, errno: Option<u32>| -> Result<ScmpAction, SeccompError> {
        // libcontainer's default errno is EPERM.
        let errno = errno.map_or(EPERM as i32, |e| e as i32);
        match a {
            A::ScmpActAllow => Ok(ScmpAction::Allow),
            A::ScmpActErrno => Ok(ScmpAction::Errno(errno)),
            other => Err(unsupported(format!("action {other:?}"))),
        }
    };
    if seccomp.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(unsupported("filter flags".into()));
    }
    let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(SeccompError::Compile)?;
    for arch in seccomp.architectures().iter().flatten() {
        let arch = match arch {
            Arch::ScmpArchX86_64 => ScmpArch::X8664,
            Arch::ScmpArchX86 => ScmpArch::X86,
            Arch::ScmpArchX32 => ScmpArch::X32,
            other => return Err(unsupported(format!("architecture {other:?}"))),
        };
        ctx.add_arch(arch).map_err(SeccompError::Compile)?;
    }
    // As libcontainer: loading never sets no_new_privs by itself (the spec's
    // `noNewPrivileges` does, and the loader checks it).
    ctx.set_ctl_nnp(false).map_err(SeccompError::Compile)?;
    for rule in seccomp.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            // libcontainer skips these (libseccomp refuses them).
            continue;
        }
        let mut cmps = Vec::new();
        for arg in rule.args().iter().flatten() {
            let op = match arg.op() {
                Op::ScmpCmpLt => ScmpCompareOp::Less,
                Op::ScmpCmpGt => ScmpCompareOp::Greater,
                Op::ScmpCmpEq => ScmpCompareOp::Equal,
                Op::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(arg.value_two().unwrap_or(0)),
                other => return Err(unsupported(format!("comparison {other:?}"))),
            };
            cmps.push(ScmpArgCompare::new(arg.index() as u32, op, arg.value()));
        }
        let mut indices: Vec<u32> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| a.index() as u32)
            .collect();
        indices.sort_unstable();
        indices.dedup();
        if indices.len() != cmps.len() {
            return Err(unsupported(
                "two comparisons of one argument in a rule".into(),
            ));
        }
        for name in rule.names() {
            // A name this libseccomp does not know is skipped, as libcontainer does: the call
            // then gets the default answer.
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                tracing::debug!(name, "seccomp: unknown system call skipped");
                continue;
            };
            if cmps.is_empty() {
                ctx.add_rule(act, sc).map_err(SeccompError::Compile)?;
            } else {
                ctx.add_rule_conditional(act, sc, &cmps)
                    .map_err(SeccompError::Compile)?;
            }
        }
    }
    Ok(ctx)
}

/// The profile compiled to a classic BPF program, in a file on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Program {
    /// The program file (the kernel's `struct sock_filter` array, native byte order).
    pub path: PathBuf,
    /// Its SHA-256, hex: the container helper refuses a file that does not match, so a
    /// damaged or replaced file stops sandboxes from starting instead of changing their
    /// filter.
    pub sha256: String,
}

impl Program {
    /// Compiles [`profile`] and writes the program into `dir` (a host directory no sandbox
    /// sees: the data dir), named by its digest so that two builds with different profiles
    /// never replace each other's file. The file is written whole and renamed into place.
    pub fn compile_into(dir: &Path) -> Result<Self, SeccompError> {
        let seccomp: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(profile())
            .map_err(|e| SeccompError::Unsupported(e.to_string()))?;
        let ctx = filter(&seccomp)?;
        let tmp = dir.join(format!(".seccomp-{}.tmp", std::process::id()));
        let bytes = (|| {
            let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            ctx.export_bpf(&file).map_err(SeccompError::Compile)?;
            std::fs::read(&tmp).map_err(io_err(&tmp))
        })();
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let path = dir.join(format!("seccomp-{}.bpf", &sha256[..16]));
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(Self { path, sha256 })
    }

    /// The program a `config.json` text names ([`PROGRAM_ANNOTATION`]).
    pub fn from_spec_json(text: &[u8]) -> Result<Self, SeccompError> {
        let v: Value =
            serde_json::from_slice(text).map_err(|e| SeccompError::Missing(e.to_string()))?;
        let a = v["annotations"][PROGRAM_ANNOTATION]
            .as_str()
            .ok_or_else(|| SeccompError::Missing(format!("no {PROGRAM_ANNOTATION} annotation")))?;
        serde_json::from_str(a).map_err(|e| SeccompError::Missing(e.to_string()))
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the program, checking it is the one named (digest) and that the kernel can take
    /// it whole: the length the kernel is given is 16 bits, so an oversized program must be
    /// refused here rather than cut short.
    pub fn load(&self) -> Result<Arc<[seccompiler::sock_filter]>, SeccompError> {
        let bytes = std::fs::read(&self.path).map_err(io_err(&self.path))?;
        let invalid = |reason: String| SeccompError::Invalid {
            path: self.path.clone(),
            reason,
        };
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        if digest != self.sha256 {
            return Err(invalid(format!(
                "SHA-256 {digest}, expected {}",
                self.sha256
            )));
        }
        let n = bytes.len() / INSTRUCTION_BYTES;
        if bytes.is_empty() || bytes.len() % INSTRUCTION_BYTES != 0 || n > MAX_INSTRUCTIONS {
            return Err(invalid(format!("{} bytes is no BPF program", bytes.len())));
        }
        Ok(bytes
            .chunks_exact(INSTRUCTION_BYTES)
            .map(|i| seccompiler::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect())
    }
}

/// libcontainer's executor with the sandbox's filter installed first: the last thing a
/// container's init does before it execs the spec's process (after `start`), so every process
/// of the sandbox, its first one included, runs under the filter. If the filter cannot be
/// installed the init fails and nothing is executed.
#[derive(Clone)]
pub struct FilteringExecutor {
    program: Arc<[seccompiler::sock_filter]>,
}

impl FilteringExecutor {
    /// An executor that installs `program` (see [`Program::load`]).
    pub fn new(program: Arc<[seccompiler::sock_filter]>) -> Self {
        Self { program }
    }
}

impl libcontainer::workload::Executor for FilteringExecutor {
    fn exec(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorError> {
        // Sets no_new_privs (checked, unlike libcontainer's own call) and installs the
        // program for this thread; the init is single-threaded. A failure returns before
        // any exec.
        seccompiler::apply_filter(&self.program).map_err(|e| {
            libcontainer::workload::ExecutorError::Other(format!(
                "installing the seccomp filter: {e}"
            ))
        })?;
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Security review M5: the profile is an allow-list (unknown and future calls fail), and
    /// io_uring, the new mount API and namespace calls are refused.
    #[test]
    fn profile_is_an_allow_list_that_refuses_io_uring_and_mount_calls() {
        let v = profile();
        let seccomp: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(v).expect("parses as OCI seccomp");
        assert_eq!(
            seccomp.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        assert_eq!(seccomp.default_errno_ret(), Some(ENOSYS));
        for name in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "mount",
            "unshare",
            "setns",
        ] {
            assert!(DENIED.contains(&name), "{name} not refused");
            assert!(!ALLOWED.contains(&name), "{name} allowed");
        }
        for name in ALLOWED {
            assert!(!DENIED.contains(name), "{name} both allowed and refused");
        }
        // Sorted and without duplicates, so a review can find a name.
        for list in [ALLOWED, DENIED] {
            let mut sorted = list.to_vec();
            sorted.sort_unstable_by_key(|n| n.trim_start_matches('_'));
            sorted.dedup();
            assert_eq!(sorted, list.to_vec());
        }
    }

    /// Set in the child of [`exported_program_is_what_libcontainer_loads`].
    const CHILD_ENV: &str = "PADDOCK_SECCOMP_TEST_CHILD";

    /// The program compiled once is, byte for byte, the one libcontainer's
    /// `initialize_seccomp` loaded into every sandbox's init from the same profile: a child
    /// (this test binary again) loads libcontainer's, and the kernel hands it back through
    /// `PTRACE_SECCOMP_GET_FILTER` (needs root).
    #[test]
    #[allow(unsafe_code)]
    fn exported_program_is_what_libcontainer_loads() {
        const NAME: &str = "seccomp::tests::exported_program_is_what_libcontainer_loads";
        if std::env::var_os(CHILD_ENV).is_some() {
            nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
            let seccomp = serde_json::from_value(profile()).expect("profile");
            libcontainer::seccomp::initialize_seccomp(&seccomp).expect("libcontainer loads");
            // Filtered now (this thread only); wait for the parent to read the filter.
            let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
            return;
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: reading a process's seccomp filter needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = Program::compile_into(dir.path()).expect("compile");
        let ours_bytes = std::fs::read(&ours.path).expect("read");
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        // The filter is on the thread that ran the test, not necessarily the main one.
        let pid = child.id();
        let mut tid = None;
        for _ in 0..1000 {
            tid = std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("tasks")
                .filter_map(|e| e.ok())
                .find(|e| {
                    std::fs::read_to_string(e.path().join("status"))
                        .is_ok_and(|s| s.contains("Seccomp:\t2"))
                })
                .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok());
            if tid.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let tid = nix::unistd::Pid::from_raw(tid.expect("the child loaded a filter"));
        nix::sys::ptrace::attach(tid).expect("attach");
        nix::sys::wait::waitpid(tid, Some(nix::sys::wait::WaitPidFlag::__WALL)).expect("stop");
        const PTRACE_SECCOMP_GET_FILTER: nix::libc::c_uint = 0x420c;
        // SAFETY: with a null buffer the kernel only returns the filter's length.
        let n = unsafe {
            nix::libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid.as_raw(),
                0usize,
                std::ptr::null_mut::<u8>(),
            )
        };
        assert!(
            n > 0,
            "PTRACE_SECCOMP_GET_FILTER: {}",
            std::io::Error::last_os_error()
        );
        let mut theirs = vec![0u8; n as usize * INSTRUCTION_BYTES];
        // SAFETY: the buffer holds the `n` instructions the kernel said it will write.
        let m = unsafe {
            nix::libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid.as_raw(),
                0usize,
                theirs.as_mut_ptr(),
            )
        };
        assert_eq!(m, n);
        let _ = nix::sys::ptrace::detach(tid, None);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(ours_bytes.len(), theirs.len(), "instruction counts differ");
        assert!(ours_bytes == theirs, "the programs differ");
        // And the helper takes it.
        assert_eq!(ours.load().expect("load").len(), n as usize);
    }

    /// A program file that is not the one named is refused, and so is anything the kernel
    /// could not take whole (not whole instructions, empty, or longer than 4096 instructions,
    /// whose 16-bit length would reach the kernel cut short).
    #[test]
    fn load_refuses_a_program_that_is_not_the_one_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = Program::compile_into(dir.path()).expect("compile");
        good.load().expect("the compiled program loads");
        let bytes = std::fs::read(&good.path).expect("read");
        let named = |b: &[u8]| {
            let path = dir.path().join("other.bpf");
            std::fs::write(&path, b).expect("write");
            Program {
                path,
                sha256: hex::encode(sha2::Sha256::digest(b)),
            }
        };
        // Changed after compiling: the digest no longer matches.
        let mut flipped = bytes.clone();
        flipped[8] ^= 1;
        std::fs::write(&good.path, &flipped).expect("write");
        assert!(matches!(good.load(), Err(SeccompError::Invalid { .. })));
        std::fs::remove_file(&good.path).expect("rm");
        assert!(matches!(good.load(), Err(SeccompError::Io { .. })));
        // Matching digests, but no whole program.
        for b in [
            &bytes[..bytes.len() - 3],
            &[][..],
            &bytes.repeat(MAX_INSTRUCTIONS * INSTRUCTION_BYTES / bytes.len() + 1)[..],
        ] {
            assert!(
                matches!(named(b).load(), Err(SeccompError::Invalid { .. })),
                "{} bytes accepted",
                b.len()
            );
        }
        // No annotation, no container.
        assert!(matches!(
            Program::from_spec_json(br#"{"annotations": {}}"#),
            Err(SeccompError::Missing(_))
        ));
    }
}
