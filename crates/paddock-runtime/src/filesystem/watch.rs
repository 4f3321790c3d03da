//! Directory watches: streamed (`WatchDir`) or polled (`CreateWatcher` +
//! `GetWatcherEvents`), both on inotify through the `notify` crate.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use super::entry::{Names, entry_info};
use super::slots::WatchSlot;
use crate::identity::as_user;
use crate::proto::filesystem::{EventType, FilesystemEvent};
use crate::users::{User, UserDb};

/// Events a polled watcher keeps before dropping the oldest.
const POLLED_BACKLOG: usize = 10_000;

/// What a watch reports.
#[derive(Clone)]
pub struct WatchSpec {
    pub root: PathBuf,
    pub recursive: bool,
    pub include_entry: bool,
    pub users: UserDb,
}

fn event_type(kind: &EventKind) -> Option<EventType> {
    match kind {
        EventKind::Create(_) => Some(EventType::EVENT_TYPE_CREATE),
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(EventType::EVENT_TYPE_CHMOD),
        EventKind::Modify(ModifyKind::Name(_)) => Some(EventType::EVENT_TYPE_RENAME),
        EventKind::Modify(_) => Some(EventType::EVENT_TYPE_WRITE),
        EventKind::Remove(_) => Some(EventType::EVENT_TYPE_REMOVE),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => None,
    }
}

/// Converts one inotify event into the protocol's events (one per path).
fn convert(spec: &WatchSpec, event: notify::Event) -> Vec<FilesystemEvent> {
    let Some(kind) = event_type(&event.kind) else {
        return Vec::new();
    };
    event
        .paths
        .iter()
        .filter_map(|p| {
            let name = p.strip_prefix(&spec.root).ok()?.display().to_string();
            if name.is_empty() {
                return None;
            }
            let entry = if spec.include_entry && kind != EventType::EVENT_TYPE_REMOVE {
                entry_info(p, &mut Names::new(&spec.users)).ok()
            } else {
                None
            };
            Some(FilesystemEvent {
                name,
                r#type: buffa::EnumValue::Known(kind),
                entry: entry.into(),
                ..Default::default()
            })
        })
        .collect()
}

/// A running watch. Dropping it stops the watch and frees its slot.
pub struct ActiveWatch {
    control: mpsc::Sender<Control>,
    _slot: WatchSlot,
}

enum Control {
    /// A directory appeared under a recursive watch: watch it and its tree.
    Watch(PathBuf),
    Stop,
}

impl Drop for ActiveWatch {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
    }
}

/// Starts watching as `user`; every converted event goes to `sink`.
///
/// Security review L1: the watch is set up on a thread that carries the
/// user's filesystem identity, and the threads it starts (notify's event
/// loop and the one that extends recursive watches) inherit that identity
/// from it, since Linux copies a thread's credentials to the threads it
/// creates. So every directory listing, `inotify_add_watch` (which needs
/// read permission) and stat for `include_entry` runs as the user: a
/// recursive watch skips directories the user may not read instead of
/// reporting what happens inside them.
pub async fn start(
    spec: WatchSpec,
    user: &User,
    slot: WatchSlot,
    sink: impl Fn(FilesystemEvent) + Send + Sync + 'static,
) -> io::Result<ActiveWatch> {
    as_user(user, move || start_here(spec, slot, sink)).await
}

fn start_here(
    spec: WatchSpec,
    slot: WatchSlot,
    sink: impl Fn(FilesystemEvent) + Send + Sync + 'static,
) -> io::Result<ActiveWatch> {
    let root = spec.root.clone();
    let recursive = spec.recursive;
    let (control, requests) = mpsc::channel();
    let new_dirs = control.clone();
    let mut last = None;
    let sink = Arc::new(sink);
    let event_sink = sink.clone();
    let event_spec = spec.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if recursive && may_add_directory(&event.kind) {
                    for p in &event.paths {
                        let _ = new_dirs.send(Control::Watch(p.clone()));
                    }
                }
                for ev in convert(&event_spec, event) {
                    if !repeats(&mut last, &ev) {
                        event_sink(ev);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "watch error"),
        })
        .map_err(into_io)?;
    watcher
        .watch(&root, RecursiveMode::NonRecursive)
        .map_err(into_io)?;
    if recursive {
        for dir in subdirs(&root) {
            watch_tree(&mut watcher, dir, &mut |_| {});
        }
    }
    std::thread::Builder::new()
        .name("paddock-watch".into())
        .spawn(move || {
            while let Ok(Control::Watch(dir)) = requests.recv() {
                // What was made inside a new directory before its watch existed (`mkdir -p
                // a/b && touch a/b/f` races the watch on `a`) has no event of its own: it is
                // reported as created once found, so a recursive watch misses nothing that
                // is there. (The directory's own creation came from its parent's watch.)
                watch_tree(&mut watcher, dir, &mut |found| {
                    let created =
                        notify::Event::new(EventKind::Create(notify::event::CreateKind::Any))
                            .add_path(found.to_path_buf());
                    for ev in convert(&spec, created) {
                        sink(ev);
                    }
                });
            }
            // Stopped: dropping the watcher closes its inotify instance.
        })?;
    Ok(ActiveWatch {
        control,
        _slot: slot,
    })
}

/// Events after which a new directory may sit under the watch.
fn may_add_directory(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
    )
}

/// Watching a subdirectory on its own also reports its removal or move
/// from the subdirectory's side, right next to the parent's report of the
/// same thing: drop that echo.
fn repeats(last: &mut Option<(EventType, String)>, ev: &FilesystemEvent) -> bool {
    let kind = ev.r#type.as_known();
    let key = kind.map(|k| (k, ev.name.clone()));
    let echo = matches!(
        kind,
        Some(EventType::EVENT_TYPE_REMOVE | EventType::EVENT_TYPE_RENAME)
    ) && *last == key;
    *last = key;
    echo
}

/// The directories directly in `dir` (not through symlinks) that the
/// caller may list; others are skipped.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(items) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    items
        .filter_map(Result::ok)
        .filter(|i| i.file_type().is_ok_and(|t| t.is_dir()))
        .map(|i| i.path())
        .collect()
}

/// Watches `dir` and every directory below it that the caller may read, and hands `found`
/// each entry of the watched directories (after their watch exists).
fn watch_tree(
    watcher: &mut notify::RecommendedWatcher,
    dir: PathBuf,
    found: &mut dyn FnMut(&Path),
) {
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                if let Ok(items) = std::fs::read_dir(&dir) {
                    for item in items.filter_map(Result::ok) {
                        found(&item.path());
                    }
                }
                stack.extend(subdirs(&dir));
            }
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                tracing::warn!(dir = %dir.display(), "inotify watch limit reached; the rest of the tree is not watched");
                return;
            }
            // Typically a directory the user may not read: not theirs to watch.
            Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "not watching"),
        }
    }
}

fn into_io(e: notify::Error) -> io::Error {
    match e.kind {
        notify::ErrorKind::Io(e) => e,
        notify::ErrorKind::PathNotFound => io::Error::from(io::ErrorKind::NotFound),
        other => io::Error::other(format!("{other:?}")),
    }
}

struct Polled {
    _watch: ActiveWatch,
    events: Arc<Mutex<VecDeque<FilesystemEvent>>>,
}

/// Watchers created with `CreateWatcher`, by id.
#[derive(Default)]
pub struct WatcherTable {
    watchers: Mutex<HashMap<String, Polled>>,
}

impl WatcherTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Polled>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a polled watch as `user`, holding `slot` for as long as it lives.
    pub async fn create(
        &self,
        spec: WatchSpec,
        user: &User,
        slot: WatchSlot,
    ) -> io::Result<String> {
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let sink_events = events.clone();
        let watch = start(spec, user, slot, move |ev| {
            let mut q = sink_events.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= POLLED_BACKLOG {
                q.pop_front();
            }
            q.push_back(ev);
        })
        .await?;
        let id = new_id();
        self.lock().insert(
            id.clone(),
            Polled {
                _watch: watch,
                events,
            },
        );
        Ok(id)
    }

    /// Takes the events collected since the last call.
    pub fn drain(&self, id: &str) -> Option<Vec<FilesystemEvent>> {
        let watchers = self.lock();
        let polled = watchers.get(id)?;
        let mut q = polled.events.lock().unwrap_or_else(|p| p.into_inner());
        Some(q.drain(..).collect())
    }

    pub fn remove(&self, id: &str) -> bool {
        self.lock().remove(id).is_some()
    }
}

fn new_id() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // Uniqueness, not secrecy, is what matters for a watcher id.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes[..12].copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
