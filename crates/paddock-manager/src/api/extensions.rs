//! The original system's (OpenKruise Agents) create extensions: metadata keys under
//! `e2b.agents.kruise.io/` that change how a sandbox is created, and `label:` keys that become
//! labels of the sandbox. Clients written for the original send them; [`Extensions::take`]
//! reads them out of a create's metadata so that only the user's own metadata is kept, as the
//! original does.
//!
//! What each key does here:
//! - `never-timeout: "true"`: the sandbox never times out. Its `endAt` reads as the zero time
//!   `0001-01-01T00:00:00Z` (what the original answers: no deadline is set); set-timeout,
//!   refreshes and connect leave it without a deadline (the original never turns a
//!   never-timeout sandbox into a timed one).
//! - `create-on-no-stock: "false"`: no cold create when no warm sandbox is ready; the create
//!   fails with 503 naming the template.
//! - `return-sandbox-ip: "true"`: the sandbox's IP is in its metadata under
//!   `e2b.agents.kruise.io/sandbox-ip`, in the create answer and in list/get/connect.
//! - `label:<key>`: `<key>` becomes a label of the sandbox (Kubernetes mode: on the Sandbox
//!   and its pod), checked as a Kubernetes label key and value. The API lists labels among
//!   the sandbox's metadata, as the original does.
//!
//! The original's other extension keys: the two budgets (`claim-timeout-seconds`,
//! `wait-ready-timeout-seconds`) and the failed-sandbox retention (`reserve-failed-sandbox`,
//! `reserve-failed-sandbox-for`) are accepted, checked the way the original checks them, and
//! ignored: our creates have their own bounds, and a failed sandbox is always removed (the
//! original's default). Keys asking for something Paddock cannot do (an in-place image or CPU
//! change, CSI mounts, skipping `/init`, naming the sandbox) are refused with 400 rather than
//! silently dropped, since the client would get a sandbox other than the one it asked for. Any
//! other key under `e2b.agents.kruise.io/` or `agents.kruise.io/` is refused with 400, as the
//! original refuses it ("forbidden metadata key"): those prefixes are the system's own, so a
//! user cannot spoof, e.g., `e2b.agents.kruise.io/sandbox-ip`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::error::ApiError;

/// The prefix of the original's E2B extension keys.
pub const E2B_PREFIX: &str = "e2b.agents.kruise.io/";
/// The prefix of the original's own annotations and labels; users may not set them.
pub const SYSTEM_PREFIX: &str = "agents.kruise.io/";
/// Metadata keys with this prefix become labels.
pub const LABEL_PREFIX: &str = "label:";
/// The metadata key the sandbox's IP is returned under.
pub const SANDBOX_IP_KEY: &str = "e2b.agents.kruise.io/sandbox-ip";

const NEVER_TIMEOUT: &str = "never-timeout";
const CREATE_ON_NO_STOCK: &str = "create-on-no-stock";
const RETURN_SANDBOX_IP: &str = "return-sandbox-ip";
/// Accepted, checked as whole numbers, ignored.
const IGNORED_NUMBERS: [&str; 2] = ["claim-timeout-seconds", "wait-ready-timeout-seconds"];
/// Accepted, checked, ignored: a failed create never keeps its sandbox here.
const RESERVE_FAILED: &str = "reserve-failed-sandbox";
const RESERVE_FAILED_FOR: &str = "reserve-failed-sandbox-for";
/// Known to the original, not supported here: refused with a message saying so.
const UNSUPPORTED: [&str; 11] = [
    "image",
    "cpu-request",
    "cpu-limit",
    "csi-volume-name",
    "csi-mount-point",
    "csi-subpath",
    "csi-volume-config",
    "skip-init-runtime",
    "sandbox-name",
    "sandbox-generate-name",
    "reserve-paused-sandbox-duration",
];

pub use paddock_infra::record::{never, never_ends};

/// How the API shows a deadline: RFC 3339, and for [`never()`] the zero time the original
/// shows (Go's zero `time.Time`), which the E2B SDKs parse as a date.
pub fn end_at_json(end_at: SystemTime) -> String {
    if never_ends(end_at) {
        "0001-01-01T00:00:00Z".to_string()
    } else {
        crate::records::rfc3339(end_at)
    }
}

/// What a create's metadata asked for beyond plain metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extensions {
    pub never_timeout: bool,
    pub create_on_no_stock: bool,
    pub return_sandbox_ip: bool,
    /// `label:` keys, prefix removed.
    pub labels: BTreeMap<String, String>,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            never_timeout: false,
            create_on_no_stock: true,
            return_sandbox_ip: false,
            labels: BTreeMap::new(),
        }
    }
}

impl Extensions {
    /// Reads the extensions out of `metadata`, removing their keys; 400 naming the key for a
    /// bad value, an unsupported extension or a reserved key.
    pub fn take(metadata: &mut BTreeMap<String, String>) -> Result<Self, ApiError> {
        let mut ext = Self::default();
        let keys: Vec<String> = metadata.keys().cloned().collect();
        for key in keys {
            if let Some(label) = key.strip_prefix(LABEL_PREFIX) {
                let value = metadata.remove(&key).unwrap_or_default();
                check_label(label, &value)?;
                ext.labels.insert(label.to_string(), value);
                continue;
            }
            let Some(name) = key.strip_prefix(E2B_PREFIX) else {
                if key.starts_with(SYSTEM_PREFIX) {
                    return Err(forbidden(&key));
                }
                continue;
            };
            let value = metadata[&key].as_str();
            match name {
                NEVER_TIMEOUT => ext.never_timeout = boolean(&key, value)?,
                CREATE_ON_NO_STOCK => ext.create_on_no_stock = boolean(&key, value)?,
                RETURN_SANDBOX_IP => ext.return_sandbox_ip = boolean(&key, value)?,
                RESERVE_FAILED => {
                    boolean(&key, value)?;
                }
                RESERVE_FAILED_FOR => reserve_for(&key, value)?,
                n if IGNORED_NUMBERS.contains(&n) => {
                    value.trim().parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!(
                            "metadata '{key}' must be a whole number of seconds, not {value:?}"
                        ))
                    })?;
                }
                n if UNSUPPORTED.contains(&n) => {
                    return Err(ApiError::bad_request(format!(
                        "metadata '{key}' is an OpenKruise Agents extension Paddock does not support"
                    )));
                }
                _ => return Err(forbidden(&key)),
            }
            metadata.remove(&key);
        }
        // Labels are listed among the metadata; two different values under one name would
        // make the listing ambiguous.
        for (k, v) in &ext.labels {
            if metadata.get(k).is_some_and(|m| m != v) {
                return Err(ApiError::bad_request(format!(
                    "metadata has both '{k}' and '{LABEL_PREFIX}{k}' with different values"
                )));
            }
        }
        Ok(ext)
    }

    /// The metadata the API shows for the sandbox: the user's metadata, the labels, and the
    /// sandbox's IP when it was asked for.
    pub fn listed_metadata(
        &self,
        metadata: &BTreeMap<String, String>,
        ip: IpAddr,
    ) -> BTreeMap<String, String> {
        let mut shown = metadata.clone();
        shown.extend(self.labels.clone());
        if self.return_sandbox_ip {
            shown.insert(SANDBOX_IP_KEY.to_string(), ip.to_string());
        }
        shown
    }
}

fn forbidden(key: &str) -> ApiError {
    ApiError::bad_request(format!(
        "forbidden metadata key '{key}': the prefixes '{E2B_PREFIX}' and '{SYSTEM_PREFIX}' are \
         reserved for the system's own extensions"
    ))
}

/// `"true"` or `"false"`. The original reads anything but the one value it looks for as the
/// default; a typo there silently gives another sandbox than asked for, so it is a 400 here.
fn boolean(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "metadata '{key}' must be \"true\" or \"false\", not {value:?}"
        ))),
    }
}

/// `never`, `forever`, or a duration such as `90s`, `10m`, `1h30m` (Go's syntax, the units
/// the original's values use).
fn reserve_for(key: &str, value: &str) -> Result<(), ApiError> {
    if value == "never" || value == "forever" || is_go_duration(value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "metadata '{key}' must be \"never\", \"forever\" or a duration like \"10m\", not {value:?}"
        )))
    }
}

/// A non-negative Go duration: one or more `<number><unit>`, units ns us µs ms s m h.
fn is_go_duration(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        if !["ns", "us", "µs", "ms", "s", "m", "h"].contains(&&rest[..unit]) {
            return false;
        }
        rest = &rest[unit..];
    }
    true
}

/// Checks a label the way Kubernetes does: the key is a qualified name (an optional DNS
/// subdomain prefix and `/`, then a name of at most 63 characters), the value at most 63
/// characters of the same alphabet. Prefixes Kubernetes and the original reserve for
/// themselves are refused: a user label must not pose as a system one on the pod.
fn check_label(key: &str, value: &str) -> Result<(), ApiError> {
    let bad_key = |why: &str| {
        ApiError::bad_request(format!(
            "invalid label key '{key}' (metadata '{LABEL_PREFIX}{key}'): {why}"
        ))
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(bad_key(
                "the prefix must be a DNS subdomain (lowercase letters, digits, '-' and '.', \
                 at most 253 characters)",
            ));
        }
        let reserved = ["agents.kruise.io", "kubernetes.io", "k8s.io"];
        if reserved
            .iter()
            .any(|r| p == *r || p.ends_with(&format!(".{r}")))
        {
            return Err(bad_key("the prefix is reserved for the system"));
        }
    }
    if name.is_empty() || !is_label_value(name) {
        return Err(bad_key(
            "the name must be 1 to 63 characters of letters, digits, '-', '_' and '.', \
             beginning and ending with a letter or digit",
        ));
    }
    if !is_label_value(value) {
        return Err(ApiError::bad_request(format!(
            "invalid value {value:?} of label '{key}': at most 63 characters of letters, digits, \
             '-', '_' and '.', beginning and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Empty, or at most 63 of `[A-Za-z0-9._-]` with an alphanumeric first and last character.
fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: dot-separated labels of `[a-z0-9-]`, alphanumeric at both ends, at
/// most 253 characters in all.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_extensions_are_read_and_removed() {
        let mut m = meta(&[
            ("user", "kept"),
            ("e2b.agents.kruise.io/never-timeout", "true"),
            ("e2b.agents.kruise.io/create-on-no-stock", "false"),
            ("e2b.agents.kruise.io/return-sandbox-ip", "true"),
            ("e2b.agents.kruise.io/claim-timeout-seconds", "30"),
            ("e2b.agents.kruise.io/reserve-failed-sandbox-for", "1h30m"),
            ("label:app", "web"),
            ("label:example.com/tier", "front-end_1"),
        ]);
        let ext = Extensions::take(&mut m).unwrap();
        assert_eq!(m, meta(&[("user", "kept")]));
        assert!(ext.never_timeout && ext.return_sandbox_ip && !ext.create_on_no_stock);
        assert_eq!(
            ext.labels,
            meta(&[("app", "web"), ("example.com/tier", "front-end_1")])
        );
        let shown = ext.listed_metadata(&m, "10.0.0.7".parse().unwrap());
        assert_eq!(shown[SANDBOX_IP_KEY], "10.0.0.7");
        assert_eq!(shown["app"], "web");
        assert_eq!(shown["user"], "kept");
    }

    #[test]
    fn without_extensions_nothing_changes() {
        let mut m = meta(&[("a", "b")]);
        assert_eq!(Extensions::take(&mut m).unwrap(), Extensions::default());
        assert_eq!(m, meta(&[("a", "b")]));
        assert!(Extensions::default().create_on_no_stock);
    }

    #[test]
    fn bad_or_reserved_keys_are_400_naming_the_key() {
        for (key, value, says) in [
            ("e2b.agents.kruise.io/never-timeout", "yes", "never-timeout"),
            ("e2b.agents.kruise.io/sandbox-ip", "1.2.3.4", "forbidden"),
            ("e2b.agents.kruise.io/whatever", "x", "forbidden"),
            ("agents.kruise.io/owner", "x", "forbidden"),
            ("e2b.agents.kruise.io/image", "nginx", "does not support"),
            (
                "e2b.agents.kruise.io/wait-ready-timeout-seconds",
                "soon",
                "whole number",
            ),
            (
                "e2b.agents.kruise.io/reserve-failed-sandbox-for",
                "1 day",
                "duration",
            ),
            ("label:", "x", "label key"),
            ("label:-bad", "x", "label key"),
            ("label:Upper.Case/x", "x", "prefix"),
            ("label:kubernetes.io/x", "x", "reserved"),
            ("label:node.k8s.io/x", "x", "reserved"),
            ("label:e2b.agents.kruise.io/x", "x", "reserved"),
            ("label:ok", "has space", "invalid value"),
            ("label:ok", &"v".repeat(64), "invalid value"),
        ] {
            let mut m = meta(&[(key, value)]);
            let e = Extensions::take(&mut m).unwrap_err();
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{key}");
            assert!(e.message.contains(says), "{key}: {}", e.message);
            let named = key.strip_prefix(LABEL_PREFIX).unwrap_or(key);
            assert!(
                e.message.contains(named) || e.message.contains(value),
                "{key}: {}",
                e.message
            );
        }
        let mut m = meta(&[("label:app", "a"), ("app", "b")]);
        assert!(Extensions::take(&mut m).is_err());
    }

    #[test]
    fn never_timeout_shows_the_zero_time() {
        let end = never();
        assert!(never_ends(end));
        assert_eq!(crate::records::rfc3339(end), "9999-12-31T23:59:59Z");
        assert_eq!(end_at_json(end), "0001-01-01T00:00:00Z");
        let timed = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(!never_ends(timed));
        assert_ne!(end_at_json(timed), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn go_durations() {
        for ok in ["0", "10s", "1h30m", "1.5h", "300ms"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["", "10", "s", "-1s", "1d", "1h 30m"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }
}
