//! Directory watches: streamed (`WatchDir`) or polled (`CreateWatcher` +
//! `GetWatcherEvents`), both on inotify through the `notify` crate.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use super::entry::{Names, entry_info};
use super::slots::WatchSlot;
use crate::proto::filesystem::{EventType, FilesystemEvent};
use crate::users::UserDb;

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

/// Starts watching; every converted event goes to `sink`.
pub fn start(
    spec: WatchSpec,
    sink: impl Fn(FilesystemEvent) + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let root = spec.root.clone();
    let recursive = spec.recursive;
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => convert(&spec, event).into_iter().for_each(&sink),
            Err(e) => tracing::warn!(error = %e, "watch error"),
        })?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher.watch(Path::new(&root), mode)?;
    Ok(watcher)
}

struct Polled {
    _watcher: notify::RecommendedWatcher,
    _slot: WatchSlot,
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

    /// Starts a polled watch that holds `slot` for as long as it lives.
    pub fn create(&self, spec: WatchSpec, slot: WatchSlot) -> notify::Result<String> {
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let sink_events = events.clone();
        let watcher = start(spec, move |ev| {
            let mut q = sink_events.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= POLLED_BACKLOG {
                q.pop_front();
            }
            q.push_back(ev);
        })?;
        let id = new_id();
        self.lock().insert(
            id.clone(),
            Polled {
                _watcher: watcher,
                _slot: slot,
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
