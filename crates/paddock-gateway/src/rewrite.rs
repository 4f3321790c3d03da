//! What the sandbox sees: the request rewritten for the hop to the sandbox.
//!
//! Runs after the token check (which needs the client's headers and path as
//! sent) and before the upstream phase. Routing headers are the gateway's
//! business and never reach the sandbox; hop-by-hop headers describe the
//! client's connection, not ours, so they go too, except on an upgrade,
//! whose handshake needs `Connection` and `Upgrade` to reach the sandbox.

use std::net::SocketAddr;

use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version, header};

use crate::errors::GatewayError;
use crate::target::{RoutingHeaders, Target};

/// Headers that apply to one connection only (RFC 9110 §7.6.1). Names, not strings: a
/// string is parsed into a name on every lookup.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The path and query the sandbox should see: path routing's rewritten tail
/// (its `/kruise/<id>/<port>` prefix gone), else the request's own.
pub fn upstream_path<'a, B>(target: &'a Target, req: &'a Request<B>) -> &'a str {
    match &target.path {
        Some(p) => p,
        None => req.uri().path_and_query().map_or("/", PathAndQuery::as_str),
    }
}

/// The headers that name the target are the gateway's; they never reach the sandbox.
pub fn strip_routing_headers(headers: &mut HeaderMap, names: &RoutingHeaders) {
    headers.remove(&names.sandbox);
    headers.remove(&names.port);
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Readies a request for a pooled HTTP/1.1 connection to `addr`: the origin-form URI the
/// sandbox sees (`target`'s rewritten path, else the request's own path and query), a
/// `Host` (the sandbox's address when the client sent none, as HTTP/2 clients do), no
/// hop-by-hop headers, HTTP/1.1. A request that already has the right URI keeps it: no
/// URI is built per request.
pub fn for_http1<B>(
    req: &mut Request<B>,
    target: &Target,
    addr: SocketAddr,
) -> Result<(), GatewayError> {
    if let Some(path) = &target.path {
        *req.uri_mut() = path.parse().map_err(|_| GatewayError::InvalidPath)?;
    } else if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin);
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        let host = if addr.port() == 80 {
            addr.ip().to_string()
        } else {
            addr.to_string()
        };
        let host = HeaderValue::from_str(&host).map_err(|_| GatewayError::InvalidPath)?;
        headers.insert(header::HOST, host);
    }
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// Readies a gRPC request for the HTTP/2 client: an absolute URI at the sandbox (the client
/// connects by it), no hop-by-hop headers, HTTP/2 kept end to end.
pub fn for_http2<B>(
    req: &mut Request<B>,
    addr: SocketAddr,
    path: &str,
) -> Result<(), GatewayError> {
    let uri: Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|_| GatewayError::InvalidPath)?;
    *req.uri_mut() = uri;
    strip_hop_by_hop(req.headers_mut());
    Ok(())
}

/// Readies an upgrade handshake for a connection of its own: origin-form
/// URI, HTTP/1.1, and its `Connection`/`Upgrade` headers kept.
pub fn for_upgrade<B>(req: &mut Request<B>, path: &str) -> Result<(), GatewayError> {
    *req.uri_mut() = path.parse().map_err(|_| GatewayError::InvalidPath)?;
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: Option<&str>) -> Target {
        Target {
            sandbox: "sbx".into(),
            port: 3000,
            path: path.map(Into::into),
        }
    }

    #[test]
    fn the_path_is_routings_tail_else_the_requests_own() {
        let req = Request::get("http://gw/a/b?x=1").body(()).unwrap();
        assert_eq!(upstream_path(&target(None), &req), "/a/b?x=1");
        assert_eq!(upstream_path(&target(Some("/t?q")), &req), "/t?q");
    }

    #[test]
    fn routing_headers_are_consumed() {
        let mut h = HeaderMap::new();
        h.insert("e2b-sandbox-id", "sbx".parse().unwrap());
        h.insert("e2b-sandbox-port", "3000".parse().unwrap());
        h.insert("x-access-token", "t".parse().unwrap());
        strip_routing_headers(&mut h, &RoutingHeaders::default());
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-access-token"));
    }

    #[test]
    fn pooled_requests_lose_hop_by_hop_headers_and_drop_to_http1() {
        let mut req = Request::get("http://gw.example/ignored?x")
            .version(Version::HTTP_2)
            .header("connection", "keep-alive, x-foo")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("upgrade", "h2c")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let addr: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        for_http1(&mut req, &target(Some("/p?q=1")), addr).unwrap();
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        // An HTTP/2 request has no Host: the sandbox's address stands in.
        assert_eq!(names, ["content-type", "host"]);
        assert_eq!(req.headers()["host"], "10.1.2.3:8080");

        // The request's own path, in origin form; its Host goes through.
        let mut abs = Request::get("http://gw.example/a/b?c=d")
            .header("host", "gw.example")
            .body(())
            .unwrap();
        for_http1(&mut abs, &target(None), addr).unwrap();
        assert_eq!(abs.uri(), "/a/b?c=d");
        assert_eq!(abs.headers()["host"], "gw.example");
        let mut origin = Request::get("/x?y").body(()).unwrap();
        for_http1(&mut origin, &target(None), "10.1.2.3:80".parse().unwrap()).unwrap();
        assert_eq!(origin.uri(), "/x?y");
        assert_eq!(origin.headers()["host"], "10.1.2.3");

        let mut grpc = Request::post("/")
            .version(Version::HTTP_2)
            .header("te", "trailers")
            .body(())
            .unwrap();
        for_http2(&mut grpc, addr, "/svc.S/M").unwrap();
        assert_eq!(grpc.version(), Version::HTTP_2);
        assert_eq!(grpc.uri(), "http://10.1.2.3:8080/svc.S/M");
        assert!(grpc.headers().is_empty());
    }

    #[test]
    fn upgrades_keep_their_handshake_headers() {
        let mut req = Request::get("http://gw/chat")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        for_upgrade(&mut req, "/chat?room=1").unwrap();
        assert_eq!(req.uri(), "/chat?room=1");
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
    }

    #[test]
    fn a_path_that_is_not_a_uri_is_refused() {
        let mut req = Request::get("/").body(()).unwrap();
        let addr: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert!(matches!(
            for_http1(&mut req, &target(Some("/a b")), addr),
            Err(GatewayError::InvalidPath)
        ));
        assert!(matches!(
            for_http2(&mut req, addr, "/a b"),
            Err(GatewayError::InvalidPath)
        ));
        assert!(matches!(
            for_upgrade(&mut req, "/a b"),
            Err(GatewayError::InvalidPath)
        ));
    }
}
