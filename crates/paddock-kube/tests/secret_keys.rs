//! API keys in a Secret, against the real test bed (`hack/testbed up`): two stores on one
//! Secret stand for two manager replicas.
//!
//! Skipped, saying so, when no test bed runs (its admin kubeconfig is absent); CI runs it inside
//! the test-bed suite. Everything happens in a namespace of its own, deleted at the end.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use paddock_kube::keys::{DEFAULT_KEY_SECRET, SecretKeys};
use paddock_manager::{KeyStore, Quota, Team};

const TESTBED_KUBECONFIG: &str = "/var/lib/paddock-testbed/admin.kubeconfig";
const ADMIN: &str = "e2b_secret_test_admin";
/// How long a change may take to reach the other replica before the test gives up (a failure,
/// not a timing assertion: the goal is well under a second).
const PATIENCE: Duration = Duration::from_secs(60);

async fn client(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("reading the test bed's kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    Client::try_from(config).expect("a Kubernetes client")
}

async fn replica(client: &Client, ns: &str) -> KeyStore {
    let backend = Arc::new(SecretKeys::new(client.clone(), ns, DEFAULT_KEY_SECRET));
    KeyStore::with_backend(backend, ADMIN)
        .await
        .expect("opening the key Secret")
}

/// Polls `ok` until it holds; panics with `what` when it never does.
async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn team_of(store: &KeyStore, secret: &str) -> Option<Team> {
    store.authenticate(secret).map(|(team, _)| team)
}

async fn scenario(client: Client, ns: String) {
    let a = replica(&client, &ns).await;
    let b = replica(&client, &ns).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // The Secret was created by the first replica, labelled as ours.
    let s = secrets.get(DEFAULT_KEY_SECRET).await.unwrap();
    assert_eq!(
        s.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "paddock"
    );

    // A key created through one replica authenticates through the other.
    let quota = Quota {
        max_sandboxes: Some(2),
        ..Quota::default()
    };
    let (first, first_secret) = a.create("blue", "ci", quota).await.unwrap();
    assert_eq!(
        team_of(&a, &first_secret),
        Some(Team::Named("blue".into())),
        "usable at once on the replica that made it"
    );
    eventually("the other replica sees the new key", || {
        team_of(&b, &first_secret).is_some()
    })
    .await;
    let (_, seen) = b.authenticate(&first_secret).unwrap();
    assert_eq!(seen.unwrap().quota, quota);
    assert_eq!(team_of(&b, ADMIN), Some(Team::Admin));
    assert!(b.authenticate("e2b_not_a_key").is_none());

    // Both replicas add keys at the same time: none is lost.
    let adds = (0..8).flat_map(|i| {
        let team = format!("team-{i}");
        [(&a, team.clone()), (&b, team)]
    });
    let created =
        futures::future::join_all(adds.map(|(store, team)| async move {
            store.create(&team, "burst", Quota::default()).await
        }))
        .await;
    let mut all: Vec<(String, String)> = created
        .into_iter()
        .map(|r| {
            let (k, secret) = r.expect("a concurrent add failed");
            (k.id, secret)
        })
        .collect();
    all.push((first.id.clone(), first_secret.clone()));
    for store in [&a, &b] {
        eventually("every concurrently added key on both replicas", || {
            all.iter().all(|(_, s)| store.authenticate(s).is_some())
        })
        .await;
    }
    let stored = secrets.get(DEFAULT_KEY_SECRET).await.unwrap();
    let ids: BTreeSet<&String> = stored.data.as_ref().unwrap().keys().collect();
    let wanted: BTreeSet<&String> = all.iter().map(|(id, _)| id).collect();
    assert_eq!(ids, wanted, "one entry per key, none lost");

    // Only hashes are stored: no key, and not the admin key, appears in the Secret.
    for (id, bytes) in stored.data.as_ref().unwrap() {
        let text = String::from_utf8(bytes.0.clone()).unwrap();
        for (_, secret) in &all {
            assert!(!text.contains(secret.as_str()), "entry {id} holds a key");
        }
        assert!(!text.contains(ADMIN), "entry {id} holds the admin key");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"].as_str(), Some(id.as_str()));
        assert!(v["hash"].as_str().is_some_and(|h| h.len() == 64));
    }
    let raw = serde_json::to_string(&stored).unwrap();
    assert!(!raw.contains(ADMIN) && !raw.contains(&first_secret));

    // A delete through one replica reaches the other.
    assert!(b.delete(&first.id).await.unwrap());
    assert!(b.authenticate(&first_secret).is_none());
    eventually("the other replica forgets the deleted key", || {
        a.authenticate(&first_secret).is_none()
    })
    .await;
    assert!(!a.delete(&first.id).await.unwrap(), "already gone");
    let stored = secrets.get(DEFAULT_KEY_SECRET).await.unwrap();
    assert!(!stored.data.unwrap().contains_key(&first.id));
    // The other keys are untouched.
    assert!(
        all.iter()
            .filter(|(id, _)| *id != first.id)
            .all(|(_, s)| a.authenticate(s).is_some() && b.authenticate(s).is_some())
    );

    // A third replica started now loads every key before it serves.
    let c = replica(&client, &ns).await;
    assert_eq!(c.list().len(), all.len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_in_a_secret_are_shared_by_replicas() {
    let path = Path::new(TESTBED_KUBECONFIG);
    if !path.exists() {
        eprintln!(
            "SKIPPED api_keys_in_a_secret_are_shared_by_replicas: no Kubernetes test bed \
             ({TESTBED_KUBECONFIG} is absent; start one with `hack/testbed up`)"
        );
        return;
    }
    let client = client(path).await;
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    let ns = format!("pdk-kube-store-{suffix}-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("creating the test namespace");
    // The scenario runs as its own task so that a failed assertion still deletes the namespace.
    let outcome = tokio::spawn(scenario(client.clone(), ns.clone())).await;
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("deleting the test namespace");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
