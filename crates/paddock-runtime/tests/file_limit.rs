//! The runtime raises its own soft open-file limit: sandboxes start with a soft limit of 1024
//! (security review L5 fixed the limits), which a busy runtime would run out of.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The soft and hard "Max open files" of a process, from /proc.
fn nofile(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    Some((f.next()?.to_string(), f.next()?.to_string()))
}

#[test]
fn the_runtime_raises_its_soft_file_limit_to_the_hard_one() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root (the runtime prepares its default user)");
        return;
    }
    // prlimit starts the runtime with soft 256, hard 4096.
    let mut child = Command::new("prlimit")
        .arg("--nofile=256:4096")
        .arg(env!("CARGO_BIN_EXE_paddock-runtime"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--code-interpreter-listen",
            "127.0.0.1:0",
        ])
        // This host's /usr and /run are not a sandbox's to put sudo in.
        .env("PADDOCK_RUNTIME_NO_SUDO", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run prlimit");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = nofile(child.id());
        // Until prlimit has applied the limits (hard 4096) the process still has the test's
        // own; then it execs the runtime, which raises the soft limit at start.
        if seen
            .as_ref()
            .is_some_and(|(soft, hard)| hard == "4096" && soft != "256")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen,
        Some(("4096".to_string(), "4096".to_string())),
        "the runtime's open-file limits"
    );
}
