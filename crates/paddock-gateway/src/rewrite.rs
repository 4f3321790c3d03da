//! What the sandbox sees: the request rewritten for the hop to the sandbox.
//!
//! Runs after the token check (which needs the client's headers and path as
//! sent) and before the upstream phase. Routing headers are the gateway's
//! business and never reach the sandbox; hop-by-hop headers describe the
//! client's connection, not ours, so they go too, except on an upgrade,
//! whose handshake needs `Connection` and `Upgrade` to reach the sandbox.

use std::net::SocketAddr;

use axum::http::{HeaderMap, Request, Uri, Version};

use crate::errors::GatewayError;
use crate::target::{RoutingHeaders, Target};

/// Headers that apply to one connection only (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The path and query the sandbox should see: path routing's rewritten tail
/// (its `/kruise/<id>/<port>` prefix gone), else the request's own.
pub fn upstream_path<B>(target: &Target, req: &Request<B>) -> String {
    target.path.clone().unwrap_or_else(|| {
        req.uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into())
    })
}

/// The headers that name the target are the gateway's; they never reach the sandbox.
pub fn strip_routing_headers(headers: &mut HeaderMap, names: &RoutingHeaders) {
    headers.remove(&names.sandbox);
    headers.remove(&names.port);
}

/// Readies a request for the pooled client: an absolute URI at the sandbox
/// (the client connects by it), no hop-by-hop headers, and HTTP/1.1 unless
/// it is gRPC, which must stay HTTP/2 end to end.
pub fn for_pool<B>(
    req: &mut Request<B>,
    addr: SocketAddr,
    path: &str,
    grpc: bool,
) -> Result<(), GatewayError> {
    let uri: Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|_| GatewayError::InvalidPath)?;
    *req.uri_mut() = uri;
    for h in HOP_BY_HOP {
        req.headers_mut().remove(*h);
    }
    if !grpc {
        *req.version_mut() = Version::HTTP_11;
    }
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
        let mut req = Request::get("/ignored")
            .version(Version::HTTP_2)
            .header("connection", "keep-alive, x-foo")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("upgrade", "h2c")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let addr: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        for_pool(&mut req, addr, "/p?q=1", false).unwrap();
        assert_eq!(req.uri(), "http://10.1.2.3:8080/p?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);

        let mut grpc = Request::post("/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        for_pool(&mut grpc, addr, "/svc.S/M", true).unwrap();
        assert_eq!(grpc.version(), Version::HTTP_2);
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
            for_pool(&mut req, addr, "/a b", false),
            Err(GatewayError::InvalidPath)
        ));
        assert!(matches!(
            for_upgrade(&mut req, "/a b"),
            Err(GatewayError::InvalidPath)
        ));
    }
}
