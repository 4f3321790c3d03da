//! Adds and removes nftables set elements over nfnetlink, without an `nft` process.
//!
//! Every attach and every teardown changes a sandbox's elements in the firewall's sets (see
//! [`crate::firewall`]). Running `nft -f -` for that cost a process start plus `nft` fetching
//! the table's sets before applying the change (which grows with the number of sandboxes):
//! about 13.5 ms of CPU per cold create. Here one operation is one nfnetlink batch
//! (`NFNL_MSG_BATCH_BEGIN`, the `NFT_MSG_NEWSETELEM`/`NFT_MSG_DELSETELEM` messages,
//! `NFNL_MSG_BATCH_END`) sent on a netlink socket of its own; the kernel applies the batch as
//! one transaction, all or nothing, and acknowledges every message.
//!
//! The messages come from `netlink-packet-netfilter` (rust-netlink, the family `rtnetlink`
//! belongs to); this module only encodes our keys (see [`port_key`]), frames the batch and
//! reads the acknowledgements. Loading the rulesets stays with `nft` (once per `paddock up`).

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::netlink::{self, split};
use crate::network::NetError;

/// `NFNL_SUBSYS_NFTABLES`: the subsystem a batch is addressed to (in the batch messages'
/// `res_id`).
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// `IFNAMSIZ`: an `ifname` in a set key is this many bytes, the name padded with zeros.
const IFNAMSIZ: usize = 16;

/// How long to wait for the kernel's acknowledgements. The kernel processes a batch while
/// the `send` runs, so they are normally queued before it returns; this only bounds a
/// kernel that never answers.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The family of the table a set lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet`.
    Inet,
    /// `bridge`.
    Bridge,
}

impl Family {
    fn proto(self) -> NetfilterProtoFamily {
        match self {
            Family::Inet => NetfilterProtoFamily::Inet,
            Family::Bridge => NetfilterProtoFamily::Bridge,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// Whether a change adds or deletes its element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add; adding an element that is present already is not an error (no `NLM_F_EXCL`).
    Add,
    /// Delete; deleting an absent element fails with `ENOENT`.
    Delete,
}

/// One element added to or deleted from one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Add or delete.
    pub op: Op,
    /// The table's family.
    pub family: Family,
    /// The table's name.
    pub table: String,
    /// The set's name.
    pub set: String,
    /// The key as the kernel stores it (see [`port_key`], [`ipv4_key`]).
    pub key: Vec<u8>,
    /// The element as `nft` would print it, for error messages.
    pub shown: String,
}

impl Change {
    fn describe(&self) -> String {
        let (verb, prep) = match self.op {
            Op::Add => ("add", "to"),
            Op::Delete => ("delete", "from"),
        };
        format!(
            "{verb} element {{ {} }} {prep} set {} {} {}",
            self.shown,
            self.family.name(),
            self.table,
            self.set
        )
    }
}

/// The key of an `ipv4_addr` set: the address in network order.
pub fn ipv4_key(ip: Ipv4Addr) -> Vec<u8> {
    ip.octets().to_vec()
}

/// The key of an `ifname . ether_addr . ipv4_addr` set. Each part of a concatenation takes
/// a whole number of 32-bit registers: the name its `IFNAMSIZ` bytes (zero padded), the
/// hardware address 6 bytes plus 2 of padding, the IPv4 address 4 bytes; 28 in all.
pub fn port_key(ifname: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<Vec<u8>, NetError> {
    if ifname.len() >= IFNAMSIZ || ifname.is_empty() || ifname.contains('\0') {
        return Err(NetError::Config(format!(
            "interface name {ifname:?} does not fit a set key (1 to {} bytes)",
            IFNAMSIZ - 1
        )));
    }
    let mut key = Vec::with_capacity(IFNAMSIZ + 8 + 4);
    key.extend_from_slice(ifname.as_bytes());
    key.resize(IFNAMSIZ, 0);
    key.extend_from_slice(&mac);
    key.extend_from_slice(&[0, 0]);
    key.extend_from_slice(&ip.octets());
    Ok(key)
}

/// The batch for `changes` as bytes, its messages numbered from `first_seq`: the batch
/// begin takes `first_seq`, change `i` takes `first_seq + 1 + i`, the batch end the next.
/// Every change asks for an acknowledgement.
pub fn encode(changes: &[Change], first_seq: u32) -> Vec<u8> {
    let control = |m: ControlMessage| {
        NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
            m,
        )
    };
    let mut messages = Vec::with_capacity(changes.len() + 2);
    messages.push((control(ControlMessage::BatchBegin), NLM_F_REQUEST));
    for c in changes {
        let body = SetElementMessage {
            attributes: vec![
                SetElementList::Table(c.table.clone()),
                SetElementList::Set(c.set.clone()),
                SetElementList::Elements(vec![ListAttribute::Element(vec![
                    SetElementAttribute::Key(DataAttribute::Value(c.key.clone())),
                ])]),
            ],
        };
        let (inner, flags) = match c.op {
            Op::Add => (
                NfTablesMessage::NewSetElement(body),
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
            ),
            Op::Delete => (
                NfTablesMessage::DeleteSetElement(body),
                NLM_F_REQUEST | NLM_F_ACK,
            ),
        };
        let header = NetfilterHeader::new(c.family.proto(), 0, 0);
        messages.push((NetfilterMessage::new(header, inner), flags));
    }
    messages.push((control(ControlMessage::BatchEnd), NLM_F_REQUEST));

    let mut out = Vec::new();
    for (seq, (m, flags)) in (first_seq..).zip(messages) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(m));
        msg.finalize();
        let start = out.len();
        out.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut out[start..]);
    }
    out
}

/// Applies `changes` as one transaction: all of them or none. Blocks on the netlink socket
/// (briefly: the kernel answers while the batch is sent); call it off async worker threads.
pub fn apply(changes: &[Change]) -> Result<(), NetError> {
    if changes.is_empty() {
        return Ok(());
    }
    const WHAT: &str = "nftables batch";
    let io = |op: &str| netlink::io_err(WHAT, op);
    let socket = netlink::socket(NETLINK_NETFILTER, ACK_TIMEOUT, WHAT)?;
    // Sequence numbers only have to be unique on this socket, which is ours alone.
    let first_seq = 1;
    let batch = encode(changes, first_seq);
    netlink::send_all(&socket, &batch, WHAT)?;
    let mut acked = vec![false; changes.len()];
    let mut buf = vec![0u8; 16 * 1024];
    while acked.iter().any(|a| !a) {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(io("receive acknowledgements"))?;
        for reply in split(&buf[..n]) {
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(reply).map_err(|e| {
                io("parse acknowledgement")(io::Error::new(io::ErrorKind::InvalidData, e))
            })?;
            let NetlinkPayload::Error(e) = msg.payload else {
                continue;
            };
            let seq = msg.header.sequence_number;
            let which = seq
                .checked_sub(first_seq + 1)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < changes.len());
            match (which, e.code) {
                (Some(i), None) => acked[i] = true,
                // The kernel reports every failed message after processing the whole
                // batch, in order: the first one is the cause, the rest follow from it.
                (Some(i), Some(_)) => {
                    return Err(NetError::SetElement {
                        change: changes[i].describe(),
                        source: e.to_io(),
                    });
                }
                // The batch itself (its begin or end) refused: nothing was applied.
                (None, Some(_)) => {
                    return Err(NetError::SetElement {
                        change: format!(
                            "apply a batch of {} set element changes (first: {})",
                            changes.len(),
                            changes[0].describe()
                        ),
                        source: e.to_io(),
                    });
                }
                (None, None) => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op) -> Change {
        Change {
            op,
            family: Family::Bridge,
            table: "paddock".into(),
            set: "ports".into(),
            key: port_key(
                "pdk00000000",
                [2, 0x70, 10, 213, 0, 2],
                Ipv4Addr::new(10, 213, 0, 2),
            )
            .expect("key"),
            shown: "\"pdk00000000\" . 02:70:0a:d5:00:02 . 10.213.0.2".into(),
        }
    }

    #[test]
    fn port_keys_pad_each_part_to_32_bits() {
        let k = port_key(
            "pdk00000000",
            [2, 0x70, 10, 213, 0, 2],
            Ipv4Addr::new(10, 213, 0, 2),
        )
        .expect("key");
        assert_eq!(k.len(), 28);
        assert_eq!(&k[..11], b"pdk00000000");
        assert_eq!(&k[11..16], &[0; 5]);
        assert_eq!(&k[16..24], &[2, 0x70, 10, 213, 0, 2, 0, 0]);
        assert_eq!(&k[24..], &[10, 213, 0, 2]);
        assert_eq!(ipv4_key(Ipv4Addr::new(10, 213, 0, 2)), vec![10, 213, 0, 2]);
    }

    #[test]
    fn port_keys_refuse_names_longer_than_ifnamsiz() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        assert!(port_key("a23456789012345", mac, ip).is_ok());
        assert!(port_key("a234567890123456", mac, ip).is_err());
        assert!(port_key("", mac, ip).is_err());
        assert!(port_key("a\0b", mac, ip).is_err());
    }

    /// The batch reads back as begin, the changes in order with their flags and keys, end;
    /// numbered from the first sequence number.
    #[test]
    fn a_batch_frames_its_changes_between_begin_and_end() {
        let changes = [change(Op::Add), change(Op::Delete)];
        let bytes = encode(&changes, 7);
        let msgs: Vec<NetlinkMessage<NetfilterMessage>> = split(&bytes)
            .map(|b| NetlinkMessage::deserialize(b).expect("parse"))
            .collect();
        assert_eq!(msgs.len(), 4);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.header.sequence_number).collect();
        assert_eq!(seqs, [7, 8, 9, 10]);
        // Type: subsystem << 8 | message; batch begin/end are 0x10/0x11 with the nftables
        // subsystem in `res_id` (big endian, the last two bytes of the nfgenmsg).
        let types: Vec<u16> = msgs.iter().map(|m| m.header.message_type).collect();
        assert_eq!(types, [0x10, 0x0a0c, 0x0a0e, 0x11]);
        let begin = &bytes[..20];
        assert_eq!(&begin[16..20], &[0, 0, 0, 10]);
        let flags: Vec<u16> = msgs.iter().map(|m| m.header.flags).collect();
        assert_eq!(
            flags,
            [
                NLM_F_REQUEST,
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
                NLM_F_REQUEST | NLM_F_ACK,
                NLM_F_REQUEST
            ]
        );
        for (m, c) in msgs[1..3].iter().zip(&changes) {
            let NetlinkPayload::InnerMessage(nf) = &m.payload else {
                panic!("{m:?}")
            };
            assert_eq!(nf.header.family, NetfilterProtoFamily::Bridge);
            let netlink_packet_netfilter::NetfilterMessageInner::NfTables(
                NfTablesMessage::NewSetElement(body) | NfTablesMessage::DeleteSetElement(body),
            ) = &nf.inner
            else {
                panic!("{nf:?}")
            };
            assert_eq!(
                body.attributes,
                vec![
                    SetElementList::Table("paddock".into()),
                    SetElementList::Set("ports".into()),
                    SetElementList::Elements(vec![ListAttribute::Element(vec![
                        SetElementAttribute::Key(DataAttribute::Value(c.key.clone()))
                    ])]),
                ]
            );
        }
    }

    #[test]
    fn inet_changes_carry_the_inet_family() {
        let c = Change {
            op: Op::Add,
            family: Family::Inet,
            table: "t".into(),
            set: "egress".into(),
            key: ipv4_key(Ipv4Addr::new(10, 213, 0, 9)),
            shown: "10.213.0.9".into(),
        };
        let bytes = encode(std::slice::from_ref(&c), 1);
        let msg: Vec<_> = split(&bytes).collect();
        // nfgenmsg.family is the first byte after the 16-byte netlink header: NFPROTO_INET.
        assert_eq!(msg[1][16], 1);
        assert_eq!(
            c.describe(),
            "add element { 10.213.0.9 } to set inet t egress"
        );
        assert_eq!(
            change(Op::Delete).describe(),
            "delete element { \"pdk00000000\" . 02:70:0a:d5:00:02 . 10.213.0.2 } from set \
             bridge paddock ports"
        );
    }

    #[test]
    fn split_stops_at_a_truncated_message() {
        let bytes = encode(&[change(Op::Add)], 1);
        assert_eq!(split(&bytes).count(), 3);
        assert_eq!(split(&bytes[..bytes.len() - 1]).count(), 2);
        assert_eq!(split(&[]).count(), 0);
    }
}
