//! The gateway over real sockets: an upstream HTTP and WebSocket server on
//! loopback stands in for a sandbox's server, and the gateway is served the
//! way `paddock up` serves it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use paddock_gateway::{Gateway, GatewayMetrics, RouteInfo, Routes, Thresholds, Tokens};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// Two sandboxes, `sbx1` and `sbx2`, living on loopback.
struct Loopback;

impl Routes for Loopback {
    fn lookup(&self, id: &str) -> Option<RouteInfo> {
        (id == "sbx1" || id == "sbx2").then(|| RouteInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            paused: false,
            tokens: Tokens::default(),
        })
    }
}

/// An upstream whose `/slow` sends its headers and first chunk, then holds
/// the body open until `release` is notified.
async fn upstream(release: Arc<Notify>) -> SocketAddr {
    let app = Router::new()
        .route("/fast", axum::routing::get(|| async { "fast" }))
        .route(
            "/slow",
            axum::routing::get(move || {
                let release = release.clone();
                async move {
                    let stream = futures_util::stream::unfold(0u8, move |n| {
                        let release = release.clone();
                        async move {
                            match n {
                                0 => Some((Ok::<_, std::io::Error>("first ".to_string()), 1)),
                                1 => {
                                    release.notified().await;
                                    Some((Ok("last".to_string()), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    Body::from_stream(stream)
                }
            }),
        );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

async fn ws_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        ws.send(m).await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

async fn gateway(thresholds: Thresholds) -> (SocketAddr, Gateway) {
    let (addr, gw, _) = gateway_with_metrics(thresholds).await;
    (addr, gw)
}

async fn gateway_with_metrics(thresholds: Thresholds) -> (SocketAddr, Gateway, GatewayMetrics) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GatewayMetrics::register(&mut registry);
    let gw = Gateway::new(Arc::new(Loopback), thresholds, metrics.clone());
    (serve(gw.clone()).await, gw, metrics)
}

fn client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

fn get(gw: SocketAddr, port: u16, path: &str) -> http::Request<Body> {
    http::Request::get(format!("http://{gw}{path}"))
        .header("e2b-sandbox-id", "sbx1")
        .header("e2b-sandbox-port", port.to_string())
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn max_requests_holds_until_the_body_ends() {
    let release = Arc::new(Notify::new());
    let up = upstream(release.clone()).await;
    let (gw, g) = gateway(Thresholds {
        max_requests: 1,
        ..Thresholds::default()
    })
    .await;
    let c = client();
    let slow = c.request(get(gw, up.port(), "/slow")).await.unwrap();
    assert_eq!(slow.status(), 200);
    // The slow response's body is still streaming: its slot is taken.
    let refused = c.request(get(gw, up.port(), "/fast")).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["message"].as_str().unwrap().contains("max_requests"),
        "{json}"
    );
    g.refresh_gauges();
    release.notify_one();
    let body = slow.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first last");
    // Streaming passed through unbuffered and the slot came back.
    let ok = c.request(get(gw, up.port(), "/fast")).await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn unknown_sandboxes_and_closed_ports_are_json_502s() {
    let (gw, _) = gateway(Thresholds::default()).await;
    let c = client();
    let mut req = get(gw, 8080, "/");
    req.headers_mut()
        .insert("e2b-sandbox-id", "nosuch".parse().unwrap());
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["message"], "The sandbox was not found");
    // A port nobody listens on (bind and drop to find one).
    let free = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = c.request(get(gw, free, "/")).await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["message"],
        "The sandbox is running but port is not open"
    );
    assert_eq!(json["port"], free);
}

#[tokio::test]
async fn websockets_are_piped_both_ways() {
    let up = ws_upstream().await;
    let (gw, _) = gateway(Thresholds::default()).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{gw}/chat"),
    )
    .unwrap();
    req.headers_mut()
        .insert("e2b-sandbox-id", "sbx1".parse().unwrap());
    req.headers_mut()
        .insert("e2b-sandbox-port", up.port().to_string().parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for msg in [
        Message::text("hello"),
        Message::binary(vec![7u8; 70_000]),
        Message::text("ünïcode"),
    ] {
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), msg);
    }
    ws.close(None).await.unwrap();
}

/// An upstream that answers every request with what it saw: method, URI,
/// HTTP version and headers.
async fn echo_upstream() -> SocketAddr {
    let app = Router::new().fallback(|req: Request| async move {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        axum::Json(serde_json::json!({
            "uri": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        }))
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

async fn json_of(resp: http::Response<hyper::body::Incoming>) -> serde_json::Value {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn routing_and_hop_by_hop_headers_never_reach_the_sandbox() {
    let up = echo_upstream().await;
    let (gw, _) = gateway(Thresholds::default()).await;
    let c = client();
    let mut req = get(gw, up.port(), "/seen?q=1");
    let h = req.headers_mut();
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.insert("x-access-token", "kept".parse().unwrap());
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = json_of(resp).await;
    let headers = seen["headers"].as_object().unwrap();
    for gone in ["e2b-sandbox-id", "e2b-sandbox-port", "keep-alive", "te"] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the sandbox: {seen}"
        );
    }
    assert_eq!(headers["x-access-token"], "kept");
    assert_eq!(seen["uri"], "/seen?q=1");

    // Path routing: the sandbox sees the path without the routing prefix.
    let req = http::Request::get(format!("http://{gw}/kruise/sbx1/{}/a/b?q=2", up.port()))
        .body(Body::empty())
        .unwrap();
    let seen = json_of(c.request(req).await.unwrap()).await;
    assert_eq!(seen["uri"], "/a/b?q=2");
}

#[tokio::test]
async fn grpc_stays_http2_and_other_http2_requests_go_as_http1() {
    let up = echo_upstream().await;
    let (gw, _) = gateway(Thresholds::default()).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let mut grpc = get(gw, up.port(), "/svc.Echo/Say");
    grpc.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let seen = json_of(h2.request(grpc).await.unwrap()).await;
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    let seen = json_of(h2.request(get(gw, up.port(), "/plain")).await.unwrap()).await;
    assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
}

/// A sandbox server that accepts a connection, reads the request and hangs
/// up without answering. Counts the connections it accepted.
async fn hang_up_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_request_the_sandbox_may_have_seen_is_never_retried() {
    let (up, accepted) = hang_up_upstream().await;
    let (gw, _) = gateway(Thresholds::default()).await;
    let resp = client().request(get(gw, up.port(), "/")).await.unwrap();
    assert_eq!(resp.status(), 502);
    let json = json_of(resp).await;
    let msg = json["message"].as_str().unwrap();
    assert!(msg.contains("closed the connection"), "{msg}");
    // Retries happen before the response: by now every attempt was made.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_websocket_to_a_closed_port_is_a_counted_port_not_open() {
    let (gw, _, metrics) = gateway_with_metrics(Thresholds::default()).await;
    let free = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut req = get(gw, free, "/chat");
    req.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    req.headers_mut()
        .insert("upgrade", "websocket".parse().unwrap());
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        json_of(resp).await["message"],
        "The sandbox is running but port is not open"
    );
    let connect = paddock_gateway::metrics::ReasonLabels { reason: "connect" };
    assert_eq!(metrics.upstream_errors.get_or_create(&connect).get(), 1);
}

fn get_from(gw: SocketAddr, sandbox: &str, port: u16, path: &str) -> http::Request<Body> {
    let mut req = get(gw, port, path);
    req.headers_mut()
        .insert("e2b-sandbox-id", sandbox.parse().unwrap());
    req
}

/// L4 of the security review: one sandbox's WebSockets must not hold every slot of the
/// gateway, and an abandoned one must give its slots back.
#[tokio::test]
async fn a_sandbox_gets_its_share_and_idle_websockets_give_theirs_back() {
    let ws_up = ws_upstream().await;
    let http_up = upstream(Arc::new(Notify::new())).await;
    let (gw, g) = gateway(Thresholds {
        max_requests_per_sandbox: 1,
        upgrade_idle_timeout: std::time::Duration::from_secs(1),
        ..Thresholds::default()
    })
    .await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{gw}/"),
    )
    .unwrap();
    req.headers_mut()
        .insert("e2b-sandbox-id", "sbx1".parse().unwrap());
    req.headers_mut().insert(
        "e2b-sandbox-port",
        ws_up.port().to_string().parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    // sbx1 holds its whole share: its next request is refused, sbx2's is not.
    let c = client();
    let refused = c
        .request(get_from(gw, "sbx1", http_up.port(), "/fast"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("max_requests_per_sandbox"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let other = c
        .request(get_from(gw, "sbx2", http_up.port(), "/fast"))
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "sbx2 was refused for sbx1's traffic");

    // Left silent, the WebSocket is closed by the gateway and sbx1's slot comes back.
    match ws.next().await {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(m)) => panic!("unexpected message {m:?}"),
    }
    while g.breakers().sandbox_requests("sbx1") > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = c
        .request(get_from(gw, "sbx1", http_up.port(), "/fast"))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

/// A server that answers every request with its own name, counting the connections it
/// accepted.
async fn named_upstream(
    ip: Ipv4Addr,
    port: u16,
    name: &'static str,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::serve::ListenerExt;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let l = TcpListener::bind((ip, port)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let l = l.tap_io(move |_| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let app = Router::new().fallback(move |body: String| async move { format!("{name}:{body}") });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, accepted)
}

/// A table whose one sandbox, `mover`, can be moved, paused and removed while the gateway
/// runs, as resume (a new address) and kill do.
#[derive(Default)]
struct Movable(std::sync::Mutex<Option<RouteInfo>>);

impl Routes for Movable {
    fn lookup(&self, id: &str) -> Option<RouteInfo> {
        if id != "mover" {
            return None;
        }
        self.0.lock().unwrap().clone()
    }
}

impl Movable {
    fn set(&self, ip: Option<Ipv4Addr>) {
        *self.0.lock().unwrap() = ip.map(|ip| RouteInfo {
            ip: IpAddr::V4(ip),
            paused: false,
            tokens: Tokens::default(),
        });
    }
}

async fn serve(gw: Gateway) -> SocketAddr {
    let app = Router::new().fallback(move |req: Request| {
        let g = gw.clone();
        async move { g.forward(req).await }
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

async fn text_of(resp: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post_to(gw: SocketAddr, sandbox: &str, port: u16, body: &str) -> http::Request<Body> {
    http::Request::post(format!("http://{gw}/"))
        .header("e2b-sandbox-id", sandbox)
        .header("e2b-sandbox-port", port.to_string())
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Connections are kept per address: a sandbox's two ports never share one, and each is
/// reused by the requests that follow (one connection each for sequential requests).
#[tokio::test]
async fn pooled_connections_are_reused_and_never_cross_ports() {
    let (a, a_conns) = named_upstream(Ipv4Addr::LOCALHOST, 0, "a").await;
    let (b, b_conns) = named_upstream(Ipv4Addr::LOCALHOST, 0, "b").await;
    let (gw, g) = gateway(Thresholds::default()).await;
    let c = client();
    for i in 0..6 {
        let (port, want) = if i % 2 == 0 {
            (a.port(), "a")
        } else {
            (b.port(), "b")
        };
        let body = format!("req{i}");
        let (status, text) =
            text_of(c.request(post_to(gw, "sbx1", port, &body)).await.unwrap()).await;
        assert_eq!((status, text), (200, format!("{want}:{body}")));
    }
    let conns = |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((conns(&a_conns), conns(&b_conns)), (1, 1));
    assert_eq!(g.idle_connections("sbx1"), 2);
}

/// A sandbox resumed at another address is reached there, not over the connections to its
/// old one; a sandbox that is gone takes its idle connections along.
#[tokio::test]
async fn a_moved_sandbox_is_reached_at_its_new_address_and_a_gone_one_closes_its_pool() {
    let (old, _) = named_upstream(Ipv4Addr::LOCALHOST, 0, "old").await;
    // The same port on another loopback address.
    let _new = named_upstream(Ipv4Addr::new(127, 0, 0, 2), old.port(), "new").await;
    let table = Arc::new(Movable::default());
    table.set(Some(Ipv4Addr::LOCALHOST));
    let metrics = GatewayMetrics::register(&mut prometheus_client::registry::Registry::default());
    let g = Gateway::new(table.clone(), Thresholds::default(), metrics);
    let gw = serve(g.clone()).await;
    let c = client();
    let ask = || c.request(post_to(gw, "mover", old.port(), "x"));
    assert_eq!(text_of(ask().await.unwrap()).await, (200, "old:x".into()));
    assert_eq!(g.idle_connections("mover"), 1);
    table.set(Some(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(text_of(ask().await.unwrap()).await, (200, "new:x".into()));
    table.set(None);
    let (status, text) = text_of(ask().await.unwrap()).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("was not found"), "{text}");
    assert_eq!(g.idle_connections("mover"), 0);
}

/// A server that answers one request per connection and then hangs up without saying so
/// (as a server whose keep-alive timeout passed does): the closed connection is not used
/// again, and every request gets its answer.
#[tokio::test]
async fn a_connection_the_sandbox_closed_is_not_used_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            // Dropped: closed with no `connection: close`.
        }
    });
    let (gw, g) = gateway(Thresholds::default()).await;
    let c = client();
    for round in 1..=3 {
        let (status, text) = text_of(c.request(get(gw, up.port(), "/")).await.unwrap()).await;
        assert_eq!((status, text.as_str()), (200, "ok"), "round {round}");
        // The gateway notices the close of the idle connection.
        while g.idle_connections("sbx1") > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}
