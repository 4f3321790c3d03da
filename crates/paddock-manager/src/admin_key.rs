//! Where the admin API key comes from: given (argv or `PADDOCK_ADMIN_API_KEY`), read from a
//! file, or generated once and kept 0600 in the data dir (audit H2). The caller prints the
//! key only when it was just generated; otherwise it says where the key is.

use std::path::{Path, PathBuf};

use crate::secret_file;

/// The file in the data dir a generated key is kept in.
pub const FILE_NAME: &str = "admin-api-key";

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Passed in (argv or environment); the caller knows it.
    Given,
    /// Read from this file.
    File(PathBuf),
    /// Generated now and kept in this file: show it once.
    Generated(PathBuf),
}

/// Why no admin key could be had.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    #[error("reading the admin key from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no admin key")]
    Empty { path: PathBuf },
    #[error("no randomness for a new admin key")]
    Random(#[source] getrandom::Error),
    #[error("keeping the new admin key")]
    Store(#[from] secret_file::SecretFileError),
    #[error("creating the data dir {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<String, AdminKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdminKeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(AdminKeyError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(key.to_string())
}

/// The admin key: `given` if non-empty, else the contents of `file`, else the one kept in
/// `data_dir` (its mode tightened to 0600 if an older version left it readable), else a new
/// one, kept there.
pub fn resolve(
    given: Option<&str>,
    file: Option<&Path>,
    data_dir: &Path,
) -> Result<(String, Source), AdminKeyError> {
    if let Some(k) = given.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok((k.to_string(), Source::Given));
    }
    if let Some(f) = file {
        return Ok((read(f)?, Source::File(f.to_path_buf())));
    }
    let kept = data_dir.join(FILE_NAME);
    if kept.exists() {
        secret_file::restrict(&kept).map_err(|source| AdminKeyError::Read {
            path: kept.clone(),
            source,
        })?;
        return Ok((read(&kept)?, Source::File(kept)));
    }
    let mut buf = [0u8; 20];
    getrandom::fill(&mut buf).map_err(AdminKeyError::Random)?;
    let key = format!(
        "e2b_{}",
        buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    secret_file::create_dir(data_dir).map_err(|source| AdminKeyError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    secret_file::write(&kept, key.as_bytes())?;
    Ok((key, Source::Generated(kept)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_then_file_then_kept_then_generated() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (k, s) = resolve(Some("e2b_given"), None, &data).unwrap();
        assert_eq!((k.as_str(), s), ("e2b_given", Source::Given));
        assert!(!data.exists(), "a given key is not stored");

        let f = dir.path().join("keyfile");
        std::fs::write(&f, "e2b_from_file\n").unwrap();
        let (k, s) = resolve(Some(""), Some(&f), &data).unwrap();
        assert_eq!((k.as_str(), s), ("e2b_from_file", Source::File(f.clone())));
        std::fs::write(&f, "  \n").unwrap();
        assert!(matches!(
            resolve(None, Some(&f), &data),
            Err(AdminKeyError::Empty { .. })
        ));

        let (generated, s) = resolve(None, None, &data).unwrap();
        assert!(generated.starts_with("e2b_"));
        assert_eq!(s, Source::Generated(data.join(FILE_NAME)));
        let (again, s) = resolve(None, None, &data).unwrap();
        assert_eq!(again, generated, "kept across restarts");
        assert_eq!(s, Source::File(data.join(FILE_NAME)), "and not shown again");
    }
}
