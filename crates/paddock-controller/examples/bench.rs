//! Benchmark client for `bench/controller.sh`: times a SandboxSet filling up, and claims
//! taken one after another from a filled pool. Talks to the cluster in KUBECONFIG; the
//! controller must already run. Prints one `key value` line per figure.
//!
//! ```text
//! cargo run --release -p paddock-controller --example bench -- NAMESPACE FILL_REPLICAS CLAIMS POOL IMAGE
//! ```

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use paddock_crds::{ClaimPhase, Sandbox, SandboxClaim, SandboxClaimSpec, SandboxSet, keys};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn pool(name: &str, replicas: i32, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "agents.kruise.io/v1alpha1",
        "kind": "SandboxSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 49983}, "periodSeconds": 1},
                }],
            }},
        },
    })
}

/// Waits until the SandboxSet reports `n` available sandboxes.
async fn wait_available(api: &Api<SandboxSet>, name: &str, n: i32, limit: Duration) -> Result<()> {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api.clone(), cfg).applied_objects();
    let found = tokio::time::timeout(limit, async {
        let mut stream = std::pin::pin!(stream);
        while let Some(s) = stream.try_next().await? {
            if s.status
                .as_ref()
                .is_some_and(|st| st.available_replicas >= n)
            {
                return Ok::<_, watcher::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    match found {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("watch ended".into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(format!("{name} did not reach {n} available within {limit:?}").into()),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, ns, fill, claims, pool_size, image] = &args[..] else {
        return Err("usage: bench NAMESPACE FILL_REPLICAS CLAIMS POOL IMAGE".into());
    };
    let (fill, claims, pool_size): (i32, usize, i32) =
        (fill.parse()?, claims.parse()?, pool_size.parse()?);
    let client = Client::try_default().await?;
    let sets: Api<SandboxSet> = Api::namespaced(client.clone(), ns);
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), ns);
    let claims_api: Api<SandboxClaim> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply("paddock-bench").force();

    // 1. Fill: time from creating the SandboxSet to `fill` available.
    let t = Instant::now();
    sets.patch("fill", &pp, &Patch::Apply(pool("fill", fill, image)))
        .await?;
    wait_available(&sets, "fill", fill, Duration::from_secs(600)).await?;
    println!("fill_replicas {fill}");
    println!("fill_seconds {:.2}", t.elapsed().as_secs_f64());
    sets.delete("fill", &DeleteParams::default()).await?;
    let lp = ListParams::default().labels(&format!("{}=fill", keys::LABEL_SANDBOX_POOL));
    sandboxes
        .delete_collection(&DeleteParams::default(), &lp)
        .await?;

    // 2. Claims, one at a time, each from a full pool.
    sets.patch("warm", &pp, &Patch::Apply(pool("warm", pool_size, image)))
        .await?;
    let mut ms = Vec::with_capacity(claims);
    let unclaimed = ListParams::default().labels(&format!(
        "{}=warm,{}=false",
        keys::LABEL_SANDBOX_POOL,
        keys::LABEL_SANDBOX_CLAIMED
    ));
    for i in 0..claims {
        // The set's status lags a claim by a reconcile: count ready members directly, so
        // every claim really starts from a full pool.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ready = sandboxes
                .list(&unclaimed)
                .await?
                .items
                .iter()
                .filter(|s| paddock_controller::desired::sandbox::is_ready(s))
                .count();
            if ready >= pool_size as usize {
                break;
            }
            if Instant::now() > deadline {
                return Err("the warm pool did not refill".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let name = format!("bench-{i}");
        let claim = SandboxClaim::new(
            &name,
            SandboxClaimSpec {
                template_name: "warm".into(),
                ..Default::default()
            },
        );
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut watch = std::pin::pin!(watcher(claims_api.clone(), cfg).applied_objects());
        let t = Instant::now();
        claims_api.create(&PostParams::default(), &claim).await?;
        loop {
            match watch.next().await {
                Some(Ok(c))
                    if c.status.as_ref().and_then(|s| s.phase) == Some(ClaimPhase::Completed) =>
                {
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err("claim watch ended".into()),
            }
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let lp = ListParams::default().labels(&format!("{}={name}", keys::LABEL_CLAIM_NAME));
        for s in sandboxes.list(&lp).await? {
            sandboxes
                .delete(&s.name_any(), &DeleteParams::default())
                .await?;
        }
        claims_api.delete(&name, &DeleteParams::default()).await?;
    }
    ms.sort_by(f64::total_cmp);
    println!("claims {}", ms.len());
    println!("claim_ms_p50 {:.1}", percentile(&ms, 50.0));
    println!("claim_ms_p99 {:.1}", percentile(&ms, 99.0));
    println!("claim_ms_max {:.1}", ms.last().copied().unwrap_or_default());
    sets.delete("warm", &DeleteParams::default()).await?;
    Ok(())
}
