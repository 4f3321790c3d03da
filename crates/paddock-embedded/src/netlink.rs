//! What the two batching netlink clients share — route netlink for links and neighbours
//! ([`crate::rtnl`]), netfilter netlink for the firewall's sets ([`crate::nfset`]): a blocking
//! socket of our own, one datagram sent whole, and the messages of one datagram received.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

use crate::network::NetError;

/// The `NetError` of a socket step: `what` names the client ("route netlink"), `op` the step.
pub(crate) fn io_err(what: &'static str, op: &str) -> impl FnOnce(io::Error) -> NetError + use<> {
    let op = format!("{what}: {op}");
    move |source| NetError::Io { op, source }
}

/// A blocking socket of `protocol` in this thread's network namespace, bound to an address
/// of its own and talking to the kernel only. A read waits at most `timeout`: the kernel
/// answers while a batch is sent, so this only bounds a kernel that never does.
pub(crate) fn socket(
    protocol: isize,
    timeout: Duration,
    what: &'static str,
) -> Result<Socket, NetError> {
    let mut socket = Socket::new(protocol).map_err(io_err(what, "open socket"))?;
    socket.bind_auto().map_err(io_err(what, "bind socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io_err(what, "connect socket"))?;
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(timeout),
    )
    .map_err(|e| io_err(what, "set receive timeout")(e.into()))?;
    Ok(socket)
}

/// Sends `batch` as one datagram; a short send is an error (the kernel would see part of a
/// batch).
pub(crate) fn send_all(socket: &Socket, batch: &[u8], what: &'static str) -> Result<(), NetError> {
    let sent = socket.send(batch, 0).map_err(io_err(what, "send"))?;
    if sent != batch.len() {
        return Err(io_err(what, "send")(io::Error::other(format!(
            "sent {sent} of {} bytes",
            batch.len()
        ))));
    }
    Ok(())
}

/// The netlink messages in one datagram.
pub(crate) fn split(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            return None;
        }
        let (one, rest) = data.split_at(len);
        // Messages start on 4-byte boundaries.
        data = rest.get(len.next_multiple_of(4) - len..).unwrap_or(&[]);
        Some(one)
    })
}
