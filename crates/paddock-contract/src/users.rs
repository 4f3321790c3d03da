//! Unix users and groups, read straight from `/etc/passwd` and `/etc/group`.
//!
//! The runtime is a static binary injected into arbitrary images, so it
//! cannot rely on NSS or on `useradd` being present: it parses and appends
//! to the files itself.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

/// A resolved Unix account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, including the primary one.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid username '{0}'")]
    Unknown(String),
    #[error("invalid username '{0}': only lowercase letters, digits, '_' and '-' are allowed")]
    BadName(String),
    #[error("reading the user database: {0}")]
    Io(#[from] io::Error),
}

/// The user database under a root directory (`/` in production).
#[derive(Debug, Clone)]
pub struct UserDb {
    root: PathBuf,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

impl UserDb {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn etc(&self, file: &str) -> PathBuf {
        self.root.join("etc").join(file)
    }

    fn passwd(&self) -> io::Result<Vec<PasswdEntry>> {
        let text = read_or_empty(&self.etc("passwd"))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 7 || line.starts_with('#') {
                    return None;
                }
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f[5].to_string(),
                })
            })
            .collect())
    }

    fn groups(&self) -> io::Result<Vec<GroupEntry>> {
        let text = read_or_empty(&self.etc("group"))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 4 || line.starts_with('#') {
                    return None;
                }
                Some(GroupEntry {
                    name: f[0].to_string(),
                    gid: f[2].parse().ok()?,
                    members: f[3]
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect())
    }

    /// Looks a user up by name.
    pub fn lookup(&self, name: &str) -> Result<User, UserError> {
        let entry = self
            .passwd()?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| UserError::Unknown(name.to_string()))?;
        let mut groups = vec![entry.gid];
        for g in self.groups()? {
            if g.members.iter().any(|m| m == name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
        Ok(User {
            name: entry.name,
            uid: entry.uid,
            gid: entry.gid,
            groups,
            home: PathBuf::from(entry.home),
        })
    }

    /// Name of a uid, or the number when it has no entry.
    pub fn user_name(&self, uid: u32) -> String {
        self.passwd()
            .ok()
            .and_then(|p| p.into_iter().find(|e| e.uid == uid).map(|e| e.name))
            .unwrap_or_else(|| uid.to_string())
    }

    /// Name of a gid, or the number when it has no entry.
    pub fn group_name(&self, gid: u32) -> String {
        self.groups()
            .ok()
            .and_then(|g| g.into_iter().find(|e| e.gid == gid).map(|e| e.name))
            .unwrap_or_else(|| gid.to_string())
    }

    /// Returns the user, creating it (with a group of the same name and a
    /// home under `/home`) when it does not exist yet.
    pub fn ensure(&self, name: &str) -> Result<User, UserError> {
        match self.lookup(name) {
            Ok(user) => {
                self.ensure_home(&user)?;
                return Ok(user);
            }
            Err(UserError::Unknown(_)) => {}
            Err(e) => return Err(e),
        }
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(UserError::BadName(name.to_string()));
        }
        let passwd = self.passwd()?;
        let groups = self.groups()?;
        let id = (1000..60000)
            .find(|id| !passwd.iter().any(|e| e.uid == *id) && !groups.iter().any(|g| g.gid == *id))
            .ok_or_else(|| io::Error::other("no free uid between 1000 and 60000"))?;
        let home = format!("/home/{name}");
        append_line(&self.etc("group"), &format!("{name}:x:{id}:"))?;
        append_line(
            &self.etc("passwd"),
            &format!("{name}:x:{id}:{id}::{home}:/bin/bash"),
        )?;
        if self.etc("shadow").exists() {
            append_line(&self.etc("shadow"), &format!("{name}:!:19000:0:99999:7:::"))?;
        }
        let user = self.lookup(name)?;
        self.ensure_home(&user)?;
        tracing::info!(user = name, uid = id, "created user");
        Ok(user)
    }

    fn ensure_home(&self, user: &User) -> io::Result<()> {
        let rel = user.home.strip_prefix("/").unwrap_or(&user.home);
        let home = self.root.join(rel);
        if home.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&home)?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o750))?;
        if rustix::process::geteuid().is_root() {
            chown(&home, Some(user.uid), Some(user.gid))?;
        }
        Ok(())
    }
}

fn read_or_empty(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let existing = read_or_empty(path)?;
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    if !existing.is_empty() && !existing.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nsudo:x:27:alice,bob\n",
        )
        .unwrap();
        let db = UserDb::new(dir.path().to_path_buf());
        (dir, db)
    }

    #[test]
    fn lookup_collects_supplementary_groups() {
        let (_d, db) = db();
        let alice = db.lookup("alice").unwrap();
        assert_eq!((alice.uid, alice.gid), (1000, 1000));
        assert_eq!(alice.groups, vec![1000, 27]);
        assert_eq!(alice.home, PathBuf::from("/home/alice"));
        assert!(matches!(db.lookup("nobody"), Err(UserError::Unknown(_))));
    }

    #[test]
    fn ensure_creates_a_user_with_a_free_id_and_home() {
        let (dir, db) = db();
        let user = db.ensure("user").unwrap();
        assert_eq!(user.uid, 1001, "1000 is taken by alice");
        assert_eq!(user.gid, 1001);
        assert!(dir.path().join("home/user").is_dir());
        assert_eq!(db.user_name(1001), "user");
        assert_eq!(db.group_name(1001), "user");
        // A second call finds the same account instead of adding another.
        assert_eq!(db.ensure("user").unwrap(), user);
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert_eq!(passwd.matches("user:x:").count(), 1);
    }

    #[test]
    fn ensure_rejects_names_that_would_corrupt_passwd() {
        let (_d, db) = db();
        assert!(matches!(db.ensure("a:b"), Err(UserError::BadName(_))));
        assert!(matches!(db.ensure("x\ny"), Err(UserError::BadName(_))));
    }
}
