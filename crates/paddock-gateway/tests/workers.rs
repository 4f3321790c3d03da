//! The gateway served by worker threads, as `paddock up` serves it: a connection stays on
//! the worker that accepted it, each worker keeps its own sandbox connections, and a drain
//! finishes what is in flight before the listener goes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::serve::ListenerExt;
use http_body_util::BodyExt;
use paddock_gateway::workers::{self, Workers};
use paddock_gateway::{Gateway, GatewayMetrics, RouteInfo, Routes, Thresholds, Tokens};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One sandbox, `sbx1`, on loopback.
struct Loopback;

impl Routes for Loopback {
    fn lookup(&self, id: &str) -> Option<RouteInfo> {
        (id == "sbx1").then(|| RouteInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            paused: false,
            tokens: Tokens::default(),
        })
    }
}

/// A sandbox's server that counts the connections it accepted.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let l = l.tap_io(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    let app = Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, accepted)
}

/// One client connection (HTTP/1.1, kept alive across its requests).
async fn connect(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn get(port: u16) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get("/")
        .header("host", "gw")
        .header("e2b-sandbox-id", "sbx1")
        .header("e2b-sandbox-port", port.to_string())
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// Every request of a client connection is served by one worker (the response says which),
/// and each worker reaches the sandbox over connections of its own: one per worker for
/// requests that come one at a time, none in the shared gateway's pools.
#[tokio::test]
async fn a_connection_stays_on_its_worker_and_each_worker_pools_its_own() {
    let (up, accepted) = counting_upstream().await;
    let metrics = GatewayMetrics::register(&mut prometheus_client::registry::Registry::default());
    let gateway = Gateway::new(Arc::new(Loopback), Thresholds::default(), metrics);
    let listener = workers::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = gateway.clone();
    let mut workers = Workers::start(listener, 2, move |_| {
        let gw = Arc::new(shared.for_worker());
        Router::new().fallback(move |req: Request| {
            let gw = gw.clone();
            async move {
                let mut resp = gw.forward(req).await;
                let name = std::thread::current().name().unwrap_or("").to_string();
                resp.headers_mut().insert("x-worker", name.parse().unwrap());
                resp
            }
        })
    })
    .unwrap();

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let mut conn = connect(addr).await;
        let mut names = Vec::new();
        for _ in 0..4 {
            let resp = conn.send_request(get(up.port())).await.unwrap();
            assert_eq!(resp.status(), 200);
            names.push(resp.headers()["x-worker"].to_str().unwrap().to_string());
            resp.into_body().collect().await.unwrap();
        }
        assert!(names[0].starts_with("paddock-gw-"), "{names:?}");
        assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
        seen.insert(names[0].clone());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), seen.len());
    assert_eq!(gateway.idle_connections("sbx1"), 0);
    workers.drain().await.unwrap();
    workers.close().await;
}

/// A drain lets a request in flight finish, then nothing listens any more.
#[tokio::test]
async fn a_drain_finishes_requests_in_flight_then_stops_listening() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let listener = workers::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (s, r) = (started.clone(), release.clone());
    let mut workers = Workers::start(listener, 2, move |_| {
        let (s, r) = (s.clone(), r.clone());
        Router::new().fallback(move || {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.notify_one();
                r.notified().await;
                Body::from("done")
            }
        })
    })
    .unwrap();
    let mut conn = connect(addr).await;
    let in_flight = tokio::spawn(async move {
        let resp = conn.send_request(get(1)).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    started.notified().await;
    let drain = tokio::spawn(async move {
        workers.drain().await.unwrap();
        workers
    });
    // The drain waits for the request.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!drain.is_finished());
    release.notify_one();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"done"[..]));
    let workers = drain.await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
    workers.close().await;
}

/// Connections a client opens at once are spread over the workers evenly (handed out in
/// turn), not left to whichever worker wins the race to accept them.
#[tokio::test]
async fn connections_opened_at_once_are_spread_evenly() {
    let listener = workers::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut workers = Workers::start(listener, 2, move |_| {
        Router::new().fallback(|| async { std::thread::current().name().unwrap_or("").to_string() })
    })
    .unwrap();
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(connect(addr).await);
    }
    let mut per_worker = std::collections::BTreeMap::<String, usize>::new();
    for conn in &mut conns {
        let resp = conn.send_request(get(1)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        *per_worker
            .entry(String::from_utf8(body.to_vec()).unwrap())
            .or_default() += 1;
    }
    let counts: Vec<usize> = per_worker.values().copied().collect();
    assert_eq!(counts, vec![8, 8], "{per_worker:?}");
    drop(conns);
    workers.drain().await.unwrap();
    workers.close().await;
}
