//! Go-style durations (`30s`, `1m`, `1h30m`, `500ms`, `-1s`), the wire format of
//! `metav1.Duration` fields such as `claimTimeout` and `ttlAfterCompleted`.

use std::time::Duration;

/// A signed duration in milliseconds.
pub type Millis = i64;

/// A string that is not a Go duration; carries the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (want e.g. \"30s\", \"1m\", \"1h30m\")")]
pub struct InvalidDuration(pub String);

/// Parses a Go duration into signed milliseconds (sub-millisecond parts are truncated).
pub fn parse(s: &str) -> Result<Millis, InvalidDuration> {
    let bad = || InvalidDuration(s.to_string());
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ns += value * scale;
    }
    let ms = (total_ns / 1e6) as i64;
    Ok(if neg { -ms } else { ms })
}

/// A non-negative duration, for deadlines; negative values clamp to zero.
pub fn to_std(ms: Millis) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("30s"), Ok(30_000));
        assert_eq!(parse("1m"), Ok(60_000));
        assert_eq!(parse("60m"), Ok(3_600_000));
        assert_eq!(parse("1h30m"), Ok(5_400_000));
        assert_eq!(parse("1.5s"), Ok(1_500));
        assert_eq!(parse("500ms"), Ok(500));
        assert_eq!(parse("-1s"), Ok(-1_000));
        assert_eq!(parse("0"), Ok(0));
        assert!(parse("").is_err());
        assert!(parse("10").is_err());
        assert!(parse("1d").is_err());
        assert!(parse("s").is_err());
        assert_eq!(
            parse("1d").unwrap_err().to_string(),
            "invalid duration \"1d\" (want e.g. \"30s\", \"1m\", \"1h30m\")"
        );
    }
}
