//! `GET /health`, `GET /envs` and `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::state::Runtime;

pub async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

pub async fn envs(
    State(rt): State<Arc<Runtime>>,
) -> Json<std::collections::BTreeMap<String, String>> {
    Json(rt.settings().env)
}

/// Resource usage as envd reports it.
#[derive(Debug, Serialize)]
pub struct Metrics {
    pub ts: i64,
    pub cpu_count: usize,
    pub cpu_used_pct: f64,
    pub mem_total: u64,
    pub mem_used: u64,
    pub mem_cache: u64,
    pub mem_total_mib: u64,
    pub mem_used_mib: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// The sandbox's share of the machine: its own cgroup when it has one (a Pod, a container),
/// else the whole machine (`/proc` is the host's view in a container and would report the
/// node's memory and CPU).
pub async fn metrics() -> Json<Metrics> {
    let cgroup = paddock_cgroups::Hierarchy::own().ok();
    let cg_stats = || cgroup.as_ref().and_then(|c| c.stats().ok());
    let cpu_count = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let window = Duration::from_millis(50);
    let (before, cg_before) = (cpu_times(), cg_stats());
    tokio::time::sleep(window).await;
    let (after, cg_after) = (cpu_times(), cg_stats());
    let cpu_used_pct = match (cg_before, &cg_after, before, after) {
        // CPU time of the cgroup over the window, against `cpu_count` CPUs (the quota's).
        (Some(b), Some(a), ..) => {
            let used = a.cpu_usage_ns.saturating_sub(b.cpu_usage_ns) as f64;
            let pct = used / (window.as_nanos() as f64 * cpu_count as f64) * 100.0;
            (pct.min(100.0) * 100.0).round() / 100.0
        }
        (_, _, Some((b_busy, b_total)), Some((a_busy, a_total))) if a_total > b_total => {
            ((a_busy - b_busy) as f64 / (a_total - b_total) as f64 * 100.0 * 100.0).round() / 100.0
        }
        _ => 0.0,
    };
    let mem = meminfo();
    let (disk_used, disk_total) = disk("/");
    let (total, used) = memory(&mem, cg_after.as_ref());
    Json(Metrics {
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default(),
        cpu_count,
        cpu_used_pct,
        mem_total: total,
        mem_used: used,
        mem_cache: mem.get("Cached").copied().unwrap_or_default(),
        mem_total_mib: total / (1024 * 1024),
        mem_used_mib: used / (1024 * 1024),
        disk_used,
        disk_total,
    })
}

/// (total, used) memory: the cgroup's limit and usage when it has a limit below the
/// machine's memory, else the machine's total and what is not available.
fn memory(
    mem: &std::collections::HashMap<String, u64>,
    cg: Option<&paddock_cgroups::CgroupStats>,
) -> (u64, u64) {
    let machine = mem.get("MemTotal").copied().unwrap_or_default();
    match cg {
        Some(s) if s.memory_limit_bytes < machine => (
            s.memory_limit_bytes,
            s.memory_bytes.min(s.memory_limit_bytes),
        ),
        _ => {
            let available = mem.get("MemAvailable").copied().unwrap_or_default();
            (machine, machine.saturating_sub(available))
        }
    }
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// /proc/meminfo in bytes.
fn meminfo() -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

fn disk(path: &str) -> (u64, u64) {
    match rustix::fs::statvfs(path) {
        Ok(s) => {
            let total = s.f_blocks * s.f_frsize;
            let free = s.f_bfree * s.f_frsize;
            (total.saturating_sub(free), total)
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> std::collections::HashMap<String, u64> {
        [("MemTotal", 8 << 30), ("MemAvailable", 6 << 30)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn a_limited_cgroup_reports_its_own_memory() {
        let s = paddock_cgroups::CgroupStats {
            memory_bytes: 100 << 20,
            memory_limit_bytes: 512 << 20,
            ..Default::default()
        };
        assert_eq!(memory(&machine(), Some(&s)), (512 << 20, 100 << 20));
    }

    #[test]
    fn without_a_limit_the_machine_is_reported() {
        // v1's "unlimited" is a huge number, v2's is read as u64::MAX.
        for limit in [u64::MAX, 9_223_372_036_854_771_712] {
            let s = paddock_cgroups::CgroupStats {
                memory_bytes: 100 << 20,
                memory_limit_bytes: limit,
                ..Default::default()
            };
            assert_eq!(memory(&machine(), Some(&s)), (8 << 30, 2 << 30));
        }
        assert_eq!(memory(&machine(), None), (8 << 30, 2 << 30));
    }
}
