//! Turning a process's output into the event stream `Start` and `Connect`
//! answer with: `start` first, then `data` and `keepalive`, then `end`.

use std::time::Duration;

use connectrpc::ConnectError;
use futures::Stream;

use super::handle::{Attached, Exit, Msg, Output};
use crate::proto::process::__buffa::oneof::process_event::Event;
use crate::proto::process::__buffa::oneof::process_event::data_event::Output as DataOutput;
use crate::proto::process::ProcessEvent;
use crate::proto::process::process_event::{DataEvent, EndEvent, KeepAlive, StartEvent};

/// What envd assumes when the client sends no `Keepalive-Ping-Interval`.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

enum State {
    Start(Attached),
    Live(tokio::sync::mpsc::Receiver<Msg>),
    Ending(Exit),
    Done,
}

fn event(e: Event) -> ProcessEvent {
    ProcessEvent {
        event: Some(e),
        ..Default::default()
    }
}

pub fn end_event(exit: Exit) -> ProcessEvent {
    event(Event::from(EndEvent {
        exit_code: exit.exit_code,
        exited: exit.exited,
        status: exit.status,
        error: exit.error,
        ..Default::default()
    }))
}

fn data_event(out: Output) -> ProcessEvent {
    let output = match out {
        Output::Stdout(b) => DataOutput::Stdout(b),
        Output::Stderr(b) => DataOutput::Stderr(b),
        Output::Pty(b) => DataOutput::Pty(b),
    };
    event(Event::from(DataEvent {
        output: Some(output),
        ..Default::default()
    }))
}

/// The event stream of process `pid`, each event wrapped by `wrap`.
pub fn events<T: Send + 'static>(
    pid: u32,
    attached: Attached,
    keepalive: Duration,
    wrap: fn(ProcessEvent) -> T,
) -> impl Stream<Item = Result<T, ConnectError>> + Send + 'static {
    futures::stream::unfold(State::Start(attached), move |state| async move {
        let (item, next) = match state {
            State::Start(attached) => {
                let start = event(Event::from(StartEvent {
                    pid,
                    ..Default::default()
                }));
                let next = match attached {
                    Attached::Live(rx) => State::Live(rx),
                    Attached::Ended(exit) => State::Ending(exit),
                };
                (Ok(start), next)
            }
            State::Live(mut rx) => match tokio::time::timeout(keepalive, rx.recv()).await {
                Err(_) => (
                    Ok(event(Event::from(KeepAlive::default()))),
                    State::Live(rx),
                ),
                Ok(Some(Msg::Data(out))) => (Ok(data_event(out)), State::Live(rx)),
                Ok(Some(Msg::End(exit))) => (Ok(end_event(exit)), State::Done),
                Ok(None) => (
                    Err(ConnectError::internal(
                        "process output ended without an exit status",
                    )),
                    State::Done,
                ),
            },
            State::Ending(exit) => (Ok(end_event(exit)), State::Done),
            State::Done => return None,
        };
        Some((item.map(wrap), next))
    })
}

/// Reads `Keepalive-Ping-Interval` (seconds) from the request headers.
pub fn keepalive_interval(headers: &http::HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_KEEPALIVE)
}
