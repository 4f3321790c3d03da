//! How a request travels to the sandbox.
//!
//! Chosen after the routing headers are gone and before the request is
//! rewritten, because the rewrite differs by protocol (an upgrade keeps its
//! hop-by-hop headers; gRPC keeps HTTP/2).

use axum::http::{Request, Version, header};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.1 upgrade (WebSocket): a handshake on a connection of its
    /// own, then a byte pipe.
    Upgrade,
    /// gRPC over h2c: HTTP/2 to the sandbox too, since gRPC needs trailers
    /// and streams that HTTP/1.1 cannot carry.
    Grpc,
    /// Everything else: pooled HTTP/1.1, which every sandbox server speaks.
    Http1,
}

impl Protocol {
    pub fn of<B>(req: &Request<B>) -> Self {
        if is_upgrade(req) {
            Protocol::Upgrade
        } else if is_grpc(req) {
            Protocol::Grpc
        } else {
            Protocol::Http1
        }
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn upgrades_need_both_headers_on_http1() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(Protocol::of(&req(Version::HTTP_11, &ws)), Protocol::Upgrade);
        let no_token = [("connection", "keep-alive"), ("upgrade", "websocket")];
        assert_eq!(
            Protocol::of(&req(Version::HTTP_11, &no_token)),
            Protocol::Http1
        );
        assert_eq!(
            Protocol::of(&req(Version::HTTP_11, &[("connection", "upgrade")])),
            Protocol::Http1
        );
        assert_eq!(Protocol::of(&req(Version::HTTP_2, &ws)), Protocol::Http1);
    }

    #[test]
    fn grpc_is_http2_with_a_grpc_content_type() {
        let grpc = [("content-type", "application/grpc+proto")];
        assert_eq!(Protocol::of(&req(Version::HTTP_2, &grpc)), Protocol::Grpc);
        assert_eq!(Protocol::of(&req(Version::HTTP_11, &grpc)), Protocol::Http1);
        let json = [("content-type", "application/json")];
        assert_eq!(Protocol::of(&req(Version::HTTP_2, &json)), Protocol::Http1);
    }
}
