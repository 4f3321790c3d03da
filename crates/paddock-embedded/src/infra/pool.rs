//! Warm pools: ready sandboxes per template, refilled in the background.

use std::time::Duration;

use paddock_infra::SandboxState;
use tracing::warn;

use super::EmbeddedInfra;
use crate::store::SandboxRecord;

impl EmbeddedInfra {
    /// Starts the background task that keeps each template's warm pool full. Pools are sized
    /// by [`crate::TemplateSpec::pool_size`].
    pub fn start_pools(&self) {
        let me = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                let mut made_progress = false;
                for spec in me.inner.templates.specs().cloned().collect::<Vec<_>>() {
                    if *stop.borrow() {
                        return;
                    }
                    let want = {
                        let st = me.state();
                        let have = st.pools.get(&spec.name).map_or(0, |p| p.len())
                            + st.filling.get(&spec.name).copied().unwrap_or(0);
                        spec.pool_size.saturating_sub(have)
                    };
                    if want == 0 {
                        continue;
                    }
                    *me.state().filling.entry(spec.name.clone()).or_default() += 1;
                    let r = me
                        .cold_create(
                            &spec.name,
                            spec.limits.clone(),
                            false,
                            Default::default(),
                            true,
                        )
                        .await;
                    let mut st = me.state();
                    if let Some(n) = st.filling.get_mut(&spec.name) {
                        *n = n.saturating_sub(1);
                    }
                    match r {
                        Ok(info) => {
                            st.pools
                                .entry(spec.name.clone())
                                .or_default()
                                .push_back(info.id);
                            made_progress = true;
                        }
                        Err(e) => warn!(template = %spec.name, error = %e, "pool refill failed"),
                    }
                }
                if !made_progress {
                    tokio::select! {
                        _ = me.inner.pool_wakeup.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        });
    }

    /// Ready sandboxes waiting in the pool of `template`.
    pub fn pool_len(&self, template: &str) -> usize {
        self.state().pools.get(template).map_or(0, |p| p.len())
    }

    pub(super) fn claim(&self, template: &str) -> Option<SandboxRecord> {
        let mut st = self.state();
        let id = st.pools.get_mut(template)?.pop_front()?;
        let e = st.sandboxes.get(&id)?;
        (e.rec.state == SandboxState::Running).then(|| e.rec.clone())
    }
}
