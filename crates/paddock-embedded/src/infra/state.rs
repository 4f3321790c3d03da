//! What the infra remembers about its sandboxes in memory, and the small accessors on it.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::MutexGuard;
use std::time::Instant;

use paddock_infra::{InfraError, InfraResult, LifecycleEvent, SandboxId, SandboxState};

use super::{EmbeddedInfra, internal};
use crate::store::SandboxRecord;

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) rec: SandboxRecord,
    /// Previous CPU sample for `cpu_percent`.
    pub(super) last_cpu: Option<(Instant, u64)>,
    /// Why the sandbox died, when it did on its own.
    pub(super) dead_reason: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) sandboxes: HashMap<SandboxId, Entry>,
    pub(super) used_ips: BTreeSet<Ipv4Addr>,
    /// The address handed out last; allocation continues after it.
    pub(super) last_ip: Option<Ipv4Addr>,
    /// Warm pools per template (see `pool.rs`).
    pub(super) pools: super::pool::Pools,
}

impl EmbeddedInfra {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn save(&self, rec: &SandboxRecord) -> InfraResult<()> {
        self.inner.store.put(rec).map_err(internal)?;
        if let Some(e) = self.state().sandboxes.get_mut(&rec.id) {
            e.rec = rec.clone();
        }
        Ok(())
    }

    /// [`Self::save`] with the store's write (and its disk sync) on the blocking pool: for the
    /// create path, whose async workers also serve the data plane.
    pub(super) async fn save_async(&self, rec: &SandboxRecord) -> InfraResult<()> {
        let me = self.clone();
        let saved = rec.clone();
        super::blocking(move || me.inner.store.put(&saved))
            .await?
            .map_err(internal)?;
        if let Some(e) = self.state().sandboxes.get_mut(&rec.id) {
            e.rec = rec.clone();
        }
        Ok(())
    }

    pub(super) fn mark_dead(&self, id: &SandboxId) {
        if let Some(e) = self.state().sandboxes.get_mut(id) {
            e.rec.state = SandboxState::Dead;
        }
    }

    pub(super) fn record(&self, id: &SandboxId) -> InfraResult<SandboxRecord> {
        self.state()
            .sandboxes
            .get(id)
            .map(|e| e.rec.clone())
            .ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    /// Why a sandbox died on its own, if it did.
    pub fn dead_reason(&self, id: &SandboxId) -> Option<String> {
        self.state()
            .sandboxes
            .get(id)
            .and_then(|e| e.dead_reason.clone())
    }

    pub(super) fn transition(
        &self,
        id: &SandboxId,
        ev: LifecycleEvent,
    ) -> InfraResult<SandboxRecord> {
        let st = self.state();
        let e = st
            .sandboxes
            .get(id)
            .filter(|e| !e.rec.pooled)
            .ok_or_else(|| InfraError::NotFound(id.clone()))?;
        let mut rec = e.rec.clone();
        rec.state = rec
            .state
            .on(ev)
            .map_err(|source| InfraError::IllegalTransition {
                id: id.clone(),
                source,
            })?;
        Ok(rec)
    }
}
