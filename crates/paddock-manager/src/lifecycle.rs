//! Timeouts: a sandbox whose `endAt` has passed is killed, or paused when it
//! asked for that.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use paddock_infra::Infra;

use crate::Manager;
use crate::records::{ApiState, OnTimeout};

const TICK: Duration = Duration::from_millis(500);

pub fn spawn_reaper<I: Infra>(manager: Arc<Manager<I>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let now = SystemTime::now();
            for r in manager.records.all() {
                if r.end_at > now {
                    continue;
                }
                match (r.on_timeout, r.state) {
                    (OnTimeout::Pause, ApiState::Running) => {
                        tracing::info!(sandbox = %r.id, "timeout reached: pausing");
                        match manager.infra.pause(&r.id).await {
                            Ok(_) => {
                                manager
                                    .records
                                    .update(&r.id, |rec| rec.state = ApiState::Paused);
                            }
                            Err(e) => {
                                tracing::warn!(sandbox = %r.id, error = %e, "pause on timeout failed")
                            }
                        }
                    }
                    (OnTimeout::Pause, ApiState::Paused) => {}
                    (OnTimeout::Kill, _) => {
                        tracing::info!(sandbox = %r.id, "timeout reached: killing");
                        manager.records.remove(&r.id);
                        if let Err(e) = manager.infra.kill(&r.id).await {
                            tracing::warn!(sandbox = %r.id, error = %e, "kill on timeout failed");
                        }
                    }
                }
            }
        }
    });
}
