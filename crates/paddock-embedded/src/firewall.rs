//! The nftables side of sandbox networking: the rulesets, and the per-sandbox elements that
//! [`crate::network`] adds on attach and removes on detach. The rulesets are loaded with `nft`
//! (once per start); the elements change through nfnetlink batches ([`crate::nfset`]).
//!
//! Two tables carry the same name, one per family:
//!
//! * `bridge <table>` binds every bridge port to its sandbox (security review H3): a frame that
//!   enters from a sandbox's port passes only when it is IPv4 or ARP and its source hardware
//!   address, source IP (and, for ARP, the sender hardware and protocol addresses) are the
//!   ones Paddock gave that sandbox. A sandbox root with `CAP_NET_RAW` (kept so that `ping`
//!   works) can still craft packets, but cannot claim a neighbour's address, poison the host's
//!   neighbour table or the bridge's forwarding database, or borrow an egress-allowed source
//!   address. The set `ports` holds `port . mac . ip`, one element per sandbox. Ports are
//!   recognised by the veth name prefix (`meta ibrname`, the bridge's name, is not available
//!   on every kernel), which is why that prefix is one of the names an instance locks.
//! * `inet <table>` filters what is routed (security review H4, L5):
//!   - `input`: nothing new from the bridge reaches the host (its loopback services and every
//!     other local address included); replies to connections the host opened pass;
//!   - `forward`: sandboxes never reach each other (isolated ports for L2, bridge → bridge
//!     routing dropped); traffic into the bridge is replies only; out of the bridge only from
//!     addresses in `egress`, and never to the ranges in `denied` (private, shared, loopback,
//!     link-local with cloud metadata, multicast, reserved, broadcast), as E2B denies them. The
//!     only exception is DNS to the host's own resolvers (`dns`, from `resolv.conf`), which
//!     often live in a private range. The chain's policy stays `accept` so that Paddock does
//!     not decide for other forwarding on the host; every packet from or to the bridge meets
//!     an explicit verdict before the policy applies;
//!   - `postrouting`: masquerade what leaves the sandbox range.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::network::{NetConfig, NetError};
use crate::nfset::{self, Change, Family, Op};

/// Destinations no sandbox may reach even with internet access: E2B's denied ranges (10/8,
/// 169.254/16, 172.16/12, 192.168/16) plus "this network", shared address space (carrier NAT,
/// often the host's own provider network), loopback, multicast and the reserved block that
/// ends with the limited broadcast address.
pub const DENIED_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The hardware address of a sandbox's `eth0`: locally administered, unicast, and derived
/// from its IP so that it can be bound in the `ports` set again after a restart without
/// asking the sandbox.
pub fn sandbox_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x70, o[0], o[1], o[2], o[3]]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The IPv4 nameservers of a `resolv.conf` text that a sandbox can use through the host:
/// loopback resolvers are left out (inside the sandbox, 127/8 is its own loopback).
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

/// Both tables, to load after deleting any previous copy.
pub fn ruleset(cfg: &NetConfig, dns: &[Ipv4Addr]) -> String {
    let (t, br, cidr, veth) = (&cfg.nft_table, &cfg.bridge, cfg.cidr, &cfg.veth_prefix);
    let denied = DENIED_RANGES.join(", ");
    let dns_elements = if dns.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = dns.iter().map(|a| a.to_string()).collect();
        format!("\t\telements = {{ {} }}\n", list.join(", "))
    };
    // One statement per line: `nft -f` is picky about one-line rulesets.
    format!(
        "table inet {t} {{\n\
         \tset egress {{\n\t\ttype ipv4_addr\n\t}}\n\
         \tset dns {{\n\t\ttype ipv4_addr\n{dns_elements}\t}}\n\
         \tset denied {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {denied} }}\n\t}}\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{br}\" ct state established,related accept\n\
         \t\tiifname \"{br}\" drop\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{br}\" oifname \"{br}\" drop\n\
         \t\toifname \"{br}\" ct state established,related accept\n\
         \t\toifname \"{br}\" drop\n\
         \t\tiifname \"{br}\" ip saddr != @egress drop\n\
         \t\tiifname \"{br}\" ip daddr @dns meta l4proto {{ tcp, udp }} th dport 53 accept\n\
         \t\tiifname \"{br}\" ip daddr @denied drop\n\
         \t\tiifname \"{br}\" meta nfproto ipv4 accept\n\
         \t\tiifname \"{br}\" drop\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cidr} oifname != \"{br}\" masquerade\n\t}}\n\
         }}\n\
         table bridge {t} {{\n\
         \tset ports {{\n\t\ttype ifname . ether_addr . ipv4_addr\n\t}}\n\
         \tchain prerouting {{\n\t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tiifname != \"{veth}*\" accept\n\
         \t\tether type ip iifname . ether saddr . ip saddr @ports accept\n\
         \t\tether type arp iifname . ether saddr . arp saddr ip @ports iifname . arp saddr ether . arp saddr ip @ports accept\n\
         \t\tdrop\n\t}}\n\
         }}\n"
    )
}

/// Replaces both tables with fresh ones (empty `egress` and `ports` sets).
pub fn load(cfg: &NetConfig, dns: &[Ipv4Addr]) -> Result<(), NetError> {
    nft(&format!("{}{}", delete_script(cfg), ruleset(cfg, dns)))
}

/// Removes both tables if present.
pub fn unload(cfg: &NetConfig) -> Result<(), NetError> {
    nft(&delete_script(cfg))
}

fn delete_script(cfg: &NetConfig) -> String {
    // Declaring a table first makes its deletion succeed when it does not exist yet.
    let t = &cfg.nft_table;
    format!("table inet {t}\ndelete table inet {t}\ntable bridge {t}\ndelete table bridge {t}\n")
}

fn port_element(cfg: &NetConfig, ip: Ipv4Addr) -> String {
    format!(
        "\"{}\" . {} . {ip}",
        cfg.veth_name(ip),
        mac_text(sandbox_mac(ip))
    )
}

/// Adding or deleting sandbox `ip`'s element in the bridge table's `ports` set.
fn port_change(cfg: &NetConfig, ip: Ipv4Addr, op: Op) -> Result<Change, NetError> {
    Ok(Change {
        op,
        family: Family::Bridge,
        table: cfg.nft_table.clone(),
        set: "ports".into(),
        key: nfset::port_key(&cfg.veth_name(ip), sandbox_mac(ip), ip)?,
        shown: port_element(cfg, ip),
    })
}

/// Adding or deleting `ip` in the inet table's `egress` set.
fn egress_change(cfg: &NetConfig, ip: Ipv4Addr, op: Op) -> Change {
    Change {
        op,
        family: Family::Inet,
        table: cfg.nft_table.clone(),
        set: "egress".into(),
        key: nfset::ipv4_key(ip),
        shown: ip.to_string(),
    }
}

/// Binds the bridge port of sandbox `ip` to its hardware and IP address and, when
/// `allow_internet`, lets it open connections to the internet: one transaction for both.
pub fn bind_port(cfg: &NetConfig, ip: Ipv4Addr, allow_internet: bool) -> Result<(), NetError> {
    let mut changes = vec![port_change(cfg, ip, Op::Add)?];
    if allow_internet {
        changes.push(egress_change(cfg, ip, Op::Add));
    }
    nfset::apply(&changes)
}

/// Undoes [`bind_port`] and [`allow_egress`] in one transaction; absent elements are fine
/// (release runs after partial attaches). Deleting an absent element fails (and the
/// destroy message that would not is only in kernels from 6.3), so each element is added
/// first in the same transaction: adding a present element is a no-op, and the pair
/// always leaves it absent.
pub fn release(cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    nfset::apply(&[
        port_change(cfg, ip, Op::Add)?,
        port_change(cfg, ip, Op::Delete)?,
        egress_change(cfg, ip, Op::Add),
        egress_change(cfg, ip, Op::Delete),
    ])
}

/// Lets `ip` open connections to the internet (adds it to the egress set).
pub fn allow_egress(cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    nfset::apply(&[egress_change(cfg, ip, Op::Add)])
}

/// Takes `ip`'s internet access away (removes it from the egress set). Unlike [`release`],
/// a failure is reported: a sandbox that keeps access it should not have is an error.
pub fn deny_egress(cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    nfset::apply(&[
        egress_change(cfg, ip, Op::Add),
        egress_change(cfg, ip, Op::Delete),
    ])
}

/// Runs `nft -f -` on `script` (loading and removing the tables: once per `paddock up`).
fn nft(script: &str) -> Result<(), NetError> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(format!(
            "{}\n--- script ---\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_names_the_bridge_and_cidr() {
        let r = ruleset(&NetConfig::default(), &[]);
        assert!(r.contains("iifname \"pdkbr0\" drop"));
        assert!(r.contains("ip saddr 10.213.0.0/16 oifname != \"pdkbr0\" masquerade"));
        assert!(r.contains("iifname != \"pdk*\" accept"));
    }

    #[test]
    fn denied_ranges_come_before_the_egress_accept() {
        let r = ruleset(&NetConfig::default(), &[]);
        let deny = r.find("ip daddr @denied drop").expect("deny rule");
        let accept = r.find("meta nfproto ipv4 accept").expect("accept rule");
        assert!(deny < accept, "{r}");
        for range in [
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ] {
            assert!(r.contains(range), "{range} missing");
        }
    }

    #[test]
    fn nameservers_skip_loopback_ipv6_and_comments() {
        let text = "# comment\nnameserver 10.255.255.53\nnameserver 127.0.0.53\n\
                    nameserver ::1\nsearch example\nnameserver 8.8.8.8 # x\n";
        assert_eq!(
            nameservers(text),
            vec![Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(8, 8, 8, 8)]
        );
        let r = ruleset(&NetConfig::default(), &nameservers(text));
        assert!(r.contains("elements = { 10.255.255.53, 8.8.8.8 }"), "{r}");
    }

    #[test]
    fn sandbox_macs_are_local_unicast_and_follow_the_ip() {
        let a = sandbox_mac(Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(a[0] & 0b11, 0b10);
        assert_ne!(a, sandbox_mac(Ipv4Addr::new(10, 213, 0, 3)));
        assert_eq!(mac_text(a), "02:70:0a:d5:00:02");
        let e = port_element(&NetConfig::default(), Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(e, "\"pdk00000000\" . 02:70:0a:d5:00:02 . 10.213.0.2");
    }
}
