//! Runtime injection: a Sandbox whose `runtimes` names `agent-runtime` gets Paddock's runtime
//! in whatever image its first container runs, as the original's `sandbox-injection-config`
//! does for envd.
//!
//! * an init container `runtime` (the runtime image) copies the static binary into an emptyDir
//!   with `paddock-runtime --install-to`;
//! * the first container mounts that volume and starts the copy from a `postStart` exec hook
//!   with `--detach`, which returns once the runtime listens on 49983;
//! * unless the container already has one, a readiness probe on the runtime's `/health`, so
//!   the Sandbox becomes ready only when the runtime answers.
//!
//! The original uses a restartable (sidecar) init container; a plain one suffices here because
//! the copy is done once it exits, and it holds no process for the Pod's lifetime. Neither step
//! needs a shell in either image.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler,
    PodSpec, Probe, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use paddock_crds::RuntimeConfig;

/// The `runtimes` entry that asks for the runtime (the original's name).
pub const AGENT_RUNTIME: &str = "agent-runtime";
/// The init container that installs the runtime (the name the original's claim logic checks).
pub const INIT_CONTAINER: &str = "runtime";
/// The emptyDir shared by the init container and the main container.
pub const VOLUME: &str = "paddock-runtime";
/// Where that volume is mounted in both containers.
pub const MOUNT_PATH: &str = "/mnt/paddock-runtime";
/// The runtime image used when the controller is given none.
pub const DEFAULT_RUNTIME_IMAGE: &str = "paddock.local/paddock-runtime:0.1.0";

/// Whether `runtimes` asks for the agent runtime.
pub fn wants_runtime(runtimes: Option<&[RuntimeConfig]>) -> bool {
    runtimes
        .unwrap_or_default()
        .iter()
        .any(|r| r.name == AGENT_RUNTIME)
}

/// Adds the runtime to `spec` when `runtimes` asks for it. Idempotent: every piece is added only
/// if no piece of that name is there yet, so injecting twice (or into a template that already
/// carries it) changes nothing. A spec without containers is left alone (the webhook rejects it).
pub fn inject_runtime(spec: &mut PodSpec, runtimes: Option<&[RuntimeConfig]>, image: &str) {
    if !wants_runtime(runtimes) || spec.containers.is_empty() {
        return;
    }
    let mount = VolumeMount {
        name: VOLUME.into(),
        mount_path: MOUNT_PATH.into(),
        ..Default::default()
    };

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == VOLUME) {
        volumes.push(Volume {
            name: VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }

    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    if !inits.iter().any(|c| c.name == INIT_CONTAINER) {
        inits.push(Container {
            name: INIT_CONTAINER.into(),
            image: Some(image.into()),
            image_pull_policy: Some("IfNotPresent".into()),
            // The image's entrypoint is the runtime; only the arguments change.
            args: Some(vec!["--install-to".into(), MOUNT_PATH.into()]),
            volume_mounts: Some(vec![mount.clone()]),
            ..Default::default()
        });
    }

    let main = &mut spec.containers[0];
    let mounts = main.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts.iter().any(|m| m.name == VOLUME) {
        mounts.push(mount);
    }
    let lifecycle = main.lifecycle.get_or_insert_with(Lifecycle::default);
    if lifecycle.post_start.is_none() {
        lifecycle.post_start = Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(post_start_command()),
            }),
            ..Default::default()
        });
    }
    if main.readiness_probe.is_none() {
        main.readiness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::Int(i32::from(paddock_contract::RUNTIME_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(1),
            ..Default::default()
        });
    }
}

/// The hook: the installed copy, detached, logging into the shared volume (writable whatever
/// the image's filesystem is). The code interpreter is off: an arbitrary image has no kernel.
fn post_start_command() -> Vec<String> {
    [
        &format!("{MOUNT_PATH}/paddock-runtime"),
        "--detach",
        "--no-code-interpreter",
        "--log-file",
        &format!("{MOUNT_PATH}/runtime.log"),
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(names: &[&str]) -> Vec<RuntimeConfig> {
        names
            .iter()
            .map(|n| RuntimeConfig { name: (*n).into() })
            .collect()
    }

    fn spec() -> PodSpec {
        PodSpec {
            containers: vec![
                Container {
                    name: "main".into(),
                    image: Some("debian".into()),
                    volume_mounts: Some(vec![VolumeMount {
                        name: "data".into(),
                        mount_path: "/data".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                Container {
                    name: "helper".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn without_agent_runtime_nothing_changes() {
        for runtimes in [None, Some(rt(&[])), Some(rt(&["csi"]))] {
            let mut s = spec();
            inject_runtime(&mut s, runtimes.as_deref(), DEFAULT_RUNTIME_IMAGE);
            assert_eq!(s, spec());
        }
    }

    #[test]
    fn agent_runtime_adds_init_container_volume_mount_and_hook() {
        let mut s = spec();
        inject_runtime(&mut s, Some(&rt(&["csi", AGENT_RUNTIME])), "reg/rt:1");

        let vols = s.volumes.as_ref().expect("volumes");
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].name, VOLUME);
        assert!(vols[0].empty_dir.is_some());

        let init = &s.init_containers.as_ref().expect("init containers")[0];
        assert_eq!(init.name, INIT_CONTAINER);
        assert_eq!(init.image.as_deref(), Some("reg/rt:1"));
        assert_eq!(
            init.args.as_deref(),
            Some(&["--install-to".to_string(), MOUNT_PATH.to_string()][..])
        );
        assert_eq!(
            init.volume_mounts.as_ref().expect("mounts")[0].mount_path,
            MOUNT_PATH
        );

        let main = &s.containers[0];
        let mounts: Vec<_> = main
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, ["data", VOLUME], "the user's mount is kept");
        let hook = main
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(|h| h.exec.as_ref())
            .and_then(|e| e.command.as_ref())
            .expect("postStart exec");
        assert_eq!(hook[0], "/mnt/paddock-runtime/paddock-runtime");
        assert!(hook.contains(&"--detach".to_string()));
        let probe = main
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("readiness probe");
        assert_eq!(probe.port, IntOrString::Int(49983));

        // only the first container is touched
        assert_eq!(s.containers[1], spec().containers[1]);
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let runtimes = rt(&[AGENT_RUNTIME]);
        let mut once = spec();
        inject_runtime(&mut once, Some(&runtimes), DEFAULT_RUNTIME_IMAGE);
        let mut twice = once.clone();
        inject_runtime(&mut twice, Some(&runtimes), DEFAULT_RUNTIME_IMAGE);
        assert_eq!(once, twice);
    }

    #[test]
    fn the_users_own_probe_and_hook_are_kept() {
        let mut s = spec();
        let probe = Probe {
            period_seconds: Some(7),
            ..Default::default()
        };
        let hook = LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        s.containers[0].readiness_probe = Some(probe.clone());
        s.containers[0].lifecycle = Some(Lifecycle {
            post_start: Some(hook.clone()),
            ..Default::default()
        });
        inject_runtime(&mut s, Some(&rt(&[AGENT_RUNTIME])), DEFAULT_RUNTIME_IMAGE);
        assert_eq!(s.containers[0].readiness_probe, Some(probe));
        assert_eq!(
            s.containers[0]
                .lifecycle
                .as_ref()
                .and_then(|l| l.post_start.clone()),
            Some(hook)
        );
        // the install still happens, so the user's hook may start the runtime itself
        assert_eq!(s.init_containers.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn a_spec_without_containers_is_left_alone() {
        let mut s = PodSpec::default();
        inject_runtime(&mut s, Some(&rt(&[AGENT_RUNTIME])), DEFAULT_RUNTIME_IMAGE);
        assert_eq!(s, PodSpec::default());
    }
}
