//! The `filesystem.Filesystem` RPC handlers. Every operation runs with the
//! requesting user's permissions (see `identity`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::StreamExt;

use super::entry::{Names, entry_info, list_dir};
use super::slots::WatchSlot;
use super::watch::{self, WatchSpec};
use crate::auth::rpc_user;
use crate::errors::{fs_error, path_error};
use crate::identity::as_user;
use crate::paths::resolve;
use crate::proto::filesystem::__buffa::oneof::watch_dir_response::Event as WatchEvent;
use crate::proto::filesystem::watch_dir_response::{KeepAlive, StartEvent};
use crate::proto::filesystem::*;
use crate::state::Runtime;
use crate::users::User;

pub struct FilesystemService {
    rt: Arc<Runtime>,
}

impl FilesystemService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }

    fn target(&self, ctx: &RequestContext, raw: &str) -> Result<(User, PathBuf), ConnectError> {
        let user = rpc_user(&self.rt, ctx.headers())?;
        let path = resolve(raw, &user).map_err(path_error)?;
        Ok((user, path))
    }

    /// Runs a blocking filesystem operation as `user`, mapping I/O errors
    /// against `path`.
    async fn run<T: Send + 'static>(
        &self,
        user: &User,
        path: &Path,
        op: impl FnOnce(&crate::users::UserDb) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, ConnectError> {
        let db = self.rt.users.clone();
        as_user(user, move || op(&db))
            .await
            .map_err(|e| fs_error(&e, path))
    }

    /// Security review M1: every watch holds one of the runtime's slots.
    fn watch_slot(&self) -> Result<WatchSlot, ConnectError> {
        self.rt.watch_slots.acquire().map_err(|e| {
            tracing::warn!(max = e.max, "refused a watch: the watcher cap is reached");
            ConnectError::resource_exhausted(e.to_string())
        })
    }

    fn check_watch_dir(
        &self,
        path: &Path,
    ) -> impl FnOnce(&crate::users::UserDb) -> std::io::Result<()> + Send + 'static {
        let path = path.to_path_buf();
        move |_| {
            let meta = std::fs::metadata(&path)?;
            if !meta.is_dir() {
                return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
            }
            // Reading it proves the user may watch it.
            std::fs::read_dir(&path).map(|_| ())
        }
    }
}

fn stat(
    path: PathBuf,
) -> impl FnOnce(&crate::users::UserDb) -> std::io::Result<EntryInfo> + Send + 'static {
    move |db| entry_info(&path, &mut Names::new(db))
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let req = request.to_owned_message();
        let (user, path) = self.target(&ctx, &req.path)?;
        let entry = self.run(&user, &path, stat(path.clone())).await?;
        Response::ok(StatResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let req = request.to_owned_message();
        let (user, path) = self.target(&ctx, &req.path)?;
        // Security review L1: the existence check runs as the user too, so
        // it says nothing about directories the user may not look into.
        let p = path.clone();
        let made = self
            .run(&user, &path, move |db| match std::fs::metadata(&p) {
                Ok(m) => Ok(Err(m.is_dir())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&p)?;
                    entry_info(&p, &mut Names::new(db)).map(Ok)
                }
                Err(e) => Err(e),
            })
            .await?;
        let entry = match made {
            Ok(entry) => entry,
            Err(true) => {
                return Err(ConnectError::already_exists(format!(
                    "directory '{}' already exists",
                    path.display()
                )));
            }
            Err(false) => {
                return Err(ConnectError::invalid_argument(format!(
                    "path '{}' already exists and is not a directory",
                    path.display()
                )));
            }
        };
        Response::ok(MakeDirResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        let req = request.to_owned_message();
        let (user, source) = self.target(&ctx, &req.source)?;
        let destination = resolve(&req.destination, &user).map_err(path_error)?;
        // Security review L1: the source is checked as the user, so a
        // missing source inside a directory the user may not search reads
        // as "permission denied", not as a fact about that directory.
        let src = source.clone();
        self.run(&user, &source, move |_| {
            std::fs::symlink_metadata(&src).map(|_| ())
        })
        .await
        .map_err(|e| {
            if e.code == connectrpc::ErrorCode::NotFound {
                ConnectError::not_found(format!("source '{}' does not exist", source.display()))
            } else {
                e
            }
        })?;
        let dst = destination.clone();
        let entry = self
            .run(&user, &destination, move |db| {
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                move_path(&source, &dst)?;
                entry_info(&dst, &mut Names::new(db))
            })
            .await?;
        Response::ok(MoveResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let req = request.to_owned_message();
        let (user, path) = self.target(&ctx, &req.path)?;
        let p = path.clone();
        let depth = req.depth;
        let entries = self
            .run(&user, &path, move |db| {
                if !std::fs::metadata(&p)?.is_dir() {
                    return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
                }
                list_dir(&p, depth, &mut Names::new(db))
            })
            .await?;
        Response::ok(ListDirResponse {
            entries,
            ..Default::default()
        })
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        let req = request.to_owned_message();
        let (user, path) = self.target(&ctx, &req.path)?;
        if path == Path::new("/") {
            return Err(ConnectError::invalid_argument("refusing to remove '/'"));
        }
        let p = path.clone();
        self.run(&user, &path, move |_| {
            // Removing what is not there succeeds, as envd's remove does (the SDKs' callers
            // treat remove as "make sure it is gone").
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
        })
        .await?;
        Response::ok(RemoveResponse::default())
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        let req = request.to_owned_message();
        let (user, path) = self.target(&ctx, &req.path)?;
        self.run(&user, &path, self.check_watch_dir(&path)).await?;
        let slot = self.watch_slot()?;
        let keepalive = crate::process::keepalive_interval(ctx.headers());
        let (tx, rx) = tokio::sync::mpsc::channel::<FilesystemEvent>(1024);
        let spec = WatchSpec {
            root: path.clone(),
            recursive: req.recursive,
            include_entry: req.include_entry,
            users: self.rt.users.clone(),
        };
        let watch = watch::start(spec, &user, slot, move |ev| {
            // Blocks only this watch's own thread when the client is slow.
            let _ = tx.blocking_send(ev);
        })
        .await
        .map_err(|e| fs_error(&e, &path))?;
        Response::stream_ok(watch_stream(watch, rx, keepalive))
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        let req = request.to_owned_message();
        let (user, path) = self.target(&ctx, &req.path)?;
        self.run(&user, &path, self.check_watch_dir(&path)).await?;
        let slot = self.watch_slot()?;
        let spec = WatchSpec {
            root: path.clone(),
            recursive: req.recursive,
            include_entry: req.include_entry,
            users: self.rt.users.clone(),
        };
        let id = self
            .rt
            .watchers
            .create(spec, &user, slot)
            .await
            .map_err(|e| fs_error(&e, &path))?;
        Response::ok(CreateWatcherResponse {
            watcher_id: id,
            ..Default::default()
        })
    }

    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        let req = request.to_owned_message();
        let events = self.rt.watchers.drain(&req.watcher_id).ok_or_else(|| {
            ConnectError::not_found(format!("watcher '{}' not found", req.watcher_id))
        })?;
        Response::ok(GetWatcherEventsResponse {
            events,
            ..Default::default()
        })
    }

    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        let req = request.to_owned_message();
        if !self.rt.watchers.remove(&req.watcher_id) {
            return Err(ConnectError::not_found(format!(
                "watcher '{}' not found",
                req.watcher_id
            )));
        }
        Response::ok(RemoveWatcherResponse::default())
    }
}

fn response(event: WatchEvent) -> WatchDirResponse {
    WatchDirResponse {
        event: Some(event),
        ..Default::default()
    }
}

/// `start`, then events and keepalives; the watch lives as long as the
/// stream, so a client that goes away stops it.
fn watch_stream(
    watcher: watch::ActiveWatch,
    rx: tokio::sync::mpsc::Receiver<FilesystemEvent>,
    keepalive: Duration,
) -> impl futures::Stream<Item = Result<WatchDirResponse, ConnectError>> + Send + 'static {
    let start =
        futures::stream::once(async { Ok(response(WatchEvent::from(StartEvent::default()))) });
    let rest = futures::stream::unfold((watcher, rx), move |(watcher, mut rx)| async move {
        match tokio::time::timeout(keepalive, rx.recv()).await {
            Err(_) => Some((
                Ok(response(WatchEvent::from(KeepAlive::default()))),
                (watcher, rx),
            )),
            Ok(Some(ev)) => Some((Ok(response(WatchEvent::from(ev))), (watcher, rx))),
            Ok(None) => None,
        }
    });
    start.chain(rest)
}

/// `rename`, falling back to copy-then-delete where the kernel refuses to
/// rename across filesystems (and overlayfs refuses for directories that
/// come from a lower layer).
fn move_path(source: &Path, dst: &Path) -> std::io::Result<()> {
    match std::fs::rename(source, dst) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            copy_tree(source, dst)?;
            let meta = std::fs::symlink_metadata(source)?;
            if meta.is_dir() {
                std::fs::remove_dir_all(source)
            } else {
                std::fs::remove_file(source)
            }
        }
        other => other,
    }
}

fn copy_tree(source: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(source)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(source)?, dst)
    } else if meta.is_dir() {
        std::fs::create_dir(dst)?;
        std::fs::set_permissions(dst, meta.permissions())?;
        for item in std::fs::read_dir(source)? {
            let item = item?;
            copy_tree(&item.path(), &dst.join(item.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(source, dst).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_copies_files_dirs_and_links() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), "data").unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("link")).unwrap();
        let dst = d.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("sub/f")).unwrap(), "data");
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("sub/f")
        );
    }
}
