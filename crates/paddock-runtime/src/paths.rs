//! Turning the paths clients send into absolute, normalised paths.

use std::path::{Component, Path, PathBuf};

use crate::users::User;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path must not be empty")]
    Empty,
    #[error("path contains a NUL byte")]
    Nul,
}

/// Resolves `raw` for `user`: `~` expands to the home directory, relative
/// paths are taken from the home directory, and `.`/`..` are folded
/// lexically (`..` never climbs above `/`).
pub fn resolve(raw: &str, user: &User) -> Result<PathBuf, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains('\0') {
        return Err(PathError::Nul);
    }
    let joined = if raw == "~" {
        user.home.clone()
    } else if let Some(rest) = raw.strip_prefix("~/") {
        user.home.join(rest)
    } else if raw.starts_with('/') {
        PathBuf::from(raw)
    } else {
        user.home.join(raw)
    };
    Ok(normalize(&joined))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: PathBuf::from("/home/user"),
        }
    }

    #[test]
    fn relative_and_tilde_paths_resolve_under_home() {
        let u = user();
        assert_eq!(
            resolve("a.txt", &u).unwrap(),
            PathBuf::from("/home/user/a.txt")
        );
        assert_eq!(resolve("~", &u).unwrap(), PathBuf::from("/home/user"));
        assert_eq!(
            resolve("~/x/y", &u).unwrap(),
            PathBuf::from("/home/user/x/y")
        );
        assert_eq!(
            resolve("/etc/hosts", &u).unwrap(),
            PathBuf::from("/etc/hosts")
        );
    }

    #[test]
    fn dot_dot_is_folded_and_cannot_climb_above_root() {
        let u = user();
        assert_eq!(
            resolve("../../../etc/passwd", &u).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        assert_eq!(resolve("/a/./b/../c/", &u).unwrap(), PathBuf::from("/a/c"));
    }

    #[test]
    fn empty_and_nul_paths_are_rejected() {
        let u = user();
        assert_eq!(resolve("", &u), Err(PathError::Empty));
        assert_eq!(resolve("a\0b", &u), Err(PathError::Nul));
    }
}
