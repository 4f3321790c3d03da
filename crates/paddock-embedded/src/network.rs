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
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::InfoBridgePort;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::firewall;
use crate::rtnl::{self, Req, Rtnl};

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

/// The sandbox's end of its veth pair, in its network namespace.
const SANDBOX_IF: &str = "eth0";

/// Wires a sandbox: a veth pair whose host end joins the bridge (an isolated port) and whose
/// other end is made as `eth0` in the network namespace of `pid`, with `ip` and a default
/// route via the gateway. The netlink exchanges block, so they run on the blocking pool.
pub async fn attach(
    cfg: &NetConfig,
    pid: i32,
    ip: Ipv4Addr,
    allow_internet: bool,
) -> Result<(), NetError> {
    let cfg = cfg.clone();
    blocking(move || attach_blocking(&cfg, pid, ip, allow_internet)).await
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Config(format!("network task failed: {e}")))?
}

/// [`attach`] on the calling thread; undoes what it did when it fails.
fn attach_blocking(
    cfg: &NetConfig,
    pid: i32,
    ip: Ipv4Addr,
    allow_internet: bool,
) -> Result<(), NetError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|source| NetError::Io {
        op: format!("open the network namespace of {pid}"),
        source,
    })?;
    let mut host = Rtnl::open()?;
    let t = std::time::Instant::now();
    // The port is bound to the sandbox's address pair (by the port's name) before the port
    // exists, so it never forwards a frame that the bridge would take from anyone else.
    // Egress too, in the same transaction.
    let result = firewall::bind_port(cfg, ip, allow_internet).and_then(|()| {
        tracing::debug!(
            ms = t.elapsed().as_secs_f64() * 1000.0,
            "phase: firewall port binding"
        );
        wire(&mut host, &ns, cfg, ip)
    });
    if result.is_err() {
        let _ = unwire(&mut host, cfg, ip);
        let _ = firewall::release(cfg, ip);
    }
    result
}

/// A lookup of the link named `name`.
fn get_link(name: &str) -> Req {
    Req::plain(
        format!("get link {name}"),
        RouteNetlinkMessage::GetLink(LinkUnspec::new_with_name(name).build()),
    )
}

/// The index of the link an answer to [`get_link`] describes.
fn index_in(req: &Req, answer: rtnl::Answer) -> Result<u32, NetError> {
    let found = answer.map_err(|e| NetError::Netlink {
        op: req.op.clone(),
        source: rtnetlink::Error::NetlinkError(e),
    })?;
    rtnl::link_index_of(&found)
        .ok_or_else(|| NetError::Config(format!("{}: no link in the answer", req.op)))
}

/// Makes the veth pair and sets up both of its ends (see [`attach`]), in five round trips:
/// the pair, the namespace's side (two), the bridge port, and the port up.
fn wire(
    host: &mut Rtnl,
    ns: &std::fs::File,
    cfg: &NetConfig,
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    let host_if = cfg.veth_name(ip);
    // The sandbox's end is made in its namespace, named `eth0` and with its bound hardware
    // address: it never has another address and never exists in the host's namespace. (It
    // used to be made on the host and moved, which waits for an RCU grace period, and then
    // renamed from inside.)
    let peer = LinkUnspec::new_with_name(SANDBOX_IF)
        .address(firewall::sandbox_mac(ip).to_vec())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(&host_if, SANDBOX_IF)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    let pair = [
        get_link(&cfg.bridge),
        Req::create("add veth", RouteNetlinkMessage::NewLink(veth)),
        get_link(&host_if),
    ];
    let mut answers = host.exchange(&pair)?;
    if matches!(&answers[1], Err(e) if e.raw_code() == -nix::libc::EEXIST) {
        // Left over from a crash with the same address: remove it and try again.
        host.run(&[delete_link_req(&host_if)], &[-nix::libc::ENODEV])?;
        answers = host.exchange(&pair)?;
    }
    let mut answers = answers.into_iter();
    let (bridge, made, port) = (answers.next(), answers.next(), answers.next());
    if let Some(Err(e)) = made {
        return Err(NetError::Netlink {
            op: pair[1].op.clone(),
            source: rtnetlink::Error::NetlinkError(e),
        });
    }
    let bridge = match bridge {
        Some(Err(e)) if e.raw_code() == -nix::libc::ENODEV => {
            return Err(NetError::Config(format!("bridge {} missing", cfg.bridge)));
        }
        Some(a) => index_in(&pair[0], a)?,
        None => return Err(NetError::Config("no answer about the bridge".into())),
    };
    let port = index_in(&pair[2], port.unwrap_or(Ok(Vec::new())))?;
    without_ipv6(&host_if)?;

    // Inside: a socket made in the namespace, no thread left there.
    let mut inside = Rtnl::open_in(ns)?;
    let lookup = get_link(SANDBOX_IF);
    let eth0 = index_in(
        &lookup,
        inside.exchange(std::slice::from_ref(&lookup))?.remove(0),
    )?;
    let address = AddressMessageBuilder::<Ipv4Addr>::new()
        .index(eth0)
        .address(ip, cfg.cidr.prefix)
        .build();
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(cfg.cidr.gateway())
        .build();
    // The gateway's hardware address is known in advance (the bridge's, fixed): pinned, the
    // sandbox never asks for it. Asked, its first request could go out before its port was
    // up (its init starts beside this attach) and be lost, and the kernel asks again only a
    // second later: about one cold create in a hundred took a second more to answer, each
    // time from a sandbox whose gateway entry had needed that extra request. Sandbox root
    // may change the entry; then it asks as any host would, and the host answers.
    let gateway = permanent_neighbour(eth0, cfg.cidr.gateway(), cfg.bridge_mac());
    // In order: the route needs the address and the link up.
    inside.run(
        &[
            Req::set_link("lo up", LinkUnspec::new_with_name("lo").up().build()),
            Req::create("add address", RouteNetlinkMessage::NewAddress(address)),
            Req::set_link("eth0 up", LinkUnspec::new_with_index(eth0).up().build()),
            Req::replace(
                "pin the gateway's neighbour entry",
                RouteNetlinkMessage::NewNeighbour(gateway),
            ),
            Req::create("default route", RouteNetlinkMessage::NewRoute(route)),
        ],
        &[],
    )?;

    // The host's end joins the bridge while it is down: isolated, and no unknown unicast
    // flooded to it (what reaches a sandbox's port is addressed to it, see `pin_requests`).
    let mut port_setup = vec![Req::set_link(
        "attach veth to bridge",
        LinkUnspec::new_with_index(port).controller(bridge).build(),
    )];
    port_setup.extend(port_requests(bridge, port, ip, true));
    host.run(&port_setup, &[]).map_err(|e| match e {
        // Ports taken by links that are not ours (or by a second instance on the same
        // bridge) fill it before our own count does.
        NetError::Netlink {
            source: rtnetlink::Error::NetlinkError(ref m),
            ..
        } if m.raw_code() == -EXFULL => NetError::BridgeFull(cfg.bridge.clone()),
        e => e,
    })?;
    // Up only once all of the above held: a batch's requests all run, failed ones or not.
    host.run(
        &[Req::set_link(
            "veth up",
            LinkUnspec::new_with_index(port).up().build(),
        )],
        &[],
    )?;
    Ok(())
}

/// Turns IPv6 off on the host's end of a sandbox's veth, before it goes up. The host needs
/// no address on a bridge port, and with IPv6 on, each port added its routes (link-local,
/// multicast, its own address) to the host's one IPv6 table, and each port going up walked
/// that whole table (`rt6_sync_up`) and then sent its duplicate address detection and
/// multicast reports into the bridge: a create's cost grew with the sandboxes running (on the
/// 2-core test host, from 1.8 % to 3.8 % of all CPU time between the first and the last of
/// 1,000 creates). The sandbox's own end, in its namespace, keeps IPv6 as it was.
fn without_ipv6(name: &str) -> Result<(), NetError> {
    let knob = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&knob, "1") {
        // A kernel without IPv6 has no such file, and nothing to turn off.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|source| NetError::Io {
            op: format!("turn IPv6 off on {name} ({knob})"),
            source,
        }),
    }
}

/// Deletes the link named `name`.
fn delete_link_req(name: &str) -> Req {
    Req::plain(
        format!("delete link {name}"),
        RouteNetlinkMessage::DelLink(LinkUnspec::new_with_name(name).build()),
    )
}

/// Removes what [`wire`] made on the host: the host end of the veth (the other end goes with
/// it) and the pinned neighbour entry (the forwarding entry goes with the port).
fn unwire(host: &mut Rtnl, cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    let found = host.run(
        &[get_link(&cfg.bridge), delete_link_req(&cfg.veth_name(ip))],
        &[-nix::libc::ENODEV],
    )?;
    let Some(bridge) = rtnl::link_index_of(&found[0]) else {
        return Ok(());
    };
    host.run(
        &[Req::plain(
            "delete the sandbox's neighbour entry",
            RouteNetlinkMessage::DelNeighbour(neighbour_entry(bridge, ip)),
        )],
        &[-nix::libc::ENOENT],
    )?;
    Ok(())
}

/// The host's permanent neighbour entry for a sandbox: its IP on the bridge, with its MAC.
fn neighbour_entry(bridge: u32, ip: Ipv4Addr) -> NeighbourMessage {
    permanent_neighbour(bridge, ip, firewall::sandbox_mac(ip))
}

/// `ip neigh replace IP lladdr MAC dev LINK nud permanent`, as a message.
fn permanent_neighbour(link: u32, ip: Ipv4Addr, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = link;
    m.header.state = NeighbourState::Permanent;
    m.attributes = vec![
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    m
}

/// A sandbox's bridge port settings, in order: no unknown unicast flooded to it (and
/// isolated, when `isolate`), then its addresses pinned on the host: a static forwarding
/// entry for its hardware address on its port, and a permanent neighbour entry for its IP on
/// the bridge (both are known in advance: the MAC follows the IP). Without them the host
/// finds a sandbox by flooding: its ARP requests, and frames for a MAC whose learned entry
/// aged out (after 300 s without traffic from the sandbox), go to every port of the bridge
/// at once. With about a thousand ports those copies overflow the CPU's input backlog
/// (`net.core.netdev_max_backlog`, 1000), and the ports flooded last — the oldest — lose
/// theirs: long-idle sandboxes became unreachable. Flooding also showed each sandbox frames
/// meant for its neighbours.
fn port_requests(bridge: u32, port: u32, ip: Ipv4Addr, isolate: bool) -> [Req; 3] {
    let mut settings = LinkBridgePort::new(port);
    if isolate {
        settings = settings.append_info_data(InfoBridgePort::Isolated(true));
    }
    let settings = settings
        .append_info_data(InfoBridgePort::UnicastFlood(false))
        .build();
    // `bridge fdb replace MAC dev PORT master static`
    let mut fdb = NeighbourMessage::default();
    fdb.header.family = AddressFamily::Bridge;
    fdb.header.ifindex = port;
    fdb.header.state = NeighbourState::Noarp;
    fdb.header.flags = NeighbourFlags::Controller;
    fdb.attributes = vec![NeighbourAttribute::LinkLayerAddress(
        firewall::sandbox_mac(ip).to_vec(),
    )];
    [
        // A port's settings go in a new-link request, as `ip link set … type bridge_slave`.
        Req::plain(
            "set the bridge port's flags",
            RouteNetlinkMessage::NewLink(settings),
        ),
        Req::replace(
            "add the sandbox's forwarding entry",
            RouteNetlinkMessage::NewNeighbour(fdb),
        ),
        // `ip neigh replace IP lladdr MAC dev BRIDGE nud permanent`
        Req::replace(
            "add the sandbox's neighbour entry",
            RouteNetlinkMessage::NewNeighbour(neighbour_entry(bridge, ip)),
        ),
    ]
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

/// Binds the port of a sandbox that outlived a restart again ([`setup_host`] starts with
/// empty sets), and re-allows its egress.
pub fn rebind(cfg: &NetConfig, ip: Ipv4Addr, allow_internet: bool) -> Result<(), NetError> {
    firewall::bind_port(cfg, ip, allow_internet)
}

/// Pins the addresses of a sandbox that outlived a restart again (see [`port_requests`]; one
/// attached by an older version has none) and stops unknown unicast flooding to its port.
pub async fn repin(cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    let cfg = cfg.clone();
    blocking(move || {
        let mut h = Rtnl::open()?;
        let port_name = cfg.veth_name(ip);
        let found = h.run(
            &[get_link(&cfg.bridge), get_link(&port_name)],
            &[-nix::libc::ENODEV],
        )?;
        let (Some(bridge), Some(port)) = (
            rtnl::link_index_of(&found[0]),
            rtnl::link_index_of(&found[1]),
        ) else {
            return Err(NetError::Config(format!(
                "{ip}: bridge {} or its port {port_name} is missing",
                cfg.bridge
            )));
        };
        h.run(&port_requests(bridge, port, ip, false), &[])?;
        Ok(())
    })
    .await
}

/// Releases what [`attach`] made on the host: the host veth (if the namespace did not take it
/// down already), the pinned neighbour entry, the port binding and the egress set element.
/// Nothing is listed: a teardown's cost does not grow with the number of sandboxes.
pub async fn detach(cfg: &NetConfig, ip: Ipv4Addr) -> Result<(), NetError> {
    let cfg = cfg.clone();
    blocking(move || {
        unwire(&mut Rtnl::open()?, &cfg, ip)?;
        firewall::release(&cfg, ip)
    })
    .await
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
        // and a bridge's own.
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
                let n = c.veth_name(ip);
                assert!(n.len() <= 15, "{n}");
                assert!(names.insert(n.clone()), "{n} twice");
            }
        }
        for bad in ["", "a-very-long-bridge", "br 0", "br/0"] {
            assert!(NetConfig::for_bridge(bad, cidr).is_err(), "{bad:?}");
        }
    }
}
