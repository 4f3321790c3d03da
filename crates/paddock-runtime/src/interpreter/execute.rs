//! `POST /execute`: run code in a context and stream what happens as NDJSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use jupyter_protocol::{ExecuteRequest, ExecutionState, JupyterMessageContent, ReplyStatus, Stdio};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::contexts::{Context, ContextError, Contexts};
use super::envcode;
use super::kernel::KernelEvent;
use super::result::result_line;

fn error_line(name: &str, value: &str, traceback: &str) -> Value {
    json!({"type": "error", "name": name, "value": value, "traceback": traceback})
}

/// Sends a line to the client; remembers when the client has gone.
struct Out {
    tx: mpsc::Sender<Value>,
    gone: bool,
}

impl Out {
    async fn send(&mut self, line: Value) -> bool {
        if !self.gone && self.tx.send(line).await.is_err() {
            self.gone = true;
        }
        !self.gone
    }
}

/// Runs `code` in `ctx`, sending NDJSON lines to `tx`. Holds the context's
/// execution lock throughout. If the client goes away the kernel is
/// interrupted, and the run still waits for the kernel to settle so the
/// next execution starts clean.
pub async fn run(
    contexts: Arc<Contexts>,
    ctx: Arc<Context>,
    code: String,
    env_vars: BTreeMap<String, String>,
    tx: mpsc::Sender<Value>,
) {
    let _turn = ctx.exec_lock.lock().await;
    let mut out = Out { tx, gone: false };
    if let Err(e) = execute(&contexts, &ctx, code, &env_vars, &mut out).await {
        out.send(error_line("KernelError", &e.to_string(), ""))
            .await;
    }
    out.send(json!({"type": "end_of_execution"})).await;
}

async fn execute(
    contexts: &Contexts,
    ctx: &Context,
    code: String,
    env_vars: &BTreeMap<String, String>,
    out: &mut Out,
) -> Result<(), ContextError> {
    let kernel = contexts.kernel(ctx).await?;

    // Bring the kernel's environment up to date with /init's, then the
    // request's own variables (undone after the run).
    let global = contexts.global_env();
    let stale: BTreeMap<String, String> = {
        let applied = ctx.applied_env.lock().unwrap_or_else(|p| p.into_inner());
        global
            .iter()
            .filter(|(k, v)| applied.get(*k) != Some(*v) && envcode::valid_name(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if !stale.is_empty()
        && kernel
            .run_silent(envcode::set(ctx.language, &stale, false))
            .await
            .is_ok()
    {
        *ctx.applied_env.lock().unwrap_or_else(|p| p.into_inner()) = global;
    }
    if !env_vars.is_empty() {
        kernel
            .run_silent(envcode::set(ctx.language, env_vars, true))
            .await?;
    }

    let (id, mut rx) = kernel.submit(ExecuteRequest::new(code).into()).await?;
    let mut state = Progress::default();
    while !(state.replied && state.idle) {
        let event = tokio::select! {
            ev = rx.recv() => ev,
            // A silent busy loop produces nothing to send, so notice a
            // departed client (its timeout, most likely) on its own.
            _ = out.tx.closed(), if !out.gone => {
                out.gone = true;
                None
            }
        };
        match event {
            Some(KernelEvent::Message(msg)) => {
                if let Some(line) = state.translate(msg.content, msg.header.date.to_rfc3339()) {
                    out.send(line).await;
                }
            }
            Some(KernelEvent::Died(reason)) => {
                state.died = true;
                out.send(error_line(
                    "KernelDied",
                    &format!(
                        "{reason}; the context restarts with fresh state on its next execution"
                    ),
                    "",
                ))
                .await;
                break;
            }
            None if out.gone && !state.interrupted => {}
            None => break,
        }
        if out.gone && !state.interrupted {
            // Stop the work but keep draining, so the kernel is idle
            // before the next execution takes its turn.
            state.interrupted = true;
            kernel.interrupt();
        }
    }
    kernel.forget(&id);
    if !env_vars.is_empty() && !state.died {
        let _ = kernel
            .run_silent(envcode::restore(ctx.language, env_vars))
            .await;
    }
    Ok(())
}

/// What an execution has seen so far.
#[derive(Default)]
struct Progress {
    saw_error: bool,
    replied: bool,
    idle: bool,
    died: bool,
    interrupted: bool,
}

impl Progress {
    /// The NDJSON line (if any) for one kernel message.
    fn translate(&mut self, content: JupyterMessageContent, date: String) -> Option<Value> {
        match content {
            JupyterMessageContent::ExecuteInput(input) => Some(json!({
                "type": "number_of_executions",
                "execution_count": input.execution_count.value(),
            })),
            JupyterMessageContent::StreamContent(s) => Some(json!({
                "type": if matches!(s.name, Stdio::Stderr) { "stderr" } else { "stdout" },
                "text": s.text,
                "timestamp": date,
            })),
            JupyterMessageContent::DisplayData(d) => Some(result_line(
                &serde_json::to_value(&d.data).unwrap_or_default(),
                false,
            )),
            JupyterMessageContent::ExecuteResult(r) => Some(result_line(
                &serde_json::to_value(&r.data).unwrap_or_default(),
                true,
            )),
            JupyterMessageContent::ErrorOutput(e) => {
                self.saw_error = true;
                Some(error_line(&e.ename, &e.evalue, &e.traceback.join("\n")))
            }
            JupyterMessageContent::ExecuteReply(reply) => {
                self.replied = true;
                match reply.status {
                    ReplyStatus::Error if !self.saw_error => {
                        self.saw_error = true;
                        let (name, value, tb) = reply
                            .error
                            .map(|e| (e.ename, e.evalue, e.traceback.join("\n")))
                            .unwrap_or_else(|| {
                                ("Error".into(), "execution failed".into(), String::new())
                            });
                        Some(error_line(&name, &value, &tb))
                    }
                    ReplyStatus::Aborted if !self.saw_error => {
                        self.saw_error = true;
                        Some(error_line(
                            "ExecutionAborted",
                            "the execution was aborted",
                            "",
                        ))
                    }
                    _ => None,
                }
            }
            JupyterMessageContent::Status(s) => {
                if s.execution_state == ExecutionState::Idle {
                    self.idle = true;
                }
                None
            }
            _ => None,
        }
    }
}
