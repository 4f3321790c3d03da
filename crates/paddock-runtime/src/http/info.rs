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

pub async fn metrics() -> Json<Metrics> {
    let before = cpu_times();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = cpu_times();
    let cpu_used_pct = match (before, after) {
        (Some((b_busy, b_total)), Some((a_busy, a_total))) if a_total > b_total => {
            ((a_busy - b_busy) as f64 / (a_total - b_total) as f64 * 100.0 * 100.0).round() / 100.0
        }
        _ => 0.0,
    };
    let mem = meminfo();
    let (disk_used, disk_total) = disk("/");
    let total = mem.get("MemTotal").copied().unwrap_or_default();
    let available = mem.get("MemAvailable").copied().unwrap_or_default();
    let used = total.saturating_sub(available);
    Json(Metrics {
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default(),
        cpu_count: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
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
