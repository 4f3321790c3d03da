//! Which sandbox and port a data-plane request is for.

use axum::body::Body;
use axum::http::{HeaderName, Request};

/// Port of the runtime (envd) when a request names none.
pub const DEFAULT_PORT: u16 = paddock_contract::RUNTIME_PORT;

/// The header names (and the default port) a request names its sandbox with: the E2B SDK's by
/// default; the manager chart's `gateway.envoy.pluginConfig` values change them, as they
/// configured the original gateway's plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingHeaders {
    /// Where host routing (`<port>-<id>.<domain>`) reads the host from; the URI's authority
    /// (HTTP/2) when the request has no such header.
    pub host: HeaderName,
    /// The sandbox id.
    pub sandbox: HeaderName,
    /// The port in the sandbox; `default_port` when absent.
    pub port: HeaderName,
    pub default_port: u16,
}

impl Default for RoutingHeaders {
    fn default() -> Self {
        Self {
            host: axum::http::header::HOST,
            sandbox: HeaderName::from_static("e2b-sandbox-id"),
            port: HeaderName::from_static("e2b-sandbox-port"),
            default_port: DEFAULT_PORT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sandbox: String,
    pub port: u16,
    /// Rewritten path (path routing strips its `/kruise/<id>/<port>` prefix).
    pub path: Option<String>,
}

/// Finds the target in the default headers, then host, then path.
pub fn target_of(req: &Request<Body>) -> Option<Target> {
    target_with(req, &RoutingHeaders::default())
}

/// Finds the target in `names`' headers, then host, then path.
pub fn target_with(req: &Request<Body>, names: &RoutingHeaders) -> Option<Target> {
    let h = req.headers();
    if let Some(id) = h.get(&names.sandbox).and_then(|v| v.to_str().ok()) {
        let port = h
            .get(&names.port)
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(names.default_port);
        return Some(Target {
            sandbox: id.trim().to_string(),
            port,
            path: None,
        });
    }
    let host = h
        .get(&names.host)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host());
    if let Some(t) = host.and_then(from_host) {
        return Some(t);
    }
    from_path(req.uri().path(), req.uri().query())
}

/// `<port>-<id>.<domain>`.
fn from_host(host: &str) -> Option<Target> {
    let first = host.split('.').next()?;
    if !host.contains('.') {
        return None;
    }
    // The first `-` ends the port; the id may hold more (`<namespace>--<name>` ids).
    let (port, id) = first.split_once('-')?;
    let port: u16 = port.parse().ok()?;
    // Host names are case insensitive; ids are lowercase.
    let id = paddock_infra::SandboxId::new(id.to_ascii_lowercase()).ok()?;
    Some(Target {
        sandbox: id.to_string(),
        port,
        path: None,
    })
}

/// `/kruise/<id>/<port>/rest`.
fn from_path(path: &str, query: Option<&str>) -> Option<Target> {
    let rest = path.strip_prefix("/kruise/")?;
    // `/kruise/api/...` is the control plane; an id may still start with "api".
    if rest == "api" || rest.starts_with("api/") {
        return None;
    }
    let mut parts = rest.splitn(3, '/');
    let id = parts.next()?.to_string();
    let port: u16 = parts.next()?.parse().ok()?;
    let mut tail = format!("/{}", parts.next().unwrap_or(""));
    if let Some(q) = query {
        tail.push('?');
        tail.push_str(q);
    }
    Some(Target {
        sandbox: id,
        port,
        path: Some(tail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn headers_win_then_host_then_path() {
        let t = target_of(&req(
            "/files",
            &[
                ("e2b-sandbox-id", "abc"),
                ("e2b-sandbox-port", "49999"),
                ("host", "8080-zzz.example.com"),
            ],
        ))
        .unwrap();
        assert_eq!((t.sandbox.as_str(), t.port, t.path), ("abc", 49999, None));
        let t = target_of(&req("/x", &[("host", "8080-sbx1.example.com")])).unwrap();
        assert_eq!((t.sandbox.as_str(), t.port), ("sbx1", 8080));
        let t = target_of(&req(
            "/",
            &[("host", "49983-team-a--base-x7k2q.example.com")],
        ))
        .unwrap();
        assert_eq!((t.sandbox.as_str(), t.port), ("team-a--base-x7k2q", 49983));
        let t = target_of(&req("/", &[("host", "8080-SBX1.Example.com")])).unwrap();
        assert_eq!(t.sandbox, "sbx1");
        let t = target_of(&req(
            "/kruise/sbx2/3000/a/b?q=1",
            &[("host", "localhost:3000")],
        ))
        .unwrap();
        assert_eq!(
            (t.sandbox.as_str(), t.port, t.path.as_deref()),
            ("sbx2", 3000, Some("/a/b?q=1"))
        );
        let t = target_of(&req("/files", &[("e2b-sandbox-id", "abc")])).unwrap();
        assert_eq!(t.port, DEFAULT_PORT);
        let t = target_of(&req("/kruise/apiq7x/8080/", &[("host", "localhost")])).unwrap();
        assert_eq!((t.sandbox.as_str(), t.port), ("apiq7x", 8080));
    }

    #[test]
    fn configured_header_names_replace_the_defaults() {
        let names = RoutingHeaders {
            host: HeaderName::from_static("x-forwarded-host"),
            sandbox: HeaderName::from_static("x-sbx"),
            port: HeaderName::from_static("x-sbx-port"),
            default_port: 8080,
        };
        let t = target_with(
            &req("/", &[("x-sbx", "abc"), ("x-sbx-port", "3000")]),
            &names,
        )
        .unwrap();
        assert_eq!((t.sandbox.as_str(), t.port), ("abc", 3000));
        let t = target_with(&req("/", &[("x-sbx", "abc")]), &names).unwrap();
        assert_eq!(t.port, 8080);
        // the default names no longer route
        assert!(target_with(&req("/", &[("e2b-sandbox-id", "abc")]), &names).is_none());
        // host routing reads the configured header, not Host
        let t = target_with(
            &req(
                "/",
                &[
                    ("x-forwarded-host", "7000-sbx9.example.com"),
                    ("host", "gw.local"),
                ],
            ),
            &names,
        )
        .unwrap();
        assert_eq!((t.sandbox.as_str(), t.port), ("sbx9", 7000));
        assert!(target_with(&req("/", &[("host", "7000-sbx9.example.com")]), &names).is_none());
    }

    #[test]
    fn control_plane_requests_are_not_claimed() {
        assert!(target_of(&req("/sandboxes", &[("host", "localhost:3000")])).is_none());
        assert!(target_of(&req("/kruise/api/x", &[("host", "127.0.0.1:3000")])).is_none());
        assert!(target_of(&req("/", &[("host", "api.example.com")])).is_none());
        assert!(target_of(&req("/", &[("host", "notaport-x.example.com")])).is_none());
    }
}
