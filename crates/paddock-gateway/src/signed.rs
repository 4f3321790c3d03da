//! Signed file URLs that name no sandbox.
//!
//! The SDKs build `download_url()` / `upload_url()` from the sandbox address they are
//! configured with. Pointed at the one address of `paddock up` (`E2B_SANDBOX_URL`), that is
//! `<address>/files?path=...&signature=...`: no header, host or path names the sandbox, and
//! whoever fetches the URL sends nothing else. The signature does identify it, though: it is
//! a hash over the request and the sandbox's access token, which only that sandbox's handle
//! knows. So such a request goes to the sandbox whose token reproduces the signature. The
//! runtime then checks the signature (and its expiry) itself, as for any signed URL.

use axum::body::Body;
use axum::http::{Method, Request};

use crate::access::RUNTIME_PORT;
use crate::route::Routes;
use crate::target::Target;

/// What the signature covers, read from the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    path: String,
    operation: &'static str,
    username: String,
    signature: String,
    expiration: Option<i64>,
}

/// The signed parts of a `/files` request, if it is one.
pub fn signed_parts(req: &Request<Body>) -> Option<Signed> {
    if req.uri().path() != "/files" {
        return None;
    }
    // Downloads are GETs, uploads POSTs (multipart or octet-stream), as the runtime serves them.
    let operation = match *req.method() {
        Method::GET => "read",
        Method::POST => "write",
        _ => return None,
    };
    let (mut path, mut username, mut signature, mut expiration) =
        (String::new(), String::new(), None, None);
    for (k, v) in form_urlencoded::parse(req.uri().query()?.as_bytes()) {
        match &*k {
            "path" => path = v.into_owned(),
            "username" => username = v.into_owned(),
            "signature" => signature = Some(v.into_owned()).filter(|s| !s.is_empty()),
            // A malformed expiration cannot have been signed by an SDK.
            "signature_expiration" => expiration = Some(v.parse().ok()?),
            _ => {}
        }
    }
    Some(Signed {
        path,
        operation,
        username,
        signature: signature?,
        expiration,
    })
}

/// Whether `req` is a signed file request (whether or not any sandbox signed it).
#[cfg(test)]
pub fn is_signed_file_request(req: &Request<Body>) -> bool {
    signed_parts(req).is_some()
}

/// The runtime of the sandbox whose access token made `signed`'s signature, if any did.
/// (It takes the parts, not the request: a request body must not be held across an await.)
pub async fn signer(routes: &dyn Routes, signed: Signed) -> Option<Target> {
    let candidates = routes.list();
    // One hash per sandbox: off the request's thread, as the table may be large.
    let found = tokio::task::spawn_blocking(move || {
        candidates.into_iter().find_map(|(id, route)| {
            let token = route.tokens.access.as_deref()?;
            let expected = paddock_contract::file_signature(
                &signed.path,
                signed.operation,
                &signed.username,
                token,
                signed.expiration,
            );
            paddock_contract::same_secret(signed.signature.as_bytes(), expected.as_bytes())
                .then_some(id)
        })
    })
    .await
    .ok()??;
    Some(Target {
        sandbox: found,
        port: RUNTIME_PORT,
        path: None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::access::Tokens;
    use crate::route::RouteInfo;

    struct Table(HashMap<&'static str, RouteInfo>);

    impl Routes for Table {
        fn lookup(&self, id: &str) -> Option<RouteInfo> {
            self.0.get(id).cloned()
        }
        fn list(&self) -> Vec<(String, RouteInfo)> {
            self.0
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        }
    }

    fn route(token: &str) -> RouteInfo {
        RouteInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            paused: false,
            tokens: Tokens {
                access: Some(token.into()),
                traffic: None,
            },
        }
    }

    fn req(method: Method, uri: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    }

    async fn signer_of(routes: &dyn Routes, req: &Request<Body>) -> Option<Target> {
        signer(routes, signed_parts(req)?).await
    }

    fn sig(path: &str, op: &str, user: &str, token: &str, exp: Option<i64>) -> String {
        let s = paddock_contract::file_signature(path, op, user, token, exp);
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    #[tokio::test]
    async fn the_token_that_made_the_signature_names_the_sandbox() {
        let table = Table(HashMap::from([("one", route("t1")), ("two", route("t2"))]));
        let s = sig("/a b.txt", "read", "", "t2", None);
        let r = req(
            Method::GET,
            &format!("/files?path=%2Fa%20b.txt&signature={s}"),
        );
        let t = signer_of(&table, &r).await.expect("found");
        assert_eq!((t.sandbox.as_str(), t.port), ("two", RUNTIME_PORT));
        // Uploads are signed for writing, and the user and expiration count.
        let s = sig("/x", "write", "root", "t1", Some(99));
        let up = format!("/files?path=%2Fx&username=root&signature={s}&signature_expiration=99");
        assert_eq!(
            signer_of(&table, &req(Method::POST, &up))
                .await
                .unwrap()
                .sandbox,
            "one"
        );
        assert!(signer_of(&table, &req(Method::GET, &up)).await.is_none());
        let other_exp = up.replace("=99", "=98");
        assert!(
            signer_of(&table, &req(Method::POST, &other_exp))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn requests_without_a_usable_signature_are_not_claimed() {
        let table = Table(HashMap::from([("one", route("t1"))]));
        for (m, uri) in [
            (Method::GET, "/files?path=%2Fx"),
            (Method::GET, "/files?path=%2Fx&signature="),
            (Method::GET, "/other?signature=v1_x"),
            (Method::DELETE, "/files?signature=v1_x"),
            (
                Method::GET,
                "/files?signature=v1_x&signature_expiration=soon",
            ),
        ] {
            assert!(!is_signed_file_request(&req(m.clone(), uri)), "{uri}");
            assert!(signer_of(&table, &req(m, uri)).await.is_none());
        }
        assert!(is_signed_file_request(&req(
            Method::GET,
            "/files?signature=v1_x"
        )));
        // A signature no sandbox's token makes finds nothing.
        assert!(
            signer_of(&table, &req(Method::GET, "/files?signature=v1_x"))
                .await
                .is_none()
        );
    }
}
