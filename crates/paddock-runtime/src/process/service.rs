//! The `process.Process` RPC handlers.

use std::path::PathBuf;
use std::sync::Arc;

use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::StreamExt;

use super::handle::{InputError, Proc};
use super::spawn::{SpawnSpec, kill_group, resize, spawn};
use super::stream::{events, keepalive_interval};
use crate::auth::rpc_user;
use crate::paths::resolve;
use crate::proto::process::__buffa::oneof::process_input::Input as InputKind;
use crate::proto::process::__buffa::oneof::process_selector::Selector;
use crate::proto::process::__buffa::oneof::stream_input_request::Event as InputEvent;
use crate::proto::process::*;
use crate::state::Runtime;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ProcessService {
    rt: Arc<Runtime>,
}

impl ProcessService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }

    fn find(&self, selector: &ProcessSelector) -> Result<Arc<Proc>, ConnectError> {
        let sel = selector.selector.as_ref();
        self.rt.processes.select(sel).ok_or_else(|| match sel {
            Some(Selector::Pid(pid)) => {
                ConnectError::not_found(format!("process with pid {pid} not found"))
            }
            Some(Selector::Tag(tag)) => {
                ConnectError::not_found(format!("process with tag '{tag}' not found"))
            }
            None => ConnectError::invalid_argument("a process selector (pid or tag) is required"),
        })
    }

    fn find_running(&self, selector: &ProcessSelector) -> Result<Arc<Proc>, ConnectError> {
        let proc = self.find(selector)?;
        if proc.exit().is_some() {
            return Err(ConnectError::not_found(format!(
                "process with pid {} has already exited",
                proc.pid
            )));
        }
        Ok(proc)
    }
}

fn input_error(e: InputError) -> ConnectError {
    match e {
        InputError::Io(_) => ConnectError::internal(e.to_string()),
        InputError::Exited => ConnectError::not_found(e.to_string()),
        _ => ConnectError::failed_precondition(e.to_string()),
    }
}

fn start_response(event: ProcessEvent) -> StartResponse {
    StartResponse {
        event: event.into(),
        ..Default::default()
    }
}

fn connect_response(event: ProcessEvent) -> ConnectResponse {
    ConnectResponse {
        event: event.into(),
        ..Default::default()
    }
}

fn pty_size(pty: &PTY) -> Result<(u16, u16), ConnectError> {
    let size = pty
        .size
        .as_option()
        .ok_or_else(|| ConnectError::invalid_argument("pty.size is required"))?;
    let cols = u16::try_from(size.cols)
        .map_err(|_| ConnectError::invalid_argument("pty.size.cols is too large"))?;
    let rows = u16::try_from(size.rows)
        .map_err(|_| ConnectError::invalid_argument("pty.size.rows is too large"))?;
    if cols == 0 || rows == 0 {
        return Err(ConnectError::invalid_argument(
            "pty.size needs non-zero cols and rows",
        ));
    }
    Ok((cols, rows))
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let processes = self
            .rt
            .processes
            .running()
            .into_iter()
            .map(|p| ProcessInfo {
                config: p.config.clone().into(),
                pid: p.pid,
                tag: p.tag.clone(),
                ..Default::default()
            })
            .collect();
        Response::ok(ListResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let req = request.to_owned_message();
        let proc = self.find(&req.process)?;
        let attached = proc.attach();
        let keepalive = keepalive_interval(ctx.headers());
        Response::stream_ok(events(proc.pid, attached, keepalive, connect_response))
    }

    async fn start(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let req = request.to_owned_message();
        let user = rpc_user(&self.rt, ctx.headers())?;
        let config = req.process.as_option().cloned().unwrap_or_default();
        if config.cmd.is_empty() {
            return Err(ConnectError::invalid_argument(
                "process.cmd must not be empty",
            ));
        }
        let settings = self.rt.settings();
        let cwd: PathBuf = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => resolve(c, &user).map_err(crate::errors::path_error)?,
            None => settings
                .default_workdir
                .clone()
                .unwrap_or_else(|| user.home.clone()),
        };
        if !cwd.is_dir() {
            return Err(ConnectError::invalid_argument(format!(
                "cwd '{}' does not exist",
                cwd.display()
            )));
        }
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), user.home.display().to_string()),
            ("USER".into(), user.name.clone()),
            ("LOGNAME".into(), user.name.clone()),
        ];
        env.extend(settings.env.clone());
        let mut request_env: Vec<_> = config
            .envs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        request_env.sort();
        env.extend(request_env);
        // Later entries win, as in envd: dedupe keeping the last value.
        let mut seen = std::collections::HashSet::new();
        let mut env: Vec<_> = env
            .into_iter()
            .rev()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect();
        env.reverse();
        if env
            .iter()
            .any(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        {
            return Err(ConnectError::invalid_argument(
                "environment variable names must be non-empty without '=' or NUL, values without NUL",
            ));
        }

        let pty = match req.pty.as_option() {
            Some(p) => Some(pty_size(p)?),
            None => None,
        };
        let spec = SpawnSpec {
            tag: req.tag.clone(),
            config,
            env,
            cwd,
            user,
            pty,
            stdin: req.stdin.unwrap_or(true),
            deadline: ctx.deadline(),
        };
        let cmd = spec.config.cmd.clone();
        let (proc, attached) = spawn(&self.rt.processes, spec).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ConnectError::invalid_argument(format!(
                "cannot start '{cmd}': executable not found"
            )),
            std::io::ErrorKind::PermissionDenied => {
                ConnectError::permission_denied(format!("cannot start '{cmd}': permission denied"))
            }
            _ => ConnectError::internal(format!("cannot start '{cmd}': {e}")),
        })?;
        // The command line goes to the sandbox's log, which `GET /sandboxes/{id}/logs` serves.
        tracing::info!(pid = proc.pid, cmd = %proc.config.cmd, args = ?proc.config.args, "process started");
        let keepalive = keepalive_interval(ctx.headers());
        Response::stream_ok(events(proc.pid, attached, keepalive, start_response))
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let req = request.to_owned_message();
        let proc = self.find_running(&req.process)?;
        if let Some(pty) = req.pty.as_option() {
            let (cols, rows) = pty_size(pty)?;
            let master = proc.pty_master.as_ref().ok_or_else(|| {
                ConnectError::failed_precondition(format!(
                    "process {} has no terminal to resize",
                    proc.pid
                ))
            })?;
            resize(&**master, cols, rows)
                .map_err(|e| ConnectError::internal(format!("resizing the terminal: {e}")))?;
        }
        Response::ok(UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        mut requests: connectrpc::InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        let mut target: Option<Arc<Proc>> = None;
        while let Some(msg) = requests.next().await {
            let msg = msg?.to_owned_message();
            match msg.event {
                Some(InputEvent::Start(start)) => {
                    target = Some(self.find_running(&start.process)?);
                }
                Some(InputEvent::Data(data)) => {
                    let proc = target.as_ref().ok_or_else(|| {
                        ConnectError::invalid_argument(
                            "the first message of the input stream must be a start event",
                        )
                    })?;
                    write(proc, &data.input).await?;
                }
                Some(InputEvent::Keepalive(_)) | None => {}
            }
        }
        Response::ok(StreamInputResponse::default())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let req = request.to_owned_message();
        let proc = self.find_running(&req.process)?;
        write(&proc, &req.input).await?;
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let req = request.to_owned_message();
        let proc = self.find_running(&req.process)?;
        let signal = match req.signal {
            buffa::EnumValue::Known(Signal::SIGNAL_SIGKILL) => rustix::process::Signal::KILL,
            buffa::EnumValue::Known(Signal::SIGNAL_SIGTERM) => rustix::process::Signal::TERM,
            other => {
                return Err(ConnectError::invalid_argument(format!(
                    "unsupported signal {other:?}: use SIGNAL_SIGTERM or SIGNAL_SIGKILL"
                )));
            }
        };
        if !kill_group(proc.pid, signal) {
            return Err(ConnectError::not_found(format!(
                "process with pid {} has already exited",
                proc.pid
            )));
        }
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let req = request.to_owned_message();
        let proc = self.find_running(&req.process)?;
        proc.close_stdin().await.map_err(input_error)?;
        Response::ok(CloseStdinResponse::default())
    }
}

async fn write(proc: &Proc, input: &ProcessInput) -> Result<(), ConnectError> {
    match input.input.as_ref() {
        Some(InputKind::Stdin(data)) => proc.write_input(data, false).await,
        Some(InputKind::Pty(data)) => proc.write_input(data, true).await,
        None => {
            return Err(ConnectError::invalid_argument(
                "input must carry stdin or pty data",
            ));
        }
    }
    .map_err(input_error)
}
