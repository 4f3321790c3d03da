//! The logs routes' selection rules, kept apart from IO so they can be tested.

use paddock_infra::LogLine;
use serde_json::{Value, json};

use crate::error::ApiError;

fn rfc3339_ms(ms: u64) -> String {
    crate::records::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

fn entry(l: &LogLine) -> Value {
    json!({
        "timestamp": rfc3339_ms(l.timestamp_ms),
        "level": l.level,
        "message": l.message,
        "fields": {},
    })
}

/// `GET /sandboxes/{id}/logs?start&limit`: lines at or after `start`, oldest first.
pub fn v1(lines: &[LogLine], start: Option<u64>, limit: Option<usize>) -> Value {
    let chosen: Vec<&LogLine> = lines
        .iter()
        .filter(|l| start.is_none_or(|s| l.timestamp_ms >= s))
        .take(limit.unwrap_or(1000))
        .collect();
    json!({
        "logs": chosen.iter().map(|l| json!({
            "timestamp": rfc3339_ms(l.timestamp_ms),
            "line": format!("{} {}", l.level.to_uppercase(), l.message),
        })).collect::<Vec<_>>(),
        "logEntries": chosen.iter().map(|l| entry(l)).collect::<Vec<_>>(),
    })
}

fn rank(level: &str) -> Option<u8> {
    match level {
        "debug" => Some(0),
        "info" => Some(1),
        "warn" => Some(2),
        "error" => Some(3),
        _ => None,
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct V2Query {
    pub cursor: Option<u64>,
    pub limit: Option<usize>,
    pub direction: Option<String>,
    pub level: Option<String>,
    pub search: Option<String>,
}

/// `GET /v2/sandboxes/{id}/logs`: forward from `cursor` (oldest first) or
/// backward from it (newest first), at or above `level`, containing `search`.
pub fn v2(lines: &[LogLine], q: &V2Query) -> Result<Value, ApiError> {
    let backward = match q.direction.as_deref().unwrap_or("forward") {
        "forward" => false,
        "backward" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "direction must be forward or backward, not '{other}'"
            )));
        }
    };
    let min = match q.level.as_deref().filter(|l| !l.is_empty()) {
        None => 0,
        Some(l) => rank(l).ok_or_else(|| {
            ApiError::bad_request(format!(
                "level must be debug, info, warn or error, not '{l}'"
            ))
        })?,
    };
    let keep = |l: &&LogLine| {
        rank(&l.level).unwrap_or(1) >= min
            && q.search.as_deref().is_none_or(|s| l.message.contains(s))
            && q.cursor.is_none_or(|c| {
                if backward {
                    l.timestamp_ms <= c
                } else {
                    l.timestamp_ms >= c
                }
            })
    };
    let limit = q.limit.unwrap_or(1000);
    let chosen: Vec<Value> = if backward {
        lines
            .iter()
            .rev()
            .filter(keep)
            .take(limit)
            .map(entry)
            .collect()
    } else {
        lines.iter().filter(keep).take(limit).map(entry).collect()
    };
    Ok(json!({ "logs": chosen }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ms: u64, level: &str, msg: &str) -> LogLine {
        LogLine {
            timestamp_ms: ms,
            level: level.into(),
            message: msg.into(),
        }
    }

    fn lines() -> Vec<LogLine> {
        vec![
            line(1000, "info", "process started pid=3"),
            line(2000, "debug", "noise"),
            line(3000, "warn", "slow"),
            line(4000, "info", "process ended pid=3"),
        ]
    }

    #[test]
    fn v1_filters_by_start_and_limit() {
        let v = v1(&lines(), Some(2000), Some(2));
        assert_eq!(v["logs"].as_array().unwrap().len(), 2);
        assert_eq!(v["logEntries"][0]["message"], "noise");
        assert_eq!(v["logs"][1]["line"], "WARN slow");
        assert_eq!(v["logEntries"][1]["timestamp"], "1970-01-01T00:00:03Z");
    }

    #[test]
    fn v2_directions_levels_and_search() {
        let q = V2Query {
            level: Some("info".into()),
            ..V2Query::default()
        };
        let v = v2(&lines(), &q).unwrap();
        let msgs: Vec<_> = v["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            msgs,
            ["process started pid=3", "slow", "process ended pid=3"]
        );
        let q = V2Query {
            direction: Some("backward".into()),
            cursor: Some(3000),
            limit: Some(2),
            ..V2Query::default()
        };
        let v = v2(&lines(), &q).unwrap();
        assert_eq!(v["logs"][0]["message"], "slow");
        assert_eq!(v["logs"][1]["message"], "noise");
        let q = V2Query {
            search: Some("ended".into()),
            ..V2Query::default()
        };
        assert_eq!(
            v2(&lines(), &q).unwrap()["logs"].as_array().unwrap().len(),
            1
        );
        let bad = V2Query {
            level: Some("loud".into()),
            ..V2Query::default()
        };
        assert!(v2(&lines(), &bad).is_err());
    }
}
