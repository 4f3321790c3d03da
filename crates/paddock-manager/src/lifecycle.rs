//! Timeouts: a sandbox whose `endAt` has passed is killed, or paused when it
//! asked for that (unless the record store's backend enforces timeouts itself). Deaths: a sandbox that ends on its own loses its record (and
//! so its route) at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use paddock_infra::{Infra, InfraError, SandboxId, SandboxRecord, SandboxState};
use tokio::sync::broadcast::error::RecvError;

use crate::Manager;
use crate::records::{ApiState, OnTimeout};

const TICK: Duration = Duration::from_millis(500);

/// How long a sandbox woken by traffic lives before its timeout acts again, as a connect
/// without a timeout gives.
const WAKE_TIMEOUT: Duration = Duration::from_secs(300);

/// Resumes sandbox `id` if its record says it is paused, and pushes its end to at least
/// `timeout` from now either way. Returns whether this call resumed it. Safe against a
/// concurrent resume (an API connect and a wake on traffic): the infra serialises them, and
/// the one that finds the sandbox running already counts it as resumed by the other.
pub(crate) async fn resume<I: Infra>(
    manager: &Manager<I>,
    id: &SandboxId,
    timeout: Duration,
) -> Result<bool, InfraError> {
    let paused = manager
        .records
        .get(id)
        .is_some_and(|r| r.state == ApiState::Paused);
    let mut resumed = false;
    if paused {
        match manager.infra.resume(id).await {
            Ok(_) => resumed = true,
            Err(InfraError::IllegalTransition { source, .. })
                if source.from == SandboxState::Running => {}
            Err(e) => return Err(e),
        }
    }
    manager
        .records
        .update(
            id,
            Box::new(move |rec| {
                rec.state = ApiState::Running;
                rec.extend_to(timeout);
            }),
        )
        .await?;
    Ok(resumed)
}

impl<I: Infra> Manager<I> {
    /// Wake on traffic: resumes sandbox `id` if it is paused and was created with auto-resume.
    /// `Ok(Some(record))`: it runs now (woken here or already running); `Ok(None)`: unknown,
    /// or paused without auto-resume (the data plane answers "paused"). The caller has
    /// checked the request's token.
    pub async fn wake(&self, id: &str) -> Result<Option<SandboxRecord>, InfraError> {
        let Ok(id) = SandboxId::new(id) else {
            return Ok(None);
        };
        let Some(r) = self.records.get(&id) else {
            return Ok(None);
        };
        if r.state == ApiState::Paused && !r.auto_resume {
            return Ok(None);
        }
        if resume(self, &id, WAKE_TIMEOUT).await? {
            tracing::info!(sandbox = %id, "resumed by traffic");
        }
        Ok(self.records.get(&id))
    }
}

pub fn spawn_reaper<I: Infra>(manager: Arc<Manager<I>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let now = SystemTime::now();
            for r in manager.records.all() {
                if r.end_at > now || crate::api::never_ends(r.end_at) {
                    continue;
                }
                match (r.on_timeout, r.state) {
                    (OnTimeout::Pause, ApiState::Running) => {
                        tracing::info!(sandbox = %r.id, "timeout reached: pausing");
                        match manager.infra.pause_on_timeout(&r.id).await {
                            Ok(_) => {
                                let saved = manager
                                    .records
                                    .update(&r.id, Box::new(|rec| rec.state = ApiState::Paused))
                                    .await;
                                if let Err(e) = saved {
                                    tracing::error!(sandbox = %r.id, error = %e, "recording a pause on timeout failed");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(sandbox = %r.id, error = %e, "pause on timeout failed")
                            }
                        }
                    }
                    (OnTimeout::Pause, ApiState::Paused) => {}
                    (OnTimeout::Kill, _) => {
                        tracing::info!(sandbox = %r.id, "timeout reached: killing");
                        if let Err(e) = manager.records.remove(&r.id).await {
                            // Killed anyway: the timeout is the user's decision, and a record
                            // without a sandbox is dropped by the next reconcile.
                            tracing::error!(sandbox = %r.id, error = %e, "forgetting a timed-out sandbox failed");
                        }
                        if let Err(e) = manager.infra.kill(&r.id).await {
                            tracing::warn!(sandbox = %r.id, error = %e, "kill on timeout failed");
                        }
                    }
                }
            }
        }
    });
}

/// Drops the record of every sandbox the infra reports dead, then tells the infra to forget it.
/// The order matters: the infra keeps a dead sandbox's address until that `kill`, so the route
/// is gone before the address can belong to another tenant (security review M2).
pub fn spawn_ended_watcher<I: Infra>(manager: Arc<Manager<I>>) {
    // Subscribe now, not in the task: a death between `start` and the task's first poll
    // must not be missed.
    let mut ended = manager.infra.ended();
    tokio::spawn(async move {
        loop {
            match ended.recv().await {
                Ok(ev) => {
                    tracing::warn!(sandbox = %ev.id, reason = %ev.reason, "sandbox ended on its own");
                    forget_dead(&manager, &ev.id).await;
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "missed sandbox deaths; checking every record");
                    for r in manager.records.all() {
                        let dead = match manager.infra.get(&r.id).await {
                            Ok(info) => info.state == SandboxState::Dead,
                            Err(InfraError::NotFound(_)) => true,
                            Err(_) => false,
                        };
                        if dead {
                            forget_dead(&manager, &r.id).await;
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

async fn forget_dead<I: Infra>(manager: &Manager<I>, id: &SandboxId) {
    if let Err(e) = manager.records.remove(id).await {
        tracing::error!(sandbox = %id, error = %e, "forgetting the record of a dead sandbox failed");
    }
    match manager.infra.kill(id).await {
        Ok(()) | Err(InfraError::NotFound(_)) => {}
        Err(e) => tracing::warn!(sandbox = %id, error = %e, "forgetting a dead sandbox failed"),
    }
}
