//! What the API reports about a sandbox besides its state: metrics from the runtime's
//! `/metrics` in the Pod, logs from the Pod's log, and the templates (the SandboxSets).

use std::collections::HashSet;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, LogParams};
use paddock_crds::keys as crd_keys;
use paddock_infra::{InfraError, InfraResult, LogLine, SandboxId, SandboxMetrics, TemplateInfo};

use crate::Inner;
use crate::call::{CallError, call};
use crate::convert;

impl Inner {
    pub(crate) async fn metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        let i = self;
        let (key, _) = i.claimed(id)?;
        // Read now: another replica may have resumed it (and this one's cache still has it
        // paused, without a pod IP).
        let s = i
            .read_now(&key)
            .await?
            .ok_or_else(|| InfraError::NotFound(id.clone()))?;
        if !convert::serves(&s) {
            // No numbers rather than zeros: a zero sample would stay in the history.
            return Err(InfraError::Conflict(format!(
                "sandbox {id} is not serving (paused or starting): no usage to report"
            )));
        }
        let mut req = hyper::Request::get(format!("http://{}/metrics", convert::address(&s)));
        if let Some(t) = s
            .annotations()
            .get(crd_keys::ANNOTATION_RUNTIME_ACCESS_TOKEN)
        {
            req = req.header(paddock_contract::ACCESS_TOKEN_HEADER, t);
        }
        let req = req.body(Empty::new()).map_err(InfraError::internal)?;
        let resp = tokio::time::timeout(Duration::from_secs(5), i.http.request(req))
            .await
            .map_err(|_| InfraError::internal("the runtime's /metrics did not answer"))?
            .map_err(InfraError::internal)?;
        if !resp.status().is_success() {
            return Err(InfraError::internal(format!(
                "the runtime's /metrics answered {}",
                resp.status()
            )));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(InfraError::internal)?
            .to_bytes();
        let m: RuntimeMetrics = serde_json::from_slice(&body).map_err(InfraError::internal)?;
        Ok(SandboxMetrics {
            cpu_percent: m.cpu_used_pct,
            memory_bytes: m.mem_used,
            memory_limit_bytes: m.mem_total,
            disk_bytes: m.disk_used,
            ..Default::default()
        })
    }

    pub(crate) async fn logs(&self, id: &SandboxId) -> InfraResult<Vec<LogLine>> {
        let i = self;
        let (key, s) = i.claimed(id)?;
        if s.spec.paused.unwrap_or(false) {
            // No Pod while paused.
            return Ok(Vec::new());
        }
        let pods: Api<Pod> = Api::namespaced(i.client.clone(), &key.0);
        let pod = match call(pods.get_opt(&key.1)).await? {
            Some(p) => p,
            None => return Ok(Vec::new()),
        };
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let lp = LogParams {
            container,
            timestamps: true,
            tail_lines: Some(10_000),
            ..Default::default()
        };
        let text = match call(pods.logs(&key.1, &lp)).await {
            Ok(t) => t,
            Err(CallError::Status(400 | 404, _)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(text.lines().filter_map(log_line).collect())
    }

    pub(crate) async fn templates(&self) -> InfraResult<Vec<TemplateInfo>> {
        let i = self;
        let mut seen = HashSet::new();
        let mut sets = i.cache.sets();
        // In the order of the namespaces given, so a name in two namespaces lists the one
        // a create would use.
        sets.sort_by_key(|s| {
            let ns = s.namespace().unwrap_or_default();
            i.config
                .namespaces
                .iter()
                .position(|n| *n == ns)
                .unwrap_or(usize::MAX)
        });
        Ok(sets
            .into_iter()
            .filter(|s| seen.insert(s.name_any()))
            .map(|s| {
                // A SandboxSet's size is fixed by its replicas.
                let size = s.spec.replicas.max(0) as usize;
                TemplateInfo {
                    name: s.name_any(),
                    built: true,
                    limits: convert::set_limits(&s),
                    pool_size: size,
                    pool_ready: s
                        .status
                        .as_ref()
                        .map_or(0, |st| st.available_replicas.max(0) as usize),
                    pool_min: size,
                    pool_max: size,
                }
            })
            .collect())
    }
}

/// What the runtime's `/metrics` answers (the fields used).
#[derive(serde::Deserialize)]
struct RuntimeMetrics {
    #[serde(default)]
    cpu_used_pct: f64,
    #[serde(default)]
    mem_total: u64,
    #[serde(default)]
    mem_used: u64,
    #[serde(default)]
    disk_used: u64,
}

/// One line of `kubectl logs --timestamps` output.
fn log_line(line: &str) -> Option<LogLine> {
    let (ts, msg) = line.split_once(' ').unwrap_or(("", line));
    let timestamp_ms = ts
        .parse::<Timestamp>()
        .map(|t| t.as_millisecond().max(0) as u64)
        .unwrap_or_default();
    let lower = msg.to_ascii_lowercase();
    let level = if lower.contains("error") {
        "error"
    } else if lower.contains("warn") {
        "warn"
    } else {
        "info"
    };
    Some(LogLine {
        timestamp_ms,
        level: level.into(),
        message: msg.to_string(),
    })
}
