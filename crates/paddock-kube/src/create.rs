//! Create: claim a pool member of the template's SandboxSet, or (with creation on no stock)
//! a new Sandbox claimed from birth; then `/init` and a route push, so the 201 means routable.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use paddock_controller::desired::claim::{ClaimRequest, InitRuntime};
use paddock_crds::Sandbox;
use paddock_crds::keys as crd_keys;
use paddock_gateway::peer::RouteState;
use paddock_infra::{CreateSandbox, InfraError, InfraResult, Lease, SandboxId, SandboxInfo};

use crate::Inner;
use crate::convert::{self, ANNOTATION_METADATA, ANNOTATION_RECORD, RecordMeta};
use crate::pool::Stamp;

impl Inner {
    pub(crate) async fn create(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        let i = self;
        let set = i
            .cache
            .set(&req.template, &i.config.namespaces)
            .ok_or_else(|| InfraError::UnknownTemplate(req.template.clone()))?;
        let lease = match req.lease.clone() {
            Some(l) => l,
            None => Lease {
                access_token: paddock_contract::random_hex(24).map_err(InfraError::internal)?,
                ..Default::default()
            },
        };
        let now_sys = SystemTime::now();
        let end = lease.timeout.map_or_else(convert::never, |t| now_sys + t);
        let (shutdown_time, pause_time) = convert::deadline_fields(end, lease.on_timeout);
        // The manager has taken the original's extensions out of the metadata already
        // (`label:` keys are in `req.labels`, create-on-no-stock in `req.create_on_no_stock`).
        let no_stock = i.config.create_on_no_stock && req.create_on_no_stock;
        let labels = req.labels.clone();
        let metadata = req.metadata.clone();
        let annotations: BTreeMap<String, String> = metadata
            .iter()
            .filter(|(k, _)| convert::valid_key(k) && !crd_keys::is_reserved_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let limits = req
            .limits
            .clone()
            .unwrap_or_else(|| convert::set_limits(&set));
        let meta = RecordMeta {
            team: lease.team.clone(),
            template: req.template.clone(),
            started_at_ms: convert::millis(now_sys),
            on_timeout: lease.on_timeout,
            auto_resume: lease.auto_resume,
            allow_internet_access: req.allow_internet_access,
            cpu_count: limits.cpu_millis.div_ceil(1000),
            memory_mb: limits.memory_bytes >> 20,
            disk_mb: limits.disk_bytes.map_or(0, |d| d >> 20),
        };
        let mut extra = BTreeMap::from([
            (
                ANNOTATION_RECORD.to_string(),
                serde_json::to_string(&meta).map_err(InfraError::internal)?,
            ),
            (
                ANNOTATION_METADATA.to_string(),
                serde_json::to_string(&metadata).map_err(InfraError::internal)?,
            ),
        ]);
        if let Some(t) = &lease.traffic_token {
            extra.insert(crd_keys::ANNOTATION_TRAFFIC_ACCESS_TOKEN.into(), t.clone());
        }
        let stamp = Stamp {
            claim: ClaimRequest {
                owner: if lease.team.is_empty() {
                    "e2b".into()
                } else {
                    lease.team.clone()
                },
                lock: uuid::Uuid::new_v4().to_string(),
                claim_name: None,
                labels,
                annotations,
                init: Some(InitRuntime {
                    env_vars: lease.env_vars.clone(),
                    access_token: lease.access_token.clone(),
                }),
                shutdown_time,
                pause_time,
            },
            set_uid: set.metadata.uid.clone().unwrap_or_default(),
            now: Timestamp::now(),
            extra,
        };
        let apply = |s: &mut Sandbox| stamp.apply(s);
        // A new Sandbox first has to start: its deadline must not run out before it serves
        // (a 2 s timeout would have the controller delete it mid-start). It gets the start
        // allowance on top; the manager's record write after the create sets the real
        // deadline, and a replica dying meanwhile still leaves a Sandbox that times out.
        let fresh = {
            let mut claim = stamp.claim.clone();
            let later = |t: Option<Time>| {
                t.map(|t| convert::to_time(convert::from_time(&t) + i.config.ready_timeout))
            };
            claim.shutdown_time = later(claim.shutdown_time);
            claim.pause_time = later(claim.pause_time);
            Stamp {
                claim,
                set_uid: stamp.set_uid.clone(),
                now: stamp.now,
                extra: stamp.extra.clone(),
            }
        };
        let apply_fresh = |s: &mut Sandbox| fresh.apply(s);
        let (s, from_pool) = match i.claim_from_pool(&set, &apply).await? {
            Some(s) => (s, true),
            None if no_stock => (i.create_fresh(&set, &apply_fresh).await?, false),
            None => {
                return Err(InfraError::NoStock {
                    template: req.template.clone(),
                });
            }
        };
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        let id = SandboxId::for_resource(&key.0, &key.1).map_err(InfraError::internal)?;
        let s = if from_pool {
            s
        } else {
            match i.wait_serving(&key, None).await {
                Ok(s) => s,
                Err(reason) => {
                    i.discard(&key).await;
                    return Err(InfraError::SandboxFailed {
                        id,
                        reason: reason.to_string(),
                    });
                }
            }
        };
        if let Err(reason) = i.init(&s, true).await {
            i.discard(&key).await;
            return Err(InfraError::SandboxFailed {
                id,
                reason: format!("/init failed: {reason}"),
            });
        }
        i.push(&s, RouteState::Running).await;
        let mut info = convert::info(&s)
            .ok_or_else(|| InfraError::internal("a claimed sandbox without an id"))?;
        info.from_pool = from_pool;
        Ok(info)
    }
}
