//! Files holding secrets (the admin key, every sandbox's access token, the API keys' hashes):
//! readable by their owner only whatever the umask, and replaced atomically so a crash never
//! leaves half a file (audit H2).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Owner read/write only.
const FILE_MODE: u32 = 0o600;
/// Owner only.
const DIR_MODE: u32 = 0o700;

/// Why a secret file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path} has no parent directory")]
    NoParent { path: PathBuf },
    #[error("creating {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replacing {path}")]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<SecretFileError> for std::io::Error {
    fn from(e: SecretFileError) -> Self {
        std::io::Error::other(e)
    }
}

/// Replaces `path` with `bytes`, mode 0600: a temp file in the same directory (so the rename
/// is atomic) created 0600 (the mode is set again explicitly, since `open`'s mode is masked
/// by the umask and a leftover temp file keeps its old mode), synced, then renamed over
/// `path`. The directory is synced too, so the rename survives a crash.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), SecretFileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut name = path
        .file_name()
        .ok_or_else(|| SecretFileError::NoParent {
            path: path.to_path_buf(),
        })?
        .to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let write_err = |source| SecretFileError::Write {
        path: tmp.clone(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(|source| SecretFileError::Create {
            path: tmp.clone(),
            source,
        })?;
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(write_err)?;
    f.write_all(bytes).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|source| SecretFileError::Rename {
        path: path.to_path_buf(),
        source,
    })?;
    // Best effort: a filesystem that cannot sync a directory still renamed atomically.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Tightens an existing file to 0600 (files written before this module existed were 0644).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) if missing; a directory created here is 0700. An existing
/// one is left as it is: it may be shared on purpose, and the files in it are 0600 anyway.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_a_world_readable_file_with_an_owner_only_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A stale temp file from a crash, world-readable.
        let tmp = dir.path().join("secret.tmp");
        std::fs::write(&tmp, b"stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn a_new_directory_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
    }
}

/// Audit H2 (secrets at rest): under the usual umask 022, the admin key, `sandboxes.json`
/// (every access token) and `api-keys.json` are written owner-only, through the manager's own
/// store functions.
#[cfg(test)]
mod h2 {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    use nix::sys::stat::{Mode, umask};

    use crate::keys::{KeyStore, Quota};
    use crate::records::{ApiState, OnTimeout, Records, SandboxRecord};
    use paddock_infra::record::RecordStore;

    fn assert_owner_only(p: &std::path::Path) {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {:o}", p.display(), mode & 0o777);
    }

    #[tokio::test]
    async fn secrets_at_rest_are_owner_only_under_umask_022() {
        // Process-wide, but 022 is what every test expects anyway.
        umask(Mode::from_bits_truncate(0o022));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");

        let (_, source) = crate::admin_key::resolve(None, None, &data).unwrap();
        let crate::admin_key::Source::Generated(admin) = source else {
            panic!("a new data dir has no admin key yet")
        };
        assert_owner_only(&admin);
        assert_owner_only(&data);

        let keys = KeyStore::open(&data, "e2b_admin").await.unwrap();
        keys.create("blue", "ci", Quota::default()).await.unwrap();
        assert_owner_only(&data.join("api-keys.json"));

        let file = data.join("sandboxes.json");
        let records = Records::open(file.clone()).unwrap();
        let now = SystemTime::now();
        records
            .insert(SandboxRecord {
                id: paddock_infra::SandboxId::new("aaaaaaaaaaaaaaaaaaaa").unwrap(),
                team: "blue".into(),
                template: "base".into(),
                metadata: Default::default(),
                started_at: now,
                end_at: now + Duration::from_secs(60),
                state: ApiState::Running,
                access_token: "secret-token".into(),
                traffic_token: None,
                address: "10.0.0.2:49983".parse().unwrap(),
                cpu_count: 1,
                memory_mb: 512,
                disk_mb: 0,
                on_timeout: OnTimeout::Kill,
                auto_resume: false,
                allow_internet_access: true,
            })
            .await
            .unwrap();
        // The change went to the journal; opening again folds it into the snapshot.
        assert_owner_only(&data.join("sandboxes.journal"));
        Records::open(file.clone()).unwrap();
        assert_owner_only(&file);

        // Files an older version left world-readable are tightened when opened.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Records::open(file.clone()).unwrap();
        assert_owner_only(&file);
    }
}
