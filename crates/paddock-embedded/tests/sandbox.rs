//! Root-only tests against real namespaces, cgroups, overlayfs and netfilter.
//! They build (once, cached) the `base` template with debootstrap.

mod support;

use support::sh;

use paddock_infra::{CreateSandbox, Infra, InfraError, Limits, SandboxState};

fn req(template: &str) -> CreateSandbox {
    CreateSandbox {
        template: template.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_kill_leaves_nothing_behind() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(1, |infra, env| async move {
        let info = infra.create(req("base")).await.expect("create");
        assert_eq!(info.state, SandboxState::Running);
        let (code, out, err) = sh(&infra, &info.id, "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; rt=$(cut -d' ' -f1 /proc/1/task/1/children); echo \"runtime $(tr '\\0' ' ' < /proc/$rt/cmdline)\"; grep Seccomp /proc/1/status; grep Seccomp: /proc/self/status; echo \"runtime $(grep Seccomp: /proc/$rt/status)\"; grep CapEff /proc/self/status; id -u").await;
        assert_eq!(code, 0, "stderr: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], info.id.as_str(), "hostname is the sandbox id");
        assert!(lines[1].starts_with("/.paddock/init -- /.paddock/paddock-runtime"), "{out}");
        // The init's child is the runtime (not pid 2: the boot-id hook ran first).
        assert!(out.contains("runtime /.paddock/paddock-runtime"), "{out}");
        // The init and the runtime run under the seccomp filter (exec'd helpers do not: see
        // `EmbeddedInfra::exec`).
        assert!(out.contains("\nSeccomp:\t2\n"), "{out}");
        // Exactly one filter: the profile compiled at start, installed by the init before it
        // execs tini (libcontainer compiles none of its own).
        assert!(out.contains("\nSeccomp_filters:\t1\n"), "{out}");
        assert!(out.contains("runtime Seccomp:\t2"), "{out}");
        assert!(out.contains("CapEff:\t00000000a80425fb"), "docker default caps: {out}");
        // Denied by the seccomp filter / missing capabilities.
        let (code, _, err) = sh(&infra, &info.id, "mount -t tmpfs none /mnt").await;
        assert_ne!(code, 0, "mount must fail: {err}");
        let (code, _, _) = sh(&infra, &info.id, "unshare -n true").await;
        assert_ne!(code, 0, "unshare must fail");
        // Masked paths.
        let (_, out, err) = sh(&infra, &info.id, "wc -c < /proc/timer_list; echo x > /proc/sys/kernel/domainname").await;
        assert_eq!(out.trim(), "0", "timer_list is masked: {err}");
        assert!(err.contains("Read-only file system"), "/proc/sys is read-only: {err}");

        assert_eq!(infra.list().await.expect("list").len(), 1);
        infra.kill(&info.id).await.expect("kill");
        assert!(matches!(infra.get(&info.id).await, Err(InfraError::NotFound(_))));
        assert!(matches!(infra.kill(&info.id).await, Err(InfraError::NotFound(_))));
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_cleanly() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(2, |infra, env| async move {
        let e = infra
            .create(req("nope"))
            .await
            .expect_err("unknown template");
        assert!(
            matches!(e, InfraError::UnknownTemplate(ref n) if n == "nope"),
            "{e}"
        );
        let bad = CreateSandbox {
            limits: Some(Limits {
                pids: 0,
                ..Limits::default()
            }),
            ..req("base")
        };
        let e = infra.create(bad).await.expect_err("impossible limits");
        assert!(matches!(e, InfraError::InvalidLimits(_)), "{e}");
        assert!(e.is_client_error());
        // The pools are empty here: a create that forbids a cold start is refused at once,
        // and starts nothing.
        let e = infra
            .create(CreateSandbox {
                create_on_no_stock: false,
                ..req("base")
            })
            .await
            .expect_err("no stock");
        assert!(
            matches!(e, InfraError::NoStock { ref template } if template == "base"),
            "{e}"
        );
        assert!(infra.list().await.expect("list").is_empty());
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}
