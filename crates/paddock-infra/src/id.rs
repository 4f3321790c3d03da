//! Sandbox identifiers.

use std::fmt;

/// A sandbox id: 1 to 32 characters of `[a-z0-9]`. The E2B SDK splits host names on `-`, and
/// the id is also used as a hostname, a cgroup name and a path component, so nothing else is
/// allowed.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

/// The string given is not a valid [`SandboxId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid sandbox id {0:?}: expected 1 to 32 characters of [a-z0-9]")]
pub struct InvalidSandboxId(pub String);

impl SandboxId {
    /// Longest id accepted.
    pub const MAX_LEN: usize = 32;

    /// Validates `s` as a sandbox id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidSandboxId> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidSandboxId(s))
        }
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

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_alphanumerics() {
        assert_eq!(
            SandboxId::new("abc123").map(|i| i.to_string()),
            Ok("abc123".into())
        );
    }

    #[test]
    fn rejects_dashes_uppercase_empty_and_long() {
        for bad in ["", "a-b", "ABC", "a/b", "..", &"a".repeat(33)] {
            assert!(SandboxId::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
