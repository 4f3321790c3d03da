//! Which data-plane requests need which token.
//!
//! The runtime checks its own token as well; the gateway checks first so that
//! a request without the sandbox's token never reaches the sandbox at all (and
//! so that `/init`, which could reset the token, is closed to the data plane).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, Method};

pub use paddock_contract::{INTERPRETER_PORT, RUNTIME_PORT};

/// The tokens a sandbox was given at creation. Shared, not copied: a route (and so its
/// tokens) is cloned out of the route table on every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// `envdAccessToken`: required on the runtime's and interpreter's RPCs.
    pub access: Option<Arc<str>>,
    /// `trafficAccessToken`: required on every other port when the sandbox
    /// was created with `allowPublicTraffic: false`.
    pub traffic: Option<Arc<str>>,
}

/// The headers tokens come in (names, not strings: a string is parsed into a name on every lookup).
static ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-access-token");
static TRAFFIC_TOKEN: HeaderName = HeaderName::from_static("e2b-traffic-access-token");

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    MissingAccessToken,
    WrongAccessToken,
    MissingTrafficToken,
    WrongTrafficToken,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Denied::MissingAccessToken => {
                "unauthorized access: this sandbox is secured; send its envdAccessToken in X-Access-Token"
            }
            Denied::WrongAccessToken => "unauthorized access: invalid X-Access-Token",
            Denied::MissingTrafficToken => {
                "unauthorized access: this sandbox's ports are private; send its trafficAccessToken in E2B-Traffic-Access-Token"
            }
            Denied::WrongTrafficToken => "unauthorized access: invalid E2B-Traffic-Access-Token",
        }
    }
}

/// Decides whether a request may pass to `port` of a sandbox with `tokens`.
pub fn check(
    tokens: &Tokens,
    port: u16,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<(), Denied> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    match port {
        RUNTIME_PORT => {
            if path == "/health" && method == Method::GET {
                return Ok(());
            }
            // `/files` may be authorised by a signed URL instead; the runtime
            // verifies the signature, which needs the token we do not share.
            if path == "/files" && has_signature(query) && !headers.contains_key(&ACCESS_TOKEN) {
                return Ok(());
            }
            need(headers, &ACCESS_TOKEN, tokens.access.as_deref(), true)
        }
        INTERPRETER_PORT => {
            need(headers, &TRAFFIC_TOKEN, tokens.traffic.as_deref(), false)?;
            // The SDKs send the access token on `/execute` only.
            if path == "/execute" {
                need(headers, &ACCESS_TOKEN, tokens.access.as_deref(), true)?;
            }
            Ok(())
        }
        _ => need(headers, &TRAFFIC_TOKEN, tokens.traffic.as_deref(), false),
    }
}

fn has_signature(query: &str) -> bool {
    query.split('&').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k == "signature" && !v.is_empty())
    })
}

fn need(
    headers: &HeaderMap,
    name: &HeaderName,
    expected: Option<&str>,
    access: bool,
) -> Result<(), Denied> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let (missing, wrong) = if access {
        (Denied::MissingAccessToken, Denied::WrongAccessToken)
    } else {
        (Denied::MissingTrafficToken, Denied::WrongTrafficToken)
    };
    let got = headers.get(name).ok_or(missing)?.as_bytes();
    if paddock_contract::same_secret(got, expected.as_bytes()) {
        Ok(())
    } else {
        Err(wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn secured() -> Tokens {
        Tokens {
            access: Some("tok".into()),
            traffic: None,
        }
    }

    #[test]
    fn runtime_routes_need_the_access_token() {
        let t = secured();
        let none = headers(&[]);
        let good = headers(&[("x-access-token", "tok")]);
        let bad = headers(&[("x-access-token", "tok2")]);
        let rpc = "/process.Process/Start";
        assert_eq!(
            check(&t, RUNTIME_PORT, &Method::POST, rpc, &none),
            Err(Denied::MissingAccessToken)
        );
        assert_eq!(
            check(&t, RUNTIME_PORT, &Method::POST, rpc, &bad),
            Err(Denied::WrongAccessToken)
        );
        assert_eq!(check(&t, RUNTIME_PORT, &Method::POST, rpc, &good), Ok(()));
        assert_eq!(
            check(&t, RUNTIME_PORT, &Method::GET, "/health", &none),
            Ok(())
        );
        // /init could replace the token: never open without it.
        assert!(check(&t, RUNTIME_PORT, &Method::POST, "/init", &none).is_err());
    }

    #[test]
    fn signed_file_urls_pass_to_the_runtime() {
        let t = secured();
        let none = headers(&[]);
        let q = "/files?path=/a&signature=v1_abc&signature_expiration=9";
        assert_eq!(check(&t, RUNTIME_PORT, &Method::GET, q, &none), Ok(()));
        assert!(check(&t, RUNTIME_PORT, &Method::GET, "/files?path=/a", &none).is_err());
        assert!(check(&t, RUNTIME_PORT, &Method::GET, "/files?signature=", &none).is_err());
    }

    #[test]
    fn interpreter_needs_the_token_on_execute_only() {
        let t = secured();
        let none = headers(&[]);
        assert_eq!(
            check(&t, INTERPRETER_PORT, &Method::GET, "/contexts", &none),
            Ok(())
        );
        assert!(check(&t, INTERPRETER_PORT, &Method::POST, "/execute", &none).is_err());
    }

    #[test]
    fn user_ports_are_public_unless_a_traffic_token_exists() {
        let none = headers(&[]);
        assert_eq!(check(&secured(), 8080, &Method::GET, "/", &none), Ok(()));
        let private = Tokens {
            access: Some("tok".into()),
            traffic: Some("tt".into()),
        };
        assert_eq!(
            check(&private, 8080, &Method::GET, "/", &none),
            Err(Denied::MissingTrafficToken)
        );
        let ok = headers(&[("e2b-traffic-access-token", "tt")]);
        assert_eq!(check(&private, 8080, &Method::GET, "/", &ok), Ok(()));
    }

    #[test]
    fn unsecured_sandboxes_are_open() {
        let none = headers(&[]);
        let t = Tokens::default();
        assert_eq!(check(&t, RUNTIME_PORT, &Method::POST, "/x", &none), Ok(()));
    }
}
