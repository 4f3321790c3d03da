//! Bringing a claimed Sandbox into service: waiting until it serves, sending its `/init`,
//! and deleting one this replica could not finish (so nothing stays locked).

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::DeleteParams;
use paddock_crds::Sandbox;
use paddock_crds::keys as crd_keys;

use crate::Inner;
use crate::cache::Key;
use crate::call::{CallError, call};
use crate::convert;

/// Why a Sandbox did not come into service.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("the Sandbox was deleted while starting")]
    Deleted,
    #[error("not Ready within {}s ({message})", .waited.as_secs())]
    NotReady { waited: Duration, message: String },
}

/// Why `/init` could not be delivered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    /// The init request stored on the Sandbox is not an init request.
    #[error("the stored init request is malformed: {0}")]
    Stored(#[source] serde_json::Error),
    #[error(transparent)]
    Runtime(#[from] paddock_contract::client::InitError),
}

impl Inner {
    /// Waits until the Sandbox serves (Ready with a pod IP) after generation `generation`.
    pub(crate) async fn wait_serving(
        &self,
        key: &Key,
        generation: Option<i64>,
    ) -> Result<Sandbox, ServeError> {
        let done = self
            .cache
            .wait_for(key, self.config.ready_timeout, |s| match s {
                None => Some(false),
                Some(s) if s.metadata.deletion_timestamp.is_some() => Some(false),
                Some(s) => {
                    let observed = s.status.as_ref().and_then(|st| st.observed_generation);
                    let seen = generation.is_none_or(|g| observed.is_some_and(|o| o >= g));
                    if seen && convert::serves(s) {
                        Some(true)
                    } else {
                        None
                    }
                }
            })
            .await;
        let last = self.cache.get(key).map(|s| Sandbox::clone(&s));
        match (done, last) {
            (Some(true), Some(s)) => Ok(s),
            (Some(_), _) => Err(ServeError::Deleted),
            (None, s) => Err(ServeError::NotReady {
                waited: self.config.ready_timeout,
                message: s
                    .and_then(|s| s.status.and_then(|st| st.message))
                    .unwrap_or_else(|| "no status message".into()),
            }),
        }
    }

    /// Sends the stored `/init` to the sandbox's runtime (the controller does the same; the
    /// token goes along, so whichever comes second is accepted as a replay).
    pub(crate) async fn init(&self, s: &Sandbox, default_user: bool) -> Result<(), InitError> {
        let body = s
            .annotations()
            .get(crd_keys::ANNOTATION_INIT_RUNTIME_REQUEST)
            .map(String::as_str)
            .unwrap_or_default();
        let mut req: paddock_contract::InitRequest = if body.is_empty() {
            Default::default()
        } else {
            serde_json::from_str(body).map_err(InitError::Stored)?
        };
        if default_user {
            req.default_user = Some("user".into());
        }
        req.timestamp = Some(Timestamp::now().to_string());
        let addr = convert::address(s);
        self.runtime
            .init(addr, &req, req.access_token.as_deref())
            .await?;
        Ok(())
    }

    /// Deletes a Sandbox this replica could not finish, so nothing stays locked.
    pub(crate) async fn discard(&self, key: &Key) {
        self.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Instant::now());
        match call(
            self.sandboxes(&key.0)
                .delete(&key.1, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) | Err(CallError::Status(404, _)) => self.cache.deleted(key.clone()),
            Err(e) => {
                tracing::error!(sandbox = %key.1, namespace = %key.0, error = ?e, "deleting a failed sandbox")
            }
        }
    }
}
