//! An in-memory [`Infra`] for the API tests, whose calls can be made to fail, and a real
//! HTTP listener standing in for the runtime's `/init`.
//!
//! The manager's create sends `/init` through the real `RuntimeClient` to the address the
//! infra returns; rather than a seam around that call, the fake returns the address of a
//! tiny axum server, so the tests also check what the runtime is told (token, env vars).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use paddock_infra::{
    CreateSandbox, Infra, InfraError, InfraResult, Lease, Limits, LogLine, RecordStore,
    SandboxEnded, SandboxId, SandboxInfo, SandboxMetrics, SandboxState, TemplateInfo,
};

/// Infra calls a test can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Kill,
    Pause,
    Resume,
}

#[derive(Default)]
struct State_ {
    sandboxes: BTreeMap<SandboxId, SandboxInfo>,
    next: u32,
    failures: HashMap<Op, fn() -> InfraError>,
    /// Whether the warm pools are empty: creates are then cold, or refused when the
    /// request forbids a cold create.
    out_of_stock: bool,
    /// Every create request, in order.
    requests: Vec<CreateSandbox>,
}

pub struct FakeInfra {
    /// Where every sandbox's runtime "listens": the stand-in `/init` server.
    address: SocketAddr,
    state: Mutex<State_>,
    /// Sandboxes that end on their own (none do here, unless a test says so).
    ended: tokio::sync::broadcast::Sender<SandboxEnded>,
    /// The record store this infra keeps, if any ([`Infra::records`]).
    records: Option<Arc<dyn RecordStore>>,
    /// The lease of every create, in order.
    leases: Mutex<Vec<Option<Lease>>>,
}

impl FakeInfra {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            state: Mutex::default(),
            ended: tokio::sync::broadcast::channel(16).0,
            records: None,
            leases: Mutex::default(),
        }
    }

    pub fn with_records(mut self, records: Option<Arc<dyn RecordStore>>) -> Self {
        self.records = records;
        self
    }

    /// The leases the manager passed to `create`, in order.
    pub fn leases(&self) -> Vec<Option<Lease>> {
        self.leases.lock().unwrap().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    /// Every later `op` fails with `error()` until [`Self::heal`].
    pub fn fail(&self, op: Op, error: fn() -> InfraError) {
        self.lock().failures.insert(op, error);
    }

    /// Empties (or refills) every warm pool.
    pub fn set_out_of_stock(&self, out: bool) {
        self.lock().out_of_stock = out;
    }

    /// The create requests seen so far.
    pub fn requests(&self) -> Vec<CreateSandbox> {
        self.lock().requests.clone()
    }

    pub fn heal(&self, op: Op) {
        self.lock().failures.remove(&op);
    }

    fn check(&self, op: Op) -> InfraResult<()> {
        match self.lock().failures.get(&op) {
            Some(e) => Err(e()),
            None => Ok(()),
        }
    }

    /// Ids of the sandboxes this infra runs.
    pub fn alive(&self) -> Vec<String> {
        self.lock()
            .sandboxes
            .keys()
            .map(|k| k.as_str().to_string())
            .collect()
    }

    fn transition(&self, id: &SandboxId, to: SandboxState) -> InfraResult<SandboxInfo> {
        let mut s = self.lock();
        let info = s
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| InfraError::NotFound(id.clone()))?;
        info.state = to;
        Ok(info.clone())
    }
}

/// The templates: two of the default size (2 vCPUs, 512 MiB) like the real ones.
fn templates() -> Vec<TemplateInfo> {
    ["base", "code-interpreter-v1"]
        .into_iter()
        .map(|name| TemplateInfo {
            name: name.into(),
            built: true,
            limits: Limits::default(),
            pool_size: 1,
            pool_ready: 1,
            pool_min: 1,
            pool_max: 1,
        })
        .collect()
}

impl Infra for FakeInfra {
    async fn create(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        self.leases.lock().unwrap().push(req.lease.clone());
        self.check(Op::Create)?;
        let tpl = templates()
            .into_iter()
            .find(|t| t.name == req.template)
            .ok_or_else(|| InfraError::UnknownTemplate(req.template.clone()))?;
        let mut s = self.lock();
        s.requests.push(req.clone());
        if s.out_of_stock && !req.create_on_no_stock {
            return Err(InfraError::NoStock {
                template: req.template,
            });
        }
        s.next += 1;
        let id = SandboxId::new(format!("fake{:016}", s.next)).expect("a valid id");
        let info = SandboxInfo {
            id: id.clone(),
            template: req.template,
            state: SandboxState::Running,
            address: self.address,
            limits: tpl.limits,
            allow_internet_access: req.allow_internet_access,
            metadata: req.metadata,
            created_at_ms: 0,
            from_pool: !s.out_of_stock && s.next.is_multiple_of(2),
            bootstrap_token: None,
        };
        s.sandboxes.insert(id, info.clone());
        Ok(info)
    }

    async fn get(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        self.lock()
            .sandboxes
            .get(id)
            .cloned()
            .ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    async fn list(&self) -> InfraResult<Vec<SandboxInfo>> {
        Ok(self.lock().sandboxes.values().cloned().collect())
    }

    async fn pause(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        self.check(Op::Pause)?;
        self.transition(id, SandboxState::Paused)
    }

    async fn resume(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        self.check(Op::Resume)?;
        self.transition(id, SandboxState::Running)
    }

    async fn kill(&self, id: &SandboxId) -> InfraResult<()> {
        self.check(Op::Kill)?;
        self.lock()
            .sandboxes
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    async fn metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        self.get(id).await?;
        Ok(SandboxMetrics {
            cpu_percent: 12.5,
            memory_bytes: 64 << 20,
            memory_limit_bytes: 512 << 20,
            ..SandboxMetrics::default()
        })
    }

    async fn logs(&self, id: &SandboxId) -> InfraResult<Vec<LogLine>> {
        self.get(id).await?;
        let line = |ms, level: &str, message: &str| LogLine {
            timestamp_ms: ms,
            level: level.into(),
            message: message.into(),
        };
        Ok(vec![
            line(1000, "info", "process started"),
            line(2000, "debug", "noise"),
            line(3000, "error", "process failed"),
        ])
    }

    async fn templates(&self) -> InfraResult<Vec<TemplateInfo>> {
        Ok(templates())
    }

    fn ended(&self) -> tokio::sync::broadcast::Receiver<SandboxEnded> {
        self.ended.subscribe()
    }

    fn records(&self) -> Option<Arc<dyn RecordStore>> {
        self.records.clone()
    }
}

/// A real listener answering `POST /init` with a chosen status, remembering every body.
#[derive(Clone)]
pub struct InitServer {
    pub address: SocketAddr,
    status: Arc<AtomicU16>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl InitServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Self {
            address: listener.local_addr().unwrap(),
            status: Arc::new(AtomicU16::new(204)),
            bodies: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/init", post(init))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    /// Later `/init` calls are answered with `status`.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The bodies of every `/init` so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

async fn init(
    State(s): State<InitServer>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> StatusCode {
    s.bodies.lock().unwrap().push(body);
    StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap()
}
