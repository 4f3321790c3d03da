//! `--install-to` and `--detach`, run as the real binary: what an injection init container and
//! a `postStart` hook do.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

// Every run sets PADDOCK_RUNTIME_NO_SUDO: this host's /usr and /run are not a sandbox's.
const BIN: &str = env!("CARGO_BIN_EXE_paddock-runtime");

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `GET /health` over a plain socket; returns the status line.
fn health(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.lines().next().unwrap_or_default().to_string()
}

fn session_of(pid: u32) -> Option<u32> {
    // /proc/PID/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(3)?.parse().ok()
}

/// Kills the detached runtime when the test ends, pass or fail.
struct Kill(u32);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

#[test]
fn install_to_copies_a_working_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("mnt/runtime");
    // Options set through the environment (as an image or a Pod may do) do not stop the copy.
    let out = Command::new(BIN)
        .env("PADDOCK_RUNTIME_NO_SUDO", "true")
        .arg("--install-to")
        .arg(&target)
        .env("PADDOCK_KERNEL_PYTHON", "/usr/bin/python3")
        .env("PADDOCK_LOG", "debug")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let dest = target.join("paddock-runtime");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dest.to_str().expect("utf8")
    );
    assert_eq!(
        std::fs::read(&dest).expect("read copy"),
        std::fs::read(BIN).expect("read original")
    );
    let v = Command::new(&dest)
        .arg("--version")
        .output()
        .expect("run copy");
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("paddock-runtime "));
}

#[test]
fn install_to_refuses_other_arguments() {
    let out = Command::new(BIN)
        .env("PADDOCK_RUNTIME_NO_SUDO", "true")
        .args(["--install-to", "/tmp/x", "--detach"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
}

#[test]
fn detach_returns_once_the_runtime_serves_in_its_own_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("logs/runtime.log");
    let port = free_port();
    let out = Command::new(BIN)
        .env("PADDOCK_RUNTIME_NO_SUDO", "true")
        .args([
            "--detach",
            "--no-code-interpreter",
            "--default-user",
            "root",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--log-file")
        .arg(&log)
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the child's pid on stdout");
    let _kill = Kill(pid);

    // No wait here: the parent returned only once the child listened.
    assert_eq!(health(port), "HTTP/1.1 204 No Content");
    let ours = session_of(std::process::id()).expect("our session");
    assert_eq!(session_of(pid), Some(pid), "the child leads a new session");
    assert_ne!(ours, pid);
    // Its output goes to the log file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(
            Instant::now() < deadline,
            "no 'listening' line in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn detach_fails_when_the_runtime_cannot_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("runtime.log");
    // An address this host does not have: the child exits with a bind error.
    let port = free_port();
    let out = Command::new(BIN)
        .env("PADDOCK_RUNTIME_NO_SUDO", "true")
        .args([
            "--detach",
            "--no-code-interpreter",
            "--default-user",
            "root",
        ])
        .arg("--listen")
        .arg(format!("10.255.255.254:{port}"))
        .arg("--log-file")
        .arg(&log)
        // a backtrace would push the error itself out of the reported log tail
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exited") && err.contains("listening on 10.255.255.254"),
        "{err}"
    );
    assert!(Path::new(&log).exists());
}
