//! `POST /sandboxes` (v1) and `POST /v2/sandboxes`: claim or create a sandbox, hand it its
//! configuration through `/init`, record it. With `Idempotency-Key`, a retried create gets
//! the first answer.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use paddock_infra::{CreateSandbox, Infra, Lease, SandboxInfo};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{Caller, RawBody, parse_json};
use super::{ApiResult, M};
use crate::Manager;
use crate::error::ApiError;
use crate::records::{ApiState, OnTimeout, RecordJson, SandboxRecord};

/// Default timeout of a v1 create, seconds.
const V1_DEFAULT_TIMEOUT: u64 = 15;
/// Default timeout of a v2 create, seconds.
const V2_DEFAULT_TIMEOUT: u64 = 300;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    auto_pause: Option<bool>,
    /// `false`: a timeout pauses filesystem-only (E2B's `on_timeout.mode: "filesystem"`).
    auto_pause_memory: Option<bool>,
    auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    pub(super) metadata: Option<BTreeMap<String, String>>,
    pub(super) env_vars: Option<BTreeMap<String, String>>,
    // `secure` is not read: every sandbox gets an access token, which is what `secure: true`
    // asks for; serde skips the field like any other unknown one.
    network: Option<NetworkConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkConfig {
    allow_public_traffic: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct AutoResume {
    #[serde(default)]
    enabled: bool,
}

pub async fn create_v1<I: Infra>(
    m: M<I>,
    caller: Caller,
    headers: http::HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult {
    create_idempotent(m, caller, headers, body, V1_DEFAULT_TIMEOUT).await
}

pub async fn create_v2<I: Infra>(
    m: M<I>,
    caller: Caller,
    headers: http::HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult {
    create_idempotent(m, caller, headers, body, V2_DEFAULT_TIMEOUT).await
}

/// The `Idempotency-Key` header, checked.
fn idempotency_key(headers: &http::HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))?;
    crate::idempotency::validate(k)?;
    Ok(Some(k.to_string()))
}

async fn create_idempotent<I: Infra>(
    State(m): M<I>,
    caller: Caller,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
    default_timeout: u64,
) -> ApiResult {
    let b: NewSandbox = parse_json(&body)?;
    super::validate::new_sandbox(&b)?;
    let idem_key = idempotency_key(&headers)?;
    // The create runs in its own task: a client that disconnects halfway
    // must not cancel it between "sandbox claimed" and "sandbox recorded",
    // which would leave a sandbox running that nothing tracks. Once
    // recorded, the sandbox's timeout reaps it if nobody ever uses it.
    let task = tokio::spawn(async move {
        match idem_key {
            None => create(&m, &caller, b, default_timeout).await,
            Some(k) => {
                // The route is part of the request: v1 and v2 defaults differ.
                let mut fingerprint = default_timeout.to_be_bytes().to_vec();
                fingerprint.extend_from_slice(&body);
                m.idempotency
                    .run(caller.team.name(), &k, &fingerprint, || {
                        create(&m, &caller, b, default_timeout)
                    })
                    .await
            }
        }
    });
    let (status, json) = task
        .await
        .map_err(|e| ApiError::internal("the create task failed", e))??;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    Ok((status, Json(json)).into_response())
}

/// A requested timeout (or `default`), checked against the manager's maximum.
pub(super) fn timeout_secs(
    cfg: &crate::ManagerConfig,
    requested: Option<i64>,
    default: u64,
) -> ApiResult<Duration> {
    let t = requested.unwrap_or(default as i64);
    if t <= 0 {
        return Err(ApiError::bad_request("timeout must be greater than 0"));
    }
    if t as u64 > cfg.max_timeout_secs {
        return Err(ApiError::bad_request(format!(
            "timeout {t}s exceeds the maximum of {}s",
            cfg.max_timeout_secs
        )));
    }
    Ok(Duration::from_secs(t as u64))
}

async fn create<I: Infra>(
    m: &Manager<I>,
    caller: &Caller,
    b: NewSandbox,
    default_timeout: u64,
) -> ApiResult<(u16, Value)> {
    let team = &caller.team;
    let template = b
        .template_id
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "base".into());
    let timeout = timeout_secs(&m.config, b.timeout, default_timeout)?;
    // The original's extensions come out of the metadata before anything else reads it.
    let mut metadata = b.metadata.clone().unwrap_or_default();
    let ext = super::extensions::Extensions::take(&mut metadata)?;
    // A template of that name wins; else one of the team's snapshots by id or name (a
    // snapshot cannot be given a template's name, see `snapshots.rs`).
    let templates = m.infra.templates().await?;
    let (limits, snapshot) = match templates.iter().find(|t| t.name == template) {
        Some(tpl) => (tpl.limits.clone(), None),
        None => match super::snapshots::find(m, &caller.team, &template).await? {
            Some(s) => (s.limits.clone(), Some(s)),
            None => {
                return Err(ApiError::not_found(format!(
                    "template or snapshot '{template}' not found: GET /templates lists the templates, GET /snapshots the snapshots"
                )));
            }
        },
    };
    // A sandbox made from a snapshot is listed with the snapshot's id as its template.
    let template = snapshot.as_ref().map(|s| s.id.clone()).unwrap_or(template);
    let quota = caller.key.as_ref().map(|k| k.quota).unwrap_or_default();
    let wanted = crate::quota::Usage::of_limits(&limits);
    let _reservation = m.reservations.reserve(
        &quota,
        team.name(),
        || crate::records::usage_of(&*m.records, team.name()),
        wanted,
    )?;
    let auto_resume = b.auto_resume.as_ref().is_some_and(|a| a.enabled);
    let timeout_pause = match b.auto_pause_memory {
        Some(false) => paddock_infra::PauseMode::Filesystem,
        _ => paddock_infra::PauseMode::Memory,
    };
    // As E2B: waking on traffic boots a filesystem-only paused sandbox from scratch, so the
    // request that woke it would find none of the servers it was sent to.
    if auto_resume && timeout_pause == paddock_infra::PauseMode::Filesystem {
        return Err(ApiError::bad_request(
            "autoResume cannot be enabled with autoPauseMemory: false (a filesystem-only pause reboots the sandbox on resume)",
        ));
    }
    let allow_internet_access = b.allow_internet_access.unwrap_or(true);
    // Everything the creator decides is settled before the sandbox exists: a backend that
    // keeps records writes it together with its claim.
    let private = b
        .network
        .as_ref()
        .and_then(|n| n.allow_public_traffic)
        .is_some_and(|public| !public);
    let (access_token, traffic_token) = new_tokens(private)?;
    let lease = Lease {
        team: team.name().to_string(),
        access_token,
        traffic_token,
        env_vars: b.env_vars.clone().unwrap_or_default(),
        // never-timeout: no deadline at all (as the original: no shutdownTime).
        timeout: (!ext.never_timeout).then_some(timeout),
        on_timeout: if b.auto_pause.unwrap_or(false) {
            OnTimeout::Pause
        } else {
            OnTimeout::Kill
        },
        auto_resume,
        timeout_pause,
    };
    let started = std::time::Instant::now();
    // maxClaimWorkers: a burst beyond it queues here instead of all at once.
    let _worker = m
        .claim_workers
        .acquire()
        .await
        .map_err(|e| ApiError::internal("the manager is shutting down", e))?;
    let req = CreateSandbox {
        template: template.clone(),
        limits: None,
        allow_internet_access,
        metadata: metadata.clone(),
        lease: Some(lease.clone()),
        labels: ext.labels.clone(),
        create_on_no_stock: ext.create_on_no_stock,
    };
    let created = match &snapshot {
        Some(s) => m.infra.create_from_snapshot(&s.id, req).await,
        None => m.infra.create(req).await,
    };
    let info = match created {
        Ok(info) => info,
        Err(e) => {
            m.metrics
                .claims
                .get_or_create(&crate::metrics::ClaimLabels { source: "failed" })
                .inc();
            return Err(e.into());
        }
    };
    let listed = ext.listed_metadata(&metadata, info.address.ip());
    let body = register(
        m,
        info,
        lease,
        template,
        listed,
        allow_internet_access,
        started,
    )
    .await?;
    Ok((StatusCode::CREATED.as_u16(), body))
}

/// Hands a sandbox the infrastructure made its configuration (`/init`) and records it; the
/// sandbox's JSON as the API shows it. A sandbox that cannot be set up or recorded is killed.
pub(super) async fn register<I: Infra>(
    m: &Manager<I>,
    info: SandboxInfo,
    lease: Lease,
    template: String,
    metadata: BTreeMap<String, String>,
    allow_internet_access: bool,
    started: std::time::Instant,
) -> ApiResult<Value> {
    // The runtime learns its env vars and access token through /init, sent by the manager
    // for every backend.
    let init = paddock_contract::InitRequest {
        env_vars: Some(lease.env_vars.clone()),
        access_token: Some(lease.access_token.clone()),
        default_user: Some("user".into()),
        default_workdir: None,
        timestamp: Some(crate::records::rfc3339(SystemTime::now())),
    };
    // Per phase, in the log line below: where a create's time goes.
    let claimed_ms = started.elapsed().as_secs_f64() * 1e3;
    // A runtime started with a bootstrap token accepts /init only with it.
    if let Err(e) = m
        .runtime
        .init(info.address, &init, info.bootstrap_token.as_deref())
        .await
    {
        if let Err(k) = m.infra.kill(&info.id).await {
            tracing::warn!(sandbox = %info.id, error = %k, "killing a sandbox whose /init failed");
        }
        return Err(ApiError::internal(
            format!("initialising sandbox {} failed", info.id),
            e,
        ));
    }
    let inited_ms = started.elapsed().as_secs_f64() * 1e3;
    let now = SystemTime::now();
    let record = SandboxRecord {
        id: info.id.clone(),
        team: lease.team,
        template,
        metadata,
        started_at: now,
        end_at: end_at(now, lease.timeout),
        state: ApiState::Running,
        access_token: lease.access_token,
        traffic_token: lease.traffic_token,
        address: info.address,
        cpu_count: info.limits.cpu_millis.div_ceil(1000),
        memory_mb: info.limits.memory_bytes >> 20,
        disk_mb: info.limits.disk_bytes.map(|d| d >> 20).unwrap_or(0),
        on_timeout: lease.on_timeout,
        auto_resume: lease.auto_resume,
        allow_internet_access,
    };
    let body = record.sandbox_json(&m.config.envd_version, m.config.domain.as_deref());
    let source = if info.from_pool { "warm" } else { "cold" };
    let labels = crate::metrics::ClaimLabels { source };
    m.metrics.claims.get_or_create(&labels).inc();
    m.metrics
        .claim_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    let id = record.id.clone();
    let team = record.team.clone();
    // A sandbox nobody can find again must not keep running: without its record the caller
    // gets a 5xx and the sandbox goes.
    if let Err(e) = m.records.insert(record).await {
        if let Err(k) = m.infra.kill(&id).await {
            tracing::warn!(sandbox = %id, error = %k, "killing a sandbox whose record was not saved");
        }
        return Err(e.into());
    }
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        sandbox = %id,
        %team,
        source,
        ms = total_ms as u64,
        claim_ms = format_args!("{claimed_ms:.2}"),
        init_ms = format_args!("{:.2}", inited_ms - claimed_ms),
        record_ms = format_args!("{:.2}", total_ms - inited_ms),
        "sandbox created"
    );
    Ok(body)
}

/// When a sandbox created at `now` with `timeout` ends. A sandbox that never times out keeps
/// the largest end the API's timestamps can show (the API shows it as the zero time).
pub(super) fn end_at(now: SystemTime, timeout: Option<Duration>) -> SystemTime {
    match timeout {
        Some(t) => now + t,
        None => super::extensions::never(),
    }
}

/// A fresh sandbox token (24 random bytes, hex).
fn new_token() -> ApiResult<String> {
    paddock_contract::random_hex(24)
        .map_err(|e| ApiError::internal("making the sandbox's token", e))
}

/// A new sandbox's access token, and its traffic token when its ports are `private`.
pub(super) fn new_tokens(private: bool) -> ApiResult<(String, Option<String>)> {
    let traffic = if private { Some(new_token()?) } else { None };
    Ok((new_token()?, traffic))
}
