//! Directories only root may enter: the data dir and the sandbox trees under it.
//!
//! Sandbox roots, their writable layers and their state live under the data dir in the host's
//! mount namespace. A sandbox's root user can plant setuid programs and device nodes there, so
//! host users must not be able to reach them: the directories are 0700, also when an earlier
//! version (or an admin) left them 0755.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of the data dir and its sandbox trees.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents, which get mode 0700 as well) and makes it 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_open_dir_is_closed_and_a_new_one_is_private() {
        let d = tempfile::tempdir().expect("tempdir");
        let open = d.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&open).expect("close");
        let fresh = d.path().join("a/b");
        create_private_dir(&fresh).expect("create");
        for p in [&open, &fresh, &d.path().join("a")] {
            let mode = std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
            assert_eq!(mode, PRIVATE_DIR_MODE, "{}", p.display());
        }
    }
}
