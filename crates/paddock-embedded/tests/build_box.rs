//! Template build steps run in a container with a sandbox's isolation, not in a chroot as host
//! root (security review M6). Root only: real containers, cgroups and the sandbox bridge.
//!
//! The parent of the test templates is a small root filesystem made of host binaries, whose
//! `apt-get` is a script: the build's `apt-get update` step runs it as root, where a hostile
//! package's maintainer script would run.

mod support;

use std::path::{Path, PathBuf};

use paddock_embedded::{TemplateSource, TemplateSpec};

/// Copies host binary `bin` and the libraries `ldd` names into `root` at the same paths.
fn copy_with_libs(root: &Path, bin: &str) {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let libs = text.lines().filter_map(|l| {
        // `libc.so.6 => /lib/.../libc.so.6 (0x..)` or `/lib64/ld-linux-x86-64.so.2 (0x..)`.
        let path = l.split("=>").last()?.split_whitespace().next()?;
        path.starts_with('/').then(|| path.to_owned())
    });
    for p in std::iter::once(bin.to_owned()).chain(libs) {
        let dest = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        // Contents, not links: the host's symlinks may point outside `root`.
        std::fs::copy(std::fs::canonicalize(&p).expect("resolve"), &dest).expect("copy");
    }
}

/// A root filesystem with `sh`, `mknod`, `mount` and `sleep` from the host and `apt-get` = `script`.
fn rootfs(dir: &Path, script: &str) -> PathBuf {
    let root = dir.to_owned();
    for d in ["proc", "dev", "sys", "tmp", "etc", "mnt", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("etc/resolv.conf"), "").expect("resolv.conf");
    for bin in ["/bin/sh", "/usr/bin/mknod", "/bin/mount", "/bin/sleep"] {
        copy_with_libs(&root, bin);
    }
    let apt = root.join("usr/bin/apt-get");
    std::fs::write(&apt, script).expect("script");
    std::fs::set_permissions(&apt, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    root
}

/// `major minor` of a host block device that is not a loop or RAM disk.
fn host_disk() -> (String, String) {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    let name = names.first().expect("a host disk");
    let dev = std::fs::read_to_string(format!("/sys/block/{name}/dev")).expect("dev");
    let (maj, min) = dev.trim().split_once(':').expect("major:minor");
    (maj.to_owned(), min.to_owned())
}

/// Two templates: `<name>-root` (the rootfs dir) and `<name>` (a layer on it, no packages).
fn add_templates(env: &mut support::Env, name: &str, root: PathBuf) {
    env.cfg.templates.push(TemplateSpec {
        name: format!("{name}-root"),
        source: TemplateSource::RootfsDir(root),
        ..TemplateSpec::base()
    });
    env.cfg.templates.push(TemplateSpec {
        name: name.to_owned(),
        source: TemplateSource::Layer {
            parent: format!("{name}-root"),
            apt: vec![],
            pip: vec![],
        },
        ..TemplateSpec::base()
    });
}

/// Builds `name` on a blocking thread, collecting the progress lines.
async fn build(
    infra: &paddock_embedded::EmbeddedInfra,
    name: &str,
) -> (
    Result<Vec<PathBuf>, paddock_embedded::TemplateError>,
    Vec<String>,
) {
    let (infra, name) = (infra.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        let lines = std::sync::Mutex::new(Vec::new());
        let r = infra.templates().build(&name, &|l| {
            lines.lock().expect("lock").push(l.to_owned());
        });
        (r, lines.into_inner().expect("lock"))
    })
    .await
    .expect("join")
}

/// What a finished build may leave in the cache: the built layer dirs only.
fn cache_leftovers(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(cache).expect("cache").flatten() {
        if !t.path().is_dir() {
            continue;
        }
        for b in std::fs::read_dir(t.path()).expect("template dir").flatten() {
            let entries: Vec<String> = std::fs::read_dir(b.path())
                .expect("build dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if b.path().extension().is_some() || entries != ["layer"] {
                out.push(format!("{}: {entries:?}", b.path().display()));
            }
        }
    }
    out
}

/// Security review M6: a build step runs as root in a container like a sandbox, not as host
/// root in a chroot. The step tries to write to the host through `/proc/<pid>/root`, see host
/// pids, mount a file system and open the host's disk; each fails, while its write into the
/// layer lands in the built layer, its output reaches the progress callback, and nothing of
/// the build is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn m6_build_steps_cannot_reach_the_host() {
    if support::skip_unless_root() {
        return;
    }
    let mut env = support::Env::new(0);
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    env.cfg.template_cache = scratch.path().join("cache");
    let host_file = scratch.path().join("written-through-proc-1-root");
    let (maj, min) = host_disk();
    let me = std::process::id();
    let script = format!(
        r#"#!/bin/sh
# Only `apt-get update` does anything; `apt-get clean` is a no-op.
[ "$1" = update ] || exit 0
R=/m6
echo m6-step-output
# Legitimate: a write into the layer.
echo built > /etc/m6-built
# 1. Through /proc/<pid>/root to the host's file system: PID 1's, and the test process's
#    (some hosts refuse /proc/1/root even to root).
( echo pwned > /proc/1/root{host} )
( echo pwned > /proc/{me}/root{host} )
echo done > /m6-proc-root-tried
# 2. Host pids: the test process, and how many pids there are at all.
if [ -e /proc/{me} ]; then echo visible; else echo hidden; fi > /m6-test-pid
n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n > /m6-pid-count
# 3. Mounting.
if mount -t tmpfs m6 /mnt; then echo mounted; else echo refused; fi > /m6-mount
# 4. The host's disk, through nodes made where device nodes work: the step's /dev, and the
#    file system it mounted, if it could.
r=refused
for d in /dev /mnt; do
  mknod $d/m6-disk b {maj} {min}
  if ( exec 3< $d/m6-disk ); then r="opened in $d"; fi
done
echo "$r" > /m6-disk-open
# 5. Capabilities.
while read k v; do [ "$k" = CapEff: ] && echo "$v"; done < /proc/self/status > /m6-capeff
# 6. The sandboxes' seccomp filter, one of it.
while read k v; do case "$k" in Seccomp:|Seccomp_filters:) echo "$k$v";; esac; done < /proc/self/status > /m6-seccomp
exit 0
"#,
        host = host_file.display(),
    );
    let root_dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    add_templates(&mut env, "m6", rootfs(root_dir.path(), &script));
    let infra = env.start().await;

    let (r, lines) = build(&infra, "m6").await;
    let layers = r.expect("the build succeeds");
    let layer = &layers[0];
    let read = |f: &str| {
        std::fs::read_to_string(layer.join(f))
            .unwrap_or_else(|e| panic!("{f} missing from the layer: {e}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("etc/m6-built"),
        "built",
        "the layer keeps the step's writes"
    );
    assert_eq!(read("m6-proc-root-tried"), "done");
    // Every way out the step found, so one run shows them all.
    let mut escapes = Vec::new();
    if host_file.exists() {
        escapes.push(format!(
            "wrote {} on the host through /proc/<pid>/root",
            host_file.display()
        ));
    }
    if read("m6-test-pid") != "hidden" {
        escapes.push(format!("sees the host pid {me}"));
    }
    let pids: u32 = read("m6-pid-count").parse().expect("count");
    if pids >= 16 {
        escapes.push(format!("sees {pids} pids: the host's"));
    }
    if read("m6-mount") != "refused" {
        escapes.push("mounted a file system".into());
    }
    let disk = read("m6-disk-open");
    if disk != "refused" {
        escapes.push(format!("host disk {maj}:{min}: {disk}"));
    }
    // Docker's 14 capabilities, nothing more (CAP_SYS_ADMIN, CAP_SYS_PTRACE, ... dropped).
    let caps = read("m6-capeff");
    if caps != "00000000a80425fb" {
        escapes.push(format!("effective capabilities {caps}"));
    }
    let seccomp = read("m6-seccomp");
    if seccomp != "Seccomp:2\nSeccomp_filters:1" {
        escapes.push(format!("seccomp {seccomp:?}"));
    }
    assert!(escapes.is_empty(), "the build step {escapes:#?}");
    assert!(
        !layer.join(".paddock").exists(),
        "the init's mount point is no part of the layer"
    );
    assert!(
        lines.iter().any(|l| l == "m6-step-output"),
        "the step's output reaches progress: {lines:?}"
    );

    let leaks = env.leaks().await;
    assert!(leaks.is_empty(), "left behind: {leaks:?}");
    let left = cache_leftovers(&env.cfg.template_cache);
    assert!(left.is_empty(), "left in the cache: {left:?}");
    infra.kill_all().await.expect("kill all");
}

/// Security review M6: a failing step fails the build with its exit code and last output,
/// and leaves no container state, cgroup, veth, mount or half-built layer.
#[tokio::test(flavor = "multi_thread")]
async fn m6_a_failing_build_step_leaves_nothing_behind() {
    if support::skip_unless_root() {
        return;
    }
    let mut env = support::Env::new(1);
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    env.cfg.template_cache = scratch.path().join("cache");
    let script = "#!/bin/sh\necho m6-before-failing\necho m6-failing-step >&2\nexit 3\n";
    let root_dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    add_templates(&mut env, "m6fail", rootfs(root_dir.path(), script));
    let infra = env.start().await;

    let (r, lines) = build(&infra, "m6fail").await;
    let err = r.expect_err("the step fails").to_string();
    assert!(err.contains("apt-get update"), "{err}");
    assert!(err.contains("exit code 3"), "{err}");
    assert!(err.contains("m6-failing-step"), "{err}");
    assert!(lines.iter().any(|l| l == "m6-before-failing"), "{lines:?}");
    assert_eq!(
        infra.templates().layers("m6fail").expect("layers"),
        None,
        "nothing looks built"
    );
    let leaks = env.leaks().await;
    assert!(leaks.is_empty(), "left behind: {leaks:?}");
    let left = cache_leftovers(&env.cfg.template_cache);
    assert!(left.is_empty(), "left in the cache: {left:?}");
    infra.kill_all().await.expect("kill all");
}

/// Security review M6: a build step does not outlive the process that runs it. The helper
/// runs the container while its caller holds the helper's stdin; when that closes mid-step
/// (the caller died), the step is killed and its cgroup empties.
#[test]
fn m6_a_build_step_dies_with_its_caller() {
    use paddock_embedded::container;
    use std::io::{BufRead, BufReader, Write};
    if support::skip_unless_root() {
        return;
    }
    let env = support::Env::new(2);
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let root = rootfs(
        &scratch.path().join("root"),
        "#!/bin/sh\necho m6-sleeping\nexec sleep 1000\n",
    );
    let cgroups = paddock_cgroups::Hierarchy::detect(&env.cfg.cgroup_parent).expect("cgroups");
    let cg = cgroups.sandbox("build-m6-caller");
    cg.create().expect("cgroup");
    let args = vec!["apt-get".to_string(), "update".into()];
    let spec = paddock_embedded::spec::build_job(&paddock_embedded::spec::JobInput {
        hostname: "m6",
        rootfs: &root,
        cgroup_path: cg.oci_path(),
        init_binary: &env.cfg.init_binary,
        args: &args,
        env: &Default::default(),
        resolv_conf: None,
        tmp_bytes: 1 << 20,
        seccomp: support::seccomp_program(),
    });
    let bundle = scratch.path().join("bundle");
    paddock_embedded::spec::write(&bundle, &spec).expect("spec");
    let state = scratch.path().join("state");
    let mut helper = std::process::Command::new(env.cfg.helper_binary.clone())
        .arg(container::HELPER_ARG)
        .arg(container::RUN_CMD)
        .arg(&state)
        .arg("build-m6-caller")
        .arg(&bundle)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("helper");
    let mut stdin = helper.stdin.take().expect("stdin");
    let mut stderr = BufReader::new(helper.stderr.take().expect("stderr")).lines();
    let mut stdout = BufReader::new(helper.stdout.take().expect("stdout")).lines();
    let created = stderr.next().expect("a report").expect("read");
    assert!(created.starts_with(container::RUN_CREATED), "{created}");
    writeln!(stdin, "{}", container::RUN_START).expect("start");
    let first = stdout.next().expect("output").expect("read");
    assert_eq!(first, "m6-sleeping");
    assert!(!cg.pids().expect("pids").is_empty(), "the step runs");
    // The caller goes away.
    drop(stdin);
    let rest: Vec<String> = stderr.map_while(Result::ok).collect();
    assert_eq!(
        rest,
        [format!("{}137", container::RUN_EXIT)],
        "killed (128 + SIGKILL)"
    );
    assert!(helper.wait().expect("wait").success());
    assert_eq!(
        cg.pids().expect("pids"),
        Vec::<i32>::new(),
        "nothing left running"
    );
    assert!(
        !state.join("build-m6-caller").exists(),
        "libcontainer state dropped"
    );
    cg.remove().expect("remove cgroup");
}
