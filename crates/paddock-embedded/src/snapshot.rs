//! Snapshots on disk: each one a directory under `<data>/snapshots` (0700, like the sandbox
//! trees: a captured layer holds whatever the sandbox's root planted, setuid files included)
//! with its description (`meta.json`) and its read-only layers (`layers/0` topmost).
//!
//! A snapshot of a sandbox made from another snapshot carries that snapshot's layers too, as
//! hard links: the layers never change once written, so sharing their files is safe and costs
//! no copy, and deleting the older snapshot leaves the newer one whole.
//!
//! A snapshot is made in a staging directory (`.tmp-<id>`) and renamed into place when
//! complete; a deleted one is renamed away (`.del-<id>`) before its files go. Leftovers of
//! either (a crash halfway) are removed when the store is opened.

use std::path::{Path, PathBuf};
use std::process::Command;

use paddock_infra::SnapshotInfo;

/// Snapshot store errors.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("snapshot store: {op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Copying a layer failed (out of disk, ...).
    #[error("copying {from} to {to} failed: {detail}")]
    Copy {
        /// Source tree.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// `cp`'s complaint.
        detail: String,
    },
    /// A description could not be read or written.
    #[error("snapshot description {path}: {source}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// What `meta.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    info: SnapshotInfo,
    /// Number of layers under `layers/`.
    layers: usize,
}

const STAGING: &str = ".tmp-";
const DELETING: &str = ".del-";

/// The snapshots under one directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating it 0700) the store at `root`, removing half-made and half-deleted
    /// snapshots.
    pub fn open(root: PathBuf) -> Result<Self, SnapshotError> {
        crate::private_dir::create_private_dir(&root).map_err(io("create", &root))?;
        for entry in std::fs::read_dir(&root).map_err(io("read", &root))? {
            let entry = entry.map_err(io("read", &root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING) || name.starts_with(DELETING) {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(io("remove", &p))?;
            }
        }
        Ok(Self { root })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Every complete snapshot, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io("read", &self.root))? {
            let entry = entry.map_err(io("read", &self.root))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            out.push(read_meta(&entry.path())?.info);
        }
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    /// One snapshot, if it exists. `id` is checked as an id first, so a caller's text can
    /// never name a path outside the store.
    pub fn get(&self, id: &str) -> Result<Option<SnapshotInfo>, SnapshotError> {
        if !valid_id(id) || !self.dir(id).exists() {
            return Ok(None);
        }
        read_meta(&self.dir(id)).map(|m| Some(m.info))
    }

    /// The snapshot's layers, topmost first (`None`: no such snapshot).
    pub fn layers(&self, id: &str) -> Result<Option<Vec<PathBuf>>, SnapshotError> {
        if !valid_id(id) || !self.dir(id).exists() {
            return Ok(None);
        }
        let m = read_meta(&self.dir(id))?;
        Ok(Some(
            (0..m.layers)
                .map(|i| self.dir(id).join("layers").join(i.to_string()))
                .collect(),
        ))
    }

    /// Where a snapshot (or a fork's copy) is staged before it is complete. Removed on
    /// [`Self::open`] if never committed.
    pub fn staging(&self, id: &str) -> PathBuf {
        self.root.join(format!("{STAGING}{id}"))
    }

    /// Makes a staged snapshot whose top layer is a copy of `upper` and whose other layers
    /// are hard links to `parent_layers`. Call with the sandbox frozen: this is the copy.
    pub fn stage_layers(
        &self,
        id: &str,
        upper: &Path,
        parent_layers: &[PathBuf],
    ) -> Result<(), SnapshotError> {
        let layers = self.staging(id).join("layers");
        crate::private_dir::create_private_dir(&layers).map_err(io("create", &layers))?;
        copy_tree(upper, &layers.join("0"), false)?;
        for (i, p) in parent_layers.iter().enumerate() {
            copy_tree(p, &layers.join((i + 1).to_string()), true)?;
        }
        Ok(())
    }

    /// Completes a staged snapshot: writes its description (with its size) and moves it into
    /// place. Returns the description as stored.
    pub fn commit(&self, mut info: SnapshotInfo) -> Result<SnapshotInfo, SnapshotError> {
        let staged = self.staging(&info.id);
        let layers = std::fs::read_dir(staged.join("layers"))
            .map_err(io("read", &staged))?
            .count();
        info.size_bytes = tree_size(&staged.join("layers"))?;
        let meta = Meta {
            info: info.clone(),
            layers,
        };
        let path = staged.join("meta.json");
        let text = serde_json::to_vec_pretty(&meta).map_err(|source| SnapshotError::Meta {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(io("write", &path))?;
        let dest = self.dir(&info.id);
        std::fs::rename(&staged, &dest).map_err(io("rename", &staged))?;
        Ok(info)
    }

    /// Removes a staged snapshot that will not be committed.
    pub fn discard(&self, id: &str) {
        let p = self.staging(id);
        if let Err(e) = std::fs::remove_dir_all(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "removing a staged snapshot");
        }
    }

    /// Deletes a snapshot and its files; `false` if there was none.
    pub fn delete(&self, id: &str) -> Result<bool, SnapshotError> {
        if !valid_id(id) || !self.dir(id).exists() {
            return Ok(false);
        }
        // Renamed first: from here on nobody lists or uses it, even if removing its files is
        // cut short (the next open finishes the job).
        let doomed = self.root.join(format!("{DELETING}{id}"));
        std::fs::rename(self.dir(id), &doomed).map_err(io("rename", &self.dir(id)))?;
        std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?;
        Ok(true)
    }
}

/// Snapshot ids as [`crate::infra`] makes them: `snap-` and `[a-z0-9]`.
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("snap-").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

fn read_meta(dir: &Path) -> Result<Meta, SnapshotError> {
    let path = dir.join("meta.json");
    let text = std::fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&text).map_err(|source| SnapshotError::Meta { path, source })
}

/// Copies the tree `from` to `to` (which must not exist) with owners, modes, times, extended
/// attributes (overlay's opaque-directory marks) and device nodes (its whiteouts) intact; with
/// `link`, as hard links. `cp` does all of that and reflinks where the filesystem can.
pub fn copy_tree(from: &Path, to: &Path, link: bool) -> Result<(), SnapshotError> {
    let mut cmd = Command::new("cp");
    cmd.arg(if link { "-al" } else { "-a" });
    if !link {
        cmd.arg("--reflink=auto");
    }
    // `from/.` copies the contents, so `to` is the copy itself (also when `to` exists).
    let out = cmd
        .arg("--")
        .arg(from.join("."))
        .arg(to)
        .output()
        .map_err(io("run cp for", from))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SnapshotError::Copy {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Bytes the files under `dir` take (apparent sizes; hard links counted once per path).
pub fn tree_size(dir: &Path) -> Result<u64, SnapshotError> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io("read", &d))? {
            let entry = entry.map_err(io("read", &d))?;
            let meta = entry.metadata().map_err(io("stat", &entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_infra::{Limits, SandboxId, SnapshotKind};

    fn info(id: &str) -> SnapshotInfo {
        SnapshotInfo {
            id: id.into(),
            team: "t".into(),
            name: None,
            sandbox_id: SandboxId::new("sbx").unwrap(),
            template: "base".into(),
            limits: Limits::default(),
            kind: SnapshotKind::Filesystem,
            size_bytes: 0,
            created_at_ms: 1,
        }
    }

    #[test]
    fn ids_cannot_name_paths() {
        assert!(valid_id("snap-abc123"));
        for bad in ["snap-", "../x", "snap-../x", "snap-A", "abc", ".tmp-snap-a"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_snapshot_is_staged_committed_listed_layered_and_deleted() {
        let d = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(d.path().join("snaps")).unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("dir")).unwrap();
        std::fs::write(upper.join("dir/file"), b"hello").unwrap();
        store.stage_layers("snap-a", &upper, &[]).unwrap();
        assert!(store.list().unwrap().is_empty(), "staged is not listed");
        let a = store.commit(info("snap-a")).unwrap();
        assert_eq!(a.size_bytes, 5);
        // A child carries its parent's layers below its own.
        let parent = store.layers("snap-a").unwrap().unwrap();
        std::fs::write(upper.join("dir/file"), b"changed!").unwrap();
        store.stage_layers("snap-b", &upper, &parent).unwrap();
        store.commit(info("snap-b")).unwrap();
        let layers = store.layers("snap-b").unwrap().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            std::fs::read(layers[0].join("dir/file")).unwrap(),
            b"changed!"
        );
        assert_eq!(std::fs::read(layers[1].join("dir/file")).unwrap(), b"hello");
        assert_eq!(store.list().unwrap().len(), 2);
        // Deleting the parent leaves the child whole.
        assert!(store.delete("snap-a").unwrap());
        assert!(!store.delete("snap-a").unwrap());
        assert!(store.get("snap-a").unwrap().is_none());
        assert_eq!(std::fs::read(layers[1].join("dir/file")).unwrap(), b"hello");
        // A half-made snapshot is gone after a reopen.
        store.stage_layers("snap-c", &upper, &[]).unwrap();
        let store = SnapshotStore::open(d.path().join("snaps")).unwrap();
        assert!(!store.staging("snap-c").exists());
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
