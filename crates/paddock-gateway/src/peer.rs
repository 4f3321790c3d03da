//! The manager → gateway route push: the wire format of `POST /refresh` on a gateway's peer
//! listener.
//!
//! A Kubernetes gateway learns routes from its watch of Sandbox resources; a manager that has
//! just claimed, paused, resumed or killed a sandbox also pushes the change to every gateway
//! replica before it answers, so the SDK's first data-plane request never races the watch
//! (the create's 201 means "routable everywhere"). Pushes carry tokens, so the peer listener
//! accepts them only with the shared peer token (`Authorization: Bearer <token>`).
//!
//! Defined once here; the manager sends it, the gateway receives it.

use std::net::IpAddr;

/// The path a gateway's peer listener takes route pushes on.
pub const REFRESH_PATH: &str = "/refresh";

/// The default peer listener port (the original system's peer port).
pub const DEFAULT_PEER_PORT: u16 = 7789;

/// What a pushed route says about a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteState {
    /// Takes traffic.
    Running,
    /// Known, but its address does not serve (requests get the "paused" answer).
    Paused,
    /// Gone: the gateway drops the route.
    Dead,
}

/// One route change, pushed by a manager.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteUpdate {
    /// The sandbox id (`<namespace>--<name>` on Kubernetes).
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// The pod (sandbox) IP; absent for a dead or paused sandbox without a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    pub state: RouteState,
    /// `envdAccessToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// `trafficAccessToken`, when the sandbox's ports are private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_token: Option<String>,
    /// The Sandbox's resourceVersion the route was read from. A gateway never replaces a
    /// route with one from an older version (a late push must not undo a newer watch event);
    /// versions are compared as integers, as kube-apiserver's are in practice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_camel_case_with_the_e2b_id_key() {
        let u = RouteUpdate {
            sandbox_id: "ns--sbx-1".into(),
            ip: Some("10.217.0.5".parse().unwrap()),
            state: RouteState::Running,
            access_token: Some("t".into()),
            traffic_token: None,
            resource_version: Some("42".into()),
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sandboxID": "ns--sbx-1", "ip": "10.217.0.5", "state": "running",
                               "accessToken": "t", "resourceVersion": "42"})
        );
        let back: RouteUpdate = serde_json::from_value(v).unwrap();
        assert_eq!(back, u);
    }
}
