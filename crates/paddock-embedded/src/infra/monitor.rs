//! Noticing sandboxes whose init died on its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use paddock_infra::{LifecycleEvent, SandboxEnded, SandboxId, SandboxState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::EmbeddedInfra;
use crate::{container, proc};

/// How often the monitor looks for running sandboxes it does not watch yet (new ones,
/// adopted ones); an init that exits is noticed at once, whenever that is.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// Resolves when an init exits.
type Exit = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How the monitor learns that one init exited.
enum Watch {
    /// Its pidfd turns readable: nothing to do until then, however many sandboxes idle.
    Pidfd(Exit),
    /// No pidfd (a kernel before 5.3, or the call refused): `/proc` is read on every sync.
    Poll(u64),
    /// It is gone already (or its pid now belongs to another process).
    Gone,
}

/// Starts watching the init `pid` that started at `ticks` (0: unknown).
fn watch(pid: i32, ticks: u64) -> Watch {
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let Some(p) = Pid::from_raw(pid) else {
        return Watch::Gone;
    };
    let fd = match pidfd_open(p, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Watch::Gone,
        Err(_) => return Watch::Poll(ticks),
    };
    // The pidfd pins this pid to one process; the start time says whether it is still the
    // init of the record (pids are reused).
    if !proc::alive(pid, ticks) {
        return Watch::Gone;
    }
    // Deprecated because a raw-fd `T` may be closed under the reactor; an `OwnedFd` cannot
    // be (the reason tokio gives, #8587, does not apply), and the replacement is `unsafe`.
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(fd, Interest::READABLE);
    match registered {
        Ok(fd) => Watch::Pidfd(Box::pin(async move {
            // An error means the descriptor cannot be polled; treating that as an exit
            // would kill a live sandbox, so it is handed back to polling instead.
            if fd.readable().await.is_err() {
                std::future::pending::<()>().await;
            }
        })),
        Err(_) => Watch::Poll(ticks),
    }
}

impl EmbeddedInfra {
    /// Starts the monitor: one task that notices sandboxes whose init exited on its own
    /// (by pid and start time, so it works for adopted sandboxes that are no longer our
    /// children), marks them dead and releases their resources. Each init is watched through
    /// a pidfd, so idle sandboxes cost the monitor nothing: it used to read every sandbox's
    /// `/proc/<pid>/stat` ten times a second, 10,000 reads a second for a thousand sandboxes.
    pub(super) fn start_monitor(&self) {
        let me = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            // Init pid per watched sandbox (a sandbox whose pid changes is watched again).
            let mut watched: HashMap<SandboxId, i32> = HashMap::new();
            let mut polled: HashMap<SandboxId, (i32, u64)> = HashMap::new();
            let mut exits =
                FuturesUnordered::<Pin<Box<dyn Future<Output = (SandboxId, i32)> + Send>>>::new();
            let mut sync = tokio::time::interval(SYNC_EVERY);
            sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let gone: Vec<(SandboxId, i32)> = tokio::select! {
                    _ = stop.changed() => return,
                    Some((id, pid)) = exits.next(), if !exits.is_empty() => {
                        if watched.get(&id) == Some(&pid) {
                            watched.remove(&id);
                        }
                        vec![(id, pid)]
                    }
                    _ = sync.tick() => {
                        let new: Vec<(SandboxId, i32, u64)> = {
                            let st = me.state();
                            st.sandboxes
                                .values()
                                .filter(|e| {
                                    matches!(e.rec.state, SandboxState::Running | SandboxState::Paused)
                                        && e.rec.init_pid > 0
                                        && watched.get(&e.rec.id) != Some(&e.rec.init_pid)
                                        && polled.get(&e.rec.id).map(|w| w.0) != Some(e.rec.init_pid)
                                })
                                .map(|e| (e.rec.id.clone(), e.rec.init_pid, e.rec.init_start_ticks))
                                .collect()
                        };
                        let mut gone = Vec::new();
                        for (id, pid, ticks) in new {
                            match watch(pid, ticks) {
                                Watch::Pidfd(exit) => {
                                    watched.insert(id.clone(), pid);
                                    exits.push(Box::pin(async move {
                                        exit.await;
                                        (id, pid)
                                    }));
                                }
                                Watch::Poll(ticks) => {
                                    polled.insert(id, (pid, ticks));
                                }
                                Watch::Gone => gone.push((id, pid)),
                            }
                        }
                        polled.retain(|id, &mut (pid, ticks)| {
                            let alive = proc::alive(pid, ticks);
                            if !alive {
                                gone.push((id.clone(), pid));
                            }
                            alive
                        });
                        gone
                    }
                };
                for (id, pid) in gone {
                    // Reap it if it is our child (a no-op for adopted ones).
                    let _ = container::try_reap(pid);
                    // Killed on purpose, the sandbox is no longer live and this does nothing.
                    me.on_init_exit(id, pid).await;
                }
            }
        });
    }

    pub(super) async fn on_init_exit(&self, id: SandboxId, pid: i32) {
        {
            let mut st = self.state();
            let Some(e) = st.sandboxes.get_mut(&id) else {
                return;
            };
            if e.rec.init_pid != pid || e.rec.state == SandboxState::Dead {
                return; // killed on purpose, or already handled
            }
            let Ok(next) = e.rec.state.on(LifecycleEvent::Died) else {
                return;
            };
            e.rec.state = next;
            e.dead_reason = Some("init exited".to_string());
            for pool in st.pools.values_mut() {
                pool.ready.retain(|p| p != &id);
            }
        }
        warn!(%id, pid, "sandbox init died; releasing its resources");
        // No receiver is fine (nobody routes to our sandboxes then).
        let _ = self.inner.ended.send(SandboxEnded {
            id: id.clone(),
            reason: "init exited".to_string(),
        });
        if let Err(e) = self.teardown(&id).await {
            warn!(%id, error = %e, "cleanup after init death");
        }
        self.inner.pool_wakeup.notify_one();
    }
}
