//! The E2B REST routes (both the v1 and the v2 families the SDKs use).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use paddock_infra::{CreateSandbox, Infra};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Manager;
use crate::error::ApiError;
use crate::keys::{Quota, StoredKey, Team, random_hex};
use crate::records::{ApiState, OnTimeout, SandboxRecord};

type M<I> = State<Arc<Manager<I>>>;
type ApiResult<T = Response> = Result<T, ApiError>;

/// The raw request body; a rejection (too large: 413) follows the API's error format.
pub struct RawBody(axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}

/// A JSON body whose rejections follow the API's error format.
pub struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(Body)
    }
}

/// Encodes every metric of the process in Prometheus text format.
pub type Exporter = Arc<dyn Fn() -> String + Send + Sync>;

/// This API's OpenAPI document.
pub const OPENAPI: &str = include_str!("../openapi/openapi.json");

/// The routes, behind API-key authentication (except `/health` and
/// `/openapi.json`). `/metrics` (admin key) serves what `exporter` encodes.
pub fn router<I: Infra>(manager: Arc<Manager<I>>, exporter: Exporter) -> Router {
    let api = Router::new()
        .route("/sandboxes", post(create_v1::<I>).get(list_v1::<I>))
        .route("/v2/sandboxes", post(create_v2::<I>).get(list_v2::<I>))
        .route("/sandboxes/{id}", get(detail::<I>).delete(kill::<I>))
        .route("/sandboxes/{id}/connect", post(connect::<I>))
        .route("/v2/sandboxes/{id}/connect", post(connect::<I>))
        .route("/sandboxes/{id}/resume", post(connect::<I>))
        .route("/sandboxes/{id}/timeout", post(set_timeout::<I>))
        .route("/sandboxes/{id}/refreshes", post(refresh::<I>))
        .route("/sandboxes/{id}/pause", post(pause::<I>))
        .route("/sandboxes/{id}/metrics", get(metrics::<I>))
        .route("/sandboxes/{id}/logs", get(logs_v1::<I>))
        .route("/v2/sandboxes/{id}/logs", get(logs_v2::<I>))
        .route("/templates", get(templates::<I>))
        .route("/templates/aliases/{alias}", get(alias::<I>))
        .route("/api-keys", post(create_key::<I>).get(list_keys::<I>))
        .route("/api-keys/{id}", delete(delete_key::<I>))
        .route(
            "/metrics",
            get(move |State(m): M<I>, Extension(team): Extension<Team>| {
                let exporter = exporter.clone();
                async move {
                    admin_only(&team)?;
                    m.refresh_gauges().await;
                    Ok::<_, ApiError>(
                        (
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            exporter(),
                        )
                            .into_response(),
                    )
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            manager.clone(),
            authenticate::<I>,
        ));
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .route_layer(axum::middleware::from_fn_with_state(
            manager.clone(),
            observe::<I>,
        ))
        .with_state(manager)
}

/// Counts and times every request by its route pattern.
async fn observe<I: Infra>(State(m): M<I>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("api", %method, %route);
    let resp = tracing::Instrument::instrument(next.run(req), span).await;
    let labels = crate::metrics::RouteLabels {
        method,
        route,
        status: resp.status().as_u16(),
    };
    m.metrics.requests.get_or_create(&labels).inc();
    m.metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn authenticate<I: Infra>(State(m): M<I>, mut req: Request, next: Next) -> Response {
    let h = req.headers();
    let key = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .map(str::to_string);
    let Some(key) = key else {
        return ApiError::unauthorized("missing API key: send it in the X-API-Key header")
            .into_response();
    };
    match m.keys.authenticate(&key) {
        Some((team, stored)) => {
            req.extensions_mut().insert(team);
            req.extensions_mut().insert(stored);
            next.run(req).await
        }
        None => ApiError::unauthorized("invalid API key").into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    auto_pause: Option<bool>,
    auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
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

async fn create_v1<I: Infra>(
    m: M<I>,
    team: Extension<Team>,
    key: Extension<Option<StoredKey>>,
    headers: http::HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult {
    create_idempotent(m, team, key, headers, body, 15).await
}

async fn create_v2<I: Infra>(
    m: M<I>,
    team: Extension<Team>,
    key: Extension<Option<StoredKey>>,
    headers: http::HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult {
    create_idempotent(m, team, key, headers, body, 300).await
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

async fn create_idempotent<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Extension(key): Extension<Option<StoredKey>>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
    default_timeout: u64,
) -> ApiResult {
    let b: NewSandbox = parse_json(&body)?;
    let idem_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))?;
            crate::idempotency::validate(k)?;
            Some(k.to_string())
        }
    };
    // The create runs in its own task: a client that disconnects halfway
    // must not cancel it between "sandbox claimed" and "sandbox recorded",
    // which would leave a sandbox running that nothing tracks. Once
    // recorded, the sandbox's timeout reaps it if nobody ever uses it.
    let task = tokio::spawn(async move {
        match idem_key {
            None => create(&m, &team, key.as_ref(), b, default_timeout).await,
            Some(k) => {
                // The route is part of the request: v1 and v2 defaults differ.
                let mut fingerprint = default_timeout.to_be_bytes().to_vec();
                fingerprint.extend_from_slice(&body);
                m.idempotency
                    .run(team.name(), &k, &fingerprint, || {
                        create(&m, &team, key.as_ref(), b, default_timeout)
                    })
                    .await
            }
        }
    });
    let (status, json) = task
        .await
        .map_err(|e| ApiError::internal(format!("create task failed: {e}")))??;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    Ok((status, Json(json)).into_response())
}

fn timeout_secs(m: &ManagerCfg, requested: Option<i64>, default: u64) -> ApiResult<Duration> {
    let t = requested.unwrap_or(default as i64);
    if t <= 0 {
        return Err(ApiError::bad_request("timeout must be greater than 0"));
    }
    if t as u64 > m.max_timeout_secs {
        return Err(ApiError::bad_request(format!(
            "timeout {t}s exceeds the maximum of {}s",
            m.max_timeout_secs
        )));
    }
    Ok(Duration::from_secs(t as u64))
}

type ManagerCfg = crate::ManagerConfig;

async fn create<I: Infra>(
    m: &Manager<I>,
    team: &Team,
    key: Option<&StoredKey>,
    b: NewSandbox,
    default_timeout: u64,
) -> ApiResult<(u16, Value)> {
    let template = b
        .template_id
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "base".into());
    let timeout = timeout_secs(&m.config, b.timeout, default_timeout)?;
    let templates = m.infra.templates().await?;
    let Some(tpl) = templates.iter().find(|t| t.name == template) else {
        return Err(ApiError::not_found(format!(
            "template '{template}' not found: GET /templates lists the templates"
        )));
    };
    let quota = key.map(|k| k.quota).unwrap_or_default();
    let wanted = crate::quota::Usage {
        sandboxes: 1,
        cpu: tpl.limits.cpu_millis.div_ceil(1000),
        memory_mb: tpl.limits.memory_bytes >> 20,
    };
    let _reservation = m
        .reservations
        .reserve(&quota, team.name(), m.records.usage_of(team.name()), wanted)
        .map_err(|msg| ApiError::new(StatusCode::FORBIDDEN, msg))?;
    let allow_internet_access = b.allow_internet_access.unwrap_or(true);
    let metadata = b.metadata.clone().unwrap_or_default();
    let started = std::time::Instant::now();
    // maxClaimWorkers: a burst beyond it queues here instead of all at once.
    let _worker = m
        .claim_workers
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the manager is shutting down"))?;
    let created = m
        .infra
        .create(CreateSandbox {
            template: template.clone(),
            limits: None,
            allow_internet_access,
            metadata: metadata.clone(),
        })
        .await;
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
    let token = random_hex(24);
    let traffic_token = b
        .network
        .as_ref()
        .and_then(|n| n.allow_public_traffic)
        .is_some_and(|public| !public)
        .then(|| random_hex(24));
    // The runtime learns its env vars and access token through /init.
    let init = paddock_contract::InitRequest {
        env_vars: Some(b.env_vars.clone().unwrap_or_default()),
        access_token: Some(token.clone()),
        default_user: Some("user".into()),
        default_workdir: None,
        timestamp: Some(crate::records::rfc3339(SystemTime::now())),
    };
    if let Err(e) = m
        .runtime
        .init(info.address, &init, info.bootstrap_token.as_deref())
        .await
    {
        let _ = m.infra.kill(&info.id).await;
        return Err(ApiError::internal(format!(
            "initialising sandbox {}: {}",
            info.id,
            error_chain(&e)
        )));
    }
    let now = SystemTime::now();
    let record = SandboxRecord {
        id: info.id.clone(),
        team: team.name().to_string(),
        template,
        metadata,
        started_at: now,
        end_at: now + timeout,
        state: ApiState::Running,
        access_token: token,
        traffic_token,
        address: info.address,
        cpu_count: info.limits.cpu_millis.div_ceil(1000),
        memory_mb: info.limits.memory_bytes >> 20,
        disk_mb: info.limits.disk_bytes.map(|d| d >> 20).unwrap_or(0),
        on_timeout: if b.auto_pause.unwrap_or(false) {
            OnTimeout::Pause
        } else {
            OnTimeout::Kill
        },
        auto_resume: b.auto_resume.map(|a| a.enabled).unwrap_or(false),
        allow_internet_access,
    };
    let body = record.sandbox_json(&m.config.envd_version);
    let source = if info.from_pool { "warm" } else { "cold" };
    let labels = crate::metrics::ClaimLabels { source };
    m.metrics.claims.get_or_create(&labels).inc();
    m.metrics
        .claim_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(sandbox = %record.id, team = %record.team, source, ms = started.elapsed().as_millis() as u64, "sandbox created");
    m.records.insert(record);
    Ok((StatusCode::CREATED.as_u16(), body))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// The `metadata` filter: itself a URL-encoded `k=v&k2=v2` query string.
fn query_pairs(raw: &str) -> BTreeMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn list_filtered<I: Infra>(
    m: &Manager<I>,
    team: &Team,
    q: &ListQuery,
    default_states: &[ApiState],
) -> ApiResult<Vec<SandboxRecord>> {
    let states: Vec<ApiState> = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => default_states.to_vec(),
        Some(s) => s
            .split(',')
            .map(|x| match x.trim() {
                "running" => Ok(ApiState::Running),
                "paused" => Ok(ApiState::Paused),
                other => Err(ApiError::bad_request(format!(
                    "unknown state '{other}': use running or paused"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    let filter = q.metadata.as_deref().map(query_pairs).unwrap_or_default();
    let mut list: Vec<_> = m
        .records
        .all()
        .into_iter()
        .filter(|r| team.sees(&r.team) && states.contains(&r.state))
        .filter(|r| filter.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
        .collect();
    // Newest first, ties broken by id so pages are stable.
    list.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(list)
}

async fn list_v1<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let list = list_filtered(&m, &team, &q, &[ApiState::Running])?;
    let body: Vec<Value> = list
        .iter()
        .map(|r| r.listed_json(&m.config.envd_version))
        .collect();
    Ok(Json(body).into_response())
}

async fn list_v2<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let list = list_filtered(&m, &team, &q, &[ApiState::Running, ApiState::Paused])?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let start = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => list
            .iter()
            .position(|r| r.id.as_str() == t)
            .ok_or_else(|| ApiError::bad_request("invalid nextToken"))?,
    };
    let page = &list[start..list.len().min(start + limit)];
    let body: Vec<Value> = page
        .iter()
        .map(|r| r.listed_json(&m.config.envd_version))
        .collect();
    let mut resp = Json(body).into_response();
    if let Some(next) = list.get(start + limit)
        && let Ok(v) = next.id.as_str().parse()
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

fn find<I: Infra>(m: &Manager<I>, id: &str, team: &Team) -> ApiResult<SandboxRecord> {
    m.records
        .get(id, team)
        .ok_or_else(|| ApiError::sandbox_not_found(id))
}

async fn detail<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> ApiResult {
    Ok(Json(find(&m, &id, &team)?.detail_json(&m.config.envd_version)).into_response())
}

async fn kill<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    // Forget the record only once the sandbox is really gone, so a failed
    // kill can be retried instead of leaving an untracked sandbox.
    m.infra.kill(&r.id).await.or_else(|e| match e {
        paddock_infra::InfraError::NotFound(_) => Ok(()),
        e => Err(ApiError::from(e)),
    })?;
    m.records.remove(&r.id);
    tracing::info!(sandbox = %r.id, "sandbox killed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
struct TimeoutBody {
    timeout: Option<i64>,
}

async fn set_timeout<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Body(b): Body<TimeoutBody>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    let t = b
        .timeout
        .ok_or_else(|| ApiError::bad_request("timeout is required"))?;
    if t < 0 {
        return Err(ApiError::bad_request("timeout must not be negative"));
    }
    let t = timeout_secs(&m.config, Some(t.max(1)), 0)?;
    m.records
        .update(&r.id, |rec| rec.end_at = SystemTime::now() + t);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
struct RefreshBody {
    duration: Option<i64>,
}

async fn refresh<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Body(b): Body<RefreshBody>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    let d = b.duration.unwrap_or(60);
    if !(0..=3600).contains(&d) {
        return Err(ApiError::bad_request(
            "duration must be between 0 and 3600 seconds",
        ));
    }
    m.records
        .update(&r.id, |rec| rec.extend_to(Duration::from_secs(d as u64)));
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pause<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    if r.state == ApiState::Paused {
        return Err(ApiError::conflict(format!(
            "sandbox '{id}' is already paused"
        )));
    }
    m.infra.pause(&r.id).await?;
    m.records.update(&r.id, |rec| rec.state = ApiState::Paused);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
struct ConnectBody {
    timeout: Option<i64>,
}

async fn connect<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Body(b): Body<ConnectBody>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    let timeout = timeout_secs(&m.config, b.timeout, 300)?;
    let resumed = r.state == ApiState::Paused;
    if resumed {
        m.infra.resume(&r.id).await?;
    }
    m.records.update(&r.id, |rec| {
        rec.state = ApiState::Running;
        rec.extend_to(timeout);
    });
    let r = find(&m, &id, &team)?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(r.sandbox_json(&m.config.envd_version))).into_response())
}

async fn metrics<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    let x = m.infra.metrics(&r.id).await?;
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Json(json!([{
        "timestamp": crate::records::rfc3339(now),
        "timestampUnix": secs,
        "cpuCount": r.cpu_count,
        "cpuUsedPct": x.cpu_percent,
        "memUsed": x.memory_bytes,
        "memTotal": x.memory_limit_bytes,
        "memCache": 0,
        "diskUsed": x.disk_bytes,
        "diskTotal": r.disk_mb << 20,
    }]))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct LogsV1Query {
    start: Option<u64>,
    limit: Option<usize>,
}

async fn logs_v1<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Query(q): Query<LogsV1Query>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    let lines = m.infra.logs(&r.id).await?;
    Ok(Json(crate::logs::v1(&lines, q.start, q.limit)).into_response())
}

async fn logs_v2<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Query(q): Query<crate::logs::V2Query>,
) -> ApiResult {
    let r = find(&m, &id, &team)?;
    let lines = m.infra.logs(&r.id).await?;
    Ok(Json(crate::logs::v2(&lines, &q)?).into_response())
}

async fn templates<I: Infra>(State(m): M<I>) -> ApiResult {
    let list = m.infra.templates().await?;
    let now = crate::records::rfc3339(SystemTime::now());
    let body: Vec<Value> = list
        .iter()
        .map(|t| json!({
            "templateID": t.name, "buildID": t.name, "cpuCount": t.limits.cpu_millis.div_ceil(1000),
            "memoryMB": t.limits.memory_bytes >> 20, "diskSizeMB": t.limits.disk_bytes.map(|d| d >> 20).unwrap_or(0),
            "public": true, "createdAt": now, "updatedAt": now, "createdBy": null, "lastSpawnedAt": null,
            "spawnCount": 0, "buildCount": 1, "envdVersion": m.config.envd_version,
            "aliases": [t.name], "names": [t.name], "buildStatus": if t.built { "ready" } else { "waiting" },
        }))
        .collect();
    Ok(Json(body).into_response())
}

async fn alias<I: Infra>(State(m): M<I>, Path(alias): Path<String>) -> ApiResult {
    let list = m.infra.templates().await?;
    match list.iter().find(|t| t.name == alias) {
        Some(t) => Ok(Json(json!({"templateID": t.name, "public": true})).into_response()),
        None => Err(ApiError::not_found(format!("template '{alias}' not found"))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewKey {
    team: Option<String>,
    name: Option<String>,
    #[serde(flatten)]
    quota: Quota,
}

fn key_json(k: &StoredKey) -> Value {
    json!({
        "id": k.id, "team": k.team, "name": k.name, "createdAt": k.created_at,
        "maxSandboxes": k.quota.max_sandboxes, "maxCpu": k.quota.max_cpu,
        "maxMemoryMB": k.quota.max_memory_mb,
    })
}

fn admin_only(team: &Team) -> ApiResult<()> {
    if *team == Team::Admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the admin key may manage API keys",
        ))
    }
}

async fn create_key<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Body(b): Body<NewKey>,
) -> ApiResult {
    admin_only(&team)?;
    let t = b
        .team
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("team is required"))?;
    if t == "admin"
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(format!("invalid team name '{t}'")));
    }
    let (k, secret) = m
        .keys
        .create(&t, b.name.as_deref().unwrap_or("default"), b.quota)
        .map_err(|e| ApiError::internal(format!("storing the key: {e}")))?;
    let mut body = key_json(&k);
    body["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_keys<I: Infra>(State(m): M<I>, Extension(team): Extension<Team>) -> ApiResult {
    admin_only(&team)?;
    let body: Vec<Value> = m.keys.list().into_iter().map(|k| key_json(&k)).collect();
    Ok(Json(body).into_response())
}

async fn delete_key<I: Infra>(
    State(m): M<I>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> ApiResult {
    admin_only(&team)?;
    match m.keys.delete(&id) {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::not_found(format!("API key '{id}' not found"))),
        Err(e) => Err(ApiError::internal(format!("storing keys: {e}"))),
    }
}
