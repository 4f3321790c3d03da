//! The sandbox's seccomp profile: an allow-list, like Docker's default profile.
//!
//! Every system call not named here fails with ENOSYS, so a call added to the kernel after this
//! list was written is refused until someone reviews it, and a program that tries one falls
//! back as it would on an older kernel. Calls known to be dangerous fail with EPERM instead:
//! kernel modules, clocks, keyrings, every mount call (old and new API), namespaces, BPF, perf,
//! io_uring (its own path around seccomp and a long CVE record), kexec, swap, quotas.
//!
//! Only x86_64 names are listed: libseccomp resolves them for the native architecture, and a
//! name it cannot resolve is skipped by libcontainer. 32-bit programs keep the calls they share
//! with x86_64; the 32-bit-only ones (`socketcall`, `*_time64`, ...) answer ENOSYS.

use serde_json::{Value, json};

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
}
