//! Small readers of `/proc` and the file system.

use std::path::Path;

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is running (not a zombie) and, if `ticks` is non-zero, is the same process
/// that had that start time.
pub fn alive(pid: i32, ticks: u64) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = s.rfind(')') else {
        return false;
    };
    let rest = &s[close + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next().unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    ticks == 0 || rest.split(' ').nth(19).and_then(|t| t.parse::<u64>().ok()) == Some(ticks)
}

/// Bytes used by regular files under `dir` (not following symlinks or crossing mounts).
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_with_its_start_time() {
        let me = std::process::id() as i32;
        let t = start_ticks(me).expect("ticks");
        assert!(alive(me, t));
        assert!(
            !alive(me, t + 1),
            "a different start time means a recycled pid"
        );
        assert!(!alive(i32::MAX, 0));
    }

    #[test]
    fn du_counts_file_bytes() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("a")).expect("mkdir");
        std::fs::write(d.path().join("a/f"), [0u8; 1000]).expect("w");
        std::fs::write(d.path().join("g"), [0u8; 24]).expect("w");
        assert_eq!(du(d.path()), 1024);
    }
}
