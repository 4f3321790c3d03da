//! Sandbox identifiers.

use std::fmt;

/// A sandbox id, in one of two forms:
///
/// * embedded sandboxes: 1 to 32 characters of `[a-z0-9]`;
/// * Kubernetes sandboxes: the original system's `<namespace>--<name>`, e.g.
///   `default--base-x7k2q`, so clients written for it keep their ids.
///
/// Both are lowercase: the id is a DNS label in `<port>-<id>.<domain>` host names (DNS is case
/// insensitive, so `ABC` and `abc` would reach the same sandbox) and a path component and
/// cgroup name in embedded mode, so nothing but `[a-z0-9-]` is allowed, never a leading or
/// trailing `-`. Host names are parsed on their *first* `-` (the port never holds one), so a
/// `-` inside the id is unambiguous.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

/// The string given is not a valid [`SandboxId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid sandbox id {0:?}: expected [a-z0-9] characters (embedded) or <namespace>--<name> (Kubernetes)"
)]
pub struct InvalidSandboxId(pub String);

impl SandboxId {
    /// Longest id accepted: a namespace (63), `--` and a Sandbox name (253).
    pub const MAX_LEN: usize = 63 + 2 + 253;
    /// Separates the namespace from the name in Kubernetes ids.
    pub const NAMESPACE_SEPARATOR: &'static str = "--";

    /// Validates `s` as a sandbox id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidSandboxId> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidSandboxId(s))
        }
    }

    /// The id of the Sandbox resource `name` in `namespace`.
    pub fn for_resource(namespace: &str, name: &str) -> Result<Self, InvalidSandboxId> {
        if namespace.is_empty() || namespace.contains(Self::NAMESPACE_SEPARATOR) {
            return Err(InvalidSandboxId(format!("{namespace}--{name}")));
        }
        Self::new(format!("{namespace}{}{name}", Self::NAMESPACE_SEPARATOR))
    }

    /// The namespace and name of a Kubernetes id (split at its first `--`: Kubernetes
    /// namespaces are DNS labels and never hold one); `None` for an embedded id.
    pub fn resource(&self) -> Option<(&str, &str)> {
        self.0
            .split_once(Self::NAMESPACE_SEPARATOR)
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SandboxId {
    type Error = InvalidSandboxId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> Self {
        id.0
    }
}

/// Maps keyed by id can be read with a plain `&str` (no id built per lookup: the data plane's
/// route reads). Consistent with `Hash`/`Eq`, which are the inner string's.
impl std::borrow::Borrow<str> for SandboxId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keyed_by_id_are_read_by_str() {
        let id = SandboxId::new("team-a--base-x7k2q").unwrap();
        let map = std::collections::HashMap::from([(id, 1)]);
        assert_eq!(map.get("team-a--base-x7k2q"), Some(&1));
        assert_eq!(map.get("team-a--base"), None);
    }

    #[test]
    fn accepts_lowercase_alphanumerics() {
        assert_eq!(
            SandboxId::new("abc123").map(|i| i.to_string()),
            Ok("abc123".into())
        );
    }

    #[test]
    fn accepts_the_kubernetes_form_and_splits_it_back() {
        let id = SandboxId::new("team-a--base-x7k2q").unwrap();
        assert_eq!(id.resource(), Some(("team-a", "base-x7k2q")));
        assert_eq!(SandboxId::for_resource("team-a", "base-x7k2q").unwrap(), id);
        assert_eq!(SandboxId::new("abc123").unwrap().resource(), None);
        assert_eq!(SandboxId::new("a-b").unwrap().resource(), None);
    }

    #[test]
    fn rejects_uppercase_empty_edges_and_long() {
        let long = "a".repeat(SandboxId::MAX_LEN + 1);
        for bad in ["", "-ab", "ab-", "ABC", "a/b", "..", "a.b", "a_b", &long] {
            assert!(SandboxId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SandboxId::for_resource("", "x").is_err());
        assert!(SandboxId::for_resource("a--b", "x").is_err());
        assert!(SandboxId::for_resource("ns", "Upper").is_err());
    }
}
