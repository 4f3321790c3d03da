//! Sandbox networking: a Paddock bridge on the host, one veth pair per sandbox, addresses from
//! a private CIDR, and nftables rules (see [`crate::firewall`] for the policy).
//!
//! Each sandbox's `eth0` gets a hardware address derived from its IP
//! ([`crate::firewall::sandbox_mac`]), and its bridge port is bound to that address pair
//! before the sandbox can send anything, so no sandbox can speak with another one's
//! addresses. Bridge ports are *isolated*: sandboxes have no L2 path to each other.
//!
//! The sandbox's side of the veth lives in the container's network namespace, so it vanishes
//! with the container; the host side is deleted explicitly when still present.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::InfoBridgePort;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::firewall;

/// Network errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink {op}: {source}")]
    Netlink {
        /// What we asked for.
        op: String,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// `nft` failed.
    #[error("nft: {0}")]
    Nft(String),
    /// The kernel refused a change to a firewall set (see [`crate::nfset`]).
    #[error("nftables: cannot {change}: {source}")]
    SetElement {
        /// Which element, which set, add or delete.
        change: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// Other IO (netlink socket, namespace file, sysctl).
    #[error("network io {op}: {source}")]
    Io {
        /// What we did.
        op: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Bad configuration.
    #[error("network config: {0}")]
    Config(String),
    /// Every address of the CIDR is in use.
    #[error("no free address in {0}")]
    Exhausted(String),
    /// The bridge has as many ports as the kernel allows one bridge.
    #[error(
        "bridge {0} is full: the kernel gives a bridge at most {BRIDGE_MAX_PORTS} ports, one \
         per sandbox; run another instance with its own --bridge and CIDR for more"
    )]
    BridgeFull(String),
}

impl NetError {
    /// As an infra error: a host limit reached is the caller's to hear about (a capacity
    /// error, 503), anything else is internal.
    pub fn into_infra(self) -> paddock_infra::InfraError {
        match self {
            NetError::BridgeFull(_) | NetError::Exhausted(_) => {
                paddock_infra::InfraError::Capacity(self.to_string())
            }
            e => paddock_infra::InfraError::Internal(Box::new(e)),
        }
    }
}

/// Ports one Linux bridge can hold: port numbers are 10 bits and 0 is reserved
/// (`BR_MAX_PORTS` in the kernel's `net/bridge/br_private.h`).
pub const BRIDGE_MAX_PORTS: usize = 1023;

/// `EXFULL`: what the kernel answers when a bridge has no free port number left.
const EXFULL: i32 = 54;

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

/// An IPv4 network given as `a.b.c.d/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::Config(format!("bad CIDR {s:?}"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(NetError::Config(format!("CIDR {s}: prefix must be 8..=29")));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// The gateway (host side of the bridge): the first address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// The `n`-th sandbox address (n = 0 is the one after the gateway).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        // Skip network, gateway and broadcast.
        (n < size.saturating_sub(3)).then(|| Ipv4Addr::from(u32::from(self.addr) + 2 + n))
    }

    /// Index of a sandbox address, inverse of [`Cidr::host`].
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let off = u32::from(ip).checked_sub(u32::from(self.addr) + 2)?;
        (self.host(off) == Some(ip)).then_some(off)
    }

    /// The first sandbox address not in `used`, searching from just after
    /// `after` (wrapping around). Handing out addresses in turn, instead of
    /// always the lowest free one, keeps a just-released address (and the
    /// host's neighbour and connection-tracking entries for it) out of use
    /// for as long as possible.
    pub fn allocate(
        &self,
        used: &std::collections::BTreeSet<Ipv4Addr>,
        after: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, NetError> {
        let start = after
            .and_then(|ip| self.index_of(ip))
            .map_or(0, |i| i as usize + 1);
        let hosts = || (0..).map_while(|n| self.host(n));
        hosts()
            .skip(start)
            .chain(hosts().take(start))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| NetError::Exhausted(self.to_string()))
    }
}

/// Network configuration.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Bridge name (≤ 15 bytes).
    pub bridge: String,
    /// Address range of the bridge and its sandboxes.
    pub cidr: Cidr,
    /// nftables table name (family `inet`).
    pub nft_table: String,
    /// Prefix of host-side veth names (≤ 7 bytes; an 8-digit hex index follows).
    pub veth_prefix: String,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            bridge: "pdkbr0".into(),
            cidr: Cidr {
                addr: Ipv4Addr::new(10, 213, 0, 0),
                prefix: 16,
            },
            nft_table: "paddock".into(),
            veth_prefix: "pdk".into(),
        }
    }
}

impl NetConfig {
    /// The set of names for a bridge other than the default one: its own nftables table and
    /// veth prefix, derived from the bridge name so that two instances with different bridges
    /// never touch each other's rules or links. The default bridge keeps the default names.
    pub fn for_bridge(bridge: &str, cidr: Cidr) -> Result<Self, NetError> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        if bridge.is_empty() || bridge.len() > 15 || !bridge.chars().all(ok) {
            return Err(NetError::Config(format!(
                "bridge name {bridge:?}: 1 to 15 characters of [A-Za-z0-9_-]"
            )));
        }
        let default = Self::default();
        if bridge == default.bridge {
            return Ok(Self { cidr, ..default });
        }
        let hash = fnv1a(bridge.as_bytes());
        Ok(Self {
            bridge: bridge.to_owned(),
            cidr,
            nft_table: format!("paddock_{}", bridge.replace('-', "_")),
            // "pd" + 5 hex digits: never starts like the default "pdk" (k is not a hex
            // digit), and 7 bytes leave room for the 8-digit index within IFNAMSIZ.
            veth_prefix: format!("pd{:05x}", hash & 0xf_ffff),
        })
    }

    /// The bridge's hardware address: locally administered, unicast, and
    /// derived from the bridge name so that it survives restarts.
    pub fn bridge_mac(&self) -> [u8; 6] {
        let b = fnv1a(self.bridge.as_bytes()).to_be_bytes();
        [0x02, b[3], b[4], b[5], b[6], b[7]]
    }

    /// A free sandbox address (see [`Cidr::allocate`]), refused with
    /// [`NetError::BridgeFull`] once `used` holds as many addresses as the bridge has ports:
    /// every address in use is a veth on the bridge.
    pub fn allocate(
        &self,
        used: &std::collections::BTreeSet<Ipv4Addr>,
        after: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, NetError> {
        if used.len() >= BRIDGE_MAX_PORTS {
            return Err(NetError::BridgeFull(self.bridge.clone()));
        }
        self.cidr.allocate(used, after)
    }

    /// Host-side veth name of a sandbox address.
    pub fn veth_name(&self, ip: Ipv4Addr) -> String {
        format!(
            "{}{:08x}",
            self.veth_prefix,
            self.cidr.index_of(ip).unwrap_or(u32::MAX)
        )
    }

    /// The sandbox end of the veth pair while it is still in the host's namespace (it is
    /// renamed `eth0` when it moves into the sandbox's). Unique per address and instance: it
    /// used to be the host end's name cut to 14 characters plus `p`, which for a bridge's own
    /// 7-character prefix dropped the index's last digit, so two sandboxes attached at once
    /// (addresses .2 and .3, say) collided ("File exists"). `p` is no hex digit, so it never
    /// equals a host end's name either.
    pub fn peer_name(&self, ip: Ipv4Addr) -> String {
        format!(
            "{}p{:07x}",
            self.veth_prefix,
            self.cidr.index_of(ip).unwrap_or(u32::MAX) & 0x0fff_ffff
        )
    }
}

/// FNV-1a: stable across builds and runs, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

async fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
        op: "netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        // ENODEV when the link does not exist.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(nl(format!("get link {name}"))(e)),
    }
}

/// Creates the bridge, its address, the nftables tables and turns on forwarding. Idempotent;
/// the egress and port sets start empty (callers re-add live sandboxes with [`rebind`]).
/// Sandboxes with internet access may use the IPv4 nameservers of `resolv_conf` (the file
/// they get as `/etc/resolv.conf`) even when those sit in a denied range.
pub async fn setup_host(cfg: &NetConfig, resolv_conf: Option<&Path>) -> Result<(), NetError> {
    let h = connect().await?;
    let idx = match link_index(&h, &cfg.bridge).await? {
        Some(i) => i,
        None => {
            h.link()
                .add(LinkBridge::new(&cfg.bridge).build())
                .execute()
                .await
                .map_err(nl("add bridge"))?;
            link_index(&h, &cfg.bridge)
                .await?
                .ok_or_else(|| NetError::Config("bridge vanished".into()))?
        }
    };
    let gw = cfg.cidr.gateway();
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    let mut has = false;
    while let Some(a) = addrs.try_next().await.map_err(nl("get addresses"))? {
        has |= a.attributes.iter().any(|attr| {
            matches!(attr, rtnetlink::packet_route::address::AddressAttribute::Address(ip) if *ip == std::net::IpAddr::V4(gw))
        });
    }
    if !has {
        h.address()
            .add(idx, gw.into(), cfg.cidr.prefix)
            .execute()
            .await
            .map_err(nl("add bridge address"))?;
    }
    // A bridge without an address of its own takes the lowest address of its
    // ports, so it changes whenever a sandbox's veth comes or goes. Sandboxes
    // that resolved the gateway earlier would keep sending to the old address,
    // which the bridge no longer accepts as its own: their replies vanish
    // until their neighbour entry expires (seconds to minutes). A fixed
    // address, the same on every start, keeps those entries valid.
    h.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .address(cfg.bridge_mac().to_vec())
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl("bridge address and up"))?;
    // The firewall goes in before forwarding is on, so no packet is ever routed unfiltered.
    let dns = match resolv_conf {
        Some(p) => std::fs::read_to_string(p)
            .map(|t| firewall::nameservers(&t))
            .map_err(|source| NetError::Io {
                op: format!("read {}", p.display()),
                source,
            })?,
        None => Vec::new(),
    };
    firewall::load(cfg, &dns)?;
    enable_forwarding()
}

/// Turns on IPv4 forwarding, which NAT egress needs (security review L5).
///
/// The switch is host-wide: Paddock's own `forward` chain gives every packet from or to its
/// bridge an explicit verdict, but forwarding between the host's other interfaces is then up
/// to the host's firewall. Paddock does not veto that traffic itself, because container
/// runtimes and Kubernetes networks on the same host rely on it; when forwarding was off
/// before, the operator is told so.
fn enable_forwarding() -> Result<(), NetError> {
    const KNOB: &str = "/proc/sys/net/ipv4/ip_forward";
    let was = std::fs::read_to_string(KNOB).unwrap_or_default();
    if was.trim() == "0" {
        tracing::warn!(
            "turning on IPv4 forwarding (net.ipv4.ip_forward=1) for sandbox internet access; \
             forwarding between this host's other interfaces is now governed by its own \
             firewall"
        );
    }
    std::fs::write(KNOB, "1").map_err(|source| NetError::Io {
        op: "enable ip_forward".into(),
        source,
    })
}

/// Removes the bridge and the nftables tables (tests and uninstall).
pub async fn teardown_host(cfg: &NetConfig) -> Result<(), NetError> {
    let h = connect().await?;
    if let Some(idx) = link_index(&h, &cfg.bridge).await? {
        h.link()
            .del(idx)
            .execute()
            .await
            .map_err(nl("delete bridge"))?;
    }
    firewall::unload(cfg)
}

/// Wires a sandbox: veth pair, host side on the bridge (isolated port), sandbox side renamed
/// `eth0` in the network namespace of `pid` with `ip`, default route via the gateway.
pub async fn attach(
    cfg: &NetConfig,
    pid: i32,
    ip: Ipv4Addr,
    allow_internet: bool,
) -> Result<(), NetError> {
    let h = connect().await?;
    let host_if = cfg.veth_name(ip);
    let peer_if = cfg.peer_name(ip);
    // Leftover from a crash with the same address: remove it first.
    if let Some(old) = link_index(&h, &host_if).await? {
        let _ = h.link().del(old).execute().await;
    }
    h.link()
        .add(LinkVeth::new(&host_if, &peer_if).build())
        .execute()
        .await
        .map_err(nl("add veth"))?;
    let result = async {
        let br = link_index(&h, &cfg.bridge)
            .await?
            .ok_or_else(|| NetError::Config("bridge missing".into()))?;
        let host_idx = link_index(&h, &host_if)
            .await?
            .ok_or_else(|| NetError::Config("veth vanished".into()))?;
        let peer_idx = link_index(&h, &peer_if)
            .await?
            .ok_or_else(|| NetError::Config("veth peer vanished".into()))?;
        // The port is bound to this address pair before the sandbox owns the peer, so it
        // never sends a frame that the bridge would take from anyone else.
        h.link()
            .set(
                LinkUnspec::new_with_index(peer_idx)
                    .address(firewall::sandbox_mac(ip).to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("set sandbox hardware address"))?;
        // Egress too, in the same transaction: nothing can use it before the peer is set up.
        let t = std::time::Instant::now();
        firewall_blocking(cfg, move |cfg| firewall::bind_port(cfg, ip, allow_internet)).await?;
        tracing::debug!(
            ms = t.elapsed().as_secs_f64() * 1000.0,
            "phase: firewall port binding"
        );
        h.link()
            .set(LinkUnspec::new_with_index(host_idx).controller(br).build())
            .execute()
            .await
            .map_err(|e| match e {
                // Ports taken by links that are not ours (or by a second instance on the
                // same bridge) fill it before our own count does.
                rtnetlink::Error::NetlinkError(ref m) if m.raw_code() == -EXFULL => {
                    NetError::BridgeFull(cfg.bridge.clone())
                }
                e => nl("attach veth to bridge")(e),
            })?;
        // Isolated, and no unknown unicast flooded to it: what reaches a sandbox's port is
        // addressed to it (see `pin_addresses`), never a neighbour's traffic.
        h.link()
            .set_port(
                LinkBridgePort::new(host_idx)
                    .append_info_data(InfoBridgePort::Isolated(true))
                    .append_info_data(InfoBridgePort::UnicastFlood(false))
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("isolate bridge port"))?;
        pin_addresses(&h, br, host_idx, ip).await?;
        h.link()
            .set(LinkUnspec::new_with_index(host_idx).up().build())
            .execute()
            .await
            .map_err(nl("veth up"))?;
        let pid_u = u32::try_from(pid).map_err(|_| NetError::Config(format!("bad pid {pid}")))?;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer_idx)
                    .setns_by_pid(pid_u)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("move veth into sandbox"))?;
        configure_inside(
            pid,
            peer_if.clone(),
            ip,
            cfg.cidr.prefix,
            cfg.cidr.gateway(),
        )
        .await
    }
    .await;
    if result.is_err() {
        if let Ok(Some(i)) = link_index(&h, &host_if).await {
            let _ = h.link().del(i).execute().await;
        }
        let _ = unpin_address(&h, cfg, ip).await;
        let _ = firewall_blocking(cfg, move |cfg| firewall::release(cfg, ip)).await;
    }
    result
}

/// Pins a sandbox's addresses on the host: a static forwarding entry for its hardware
/// address on its port, and a permanent neighbour entry for its IP on the bridge (both are
/// known in advance: the MAC follows the IP). Without them the host finds a sandbox by
/// flooding: its ARP requests, and frames for a MAC whose learned entry aged out (after 300 s
/// without traffic from the sandbox), go to every port of the bridge at once. With about a
/// thousand ports those copies overflow the CPU's input backlog (`net.core.netdev_max_backlog`,
/// 1000), and the ports flooded last — the oldest — lose theirs: long-idle sandboxes became
/// unreachable. Flooding also showed each sandbox frames meant for its neighbours.
async fn pin_addresses(h: &Handle, bridge: u32, port: u32, ip: Ipv4Addr) -> Result<(), NetError> {
    use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
    let mac = firewall::sandbox_mac(ip);
    // `bridge fdb replace MAC dev PORT master static`
    h.neighbours()
        .add_bridge(port, &mac)
        .state(NeighbourState::Noarp)
        .flags(NeighbourFlags::Controller)
        .replace()
        .execute()
        .await
        .map_err(nl("add the sandbox's forwarding entry"))?;
    // `ip neigh replace IP lladdr MAC dev BRIDGE nud permanent`
    h.neighbours()
        .add(bridge, ip.into())
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl("add the sandbox's neighbour entry"))?;
    Ok(())
}

/// Removes the host's neighbour entry for `ip` (see [`pin_addresses`]); the forwarding entry
/// goes with the port.
async fn unpin_address(h: &Handle, cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    unpin_where(h, cfg, |a| a == ip).await
}

/// Removes the pinned neighbour entries of addresses no sandbox holds any more (one whose
/// sandbox was lost in a crash between [`attach`] and its record).
pub async fn unpin_all_but(
    cfg: &NetConfig,
    keep: &std::collections::BTreeSet<Ipv4Addr>,
) -> Result<(), NetError> {
    let h = connect().await?;
    unpin_where(&h, cfg, |a| !keep.contains(&a)).await
}

/// Removes the host's neighbour entries on the bridge whose address `gone` picks.
async fn unpin_where(
    h: &Handle,
    cfg: &NetConfig,
    gone: impl Fn(Ipv4Addr) -> bool,
) -> Result<(), NetError> {
    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    let Some(bridge) = link_index(h, &cfg.bridge).await? else {
        return Ok(());
    };
    let mut entries = h
        .neighbours()
        .get()
        .set_address_family(rtnetlink::packet_route::AddressFamily::Inet)
        .execute();
    let mut found = Vec::new();
    while let Some(n) = entries.try_next().await.map_err(nl("list neighbours"))? {
        if n.header.ifindex == bridge
            && n.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) if gone(*d))
            })
        {
            found.push(n);
        }
    }
    for n in found {
        match h.neighbours().del(n).execute().await {
            Ok(()) => {}
            // Gone meanwhile (ENOENT): what was asked for.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -2 => {}
            Err(e) => return Err(nl("delete the sandbox's neighbour entry")(e)),
        }
    }
    Ok(())
}

/// Runs a firewall change (a netlink exchange that can wait on the kernel's nftables
/// transaction lock) on the blocking pool, not on an async worker.
async fn firewall_blocking(
    cfg: &NetConfig,
    f: impl FnOnce(&NetConfig) -> Result<(), NetError> + Send + 'static,
) -> Result<(), NetError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || f(&cfg))
        .await
        .map_err(|e| NetError::Nft(format!("firewall task failed: {e}")))?
}

/// Binds the port of a sandbox that outlived a restart again ([`setup_host`] starts with
/// empty sets), and re-allows its egress.
pub fn rebind(cfg: &NetConfig, ip: Ipv4Addr, allow_internet: bool) -> Result<(), NetError> {
    firewall::bind_port(cfg, ip, allow_internet)
}

/// Pins the addresses of a sandbox that outlived a restart again (see [`pin_addresses`]; one
/// attached by an older version has none) and stops unknown unicast flooding to its port.
pub async fn repin(cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    let h = connect().await?;
    let port_name = cfg.veth_name(ip);
    let (Some(bridge), Some(port)) = (
        link_index(&h, &cfg.bridge).await?,
        link_index(&h, &port_name).await?,
    ) else {
        return Err(NetError::Config(format!(
            "{ip}: bridge {} or its port {port_name} is missing",
            cfg.bridge
        )));
    };
    h.link()
        .set_port(
            LinkBridgePort::new(port)
                .append_info_data(InfoBridgePort::UnicastFlood(false))
                .build(),
        )
        .execute()
        .await
        .map_err(nl("stop unknown unicast flooding to the bridge port"))?;
    pin_addresses(&h, bridge, port, ip).await
}

/// Releases what [`attach`] made on the host: the host veth (if the namespace did not take it
/// down already), the port binding and the egress set element.
pub async fn detach(cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    let h = connect().await?;
    if let Some(i) = link_index(&h, &cfg.veth_name(ip)).await? {
        match h.link().del(i).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => {}
            Err(e) => return Err(nl("delete veth")(e)),
        }
    }
    unpin_address(&h, cfg, ip).await?;
    firewall_blocking(cfg, move |cfg| firewall::release(cfg, ip)).await
}

/// Gives `ip` internet access or takes it away (the egress set); blocks on netlink.
pub fn set_egress(cfg: &NetConfig, ip: Ipv4Addr, allow: bool) -> Result<(), NetError> {
    if allow {
        firewall::allow_egress(cfg, ip)
    } else {
        firewall::deny_egress(cfg, ip)
    }
}

/// Deletes a link by name if it exists.
pub async fn delete_link(name: &str) -> Result<(), NetError> {
    let h = connect().await?;
    if let Some(i) = link_index(&h, name).await? {
        match h.link().del(i).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => {}
            Err(e) => return Err(nl(format!("delete {name}"))(e)),
        }
    }
    Ok(())
}

/// Host-side veths that exist now (leak checks and recovery).
pub async fn host_veths(cfg: &NetConfig) -> Result<Vec<String>, NetError> {
    let h = connect().await?;
    let mut links = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(l) = links.try_next().await.map_err(nl("list links"))? {
        for a in &l.attributes {
            if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a
                && n.starts_with(&cfg.veth_prefix)
                && n.len() == cfg.veth_prefix.len() + 8
            {
                out.push(n.clone());
            }
        }
    }
    Ok(out)
}

/// Runs the in-namespace part on a thread that has joined the sandbox's network namespace
/// (namespace membership is per thread, so the async workers are untouched).
async fn configure_inside(
    pid: i32,
    peer: String,
    ip: Ipv4Addr,
    prefix: u8,
    gw: Ipv4Addr,
) -> Result<(), NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-setup".into())
        .spawn(move || {
            let r = (|| {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|source| {
                    NetError::Io {
                        op: "open netns".into(),
                        source,
                    }
                })?;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |e| NetError::Io {
                        op: "setns".into(),
                        source: e.into(),
                    },
                )?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| NetError::Io {
                        op: "runtime".into(),
                        source,
                    })?;
                rt.block_on(async {
                    let h = connect().await?;
                    let lo = link_index(&h, "lo")
                        .await?
                        .ok_or_else(|| NetError::Config("no lo".into()))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(lo).up().build())
                        .execute()
                        .await
                        .map_err(nl("lo up"))?;
                    let idx = link_index(&h, &peer)
                        .await?
                        .ok_or_else(|| NetError::Config("peer missing in netns".into()))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(idx).name("eth0").build())
                        .execute()
                        .await
                        .map_err(nl("rename eth0"))?;
                    h.address()
                        .add(idx, ip.into(), prefix)
                        .execute()
                        .await
                        .map_err(nl("add address"))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(idx).up().build())
                        .execute()
                        .await
                        .map_err(nl("eth0 up"))?;
                    let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
                    h.route()
                        .add(route)
                        .execute()
                        .await
                        .map_err(nl("default route"))?;
                    Ok(())
                })
            })();
            let _ = tx.send(r);
        })
        .map_err(|source| NetError::Io {
            op: "spawn netns thread".into(),
            source,
        })?;
    rx.await
        .map_err(|_| NetError::Config("netns thread died".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_allocates_lowest_free() {
        let c: Cidr = "10.213.7.9/24".parse().expect("parse");
        assert_eq!(c.to_string(), "10.213.7.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 213, 7, 1));
        let mut used = std::collections::BTreeSet::new();
        assert_eq!(
            c.allocate(&used, None).expect("a"),
            Ipv4Addr::new(10, 213, 7, 2)
        );
        used.insert(Ipv4Addr::new(10, 213, 7, 2));
        used.insert(Ipv4Addr::new(10, 213, 7, 4));
        assert_eq!(
            c.allocate(&used, None).expect("a"),
            Ipv4Addr::new(10, 213, 7, 3)
        );
        assert_eq!(c.index_of(Ipv4Addr::new(10, 213, 7, 4)), Some(2));
        assert_eq!(c.index_of(Ipv4Addr::new(10, 213, 8, 4)), None);
    }

    #[test]
    fn allocation_goes_round_instead_of_reusing_the_lowest() {
        let c: Cidr = "192.168.5.0/29".parse().expect("parse");
        let (a, b) = (Ipv4Addr::new(192, 168, 5, 2), Ipv4Addr::new(192, 168, 5, 3));
        let used = std::collections::BTreeSet::new();
        // .2 was just released: the next address after the last one wins.
        assert_eq!(c.allocate(&used, Some(a)).expect("a"), b);
        // From the end of the range it wraps to the start.
        let last = Ipv4Addr::new(192, 168, 5, 6);
        assert_eq!(c.allocate(&used, Some(last)).expect("a"), a);
        let used: std::collections::BTreeSet<_> = [a].into();
        assert_eq!(c.allocate(&used, Some(last)).expect("a"), b);
    }

    #[test]
    fn small_cidr_runs_out() {
        let c: Cidr = "192.168.5.0/29".parse().expect("parse");
        let used: std::collections::BTreeSet<_> = (0..5).filter_map(|n| c.host(n)).collect();
        assert_eq!(
            used.len(),
            5,
            "8 addresses minus network, gateway, broadcast"
        );
        assert!(matches!(
            c.allocate(&used, None),
            Err(NetError::Exhausted(_))
        ));
    }

    #[test]
    fn a_full_bridge_is_refused_with_its_own_error() {
        let cfg = NetConfig::default();
        let mut used: std::collections::BTreeSet<_> = (0..BRIDGE_MAX_PORTS as u32 - 1)
            .filter_map(|n| cfg.cidr.host(n))
            .collect();
        let last = cfg.allocate(&used, None).expect("the last port is free");
        used.insert(last);
        let err = cfg.allocate(&used, Some(last)).expect_err("no port left");
        assert!(
            matches!(err, NetError::BridgeFull(ref b) if b == "pdkbr0"),
            "{err}"
        );
        assert!(err.to_string().contains("--bridge"), "{err}");
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/30", "x/16"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        let cfg = NetConfig::default();
        let n = cfg.veth_name(Ipv4Addr::new(10, 213, 255, 254));
        assert!(n.len() <= 15, "{n}");
        assert_eq!(cfg.veth_name(Ipv4Addr::new(10, 213, 0, 2)), "pdk00000000");
    }

    #[test]
    fn bridge_mac_is_local_unicast_stable_and_per_bridge() {
        let a = NetConfig::default();
        let mac = a.bridge_mac();
        assert_eq!(
            mac[0] & 0b11,
            0b10,
            "locally administered, unicast: {mac:02x?}"
        );
        assert_eq!(mac, NetConfig::default().bridge_mac());
        let other = NetConfig {
            bridge: "pdkbr1".into(),
            ..NetConfig::default()
        };
        assert_ne!(mac, other.bridge_mac());
    }

    #[test]
    fn each_bridge_gets_its_own_table_and_veth_prefix() {
        let cidr: Cidr = "10.77.0.0/16".parse().expect("cidr");
        let d = NetConfig::for_bridge("pdkbr0", cidr).expect("default bridge");
        assert_eq!(
            (d.nft_table.as_str(), d.veth_prefix.as_str()),
            ("paddock", "pdk")
        );
        assert_eq!(d.cidr, cidr);
        let a = NetConfig::for_bridge("pdkbr1", cidr).expect("a");
        let b = NetConfig::for_bridge("lab-br", cidr).expect("b");
        assert_eq!(a.nft_table, "paddock_pdkbr1");
        assert_eq!(b.nft_table, "paddock_lab_br");
        assert_ne!(a.veth_prefix, b.veth_prefix);
        for c in [&a, &b] {
            assert_eq!(c.veth_prefix.len(), 7);
            assert!(!c.veth_prefix.starts_with("pdk"), "{}", c.veth_prefix);
            assert!(c.veth_name(Ipv4Addr::new(10, 77, 255, 254)).len() <= 15);
        }
        // Every name of every address is distinct and fits IFNAMSIZ, for the default prefix
        // and a bridge's own: host ends and the sandbox ends made beside them.
        let wide: Cidr = "10.0.0.0/8".parse().expect("cidr");
        for c in [
            NetConfig::for_bridge("pdkbr0", cidr).expect("default"),
            NetConfig::for_bridge("pdkbr1", cidr).expect("a"),
            NetConfig::for_bridge("pdkbr1", wide).expect("wide"),
        ] {
            let mut names = std::collections::HashSet::new();
            let base = u32::from(c.cidr.addr);
            for i in (2..300).chain([0x00ff_fffe]) {
                let ip = Ipv4Addr::from(base + i);
                for n in [c.veth_name(ip), c.peer_name(ip)] {
                    assert!(n.len() <= 15, "{n}");
                    assert!(names.insert(n.clone()), "{n} twice");
                }
            }
        }
        for bad in ["", "a-very-long-bridge", "br 0", "br/0"] {
            assert!(NetConfig::for_bridge(bad, cidr).is_err(), "{bad:?}");
        }
    }
}
