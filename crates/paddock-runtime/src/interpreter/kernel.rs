//! One Jupyter kernel process and the ZeroMQ channels to it.
//!
//! Replies on the shell channel and broadcasts on IOPub are routed to the
//! request they answer by `parent_header.msg_id`, so several requests (an
//! execution and the silent ones around it) can be in flight at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, JupyterMessage, JupyterMessageContent, Transport,
};
use jupyter_zmq_client::{
    DealerSendConnection, create_client_iopub_connection,
    create_client_shell_connection_with_identity, peek_ports, peer_identity_for_session,
};
use tokio::sync::{mpsc, watch};

use crate::users::User;

/// How long a kernel may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages buffered per request before the kernel's readers wait.
const ROUTE_BUFFER: usize = 256;

/// What a request receives.
#[derive(Debug)]
pub enum KernelEvent {
    Message(Box<JupyterMessage>),
    /// The kernel process ended; the reason reads well in an error.
    Died(String),
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("could not start the {language} kernel: {reason}")]
    Start { language: String, reason: String },
    #[error("the kernel is not running")]
    Dead,
    #[error("talking to the kernel failed: {0}")]
    Channel(String),
}

type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<KernelEvent>>>>;

/// How to launch a kernel.
#[derive(Debug, Clone)]
pub struct Launch {
    pub language: String,
    /// argv, with `{connection_file}` where the connection file goes.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub user: User,
}

/// A running kernel.
pub struct Kernel {
    pub pid: u32,
    session: String,
    shell: tokio::sync::Mutex<DealerSendConnection>,
    routes: Routes,
    dead: watch::Receiver<Option<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    connection_file: PathBuf,
}

fn lock(routes: &Routes) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<KernelEvent>>> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwards a message to the request it answers, waiting if that request's
/// reader is slow (back-pressure instead of an unbounded buffer).
async fn dispatch(routes: &Routes, msg: JupyterMessage) {
    let Some(parent) = msg.parent_header.as_ref().map(|h| h.msg_id.clone()) else {
        return;
    };
    let tx = lock(routes).get(&parent).cloned();
    if let Some(tx) = tx {
        let _ = tx.send(KernelEvent::Message(Box::new(msg))).await;
    }
}

/// Routes one read from a kernel channel; false once the channel keeps
/// failing. A message that does not parse (kernels differ in what they put
/// in replies) is skipped, not fatal.
async fn handle_read(
    channel: &str,
    read: jupyter_zmq_client::Result<JupyterMessage>,
    failures: &mut u32,
    routes: &Routes,
) -> bool {
    match read {
        Ok(msg) => {
            *failures = 0;
            dispatch(routes, msg).await;
            true
        }
        Err(e) => {
            *failures += 1;
            tracing::debug!(channel, error = %e, "unreadable kernel message");
            if *failures >= 50 {
                tracing::warn!(channel, "kernel channel keeps failing; giving up on it");
            }
            *failures < 50
        }
    }
}

impl Kernel {
    /// Starts a kernel and waits until it answers on shell and IOPub.
    pub async fn start(launch: Launch) -> Result<Arc<Self>, KernelError> {
        let fail = |reason: String| KernelError::Start {
            language: launch.language.clone(),
            reason,
        };
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let ports = peek_ports(ip, 5).await.map_err(|e| fail(e.to_string()))?;
        let info = ConnectionInfo {
            ip: ip.to_string(),
            transport: Transport::TCP,
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            // The kernel's message-signing key: without randomness there is no kernel.
            key: paddock_contract::random_hex(32).map_err(|e| fail(e.to_string()))?,
            signature_scheme: "hmac-sha256".into(),
            kernel_name: None,
        };
        let dir = std::env::temp_dir().join("paddock-kernels");
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let name = paddock_contract::random_hex(8).map_err(|e| fail(e.to_string()))?;
        let connection_file = dir.join(format!("kernel-{name}.json"));
        write_connection_file(&connection_file, &info, &launch.user)
            .map_err(|e| fail(format!("writing the connection file: {e}")))?;

        let argv: Vec<String> = launch
            .argv
            .iter()
            .map(|a| a.replace("{connection_file}", &connection_file.display().to_string()))
            .collect();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        crate::identity::exec_as(cmd.as_std_mut(), &launch.user, false);
        let mut child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_file(&connection_file);
            fail(format!("running {}: {e}", argv[0]))
        })?;
        let pid = child.id().unwrap_or_default();

        let mut tasks = Vec::new();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(pid, "kernel: {line}");
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.push_str(&line);
                    t.push('\n');
                    if t.len() > 4096 {
                        let cut = t.len() - 4096;
                        let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
                        t.drain(..cut);
                    }
                }
            }));
        }

        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        let (dead_tx, dead) = watch::channel(None);
        {
            let routes = routes.clone();
            let tail = stderr_tail.clone();
            tasks.push(tokio::spawn(async move {
                let status = child.wait().await;
                // Let the stderr reader catch the last words.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let last = tail
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .to_string();
                let reason = match status {
                    Ok(s) => format!(
                        "the kernel process exited ({s}){}",
                        if last.is_empty() {
                            String::new()
                        } else {
                            format!(": {last}")
                        }
                    ),
                    Err(e) => format!("the kernel process was lost: {e}"),
                };
                tracing::warn!(pid, %reason, "kernel ended");
                let _ = dead_tx.send(Some(reason.clone()));
                let senders: Vec<_> = lock(&routes).drain().map(|(_, tx)| tx).collect();
                for tx in senders {
                    let _ = tx.send(KernelEvent::Died(reason.clone())).await;
                }
            }));
        }

        let session = paddock_contract::random_hex(16).map_err(|e| fail(e.to_string()))?;
        let connect = async {
            let iopub = create_client_iopub_connection(&info, "", &session).await?;
            let identity = peer_identity_for_session(&session)?;
            let shell =
                create_client_shell_connection_with_identity(&info, &session, identity).await?;
            Ok::<_, jupyter_zmq_client::RuntimeError>((iopub, shell))
        };
        let (mut iopub, shell) = match connect.await {
            Ok(c) => c,
            Err(e) => {
                tasks.iter().for_each(|t| t.abort());
                let _ = std::fs::remove_file(&connection_file);
                return Err(fail(e.to_string()));
            }
        };
        let (shell_tx, mut shell_rx) = shell.split();
        {
            let routes = routes.clone();
            tasks.push(tokio::spawn(async move {
                let mut failures = 0;
                while handle_read("iopub", iopub.read().await, &mut failures, &routes).await {}
            }));
        }
        {
            let routes = routes.clone();
            tasks.push(tokio::spawn(async move {
                let mut failures = 0;
                while handle_read("shell", shell_rx.read().await, &mut failures, &routes).await {}
            }));
        }

        let kernel = Arc::new(Self {
            pid,
            session,
            shell: tokio::sync::Mutex::new(shell_tx),
            routes,
            dead,
            tasks,
            connection_file,
        });
        match tokio::time::timeout(START_TIMEOUT, kernel.wait_ready()).await {
            Ok(Ok(())) => Ok(kernel),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail(format!(
                "no answer within {}s",
                START_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Until the kernel has answered a request on shell *and* we have seen
    /// its IOPub status for it: only then can no output be missed.
    async fn wait_ready(&self) -> Result<(), KernelError> {
        loop {
            // An empty silent execution: every kernel answers it on shell
            // and announces it on IOPub, and its reply parses everywhere.
            let mut probe = ExecuteRequest::new(String::new());
            probe.silent = true;
            probe.store_history = false;
            let (id, mut rx) = self.submit(probe.into()).await?;
            let (mut reply, mut status) = (false, false);
            let deadline = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(KernelEvent::Message(m)) => match m.content {
                            JupyterMessageContent::ExecuteReply(_) => reply = true,
                            JupyterMessageContent::Status(_) => status = true,
                            _ => {}
                        },
                        Some(KernelEvent::Died(reason)) => return Err(KernelError::Channel(reason)),
                        None => return Err(KernelError::Dead),
                    },
                    _ = &mut deadline => break,
                }
                if reply && status {
                    self.forget(&id);
                    return Ok(());
                }
            }
            self.forget(&id);
            if let Some(reason) = self.dead.borrow().clone() {
                return Err(KernelError::Channel(reason));
            }
        }
    }

    /// Why the kernel died, if it did.
    pub fn death(&self) -> Option<String> {
        self.dead.borrow().clone()
    }

    /// Sends a request; the returned channel receives everything that
    /// answers it.
    pub async fn submit(
        &self,
        content: JupyterMessageContent,
    ) -> Result<(String, mpsc::Receiver<KernelEvent>), KernelError> {
        if let Some(reason) = self.death() {
            return Err(KernelError::Channel(reason));
        }
        let mut msg = JupyterMessage::new(content, None);
        msg.header.session = self.session.clone();
        msg.header.username = "paddock".into();
        let id = msg.header.msg_id.clone();
        let (tx, rx) = mpsc::channel(ROUTE_BUFFER);
        lock(&self.routes).insert(id.clone(), tx);
        if let Err(e) = self.shell.lock().await.send(msg).await {
            lock(&self.routes).remove(&id);
            return Err(KernelError::Channel(e.to_string()));
        }
        Ok((id, rx))
    }

    /// Stops routing answers to a finished request.
    pub fn forget(&self, id: &str) {
        lock(&self.routes).remove(id);
    }

    /// Runs code without output or history (environment set-up) and waits
    /// for the kernel to finish it.
    pub async fn run_silent(&self, code: String) -> Result<(), KernelError> {
        let mut req = ExecuteRequest::new(code);
        req.silent = true;
        req.store_history = false;
        let (id, mut rx) = self.submit(req.into()).await?;
        let result = loop {
            match rx.recv().await {
                Some(KernelEvent::Message(m)) => {
                    if let JupyterMessageContent::ExecuteReply(_) = m.content {
                        break Ok(());
                    }
                }
                Some(KernelEvent::Died(reason)) => break Err(KernelError::Channel(reason)),
                None => break Err(KernelError::Dead),
            }
        };
        self.forget(&id);
        result
    }

    /// Interrupts the running execution (kernels take SIGINT).
    pub fn interrupt(&self) {
        if let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // The kernel leads its own session: take its children with it.
        if let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        self.tasks.iter().for_each(|t| t.abort());
        let _ = std::fs::remove_file(&self.connection_file);
    }
}

fn write_connection_file(
    path: &std::path::Path,
    info: &ConnectionInfo,
    user: &User,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(
        serde_json::to_string(info)
            .map_err(std::io::Error::other)?
            .as_bytes(),
    )?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}
