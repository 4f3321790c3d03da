//! Noticing sandboxes whose init died on its own.

use std::time::Duration;

use paddock_infra::{LifecycleEvent, SandboxEnded, SandboxId, SandboxState};
use tracing::warn;

use super::EmbeddedInfra;
use crate::{container, proc};

impl EmbeddedInfra {
    /// Starts the monitor: every 100 ms it checks each live sandbox's init (by pid and start
    /// time, so it works for adopted sandboxes that are no longer our children); when one has
    /// exited on its own, the sandbox is marked dead and its resources are released.
    pub(super) fn start_monitor(&self) {
        let me = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return,
                }
                let watched: Vec<(SandboxId, i32, u64)> = {
                    let st = me.state();
                    st.sandboxes
                        .values()
                        .filter(|e| {
                            matches!(e.rec.state, SandboxState::Running | SandboxState::Paused)
                        })
                        .map(|e| (e.rec.id.clone(), e.rec.init_pid, e.rec.init_start_ticks))
                        .collect()
                };
                for (id, pid, ticks) in watched {
                    if pid > 0 && !proc::alive(pid, ticks) {
                        // Reap it if it is our child (a no-op for adopted ones).
                        let _ = container::try_reap(pid);
                        me.on_init_exit(id, pid).await;
                    }
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
