//! The pool: claiming an available member of a SandboxSet with one `Update` on its cached
//! resourceVersion, or creating a new Sandbox claimed from birth when none is left.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::PostParams;
use paddock_controller::desired::claim::{self as plan, Candidate, ClaimRequest};
use paddock_crds::keys as crd_keys;
use paddock_crds::{Sandbox, SandboxSet};
use paddock_infra::{InfraError, InfraResult, SandboxId};

use crate::Inner;
use crate::cache::Key;
use crate::call::{CallError, call};

/// Drops a pick when the claim attempt is over.
struct Picked<'a>(&'a Mutex<HashSet<Key>>, Key);

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl Inner {
    /// Claims an available member of `set`; `None` when none could be had.
    pub(crate) async fn claim_from_pool(
        &self,
        set: &SandboxSet,
        stamp: &(dyn Fn(&mut Sandbox) + Send + Sync),
    ) -> InfraResult<Option<Sandbox>> {
        let ns = set.namespace().unwrap_or_default();
        let set_name = set.name_any();
        let set_uid = set.metadata.uid.clone().unwrap_or_default();
        let now = Timestamp::now();
        let pool = self.cache.sandboxes(|s| {
            s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.labels().get(crd_keys::LABEL_SANDBOX_POOL) == Some(&set_name)
                && s.labels()
                    .get(crd_keys::LABEL_SANDBOX_CLAIMED)
                    .map(String::as_str)
                    == Some("false")
        });
        let candidates: Vec<Candidate> = pool
            .iter()
            .map(|s| Candidate::from_sandbox(s, &set_uid, now))
            .collect();
        let update_revision = set.status.as_ref().and_then(|s| s.update_revision.clone());
        // A random seed: concurrent creates (on this and other replicas) start at different
        // candidates, so they rarely collide.
        // (A seed, not a secret: a fixed one when the random source fails is harmless.)
        let seed = uuid::Uuid::new_v4().simple().to_string();
        let order = plan::pick(&candidates, update_revision.as_deref(), &seed);
        let api = self.sandboxes(&ns);
        for i in order {
            let key = (ns.clone(), pool[i].name_any());
            if !self
                .picks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone())
            {
                continue;
            }
            let _picked = Picked(&self.picks, key.clone());
            let mut s = Sandbox::clone(&pool[i]);
            // Drops the SandboxSet owner reference too, so the pool refills.
            stamp(&mut s);
            match call(api.replace(&key.1, &PostParams::default(), &s)).await {
                Ok(claimed) => {
                    tracing::info!(sandbox = %key.1, namespace = %ns, "claimed from the pool");
                    self.cache.wrote(claimed.clone());
                    return Ok(Some(claimed));
                }
                Err(CallError::Status(409 | 404, _)) => {
                    tracing::debug!(sandbox = %key.1, "lost the race for a pool sandbox");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// A new Sandbox of `set`, claimed from birth.
    pub(crate) async fn create_fresh(
        &self,
        set: &SandboxSet,
        stamp: &(dyn Fn(&mut Sandbox) + Send + Sync),
    ) -> InfraResult<Sandbox> {
        let ns = set.namespace().unwrap_or_default();
        self.bucket.acquire().await;
        let source = paddock_controller::resolve(set, &self.client)
            .await
            .map_err(|e| InfraError::SandboxFailed {
                id: SandboxId::for_resource(&ns, &set.name_any())
                    .unwrap_or_else(|_| SandboxId::new("unknown").expect("a valid id")),
                reason: format!("the SandboxSet's template cannot be used: {e}"),
            })?;
        let mut s = plan::fresh_sandbox(&set.name_any(), &ns, source.spec, &source.revision);
        stamp(&mut s);
        let created = call(self.sandboxes(&ns).create(&PostParams::default(), &s)).await?;
        tracing::info!(sandbox = %created.name_any(), namespace = %ns, "created a sandbox (no stock)");
        self.cache.wrote(created.clone());
        Ok(created)
    }
}

/// What one create writes onto its Sandbox besides the claim itself.
pub(crate) struct Stamp {
    pub(crate) claim: ClaimRequest,
    pub(crate) set_uid: String,
    pub(crate) now: Timestamp,
    pub(crate) extra: BTreeMap<String, String>,
}

impl Stamp {
    pub(crate) fn apply(&self, s: &mut Sandbox) {
        plan::claim_metadata(&self.claim, s, &self.set_uid, self.now);
        s.annotations_mut().extend(self.extra.clone());
    }
}
