//! Root-only tests of the network findings of the security review (H3, H4, one instance per
//! network set), run against real bridges, namespaces and nftables, with sandbox root doing
//! the attacking. "Outside" targets are network namespaces this test creates; no test sends
//! anything beyond this host.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use paddock_infra::{CreateSandbox, Infra};
use support::sh;

fn req(allow_internet_access: bool) -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        allow_internet_access,
        ..Default::default()
    }
}

/// A sandbox's IPv4 address (embedded sandboxes have no other).
fn ipv4(addr: SocketAddr) -> Ipv4Addr {
    match addr {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => panic!("IPv6 sandbox address: {addr}"),
    }
}

/// Runs `ip` with `args`, which must succeed; its standard output.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A stand-in for the world outside the host: a network namespace joined to the host by a
/// veth, owning `198.18.K.2` (198.18/15 is set aside for benchmarks and routed nowhere, so it
/// stands for a public address here; the host's own uplink is in TEST-NET-1) plus any extra
/// addresses, to which the host routes through it. An HTTP stand-in answers 204 on port 8080
/// of every address. Everything is removed on drop.
struct Outside {
    ns: String,
    host_if: String,
    k: u16,
    servers: Vec<std::process::Child>,
}

impl Outside {
    fn new(n: u8, extra: &[Ipv4Addr]) -> Self {
        let k = u16::from(support::slot()) * u16::from(support::SLOT_WIDTH) + u16::from(n);
        let (ns, host_if, peer) = (
            format!("pdkto{k}"),
            format!("pdkto{k}a"),
            format!("pdkto{k}b"),
        );
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = Command::new("ip").args(["link", "del", &host_if]).status();
        let mut me = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            k,
            servers: Vec::new(),
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("198.18.{k}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.18.{k}.2/24"),
            "dev",
            &peer,
        ]);
        for a in extra {
            ip(&["-n", &ns, "addr", "add", &format!("{a}/32"), "dev", &peer]);
        }
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        for a in extra {
            // Replaced, not added: a test process in another slot may have left the shared
            // metadata address routed to its own namespace (the route goes with its veth).
            ip(&[
                "route",
                "replace",
                &format!("{a}/32"),
                "via",
                &format!("198.18.{k}.2"),
                "dev",
                &host_if,
            ]);
        }
        me.serve("0.0.0.0:8080");
        me
    }

    /// The outside's "public" address.
    fn public(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.k as u8, 2)
    }

    /// The host's own address on the outside link.
    fn host_side(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.k as u8, 1)
    }

    /// Starts an HTTP stand-in (204 to everything) inside the namespace.
    fn serve(&mut self, listen: &str) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(support::standin_binary())
            .args(["--listen", listen])
            .spawn()
            .expect("start server");
        self.servers.push(child);
    }

    /// A UDP socket bound inside the namespace (a socket stays in the namespace it was made
    /// in, whichever thread uses it later).
    fn udp(&self, port: u16) -> UdpSocket {
        let path = format!("/run/netns/{}", self.ns);
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            UdpSocket::bind(addr).expect("bind udp")
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// `curl`'s status code for `url` from inside a sandbox ("000": no connection).
async fn curl(
    infra: &paddock_embedded::EmbeddedInfra,
    id: &paddock_infra::SandboxId,
    url: &str,
) -> String {
    let (_, out, _) = sh(
        infra,
        id,
        &format!("curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 {url}; true"),
    )
    .await;
    out
}

/// Polls until a sandbox gets `204` from `url` (the outside's server takes a moment to start).
async fn wait_reachable(
    infra: &paddock_embedded::EmbeddedInfra,
    id: &paddock_infra::SandboxId,
    url: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = curl(infra, id, url).await;
        if got == "204" {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The host's neighbour entry (hardware address) for `addr` on `dev`, if any.
fn host_neighbour(dev: &str, addr: Ipv4Addr) -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "neigh", "show", &addr.to_string(), "dev", dev])
        .output()
        .expect("ip neigh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

/// `GET /health` from the host; true when the runtime answers at all (the stand-in and the
/// real runtime answer differently; reachability is what counts here).
/// Counts, inside a sandbox, the frames that reach its `eth0` carrying "for a only", whatever
/// their destination address, until `/tmp/cap.stop` appears; writes the count to
/// `/tmp/cap.out`. `/tmp/cap.ready` says it listens.
const CAPTURE: &str = r#"import os, socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(('eth0', 0))
s.settimeout(0.1)
open('/tmp/cap.ready', 'w').close()
n = 0
while not os.path.exists('/tmp/cap.stop'):
    try:
        n += b'for a only' in s.recv(65536)
    except socket.timeout:
        pass
open('/tmp/cap.tmp', 'w').write(str(n))
os.rename('/tmp/cap.tmp', '/tmp/cap.out')
"#;

fn runtime_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 ")
}

/// Sandbox-side attack tool (python3 of the base template, as sandbox root with
/// `CAP_NET_RAW`): `arp VICTIM_IP TARGET_IP` broadcasts ARP requests and gratuitous ARPs that
/// claim VICTIM_IP for this sandbox's hardware address; `udp SRC DST PORT TEXT` sends a UDP
/// datagram with a forged source address; `ping DST` sends one ICMP echo over a raw socket and
/// prints `reply` when the answer comes back.
const TOOL: &str = r#"
import socket, struct, sys, time
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
cmd = sys.argv[1]
if cmd == "arp":
    victim, target = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
    mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    for _ in range(5):
        for tpa in (target, victim):
            arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, victim, b"\0" * 6, tpa)
            s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
        time.sleep(0.2)
    print("sent")
elif cmd == "udp":
    src, dst, port, text = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].encode()
    udp = struct.pack("!HHHH", 40000, port, 8 + len(text), 0) + text
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for _ in range(5):
        s.sendto(iph + udp, (dst, 0))
        time.sleep(0.1)
    print("sent")
elif cmd == "ping":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(3)
    body = struct.pack("!HH", 0x7064, 1) + b"paddock"
    s.sendto(struct.pack("!BBH", 8, 0, csum(b"\x08\0\0\0" + body)) + body, (sys.argv[2], 0))
    while True:
        data, _ = s.recvfrom(1500)
        if data[20] == 0 and data[24:26] == b"\x70\x64":
            print("reply"); break
"#;

async fn tool(
    infra: &paddock_embedded::EmbeddedInfra,
    id: &paddock_infra::SandboxId,
    args: &str,
) -> (i32, String, String) {
    sh(
        infra,
        id,
        &format!("cat > /tmp/tool.py <<'EOF'\n{TOOL}\nEOF\npython3 /tmp/tool.py {args}"),
    )
    .await
}

/// Security review H3: a sandbox (root, `CAP_NET_RAW`) claims a neighbour's IP with ARP and
/// forges the neighbour's source address; the host keeps the neighbour's hardware address,
/// the neighbour's runtime stays reachable, and the forged datagram never leaves the host.
/// Raw-socket `ping` keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_take_a_neighbours_addresses() {
    let outside = Outside::new(32, &[]);
    let sink = outside.udp(9999);
    sink.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let public = outside.public();
    support::with_infra(32, move |infra, env| async move {
        let attacker = infra.create(req(false)).await.expect("create attacker");
        let victim = infra.create(req(true)).await.expect("create victim");
        let b_ip = ipv4(victim.address);
        let br = env.cfg.net.bridge.clone();
        let gw = env.cfg.net.cidr.gateway();

        // The host resolved the victim while waiting for it to become ready.
        let victim_mac = host_neighbour(&br, b_ip).expect("host knows the victim");
        let (_, attacker_mac, _) =
            sh(&infra, &attacker.id, "cat /sys/class/net/eth0/address").await;
        assert_ne!(victim_mac, attacker_mac.trim());

        // Legitimate raw-socket use: ping the outside from the sandbox with internet access.
        let (code, out, err) = tool(&infra, &victim.id, &format!("ping {public}")).await;
        assert_eq!((code, out.trim()), (0, "reply"), "ping failed: {err}");

        // (a) ARP: "who-has <gateway> tell <victim ip>" and gratuitous ARPs, from the attacker.
        let (code, out, err) = tool(&infra, &attacker.id, &format!("arp {b_ip} {gw}")).await;
        assert_eq!(
            (code, out.trim()),
            (0, "sent"),
            "the attack itself must run: {err}"
        );
        assert_eq!(
            host_neighbour(&br, b_ip).as_deref(),
            Some(victim_mac.as_str()),
            "the host's neighbour entry for the victim was taken over"
        );
        assert!(
            runtime_answers(victim.address),
            "the victim's runtime is unreachable from the host"
        );

        // (b) Forged source: the attacker (no internet) borrows the victim's egress-allowed
        // address. Control first: the victim's own datagram does arrive.
        let (code, out, err) = tool(
            &infra,
            &victim.id,
            &format!("udp {b_ip} {public} 9999 from-victim"),
        )
        .await;
        assert_eq!((code, out.trim()), (0, "sent"), "{err}");
        let mut buf = [0u8; 64];
        let n = sink
            .recv(&mut buf)
            .expect("the victim's own datagram arrives");
        assert_eq!(&buf[..n], b"from-victim");
        while sink.recv(&mut buf).is_ok() {} // the other copies
        let (code, out, err) = tool(
            &infra,
            &attacker.id,
            &format!("udp {b_ip} {public} 9999 forged"),
        )
        .await;
        assert_eq!((code, out.trim()), (0, "sent"), "{err}");
        if let Ok(n) = sink.recv(&mut buf) {
            panic!(
                "a datagram with a forged source got out: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }

        for id in [&attacker.id, &victim.id] {
            infra.kill(id).await.expect("kill");
        }
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
    drop(outside);
}

/// Frames for a sandbox go to its port only, also after the bridge forgot what it learned
/// (it does after 300 s without traffic from the sandbox): the host's neighbour entry for it
/// is permanent and its hardware address is pinned on its port, so nothing is flooded. With
/// flooding, each neighbour got a copy, and with about a thousand ports the copies overflowed
/// the input backlog and the oldest, idle sandboxes became unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_a_sandbox_reach_its_port_only() {
    support::with_infra(36, |infra, env| async move {
        let a = infra.create(req(false)).await.expect("create a");
        let b = infra.create(req(false)).await.expect("create b");
        let a_ip = ipv4(a.address);
        let br = env.cfg.net.bridge.clone();
        let neigh = Command::new("ip")
            .args(["-4", "neigh", "show", &a_ip.to_string(), "dev", &br])
            .output()
            .expect("ip neigh");
        let neigh = String::from_utf8_lossy(&neigh.stdout).into_owned();
        assert!(
            neigh.contains("PERMANENT"),
            "the host's neighbour entry for {a_ip} is not permanent: {neigh:?}"
        );

        let received = |id| {
            let infra = infra.clone();
            async move {
                let (code, out, err) =
                    sh(&infra, &id, "cat /sys/class/net/eth0/statistics/rx_packets").await;
                assert_eq!(code, 0, "{err}");
                out.trim().parse::<u64>().expect("a packet count")
            }
        };
        // `b` counts the frames carrying the datagrams meant for `a` that reach its port, as
        // its own packet socket sees them (whatever their destination address: a flooded copy
        // is seen, then dropped by the IP layer). Counting every frame `b` received instead
        // also counted the multicast its own and its neighbour's interfaces send while they
        // come up, a few frames more or less depending on the machine's load.
        let capture = CAPTURE;
        let (code, _, err) = sh(
            &infra,
            &b.id,
            &format!(
                "cat > /tmp/cap.py <<'PY'\n{capture}PY\nsetsid python3 /tmp/cap.py </dev/null >/tmp/cap.log 2>&1 &"
            ),
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while sh(&infra, &b.id, "test -e /tmp/cap.ready").await.0 != 0 {
            if Instant::now() >= deadline {
                let log = sh(&infra, &b.id, "cat /tmp/cap.log; ls -la /tmp").await;
                panic!("the capture in {} never started: {log:?}", b.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let a_before = received(a.id.clone()).await;
        let sock = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        for _ in 0..20 {
            // What the bridge learned goes, as after 300 s of silence from the sandbox.
            let flushed = Command::new("ip")
                .args(["link", "set", "dev", &br, "type", "bridge", "fdb_flush"])
                .status()
                .expect("ip link");
            assert!(flushed.success());
            sock.send_to(b"for a only", (a_ip, 9)).expect("send");
        }
        // Once `a` has them all, any flooded copy (made with `a`'s) has reached `b` too.
        let deadline = Instant::now() + Duration::from_secs(60);
        while received(a.id.clone()).await < a_before + 20 {
            assert!(
                Instant::now() < deadline,
                "{a_ip} never received the 20 datagrams"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (code, _, err) = sh(&infra, &b.id, "touch /tmp/cap.stop").await;
        assert_eq!(code, 0, "{err}");
        let seen = loop {
            let (code, out, _) = sh(&infra, &b.id, "cat /tmp/cap.out").await;
            if code == 0 {
                break out.trim().parse::<u64>().expect("a frame count");
            }
            assert!(Instant::now() < deadline, "the capture in {} never ended", b.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            seen, 0,
            "the neighbour saw {seen} of the 20 datagrams the host sent to {a_ip}"
        );
        assert!(
            runtime_answers(a.address),
            "the sandbox is unreachable from the host"
        );

        for id in [&a.id, &b.id] {
            infra.kill(id).await.expect("kill");
        }
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// Security review H4: a sandbox with internet access reaches a public address but not cloud
/// metadata, private or shared ranges, nor the host's own addresses; DNS to the host's
/// resolver works even though it sits in a private range, and only on port 53.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internet_access_stops_at_private_metadata_and_host_addresses() {
    // 169.254.169.254 is one address for the whole host: take turns with other test processes.
    let metadata_lock = std::fs::File::create("/run/paddock-test-slots/metadata.lock")
        .or_else(|_| {
            std::fs::create_dir_all("/run/paddock-test-slots")?;
            std::fs::File::create("/run/paddock-test-slots/metadata.lock")
        })
        .expect("metadata lock file");
    metadata_lock.lock().expect("metadata lock");
    let k = support::slot() * support::SLOT_WIDTH + 33;
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    let private10 = Ipv4Addr::new(10, 218, k, 2);
    let private172 = Ipv4Addr::new(172, 31, 218, k);
    let private192 = Ipv4Addr::new(192, 168, 218, k);
    let shared100 = Ipv4Addr::new(100, 64, 218, k);
    let resolver = Ipv4Addr::new(10, 218, k, 53);
    let mut outside = Outside::new(
        33,
        &[
            metadata, private10, private172, private192, shared100, resolver,
        ],
    );
    // "DNS" (any TCP service on port 53 will do) on the resolver's address.
    outside.serve(&format!("{resolver}:53"));
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").expect("host listener");
    let host_port = host_listener.local_addr().expect("addr").port();
    let (public, host_side) = (outside.public(), outside.host_side());

    let mut env = support::Env::new(33);
    let resolv = env.dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {resolver}\n")).expect("resolv.conf");
    env.cfg.resolv_conf = Some(resolv);
    support::with_env(env, move |infra, env| async move {
        let open = infra.create(req(true)).await.expect("create");
        wait_reachable(&infra, &open.id, &format!("http://{public}:8080/")).await;
        for (what, url) in [
            ("cloud metadata", format!("http://{metadata}:8080/")),
            ("10/8", format!("http://{private10}:8080/")),
            ("172.16/12", format!("http://{private172}:8080/")),
            ("192.168/16", format!("http://{private192}:8080/")),
            ("100.64/10", format!("http://{shared100}:8080/")),
            (
                "the resolver off port 53",
                format!("http://{resolver}:8080/"),
            ),
            (
                "the host's own address",
                format!("http://{host_side}:{host_port}/"),
            ),
        ] {
            assert_eq!(
                curl(&infra, &open.id, &url).await,
                "000",
                "{what} reachable: {url}"
            );
        }
        assert_eq!(
            curl(&infra, &open.id, &format!("http://{resolver}:53/")).await,
            "204",
            "the host's resolver is unreachable on port 53"
        );
        infra.kill(&open.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
    drop((outside, host_listener, metadata_lock));
}

/// Two Paddock instances on one host with the same bridge, subnet, firewall table and cgroup
/// parent break each other: the second is refused with the first one's pid and the flags to
/// pick another set, and starts once the first has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_network_is_refused() {
    let first_env = support::Env::new(34);
    let first = first_env.start().await;
    // Another data dir, the same host-wide names.
    let second_env = support::Env::new(34);
    let mut cfg = second_env.cfg.clone();
    cfg.net = first_env.cfg.net.clone();
    cfg.cgroup_parent = first_env.cfg.cgroup_parent.clone();
    let refused = paddock_embedded::EmbeddedInfra::start(cfg.clone()).await;
    let outcome = match &refused {
        Ok(_) => Err("the second instance started".to_owned()),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains(&format!("pid {}", std::process::id())) && msg.contains("--bridge") {
                Ok(())
            } else {
                Err(format!("unclear refusal: {msg}"))
            }
        }
    };
    if let Ok(second) = refused {
        second_env.cleanup(Some(&second)).await;
    }
    first.kill_all().await.expect("stop the first");
    drop(first);
    // The first instance's background tasks let go of it once they see the shutdown.
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match paddock_embedded::EmbeddedInfra::start(cfg.clone()).await {
            Ok(s) => break Ok(s),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let second_ok = second.as_ref().map(|_| ()).map_err(|e| e.to_string());
    second_env.cleanup(second.as_ref().ok()).await;
    first_env.cleanup(None).await;
    outcome.expect("the second start must be refused");
    second_ok.expect("a start after the first instance stopped");
}

/// Security review H3, after a restart: the firewall is loaded afresh with an empty `ports`
/// set, so a sandbox that outlived its Paddock must be bound again when the next one adopts
/// it, or the bridge would drop everything it sends (its runtime included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_sandbox_is_bound_again_and_stays_reachable() {
    let env = support::Env::new(35);
    let first = env.start().await;
    let sbx = first.create(req(false)).await.expect("create");
    assert!(runtime_answers(sbx.address), "reachable before the restart");
    // Paddock stops without killing its sandboxes, as on an upgrade.
    first.shutdown();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match paddock_embedded::EmbeddedInfra::start(env.cfg.clone()).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("restart: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // The host forgets the sandbox's hardware address, as it would after a while.
    let _ = Command::new("ip")
        .args(["neigh", "flush", "dev", &env.cfg.net.bridge])
        .status();
    let reachable = runtime_answers(sbx.address);
    let _ = second.kill(&sbx.id).await;
    let leaks = env.leaks().await;
    env.cleanup(Some(&second)).await;
    assert!(reachable, "the adopted sandbox's runtime is unreachable");
    assert_eq!(leaks, Vec::<String>::new());
}

/// Links the host's namespace announces while `watch` runs: (name, hardware address) of
/// every new-link and delete-link message (`RTNLGRP_LINK`).
fn host_links_during<T>(watch: impl FnOnce() -> T) -> (T, Vec<(String, Vec<u8>)>) {
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
    use std::sync::atomic::{AtomicBool, Ordering};
    const RTMGRP_LINK: u32 = 1;
    let mut socket = Socket::new(NETLINK_ROUTE).expect("netlink socket");
    socket
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .expect("join the link group");
    // A bigger buffer than the default: other sandboxes' links come and go meanwhile.
    let _ = socket.set_rx_buf_sz(8 << 20);
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(50)),
    )
    .expect("receive timeout");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stop.load(Ordering::Relaxed) {
                            return seen;
                        }
                        continue;
                    }
                    Err(e) => panic!("link notifications lost: {e}"),
                };
                let mut data = &buf[..n];
                while data.len() >= 16 {
                    let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
                    if len < 16 || len > data.len() {
                        break;
                    }
                    if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len])
                        && let NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
                        ) = m.payload
                    {
                        let mut name = String::new();
                        let mut mac = Vec::new();
                        for a in l.attributes {
                            match a {
                                LinkAttribute::IfName(n) => name = n,
                                LinkAttribute::Address(a) => mac = a,
                                _ => {}
                            }
                        }
                        seen.push((name, mac));
                    }
                    data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);
                }
            }
        });
        let out = watch();
        // Notifications are queued before the requests that cause them are answered.
        stop.store(true, Ordering::Relaxed);
        (out, reader.join().expect("reader"))
    })
}

/// The sandbox's end of its veth pair is made in the sandbox's network namespace, named
/// `eth0` and with the hardware address its port is bound to: no link in the host's
/// namespace ever carries that address. (It used to be made on the host, given its address
/// there and moved in, which costs an RCU grace period per create, then renamed from inside.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_end_of_a_veth_is_made_in_the_sandbox() {
    let env = support::Env::new(37);
    let infra = env.start().await;
    let handle = tokio::runtime::Handle::current();
    let (sbx, seen) = tokio::task::block_in_place(|| {
        host_links_during(|| handle.block_on(infra.create(req(false))))
    });
    let sbx = sbx.expect("create");
    let ip = ipv4(sbx.address);
    let mac = paddock_embedded::firewall::sandbox_mac(ip);
    let host_end = env.cfg.net.veth_name(ip);
    let (_, inside, _) = sh(
        &infra,
        &sbx.id,
        "cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 2>/dev/null || true",
    )
    .await;
    let reachable = runtime_answers(sbx.address);
    let _ = infra.kill(&sbx.id).await;
    let leaks = env.leaks().await;
    env.cleanup(Some(&infra)).await;
    assert!(
        seen.iter().any(|(n, _)| *n == host_end),
        "the host's end {host_end} was announced: {seen:?}"
    );
    let with_mac: Vec<_> = seen.iter().filter(|(_, m)| m[..] == mac[..]).collect();
    assert!(
        with_mac.is_empty(),
        "host links with the sandbox's address {mac:02x?}: {with_mac:?}"
    );
    let want = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(inside.starts_with(&want), "eth0 inside: {inside}");
    assert!(reachable, "the sandbox's runtime is unreachable");
    assert_eq!(leaks, Vec::<String>::new());
}

/// The host's end of a sandbox's veth has IPv6 off: no address, no route in any of the
/// host's IPv6 tables (each port's routes made every later port's going up walk them all).
/// The sandbox's runtime is still reached, and its own end keeps IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_end_of_a_veth_has_no_ipv6() {
    let env = support::Env::new(38);
    let infra = env.start().await;
    let sbx = infra.create(req(false)).await.expect("create");
    let host_end = env.cfg.net.veth_name(ipv4(sbx.address));
    let knob = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{host_end}/disable_ipv6"));
    let addrs = ip(&["-6", "-o", "addr", "show", "dev", &host_end]);
    let routes = ip(&["-6", "route", "show", "table", "all", "dev", &host_end]);
    let link = ip(&["-o", "link", "show", "dev", &host_end]);
    let (code, out, err) = sh(
        &infra,
        &sbx.id,
        "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6",
    )
    .await;
    let reachable = runtime_answers(sbx.address);
    let _ = infra.kill(&sbx.id).await;
    let leaks = env.leaks().await;
    env.cleanup(Some(&infra)).await;
    assert_eq!(
        knob.expect("the port's IPv6 settings").trim(),
        "1",
        "disable_ipv6 of {host_end}"
    );
    assert_eq!(addrs.trim(), "", "IPv6 addresses on {host_end}");
    assert_eq!(routes.trim(), "", "IPv6 routes through {host_end}");
    assert!(
        link.contains("state UP") || link.contains(",UP"),
        "{host_end} is up: {link}"
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "0", "the sandbox's own end keeps IPv6");
    assert!(reachable, "the sandbox's runtime is unreachable");
    assert_eq!(leaks, Vec::<String>::new());
}

/// A sandbox knows its gateway's hardware address from the start: a permanent entry in its
/// neighbour table (flags 0x6 in `/proc/net/arp`: complete and permanent) with the bridge's
/// address. Asked for instead, a request lost while its port was coming up cost a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_has_its_gateway_pinned_in_its_neighbour_table() {
    let env = support::Env::new(39);
    let infra = env.start().await;
    let sbx = infra.create(req(false)).await.expect("create");
    let (code, arp, err) = sh(&infra, &sbx.id, "cat /proc/net/arp").await;
    let reachable = runtime_answers(sbx.address);
    let _ = infra.kill(&sbx.id).await;
    let leaks = env.leaks().await;
    env.cleanup(Some(&infra)).await;
    assert_eq!(code, 0, "{err}");
    let gateway = env.cfg.net.cidr.gateway().to_string();
    let mac = support::mac_text(env.cfg.net.bridge_mac());
    let entry: Vec<&str> = arp
        .lines()
        .find(|l| l.split_whitespace().next() == Some(gateway.as_str()))
        .unwrap_or_else(|| panic!("no entry for the gateway {gateway}:\n{arp}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        entry[2], "0x6",
        "the gateway's entry is not permanent:\n{arp}"
    );
    assert_eq!(
        entry[3], mac,
        "the gateway's entry is not the bridge's address"
    );
    assert_eq!(entry[5], "eth0", "{arp}");
    assert!(reachable, "the sandbox's runtime is unreachable");
    assert_eq!(leaks, Vec::<String>::new());
}

/// The elements of an nftables set as `nft -j` shows them: a concatenation's parts joined
/// with " . ".
fn set_elements(family: &str, table: &str, set: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["-j", "list", "set", family, table, set])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft list set {family} {table} {set}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    let set = v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .find_map(|o| o.get("set"))
        .expect("the set");
    let text = |e: &serde_json::Value| e.as_str().map(str::to_owned).unwrap_or(e.to_string());
    let mut elements: Vec<String> = set
        .get("elem")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .map(|e| match e.get("concat").and_then(|c| c.as_array()) {
                    Some(parts) => parts.iter().map(text).collect::<Vec<_>>().join(" . "),
                    None => text(e),
                })
                .collect()
        })
        .unwrap_or_default();
    elements.sort();
    elements
}

/// The per-sandbox firewall changes (sent as nfnetlink batches, not by `nft`) put exactly a
/// sandbox's `port . mac . ip` in the bridge table's `ports` set and its IP in the inet
/// table's `egress` set, as `nft` reads them back; release takes them out, also when they
/// are absent already; denying egress takes the IP out; a change to a set that does not
/// exist is reported with the set, the element and the errno.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_changes_put_exactly_the_expected_elements_in_the_sets() {
    use paddock_embedded::firewall;
    use paddock_embedded::network::{self, NetError};

    let env = support::Env::new(36);
    let net = env.cfg.net.clone();
    network::setup_host(&net, None).await.expect("set up host");
    let cfg = net.clone();
    // The firewall calls block (as on the blocking pool in Paddock).
    let result = tokio::task::spawn_blocking(move || {
        let net = cfg;
        let t = net.nft_table.as_str();
        let (a, b) = (net.cidr.host(0).expect("a"), net.cidr.host(1).expect("b"));
        let port = |ip: Ipv4Addr| {
            let m = firewall::sandbox_mac(ip);
            format!(
                "{} . {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} . {ip}",
                net.veth_name(ip),
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5]
            )
        };
        let ports = || set_elements("bridge", t, "ports");
        let egress = || set_elements("inet", t, "egress");

        firewall::bind_port(&net, a, true).expect("bind a with internet");
        firewall::bind_port(&net, b, false).expect("bind b without");
        let mut both = vec![port(a), port(b)];
        both.sort();
        assert_eq!(ports(), both);
        assert_eq!(egress(), vec![a.to_string()]);
        // Binding again is not an error (a restart's rebind of a bound sandbox).
        firewall::bind_port(&net, a, true).expect("bind a again");
        assert_eq!(ports(), both);

        firewall::allow_egress(&net, b).expect("allow b");
        let mut both_ips = vec![a.to_string(), b.to_string()];
        both_ips.sort();
        assert_eq!(egress(), both_ips);
        firewall::deny_egress(&net, b).expect("deny b");
        assert_eq!(egress(), vec![a.to_string()]);
        assert_eq!(ports(), both, "denying egress leaves the port binding");

        firewall::release(&net, a).expect("release a");
        assert_eq!(ports(), vec![port(b)]);
        assert_eq!(egress(), Vec::<String>::new());
        firewall::release(&net, a).expect("releasing an absent element succeeds");
        firewall::release(&net, b).expect("release b");
        assert_eq!(ports(), Vec::<String>::new());
        assert_eq!(egress(), Vec::<String>::new());

        // A table that is not there: the error names the change and the kernel's errno.
        let mut missing = net.clone();
        missing.nft_table = format!("{t}_missing");
        let e = firewall::deny_egress(&missing, a).expect_err("deny without a table");
        assert!(matches!(e, NetError::SetElement { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "add element {{ {a} }} to set inet {t}_missing egress"
            )) && msg.contains("No such file or directory"),
            "{msg}"
        );
        let e = firewall::bind_port(&missing, a, false).expect_err("bind without a table");
        assert!(
            e.to_string()
                .contains(&format!("to set bridge {t}_missing ports")),
            "{e}"
        );
    })
    .await;
    let _ = network::teardown_host(&net).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
