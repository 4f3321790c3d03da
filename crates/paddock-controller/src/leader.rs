//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one replica reconciles.
//!
//! Timings follow controller-runtime's defaults (15 s lease, renew every 10 s, retry every
//! 2 s). A replica that cannot renew before its lease runs out exits the process rather than
//! risk two leaders; its Deployment restarts it as a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::Error;

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(10);
const RETRY_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

impl LeaderConfig {
    pub fn new(namespace: String) -> Self {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "paddock-controller".into());
        LeaderConfig {
            namespace,
            name: "paddock-controller-leader".into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
        }
    }
}

/// Held leadership; renewal runs in the background until the process ends.
pub struct Leadership {
    _renew: tokio::task::JoinHandle<()>,
}

/// What to do with the lease as found.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Create,
    /// Ours already, or expired: take or renew it.
    Take,
    Wait,
}

fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    if spec
        .holder_identity
        .as_deref()
        .is_none_or(|h| h.is_empty() || h == me)
    {
        return Decision::Take;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.map(|t| t.0).unwrap_or_default();
    if renewed.as_second() + secs < now.as_second() {
        Decision::Take
    } else {
        Decision::Wait
    }
}

fn our_spec(cfg: &LeaderConfig, prev: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let ours = prev.is_some_and(|p| p.holder_identity.as_deref() == Some(cfg.identity.as_str()));
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if ours {
            prev.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            prev.and_then(|p| p.lease_transitions).unwrap_or(0)
                + i32::from(!ours && prev.is_some()),
        ),
        ..Default::default()
    }
}

/// One attempt to take or renew; `Ok(true)` when we hold the lease afterwards.
async fn try_once(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    match decide(current.as_ref(), &cfg.identity, now) {
        Decision::Wait => Ok(false),
        Decision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(our_spec(cfg, None, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Decision::Take => {
            let mut lease = current.unwrap_or_default();
            lease.spec = Some(our_spec(cfg, lease.spec.as_ref(), now));
            // The resourceVersion in `lease` makes a concurrent taker lose with a conflict.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Blocks until this replica leads, then keeps renewing in the background.
pub async fn acquire(client: Client, cfg: &LeaderConfig) -> Result<Leadership, Error> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "waiting for leadership");
    loop {
        match try_once(&api, cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(kube::Error::Api(ae)) if ae.code == 404 => {
                return Err(Error::Leader(format!(
                    "namespace {} for the leader Lease does not exist",
                    cfg.namespace
                )));
            }
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
    tracing::info!("became leader");
    let cfg = cfg.clone();
    let renew = tokio::spawn(async move {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            loop {
                match try_once(&api, &cfg).await {
                    Ok(true) => {
                        last = tokio::time::Instant::now();
                        break;
                    }
                    Ok(false) => {
                        tracing::error!("leadership lost to another replica: exiting");
                        std::process::exit(1);
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                }
                if last.elapsed() >= LEASE_DURATION {
                    tracing::error!("could not renew the leader lease in time: exiting");
                    std::process::exit(1);
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    });
    Ok(Leadership { _renew: renew })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn takes_missing_own_or_expired_leases_and_waits_on_live_ones() {
        let now = Timestamp::from_second(100).unwrap();
        assert_eq!(decide(None, "me", now), Decision::Create);
        assert_eq!(decide(Some(&lease("me", 99)), "me", now), Decision::Take);
        assert_eq!(decide(Some(&lease("other", 90)), "me", now), Decision::Wait);
        assert_eq!(decide(Some(&lease("other", 80)), "me", now), Decision::Take);
    }
}
