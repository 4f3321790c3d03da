//! Reading a sandbox's runtime log back as structured lines.

use paddock_infra::LogLine;

/// Most of a log that is read back: the tail, so a chatty sandbox cannot make
/// a logs request expensive.
pub const MAX_LOG_BYTES: u64 = 1 << 20;

/// Parses `tracing`'s default format (`<RFC 3339> <LEVEL> <target>: <message>`), with or
/// without colour codes. A line in another shape (init's own output, a panic) keeps the
/// previous line's time (or `fallback_ms`) and level `info`.
pub fn parse(text: &str, fallback_ms: u64) -> Vec<LogLine> {
    let mut last_ms = fallback_ms;
    text.lines()
        .map(strip_ansi)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let trimmed = line.trim_start();
            let mut parts = trimmed.splitn(2, char::is_whitespace);
            let first = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default().trim_start();
            let parsed =
                time::OffsetDateTime::parse(first, &time::format_description::well_known::Rfc3339);
            let Ok(ts) = parsed else {
                return LogLine {
                    timestamp_ms: last_ms,
                    level: "info".into(),
                    message: line.trim_end().to_string(),
                };
            };
            last_ms = (ts.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            let mut parts = rest.splitn(2, char::is_whitespace);
            let level_word = parts.next().unwrap_or_default();
            let (level, message) = match level_word {
                "TRACE" | "DEBUG" => ("debug", parts.next().unwrap_or_default()),
                "INFO" => ("info", parts.next().unwrap_or_default()),
                "WARN" => ("warn", parts.next().unwrap_or_default()),
                "ERROR" => ("error", parts.next().unwrap_or_default()),
                _ => ("info", rest),
            };
            LogLine {
                timestamp_ms: last_ms,
                level: level.into(),
                message: message.trim().to_string(),
            }
        })
        .collect()
}

/// Drops `ESC [ ... letter` sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_lines_with_and_without_colour() {
        let text = "\u{1b}[2m2026-11-28T16:00:00.500000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mpaddock_runtime::process::service\u{1b}[0m\u{1b}[2m:\u{1b}[0m process started \u{1b}[3mpid\u{1b}[0m\u{1b}[2m=\u{1b}[0m7\n\
                    panicked somewhere\n\
                    2026-11-28T16:00:01Z  WARN x: slow\n\n";
        let lines = parse(text, 5);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].level, "info");
        assert_eq!(lines[0].timestamp_ms, 1_795_881_600_500);
        assert_eq!(
            lines[0].message,
            "paddock_runtime::process::service: process started pid=7"
        );
        // A line in no known shape inherits the previous time.
        assert_eq!(lines[1].timestamp_ms, 1_795_881_600_500);
        assert_eq!(lines[1].message, "panicked somewhere");
        assert_eq!(lines[2].level, "warn");
        assert_eq!(lines[2].message, "x: slow");
    }

    #[test]
    fn lines_before_any_timestamp_use_the_fallback() {
        let lines = parse("[WARN  tini (1)] something", 42);
        assert_eq!(lines[0].timestamp_ms, 42);
        assert_eq!(lines[0].level, "info");
    }
}
