//! Describing a path as an `EntryInfo`.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::proto::filesystem::{EntryInfo, FileType};
use crate::users::UserDb;

/// Extended attributes under this prefix carry user metadata (`X-Metadata-*`).
pub const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// Caches uid/gid → name lookups for the duration of one listing.
pub struct Names<'a> {
    db: &'a UserDb,
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl<'a> Names<'a> {
    pub fn new(db: &'a UserDb) -> Self {
        Self {
            db,
            users: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    fn user(&mut self, uid: u32) -> String {
        let db = self.db;
        self.users
            .entry(uid)
            .or_insert_with(|| db.user_name(uid))
            .clone()
    }

    fn group(&mut self, gid: u32) -> String {
        let db = self.db;
        self.groups
            .entry(gid)
            .or_insert_with(|| db.group_name(gid))
            .clone()
    }
}

/// `ls -l`-style permission string, e.g. `-rw-r--r--` or `drwxr-xr-x`.
pub fn permission_string(meta: &Metadata) -> String {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else {
        '-'
    };
    let mode = meta.mode();
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Reads the user metadata stored on a file.
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for name in names {
        let Some(key) = name
            .to_str()
            .and_then(|n| n.strip_prefix(METADATA_XATTR_PREFIX))
        else {
            continue;
        };
        if let Ok(Some(value)) = xattr::get(path, &name) {
            out.insert(
                key.to_string(),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
    }
    out
}

/// Describes `path`. A symlink is described by its target (with
/// `is_symlink` and `symlink_target` set); a dangling one as a symlink.
pub fn entry_info(path: &Path, names: &mut Names<'_>) -> io::Result<EntryInfo> {
    let link_meta = fs::symlink_metadata(path)?;
    let is_symlink = link_meta.file_type().is_symlink();
    let (meta, file_type, symlink_target) = if is_symlink {
        let target = fs::canonicalize(path)
            .ok()
            .or_else(|| fs::read_link(path).ok())
            .map(|t| t.display().to_string());
        match fs::metadata(path) {
            Ok(m) => {
                let t = if m.is_dir() {
                    FileType::FILE_TYPE_DIRECTORY
                } else {
                    FileType::FILE_TYPE_FILE
                };
                (m, t, target)
            }
            Err(_) => (link_meta, FileType::FILE_TYPE_SYMLINK, target),
        }
    } else {
        let t = if link_meta.is_dir() {
            FileType::FILE_TYPE_DIRECTORY
        } else {
            FileType::FILE_TYPE_FILE
        };
        (link_meta, t, None)
    };
    let modified = meta
        .modified()
        .ok()
        .map(buffa_types::google::protobuf::Timestamp::from);
    Ok(EntryInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_string()),
        r#type: buffa::EnumValue::Known(file_type),
        path: path.display().to_string(),
        size: meta.len() as i64,
        mode: meta.mode() & 0o7777,
        permissions: permission_string(&meta),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_time: modified.into(),
        symlink_target,
        metadata: read_metadata(path).into_iter().collect(),
        is_symlink,
        ..Default::default()
    })
}

/// Lists `dir` down to `depth` levels (1 = direct children), sorted by path.
/// Symlinked directories are listed but not descended into, so links
/// cannot make a listing loop.
pub fn list_dir(dir: &Path, depth: u32, names: &mut Names<'_>) -> io::Result<Vec<EntryInfo>> {
    let mut out = Vec::new();
    walk(dir, depth.max(1), names, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &Path, depth: u32, names: &mut Names<'_>, out: &mut Vec<EntryInfo>) -> io::Result<()> {
    for item in fs::read_dir(dir)? {
        let item = item?;
        let path = item.path();
        // An entry can vanish between readdir and stat: skip it.
        let Ok(info) = entry_info(&path, names) else {
            continue;
        };
        let descend = depth > 1 && item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push(info);
        if descend {
            // A subdirectory we may not read is listed but not entered.
            let _ = walk(&path, depth - 1, names, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn listing_respects_depth_and_does_not_follow_dir_links() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b/c")).unwrap();
        fs::write(d.path().join("a/f.txt"), "x").unwrap();
        symlink(d.path().join("a"), d.path().join("a/b/loop")).unwrap();
        let db = UserDb::new(d.path().to_path_buf());
        let mut names = Names::new(&db);
        let one = list_dir(d.path(), 1, &mut names).unwrap();
        assert_eq!(one.len(), 1);
        let all = list_dir(d.path(), 10, &mut names).unwrap();
        let rel: Vec<_> = all
            .iter()
            .map(|e| {
                e.path
                    .trim_start_matches(&d.path().display().to_string())
                    .to_string()
            })
            .collect();
        assert_eq!(rel, vec!["/a", "/a/b", "/a/b/c", "/a/b/loop", "/a/f.txt"]);
        let link = all.iter().find(|e| e.name == "loop").unwrap();
        assert!(link.is_symlink);
        assert_eq!(
            link.r#type,
            buffa::EnumValue::Known(FileType::FILE_TYPE_DIRECTORY)
        );
        let file = all.iter().find(|e| e.name == "f.txt").unwrap();
        assert_eq!(file.size, 1);
        assert!(file.permissions.starts_with('-'));
    }

    #[test]
    fn dangling_links_are_symlinks() {
        let d = tempfile::tempdir().unwrap();
        symlink("/nonexistent/target", d.path().join("dangling")).unwrap();
        let db = UserDb::new(d.path().to_path_buf());
        let e = entry_info(&d.path().join("dangling"), &mut Names::new(&db)).unwrap();
        assert_eq!(
            e.r#type,
            buffa::EnumValue::Known(FileType::FILE_TYPE_SYMLINK)
        );
        assert_eq!(e.symlink_target.as_deref(), Some("/nonexistent/target"));
    }
}
