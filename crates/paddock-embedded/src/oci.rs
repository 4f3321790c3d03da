//! Unpacking root filesystems: plain/gzipped tarballs and images in a local OCI image layout
//! (layers applied in order, whiteouts honoured).

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest, Sha256};

use crate::template::{TemplateError, io};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Unpacks a tarball (gzip detected by magic) into `dest`.
pub fn unpack_tar_file(path: &Path, dest: &Path) -> Result<(), TemplateError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    apply_layer(open_maybe_gzip(f).map_err(io(path))?, dest, false).map_err(io(path))
}

fn open_maybe_gzip(f: std::fs::File) -> std::io::Result<Box<dyn Read>> {
    let mut r = BufReader::new(f);
    let magic = std::io::BufRead::fill_buf(&mut r)?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else {
        Ok(Box::new(r))
    }
}

/// Applies one layer tarball on top of `dest`. With `whiteouts`, `.wh.NAME` entries delete
/// `NAME` from earlier layers and `.wh..wh..opq` empties its directory of earlier content.
fn apply_layer(r: impl Read, dest: &Path, whiteouts: bool) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(r);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = clean(&entry.path()?)?;
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
        // An earlier layer may have made a parent a symlink (`x -> /etc`): every path we remove
        // from is resolved inside `dest`, never through a link to the host.
        let real_parent = resolve_in_root(dest, &parent)?;
        if whiteouts && name == OPAQUE {
            let dir = real_parent;
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children.flatten() {
                    let child_rel = parent.join(c.file_name());
                    if !this_layer.contains(&child_rel) {
                        remove_any(&c.path())?;
                    }
                }
            }
            continue;
        }
        if whiteouts && let Some(hidden) = name.strip_prefix(WHITEOUT) {
            remove_any(&real_parent.join(hidden))?;
            continue;
        }
        // A later layer may replace a directory with a file or the reverse.
        let target = real_parent.join(&name);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            let is_dir_entry = entry.header().entry_type().is_dir();
            if meta.is_dir() != is_dir_entry || meta.file_type().is_symlink() {
                remove_any(&target)?;
            }
        }
        entry.unpack_in(dest)?;
        this_layer.insert(rel);
    }
    Ok(())
}

/// A relative, normalised entry path; rejects `..` escapes.
fn clean(p: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("tar entry escapes the root: {}", p.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Symlinks followed while resolving one path before giving up (the kernel's own limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// `rel` resolved under `root` as if `root` were `/`: symlinks met on the way are followed, but
/// an absolute target starts again at `root` and `..` stops at it, so the result is always
/// inside `root` and has no symlink below it. Components that do not exist are kept as given.
fn resolve_in_root(root: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    // Components still to walk, last one first.
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    let push_all = |pending: &mut Vec<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_owned()),
                Component::ParentDir => pending.push("..".into()),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
    };
    push_all(&mut pending, rel);
    let mut resolved = root.to_path_buf();
    let mut depth = 0usize;
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if depth > 0 {
                resolved.pop();
                depth -= 1;
            }
            continue;
        }
        let next = resolved.join(&c);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("too many symlinks under {}", rel.display()),
                    ));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    resolved = root.to_path_buf();
                    depth = 0;
                }
                push_all(&mut pending, &target);
            }
            _ => {
                resolved = next;
                depth += 1;
            }
        }
    }
    Ok(resolved)
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What is wrong with an OCI image layout; [`TemplateError::Oci`] adds the layout path.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The directory has no `oci-layout` marker file.
    #[error("no oci-layout file")]
    NoLayoutFile,
    /// `index.json` is missing or malformed.
    #[error("index.json: {0}")]
    Index(#[source] oci_spec::OciSpecError),
    /// No manifest carries the requested reference.
    #[error("no manifest for reference {0:?}")]
    NoManifest(Option<String>),
    /// A nested (multi-platform) index is malformed.
    #[error("nested index: {0}")]
    NestedIndex(#[source] serde_json::Error),
    /// A nested index lists no manifests.
    #[error("nested index has no manifests")]
    EmptyNestedIndex,
    /// The image manifest is malformed.
    #[error("manifest: {0}")]
    Manifest(#[source] serde_json::Error),
    /// A layer has a media type we do not unpack.
    #[error("unsupported layer media type {0}")]
    UnsupportedMediaType(String),
    /// A layer failed to apply.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A blob digest uses an algorithm other than sha256.
    #[error("unsupported digest algorithm {0}")]
    DigestAlgorithm(String),
    /// A blob digest is not 64 hex digits.
    #[error("malformed digest {0}")]
    MalformedDigest(String),
    /// A blob cannot be read.
    #[error("{}: {source}", path.display())]
    BlobRead {
        /// The blob file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A blob's size differs from its descriptor's.
    #[error("{digest}: size {got} != {want}")]
    BlobSize {
        /// The blob's digest.
        digest: String,
        /// Bytes read.
        got: usize,
        /// Bytes the descriptor states.
        want: u64,
    },
    /// A blob's content does not hash to its digest.
    #[error("{digest}: content hash is {got}")]
    BlobHash {
        /// The blob's digest.
        digest: String,
        /// The sha256 of the content, hex.
        got: String,
    },
}

/// Unpacks the image `reference` (or the first manifest) of the OCI layout at `layout` into
/// `dest`.
pub fn unpack_layout(
    layout: &Path,
    reference: Option<&str>,
    dest: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), TemplateError> {
    let bad = |source: OciError| TemplateError::Oci {
        path: layout.to_owned(),
        source,
    };
    if !layout.join("oci-layout").is_file() {
        return Err(bad(OciError::NoLayoutFile));
    }
    let index =
        ImageIndex::from_file(layout.join("index.json")).map_err(|e| bad(OciError::Index(e)))?;
    let manifest_desc = pick_manifest(layout, &index, reference).map_err(bad)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&read_blob(layout, &manifest_desc).map_err(bad)?)
            .map_err(|e| bad(OciError::Manifest(e)))?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    for (i, layer) in manifest.layers().iter().enumerate() {
        progress(&format!(
            "layer {}/{}: {}",
            i + 1,
            manifest.layers().len(),
            layer.digest()
        ));
        let blob = read_blob(layout, layer).map_err(bad)?;
        let reader: Box<dyn Read> = match layer.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Box::new(&blob[..]),
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Box::new(flate2::read::GzDecoder::new(&blob[..]))
            }
            MediaType::Other(s) if s.ends_with("tar") => Box::new(&blob[..]),
            MediaType::Other(s) if s.ends_with("tar.gzip") || s.ends_with("tar+gzip") => {
                Box::new(flate2::read::GzDecoder::new(&blob[..]))
            }
            other => return Err(bad(OciError::UnsupportedMediaType(other.to_string()))),
        };
        apply_layer(reader, dest, true).map_err(|source| {
            bad(OciError::Layer {
                digest: layer.digest().to_string(),
                source,
            })
        })?;
    }
    Ok(())
}

fn pick_manifest(
    layout: &Path,
    index: &ImageIndex,
    reference: Option<&str>,
) -> Result<Descriptor, OciError> {
    let matches = |d: &Descriptor| match reference {
        None => true,
        Some(r) => d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .is_some_and(|n| n == r),
    };
    let desc = index
        .manifests()
        .iter()
        .find(|d| matches(d))
        .ok_or_else(|| OciError::NoManifest(reference.map(str::to_owned)))?;
    if *desc.media_type() == MediaType::ImageIndex {
        // A nested index (multi-platform image): take its linux/amd64 (or first) manifest.
        let nested: ImageIndex =
            serde_json::from_slice(&read_blob(layout, desc)?).map_err(OciError::NestedIndex)?;
        let pick = nested
            .manifests()
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.architecture().to_string() == "amd64" && p.os().to_string() == "linux"
                })
            })
            .or_else(|| nested.manifests().first())
            .ok_or(OciError::EmptyNestedIndex)?;
        return Ok(pick.clone());
    }
    Ok(desc.clone())
}

/// Reads a blob and checks its sha256 digest and size.
fn read_blob(layout: &Path, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
    let digest = desc.digest();
    let algo = digest.algorithm().to_string();
    if algo != "sha256" {
        return Err(OciError::DigestAlgorithm(algo));
    }
    let hex_digest = digest.digest();
    if hex_digest.len() != 64 || !hex_digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OciError::MalformedDigest(digest.to_string()));
    }
    let path = layout.join("blobs/sha256").join(hex_digest);
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(source) => return Err(OciError::BlobRead { path, source }),
    };
    if data.len() as u64 != desc.size() {
        return Err(OciError::BlobSize {
            digest: digest.to_string(),
            got: data.len(),
            want: desc.size(),
        });
    }
    let got = hex::encode(Sha256::digest(&data));
    if got != hex_digest {
        return Err(OciError::BlobHash {
            digest: digest.to_string(),
            got,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_mode(0o755);
            match content {
                Some(c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    b.append_data(&mut h, path, c.as_bytes()).expect("append");
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty())
                        .expect("append");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn whiteouts_and_opaque_dirs_apply_to_earlier_layers_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let l1 = tar_of(&[
            ("etc", None),
            ("etc/a", Some("1")),
            ("etc/b", Some("b")),
            ("d", None),
            ("d/x", Some("x")),
        ]);
        let l2 = tar_of(&[
            ("d/y", Some("y")),
            ("d/.wh..wh..opq", Some("")),
            ("etc/.wh.b", Some("")),
            ("etc/a", Some("2")),
        ]);
        apply_layer(&l1[..], d.path(), true)
            .map_err(|e| format!("{e:?}"))
            .expect("layer 1");
        apply_layer(&l2[..], d.path(), true)
            .map_err(|e| format!("{e:?}"))
            .expect("layer 2");
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/a")).expect("a"),
            "2"
        );
        assert!(!d.path().join("etc/b").exists());
        assert!(
            !d.path().join("d/x").exists(),
            "opaque hides earlier content"
        );
        assert!(d.path().join("d/y").exists(), "but keeps this layer's own");
    }

    fn symlink_tar(link: &str, target: &Path) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, link, target).expect("append link");
        b.into_inner().expect("tar")
    }

    /// Security review M6: whiteouts under a directory an earlier layer made a symlink to the
    /// host must not delete anything outside the destination.
    #[test]
    fn whiteouts_never_follow_a_symlink_out_of_the_destination() {
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("file"), "keep").expect("write");
        std::fs::write(outside.path().join("other"), "keep").expect("write");
        std::fs::create_dir(outside.path().join("sub")).expect("mkdir");
        let d = tempfile::tempdir().expect("tempdir");
        for (link, target) in [
            ("x", outside.path().to_owned()),
            (
                "y",
                PathBuf::from("../../..").join(outside.path().strip_prefix("/").expect("abs")),
            ),
        ] {
            apply_layer(&symlink_tar(link, &target)[..], d.path(), true).expect("layer 1");
        }
        let l2 = tar_of(&[
            ("x/.wh.file", Some("")),
            ("x/.wh..wh..opq", Some("")),
            ("y/.wh.other", Some("")),
            ("y/.wh..wh..opq", Some("")),
            ("x/sub/.wh..wh..opq", Some("")),
        ]);
        apply_layer(&l2[..], d.path(), true).expect("layer 2");
        for name in ["file", "other", "sub"] {
            assert!(
                outside.path().join(name).exists(),
                "{name} was deleted outside"
            );
        }
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("usr/lib")).expect("mkdir");
        std::os::unix::fs::symlink("/usr/lib", d.path().join("lib")).expect("link");
        std::os::unix::fs::symlink("../../../../..", d.path().join("up")).expect("link");
        assert_eq!(
            resolve_in_root(d.path(), Path::new("lib/x")).expect("resolve"),
            d.path().join("usr/lib/x")
        );
        assert_eq!(
            resolve_in_root(d.path(), Path::new("up/etc")).expect("resolve"),
            d.path().join("etc")
        );
        std::os::unix::fs::symlink("loop", d.path().join("loop")).expect("link");
        assert!(resolve_in_root(d.path(), Path::new("loop/a")).is_err());
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert!(clean(Path::new("../etc/passwd")).is_err());
        assert_eq!(
            clean(Path::new("./a/b")).expect("clean"),
            PathBuf::from("a/b")
        );
    }
}
