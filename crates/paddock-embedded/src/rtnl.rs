//! Route netlink requests in batches on a blocking socket: the per-sandbox network changes of
//! a create and a teardown.
//!
//! Several requests go out in one `send` and the kernel answers each (every request asks for
//! an acknowledgement), so a batch costs one round trip. The kernel processes a datagram's
//! requests in order and goes on after a failed one: a batch holds only requests that may all
//! run whatever the others' fate, and a step that must not happen unless another succeeded
//! (a port going up after its isolation) goes in a later batch.
//!
//! A socket keeps the network namespace it was made in, so [`Rtnl::open_in`] gives a socket
//! that changes a sandbox's namespace from any thread: no thread has to stay in it and no
//! runtime is built per create.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rtnetlink::packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::sys::{Socket, protocols::NETLINK_ROUTE};

use crate::netlink;
use crate::network::NetError;

/// How long to wait for the kernel's answers: it answers while the batch is sent, so this
/// only bounds a kernel that never does.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest datagram we read: link messages run to a few KiB, and answers to one batch
/// may share a datagram.
const RECV_BUF: usize = 64 * 1024;

/// One request of a batch.
pub(crate) struct Req {
    /// What it does, for errors.
    pub op: String,
    /// The message.
    pub msg: RouteNetlinkMessage,
    /// Its flags besides `NLM_F_REQUEST | NLM_F_ACK`.
    pub flags: u16,
}

impl Req {
    /// A request that creates something and fails if it exists (`NLM_F_CREATE | NLM_F_EXCL`).
    pub fn create(op: impl Into<String>, msg: RouteNetlinkMessage) -> Self {
        Self {
            op: op.into(),
            msg,
            flags: NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// A request that creates something or replaces what is there.
    pub fn replace(op: impl Into<String>, msg: RouteNetlinkMessage) -> Self {
        Self {
            op: op.into(),
            msg,
            flags: NLM_F_CREATE | NLM_F_REPLACE,
        }
    }

    /// Any other request: a change of something that exists, a deletion, a lookup.
    pub fn plain(op: impl Into<String>, msg: RouteNetlinkMessage) -> Self {
        Self {
            op: op.into(),
            msg,
            flags: 0,
        }
    }

    /// Sets the link with `msg`'s index or name (`ip link set`).
    pub fn set_link(op: impl Into<String>, msg: LinkMessage) -> Self {
        Self::plain(op, RouteNetlinkMessage::SetLink(msg))
    }
}

/// What the kernel answered to one request: the messages it sent back (a lookup's), or its
/// refusal.
pub(crate) type Answer = Result<Vec<RouteNetlinkMessage>, ErrorMessage>;

/// A route netlink socket of our own, blocking.
pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// How socket errors name this client.
const WHAT: &str = "route netlink";

fn io_err(op: &str) -> impl FnOnce(io::Error) -> NetError + use<> {
    netlink::io_err(WHAT, op)
}

impl Rtnl {
    /// A socket in this thread's network namespace.
    pub fn open() -> Result<Self, NetError> {
        let socket = netlink::socket(NETLINK_ROUTE, ANSWER_TIMEOUT, WHAT)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// A socket in the network namespace `ns` (an open `/proc/PID/ns/net`). Made by a thread
    /// that joins the namespace and ends right after, so no thread of ours is ever left in a
    /// sandbox's namespace.
    pub fn open_in(ns: &File) -> Result<Self, NetError> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("netns-socket".into())
                .spawn_scoped(s, || {
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| io_err("join the sandbox's network namespace")(e.into()))?;
                    Self::open()
                })
                .map_err(io_err("spawn a thread"))?
                .join()
                .map_err(|_| io_err("netns thread")(io::Error::other("panicked")))?
        })
    }

    /// Sends `reqs` in one datagram and returns the kernel's answer to each, in order. An
    /// error here is the socket's; the kernel's refusals are in the answers.
    pub fn exchange(&mut self, reqs: &[Req]) -> Result<Vec<Answer>, NetError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | r.flags;
            header.sequence_number = first.wrapping_add(i as u32);
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(r.msg.clone()));
            msg.finalize();
            let start = out.len();
            out.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut out[start..]);
        }
        self.seq = first.wrapping_add(reqs.len() as u32);
        netlink::send_all(&self.socket, &out, WHAT)?;
        let mut got: Vec<Vec<RouteNetlinkMessage>> = reqs.iter().map(|_| Vec::new()).collect();
        let mut answers: Vec<Option<Answer>> = reqs.iter().map(|_| None).collect();
        while answers.iter().any(Option::is_none) {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(io_err("receive"))?;
            for one in netlink::split(&self.buf[..n]) {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one)
                    .map_err(|e| io_err("parse")(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                let i = msg.header.sequence_number.wrapping_sub(first) as usize;
                if i >= reqs.len() {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => got[i].push(m),
                    NetlinkPayload::Error(e) if e.code.is_none() => {
                        answers[i] = Some(Ok(std::mem::take(&mut got[i])));
                    }
                    NetlinkPayload::Error(e) => answers[i] = Some(Err(e)),
                    _ => {}
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// [`Self::exchange`], failing with the first refusal (the kernel went on with the rest;
    /// later refusals often follow from the first). `ok` names errnos (negative, as the
    /// kernel gives them) that count as success for a request: an absent thing deleted.
    pub fn run(
        &mut self,
        reqs: &[Req],
        ok: &[i32],
    ) -> Result<Vec<Vec<RouteNetlinkMessage>>, NetError> {
        let answers = self.exchange(reqs)?;
        let mut out = Vec::with_capacity(answers.len());
        for (r, a) in reqs.iter().zip(answers) {
            match a {
                Ok(m) => out.push(m),
                Err(e) if ok.contains(&e.raw_code()) => out.push(Vec::new()),
                Err(e) => {
                    return Err(NetError::Netlink {
                        op: r.op.clone(),
                        source: rtnetlink::Error::NetlinkError(e),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The index of the link in a lookup's answer.
pub(crate) fn link_index_of(answer: &[RouteNetlinkMessage]) -> Option<u32> {
    answer.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
        _ => None,
    })
}
