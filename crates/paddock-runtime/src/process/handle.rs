//! One running (or recently exited) process and its output fan-out.
//!
//! Output is pushed to every attached stream through a small bounded
//! channel. A slow client therefore slows the process down (the pipe fills)
//! instead of growing a buffer without bound; a client that goes away is
//! simply dropped from the list, and with no client attached the output is
//! discarded so the process never blocks.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex as AsyncMutex, mpsc};

use crate::proto::process::ProcessConfig;

/// How many output chunks may wait for one slow client.
const SUBSCRIBER_BUFFER: usize = 16;

/// A chunk of output, tagged with where it came from.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Pty(Vec<u8>),
}

/// How a process ended, in envd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    pub error: Option<String>,
}

impl Exit {
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self {
                exit_code: code,
                exited: true,
                status: format!("exit status {code}"),
                error: (code != 0).then(|| format!("exit status {code}")),
            },
            (None, Some(sig)) => {
                let text = format!("signal: {}", signal_name(sig));
                Self {
                    exit_code: -1,
                    exited: false,
                    status: text.clone(),
                    error: Some(text),
                }
            }
            (None, None) => Self {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some("process ended in an unknown way".into()),
            },
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "killed",
        libc::SIGTERM => "terminated",
        libc::SIGINT => "interrupt",
        libc::SIGHUP => "hangup",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGABRT => "aborted",
        libc::SIGPIPE => "broken pipe",
        libc::SIGQUIT => "quit",
        _ => "signaled",
    }
}

/// What attached streams receive.
#[derive(Debug, Clone)]
pub enum Msg {
    Data(Output),
    End(Exit),
}

/// Where input for the process goes.
pub enum Input {
    Pipe(tokio::process::ChildStdin),
    Pty(Arc<std::fs::File>),
}

struct Fanout {
    subscribers: Vec<mpsc::Sender<Msg>>,
    exit: Option<Exit>,
}

/// A process started through the runtime.
pub struct Proc {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    pub pty_master: Option<Arc<std::fs::File>>,
    input: AsyncMutex<Option<Input>>,
    fanout: Mutex<Fanout>,
}

/// Result of attaching to a process.
pub enum Attached {
    Live(mpsc::Receiver<Msg>),
    /// The process already ended; here is how.
    Ended(Exit),
}

impl Proc {
    pub fn new(
        pid: u32,
        tag: Option<String>,
        config: ProcessConfig,
        input: Option<Input>,
        pty_master: Option<Arc<std::fs::File>>,
    ) -> Self {
        Self {
            pid,
            tag,
            config,
            pty_master,
            input: AsyncMutex::new(input),
            fanout: Mutex::new(Fanout {
                subscribers: Vec::new(),
                exit: None,
            }),
        }
    }

    fn fanout(&self) -> std::sync::MutexGuard<'_, Fanout> {
        self.fanout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a new stream to the process output.
    pub fn attach(&self) -> Attached {
        let mut f = self.fanout();
        if let Some(exit) = &f.exit {
            return Attached::Ended(exit.clone());
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        f.subscribers.push(tx);
        Attached::Live(rx)
    }

    pub fn exit(&self) -> Option<Exit> {
        self.fanout().exit.clone()
    }

    /// Delivers output to every attached stream, waiting for slow ones.
    pub async fn publish(&self, out: Output) {
        let subscribers = self.fanout().subscribers.clone();
        let mut gone = Vec::new();
        for tx in &subscribers {
            if tx.send(Msg::Data(out.clone())).await.is_err() {
                gone.push(tx.clone());
            }
        }
        if !gone.is_empty() {
            self.fanout()
                .subscribers
                .retain(|s| !gone.iter().any(|g| g.same_channel(s)));
        }
    }

    /// Records the exit and tells every attached stream; later attaches
    /// get the exit straight away.
    pub async fn finish(&self, exit: Exit) {
        let subscribers = {
            let mut f = self.fanout();
            f.exit = Some(exit.clone());
            std::mem::take(&mut f.subscribers)
        };
        for tx in subscribers {
            let _ = tx.send(Msg::End(exit.clone())).await;
        }
        // No more input can be consumed.
        self.input.lock().await.take();
    }

    /// Writes to the process's stdin (or its terminal).
    pub async fn write_input(&self, data: &[u8], to_pty: bool) -> Result<(), InputError> {
        let mut guard = self.input.lock().await;
        match guard.as_mut() {
            None if self.pty_master.is_none() => Err(InputError::Closed),
            None => Err(InputError::Exited),
            Some(Input::Pipe(stdin)) => {
                if to_pty {
                    return Err(InputError::NotPty);
                }
                stdin.write_all(data).await.map_err(InputError::Io)?;
                stdin.flush().await.map_err(InputError::Io)
            }
            Some(Input::Pty(master)) => {
                let master = master.clone();
                let data = data.to_vec();
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    (&*master).write_all(&data)
                })
                .await
                .map_err(|e| InputError::Io(std::io::Error::other(e)))?
                .map_err(InputError::Io)
            }
        }
    }

    /// Closes stdin (a pipe); terminals have no separate stdin to close.
    pub async fn close_stdin(&self) -> Result<(), InputError> {
        let mut guard = self.input.lock().await;
        match guard.as_ref() {
            Some(Input::Pty(_)) => Err(InputError::IsPty),
            Some(Input::Pipe(_)) => {
                guard.take();
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("stdin of this process is closed (start it with stdin enabled to send input)")]
    Closed,
    #[error("process has exited")]
    Exited,
    #[error("process has no terminal; send input as stdin")]
    NotPty,
    #[error("process runs in a terminal: send Ctrl-D (0x04) as terminal input instead")]
    IsPty,
    #[error("writing input: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc() -> Proc {
        Proc::new(1, None, ProcessConfig::default(), None, None)
    }

    #[tokio::test]
    async fn exit_reaches_attached_streams_after_data_and_late_attachers() {
        let p = proc();
        let Attached::Live(mut rx) = p.attach() else {
            panic!("live process must attach")
        };
        p.publish(Output::Stdout(b"hi".to_vec())).await;
        let exit = Exit::from_status(std::process::ExitStatus::default());
        p.finish(exit.clone()).await;
        assert!(matches!(rx.recv().await, Some(Msg::Data(Output::Stdout(d))) if d == b"hi"));
        assert!(matches!(rx.recv().await, Some(Msg::End(e)) if e == exit));
        assert!(rx.recv().await.is_none());
        assert!(matches!(p.attach(), Attached::Ended(e) if e.exit_code == 0 && e.exited));
    }

    #[tokio::test]
    async fn a_dropped_stream_does_not_block_output() {
        let p = proc();
        let Attached::Live(rx) = p.attach() else {
            panic!()
        };
        drop(rx);
        for _ in 0..(SUBSCRIBER_BUFFER * 4) {
            p.publish(Output::Stderr(vec![0; 8])).await;
        }
        assert!(p.fanout().subscribers.is_empty());
    }

    #[test]
    fn exit_statuses_read_like_envd() {
        use std::os::unix::process::ExitStatusExt;
        let e = Exit::from_status(std::process::ExitStatus::from_raw(3 << 8));
        assert_eq!((e.exit_code, e.exited), (3, true));
        assert_eq!(e.status, "exit status 3");
        assert_eq!(e.error.as_deref(), Some("exit status 3"));
        let k = Exit::from_status(std::process::ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!((k.exit_code, k.exited), (-1, false));
        assert_eq!(k.status, "signal: killed");
    }
}
