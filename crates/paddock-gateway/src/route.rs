//! Where a named sandbox lives: the route table seam and the lookup phase.
//!
//! [`crate::target`] says which sandbox and port a request names; this module
//! says whether that sandbox can take traffic and at which address. The
//! table behind [`Routes`] is the one thing that differs between the modes:
//! in `paddock up` it is the embedded manager's in-memory records; in
//! `paddock gateway` it is a table fed by a watch on Sandbox resources and by
//! the managers' pushes (crate `paddock-kube-routes`), which may also look a
//! missing sandbox up at the API server ([`Routes::fetch`]). The gateway only
//! reads it, once per request.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use crate::access::Tokens;
use crate::errors::GatewayError;
use crate::target::Target;

/// What the gateway needs to know about a sandbox.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub ip: IpAddr,
    pub paused: bool,
    pub tokens: Tokens,
}

/// A route fetched from the source of truth (see [`Routes::fetch`]).
pub type Fetched<'a> = Pin<Box<dyn Future<Output = Option<RouteInfo>> + Send + 'a>>;

/// Looks sandboxes up for the gateway.
///
/// Implementations must be cheap and must not block: `lookup` runs on every
/// request, on the request's task.
pub trait Routes: Send + Sync + 'static {
    /// The sandbox's route, or `None` if no such sandbox exists.
    fn lookup(&self, id: &str) -> Option<RouteInfo>;

    /// Asked only after `lookup` missed: a table fed by a watch may lag the
    /// sandbox's creation (a lost push, a watch not yet delivered), so it may
    /// look the sandbox up at its source before the request is answered
    /// "not found". Implementations bound the time this takes and share one
    /// look-up between concurrent misses. The default (a table that is the
    /// source of truth, as in `paddock up`) knows nothing more.
    fn fetch<'a>(&'a self, id: &'a str) -> Fetched<'a> {
        let _ = id;
        Box::pin(std::future::ready(None))
    }

    /// Every sandbox the table has a route for, by id: for a request that names no sandbox
    /// but carries something only one sandbox could have made (a signed file URL, see
    /// [`crate::signed`]). The default knows none, and such requests then find no sandbox.
    fn list(&self) -> Vec<(String, RouteInfo)> {
        Vec::new()
    }
}

/// The lookup phase: the route of a sandbox that can take traffic now.
///
/// It comes before the token check because the tokens live in the route, and
/// before admission so that a request for a missing or paused sandbox never
/// takes a breaker slot.
pub async fn resolve(routes: &dyn Routes, target: &Target) -> Result<RouteInfo, GatewayError> {
    let route = find(routes, target).await?;
    // A paused sandbox keeps its record, but its address is not serving.
    if route.paused {
        return Err(GatewayError::Paused {
            sandbox: target.sandbox.clone(),
        });
    }
    Ok(route)
}

/// The route of the sandbox `target` names, paused or not.
pub async fn find(routes: &dyn Routes, target: &Target) -> Result<RouteInfo, GatewayError> {
    let route = match routes.lookup(&target.sandbox) {
        Some(r) => r,
        None => routes
            .fetch(&target.sandbox)
            .await
            .ok_or_else(|| GatewayError::NotFound {
                sandbox: target.sandbox.clone(),
            })?,
    };
    Ok(route)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use super::*;

    impl Routes for HashMap<&'static str, RouteInfo> {
        fn lookup(&self, id: &str) -> Option<RouteInfo> {
            self.get(id).cloned()
        }
    }

    fn route(paused: bool) -> RouteInfo {
        RouteInfo {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
            paused,
            tokens: Tokens::default(),
        }
    }

    fn target(id: &str) -> Target {
        Target {
            sandbox: id.into(),
            port: 8080,
            path: None,
        }
    }

    #[tokio::test]
    async fn running_sandboxes_resolve_others_fail_with_their_reason() {
        let table = HashMap::from([("up", route(false)), ("zz", route(true))]);
        let r = resolve(&table, &target("up")).await.unwrap();
        assert_eq!(r.ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(matches!(
            resolve(&table, &target("zz")).await,
            Err(GatewayError::Paused { sandbox }) if sandbox == "zz"
        ));
        assert!(matches!(
            resolve(&table, &target("gone")).await,
            Err(GatewayError::NotFound { sandbox }) if sandbox == "gone"
        ));
    }

    /// A table whose `lookup` always misses and whose `fetch` knows one sandbox.
    struct Lagging;

    impl Routes for Lagging {
        fn lookup(&self, _: &str) -> Option<RouteInfo> {
            None
        }
        fn fetch<'a>(&'a self, id: &'a str) -> Fetched<'a> {
            Box::pin(async move { (id == "late").then(|| route(false)) })
        }
    }

    #[tokio::test]
    async fn a_miss_asks_fetch_before_answering_not_found() {
        assert!(resolve(&Lagging, &target("late")).await.is_ok());
        assert!(matches!(
            resolve(&Lagging, &target("never")).await,
            Err(GatewayError::NotFound { sandbox }) if sandbox == "never"
        ));
    }
}
