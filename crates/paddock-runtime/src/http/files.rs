//! `GET /files` (download) and `POST /files` (upload, multipart or raw).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_util::io::{ReaderStream, StreamReader};

use super::upload_limit::{TooLarge, UploadBudget};
use crate::auth::{FileAccess, check_file_access, http_user};
use crate::errors::HttpError;
use crate::filesystem::entry::METADATA_XATTR_PREFIX;
use crate::identity::as_user;
use crate::paths::resolve;
use crate::state::Runtime;
use crate::users::User;

const METADATA_HEADER_PREFIX: &str = "x-metadata-";

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

impl FileQuery {
    fn access<'a>(&'a self, operation: &'a str) -> FileAccess<'a> {
        FileAccess {
            path: self.path.as_deref().unwrap_or_default(),
            operation,
            username: self.username.as_deref(),
            signature: self.signature.as_deref(),
            expiration: self.signature_expiration,
        }
    }
}

/// One written file, as the SDKs expect it back.
#[derive(Debug, Serialize)]
pub struct WriteInfo {
    name: String,
    path: String,
    r#type: &'static str,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    metadata: std::collections::BTreeMap<String, String>,
}

pub async fn download(
    State(rt): State<Arc<Runtime>>,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    check_file_access(&rt, &headers, q.access("read"))?;
    let user = http_user(&rt, q.username.as_deref())?;
    let raw = q
        .path
        .as_deref()
        .ok_or_else(|| HttpError::bad_request("query parameter 'path' is required"))?;
    let path = resolve(raw, &user)?;
    let p = path.clone();
    let (file, len) = as_user(&user, move || {
        let file = std::fs::File::open(&p)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(std::io::Error::from(std::io::ErrorKind::IsADirectory));
        }
        Ok((file, meta.len()))
    })
    .await
    .map_err(|e| HttpError::from_io(&e, &path))?;

    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\', '\r', '\n'], "_"))
        .unwrap_or_default();
    let stream = ReaderStream::with_capacity(tokio::fs::File::from_std(file), 64 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime.as_ref())
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

pub async fn upload(
    State(rt): State<Arc<Runtime>>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Result<Response, HttpError> {
    let headers = req.headers().clone();
    check_file_access(&rt, &headers, q.access("write"))?;
    let user = http_user(&rt, q.username.as_deref())?;
    let metadata = metadata_headers(&headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();

    let mut budget = UploadBudget::new(rt.max_upload_bytes);
    let mut written = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| HttpError::bad_request(format!("invalid multipart body: {e}")))?;
        loop {
            let field = match multipart.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    return Err(HttpError::bad_request(format!(
                        "invalid multipart body: {e}"
                    )));
                }
            };
            if field.name() != Some("file") {
                continue;
            }
            let raw = match (q.path.as_deref(), field.file_name()) {
                (Some(p), _) if !p.is_empty() => p.to_string(),
                (_, Some(f)) if !f.is_empty() => f.to_string(),
                _ => {
                    return Err(HttpError::bad_request(
                        "each file part needs a destination: the 'path' query parameter or the part's filename",
                    ));
                }
            };
            let path = resolve(&raw, &user)?;
            let body = field.map_err(std::io::Error::other);
            written.push(write_file(&user, path, body, &metadata, &mut budget).await?);
        }
        if written.is_empty() {
            return Err(HttpError::bad_request(
                "the multipart body has no part named 'file'",
            ));
        }
    } else if content_type.starts_with("application/octet-stream") {
        let raw = q.path.as_deref().filter(|p| !p.is_empty()).ok_or_else(|| {
            HttpError::bad_request("query parameter 'path' is required for an octet-stream upload")
        })?;
        let path = resolve(raw, &user)?;
        let gzip = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().eq_ignore_ascii_case("gzip"))
            .unwrap_or(false);
        if !gzip {
            // A plain body's declared length is what it would write: refuse
            // it before touching the disk.
            if let Some(len) = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                budget.check_declared(len)?;
            }
        }
        let body = req
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        let info = if gzip {
            let reader =
                async_compression::tokio::bufread::GzipDecoder::new(StreamReader::new(body));
            write_file(
                &user,
                path,
                ReaderStream::new(reader),
                &metadata,
                &mut budget,
            )
            .await?
        } else {
            write_file(&user, path, body, &metadata, &mut budget).await?
        };
        written.push(info);
    } else {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type '{content_type}': use multipart/form-data or application/octet-stream"
            ),
        ));
    }
    Ok((StatusCode::OK, axum::Json(written)).into_response())
}

/// `X-Metadata-<key>: <value>` headers, stored as extended attributes.
fn metadata_headers(
    headers: &HeaderMap,
) -> Result<std::collections::BTreeMap<String, String>, HttpError> {
    let mut out = std::collections::BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(METADATA_HEADER_PREFIX) {
            let value = value.to_str().map_err(|_| {
                HttpError::bad_request(format!("metadata header '{name}' is not valid text"))
            })?;
            out.insert(key.to_string(), value.to_string());
        }
    }
    Ok(out)
}

/// Streams `body` into `path` as `user`: parent directories are created
/// (owned by the user), the file is replaced. A failed upload leaves no
/// partial file behind: a new file is removed, a replaced one emptied.
async fn write_file<S, B>(
    user: &User,
    path: PathBuf,
    body: S,
    metadata: &std::collections::BTreeMap<String, String>,
    budget: &mut UploadBudget,
) -> Result<WriteInfo, HttpError>
where
    S: Stream<Item = std::io::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    let opened = open_for_upload(user, &path).await?;
    let Opened {
        file,
        existed,
        by_root,
    } = opened;
    let mut file = tokio::fs::File::from_std(file);
    if let Err(e) = copy_stream(body, &mut file, budget).await {
        discard(user, &path, file, existed, by_root).await;
        return Err(match e {
            CopyError::TooLarge(e) => {
                tracing::warn!(path = %path.display(), max = e.max, "refused an upload over the size cap");
                e.into()
            }
            CopyError::Io(e) => match e.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    HttpError::from_io(&e, &path)
                }
                _ => HttpError::bad_request(format!("upload of '{}' failed: {e}", path.display())),
            },
        });
    }
    // The new metadata replaces the old, all of it: a write without metadata leaves none
    // (envd's behaviour; the file was truncated, but extended attributes outlive that).
    let p = path.clone();
    let md = metadata.clone();
    let set_metadata = move || -> std::io::Result<()> {
        for old in xattr::list(&p)? {
            if old
                .to_str()
                .is_some_and(|k| k.starts_with(METADATA_XATTR_PREFIX))
            {
                xattr::remove(&p, &old)?;
            }
        }
        for (k, v) in &md {
            xattr::set(&p, format!("{METADATA_XATTR_PREFIX}{k}"), v.as_bytes())?;
        }
        Ok(())
    };
    let done = if by_root {
        tokio::task::spawn_blocking(set_metadata)
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    } else {
        as_user(user, set_metadata).await
    };
    done.map_err(|e| HttpError::from_io(&e, &path))?;
    Ok(WriteInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.display().to_string(),
        r#type: "file",
        metadata: metadata.clone(),
    })
}

/// Undoes a failed write. A file that existed is emptied through the open
/// descriptor, which no path swap can redirect. A new file is unlinked by
/// path, so (security review L1) that runs as the user: if the user swapped
/// a parent for a symlink mid-upload, the unlink lands wherever the link
/// points but with no more rights than the user has there.
async fn discard(
    user: &User,
    path: &std::path::Path,
    file: tokio::fs::File,
    existed: bool,
    by_root: bool,
) {
    if existed {
        if let Err(e) = file.set_len(0).await {
            tracing::warn!(path = %path.display(), error = %e, "could not empty a failed upload");
        }
        return;
    }
    drop(file);
    let p = path.to_path_buf();
    let removed = if by_root {
        // Created by root (see `open_for_upload`), in a directory the user may not write.
        tokio::task::spawn_blocking(move || std::fs::remove_file(&p))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    } else {
        as_user(user, move || std::fs::remove_file(&p)).await
    };
    if let Err(e) = removed {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a failed upload");
    }
}

/// An upload's destination, opened for writing.
struct Opened {
    file: std::fs::File,
    /// Whether the file was there before (a failed upload empties it instead of removing it).
    existed: bool,
    /// Whether root opened it on the user's behalf (see [`open_for_upload`]).
    by_root: bool,
}

/// Opens `path` for an upload as `user`: missing parents are created, the file is created or
/// truncated.
///
/// Where the user may not write (`/app/config.json` in a root-owned `/`), envd writes anyway:
/// it runs as root and hands what it creates over to the user. The SDKs' users rely on that,
/// so this does the same: new directories and a new file belong to the user; an existing file
/// owned by someone else gets the new content but keeps its owner and mode (overwriting
/// `/etc/hosts` must not hand it to the user). This is no privilege boundary: whoever holds
/// the sandbox's access token can already run any command as root.
async fn open_for_upload(user: &User, path: &std::path::Path) -> Result<Opened, HttpError> {
    let (p, uid, gid) = (path.to_path_buf(), user.uid, user.gid);
    let as_itself = as_user(user, move || {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let existed = p.exists();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)?;
        if !existed {
            // Changes nothing (the user made it), but it is the attribute change envd's
            // handover makes: watchers see create, attribute change, write, as with envd.
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        Ok(Opened {
            file,
            existed,
            by_root: false,
        })
    })
    .await;
    let denied = matches!(&as_itself, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
    if !denied || user.uid == 0 || !rustix::process::geteuid().is_root() {
        return as_itself.map_err(|e| HttpError::from_io(&e, path));
    }
    let (p, uid, gid) = (path.to_path_buf(), user.uid, user.gid);
    tokio::task::spawn_blocking(move || open_handing_over(&p, uid, gid))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| HttpError::from_io(&e, path))
}

/// Root's half of [`open_for_upload`].
fn open_handing_over(p: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<Opened> {
    if let Some(parent) = p.parent() {
        // Outermost missing ancestor first, each new directory handed over as it is made.
        let missing: Vec<_> = parent
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
            .collect();
        for dir in missing.into_iter().rev() {
            match std::fs::create_dir(dir) {
                Ok(()) => std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }
    let existed = p.exists();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)?;
    if !existed {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    Ok(Opened {
        file,
        existed,
        by_root: true,
    })
}

enum CopyError {
    Io(std::io::Error),
    TooLarge(TooLarge),
}

async fn copy_stream<S, B>(
    mut body: S,
    file: &mut tokio::fs::File,
    budget: &mut UploadBudget,
) -> Result<(), CopyError>
where
    S: Stream<Item = std::io::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(CopyError::Io)?;
        let bytes = chunk.as_ref();
        // Counted before writing, so nothing past the cap reaches the disk.
        budget.take(bytes.len()).map_err(CopyError::TooLarge)?;
        file.write_all(bytes).await.map_err(CopyError::Io)?;
    }
    file.flush().await.map_err(CopyError::Io)
}
