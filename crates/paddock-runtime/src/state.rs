//! Process-wide runtime settings: the ones `/init` changes at run time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::filesystem::{DEFAULT_MAX_WATCHERS, WatchSlots, WatcherTable};
use crate::process::ProcessTable;
use crate::users::UserDb;

/// How the runtime starts before any `/init` call.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Access token required on every request but `/health`, if set.
    pub access_token: Option<String>,
    /// User that processes and file operations run as when the request names none.
    pub default_user: String,
    /// Working directory for processes when the request names none (else the user's home).
    pub default_workdir: Option<PathBuf>,
    /// Root of the user database (`/etc/passwd`, `/etc/group`); `/` outside tests.
    pub system_root: PathBuf,
    /// Security review M1: how many directory watches (inotify instances,
    /// shared with the host) may be live at once.
    pub max_watchers: usize,
    /// Security review H5: most bytes one `POST /files` request may write
    /// (after gzip decoding); `None` leaves uploads bounded by the disk.
    pub max_upload_bytes: Option<u64>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            access_token: None,
            default_user: paddock_contract::DEFAULT_USER.to_string(),
            default_workdir: None,
            system_root: PathBuf::from("/"),
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_upload_bytes: None,
        }
    }
}

/// Where the default user's preparation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prepared {
    Pending,
    Ready,
    /// Why it could not be made.
    Failed(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub env: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub default_user: String,
    pub default_workdir: Option<PathBuf>,
}

/// Shared state of one runtime instance.
pub struct Runtime {
    settings: RwLock<Settings>,
    /// Whether the default user is ready (see [`Runtime::prepare_in_background`]).
    prepared: tokio::sync::watch::Sender<Prepared>,
    pub(crate) users: UserDb,
    pub(crate) processes: ProcessTable,
    pub(crate) watchers: WatcherTable,
    pub(crate) watch_slots: WatchSlots,
    pub(crate) max_upload_bytes: Option<u64>,
}

impl Runtime {
    /// Builds the runtime state from its start-up options.
    pub fn new(opts: RuntimeOptions) -> Arc<Self> {
        let mut env = BTreeMap::new();
        env.insert("E2B_SANDBOX".to_string(), "true".to_string());
        Arc::new(Self {
            settings: RwLock::new(Settings {
                env,
                access_token: opts.access_token.filter(|t| !t.is_empty()),
                default_user: opts.default_user,
                default_workdir: opts.default_workdir,
            }),
            prepared: tokio::sync::watch::Sender::new(Prepared::Ready),
            users: UserDb::new(opts.system_root),
            processes: ProcessTable::default(),
            watchers: WatcherTable::default(),
            watch_slots: WatchSlots::new(opts.max_watchers),
            max_upload_bytes: opts.max_upload_bytes,
        })
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn access_token(&self) -> Option<String> {
        self.settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .access_token
            .clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Settings)) {
        let mut guard = self
            .settings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard);
    }
}

impl Runtime {
    /// Serves `sudo` for the default user (root only; see [`crate::sudo`]).
    pub fn start_sudo(&self) {
        match self.users.lookup(&self.settings().default_user) {
            Ok(user) => crate::sudo::start(self.users.clone(), user.uid),
            Err(e) => tracing::warn!(error = %e, "no default user: sudo not served"),
        }
    }

    /// Makes sure the default user exists (creating it when the runtime runs
    /// as root), so the first request does not pay for it.
    pub fn prepare(&self) -> Result<(), crate::users::UserError> {
        let name = self.settings().default_user;
        if rustix::process::geteuid().is_root() {
            self.users.ensure(&name).map(|_| ())
        } else {
            match self.users.lookup(&name) {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::warn!(user = %name, error = %e, "default user missing and cannot be created without root");
                    Ok(())
                }
            }
        }
    }

    /// Prepares the default user (and then serves `sudo`, if `sudo`) on a blocking thread
    /// while the runtime already serves: on a sandbox's first boot, making the user copies
    /// three files of `/etc` up the overlay, ~2 ms of its start that no longer delay its
    /// readiness. Every request but `/health` waits for it (see [`Runtime::prepared`]).
    /// Needs a tokio runtime.
    pub fn prepare_in_background(self: &Arc<Self>, sudo: bool) {
        self.prepared.send_replace(Prepared::Pending);
        let rt = self.clone();
        tokio::task::spawn_blocking(move || {
            let state = match rt.prepare() {
                Ok(()) => {
                    if sudo {
                        rt.start_sudo();
                    }
                    Prepared::Ready
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not prepare the default user");
                    Prepared::Failed(e.to_string())
                }
            };
            rt.prepared.send_replace(state);
        });
    }

    /// Waits until the default user is prepared; why not, when that failed.
    pub(crate) async fn prepared(&self) -> Result<(), String> {
        let mut rx = self.prepared.subscribe();
        match rx.wait_for(|p| *p != Prepared::Pending).await {
            Ok(p) => match &*p {
                Prepared::Failed(why) => Err(why.clone()),
                _ => Ok(()),
            },
            // The sender lives as long as `self`.
            Err(_) => Ok(()),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_prepared(&self, p: Prepared) {
        self.prepared.send_replace(p);
    }
}
