//! Which sandbox and port a data-plane request is for.

use axum::body::Body;
use axum::http::Request;

/// Port of the runtime (envd) when a request names none.
pub const DEFAULT_PORT: u16 = paddock_contract::RUNTIME_PORT;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sandbox: String,
    pub port: u16,
    /// Rewritten path (path routing strips its `/kruise/<id>/<port>` prefix).
    pub path: Option<String>,
}

/// Finds the target in headers, then host, then path.
pub fn target_of(req: &Request<Body>) -> Option<Target> {
    let h = req.headers();
    if let Some(id) = h.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        let port = h
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(DEFAULT_PORT);
        return Some(Target {
            sandbox: id.trim().to_string(),
            port,
            path: None,
        });
    }
    let host = h
        .get("host")
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
    fn control_plane_requests_are_not_claimed() {
        assert!(target_of(&req("/sandboxes", &[("host", "localhost:3000")])).is_none());
        assert!(target_of(&req("/kruise/api/x", &[("host", "127.0.0.1:3000")])).is_none());
        assert!(target_of(&req("/", &[("host", "api.example.com")])).is_none());
        assert!(target_of(&req("/", &[("host", "notaport-x.example.com")])).is_none());
    }
}
