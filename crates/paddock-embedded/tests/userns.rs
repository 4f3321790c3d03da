//! Root-only tests of sandboxes in user namespaces (issue 14): sandbox root is an
//! unprivileged host uid.

mod support;

use std::os::unix::fs::MetadataExt;

use paddock_embedded::userns::IdRange;
use paddock_infra::{CreateSandbox, Infra};
use support::sh;

fn base() -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        ..Default::default()
    }
}

/// Issue 14 (user namespace by default), security review H1/C1/M1: sandbox root is the
/// range's base uid on the host. Its `/proc/self/uid_map` shows the mapping; a file it plants
/// in its root filesystem (setuid, even) belongs to that host uid, so it gives a host user no
/// root; it cannot make device nodes (CAP_MKNOD counts only in the host's user namespace);
/// and the template's files still belong to root inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_root_is_an_unprivileged_host_uid() {
    if support::skip_unless_root() {
        return;
    }
    support::with_infra(0, |infra, env| async move {
        let range = env.cfg.userns.expect("user namespaces are on by default");
        assert_eq!(range, IdRange::default());
        let sbx = infra.create(base()).await.expect("create");
        let (code, out, err) = sh(
            &infra,
            &sbx.id,
            "cat /proc/self/uid_map; id -u; stat -c '%u %g' / /etc/passwd /usr/bin/su; \
             cp /bin/true /planted && chmod 4755 /planted && echo planted; \
             mknod /tmp/null2 c 1 3 2>/dev/null && echo mknod-ok || echo mknod-refused; \
             su -s /bin/sh -c 'id -u' nobody",
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let lines: Vec<&str> = out.lines().collect();
        let map: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(map, ["0", "100000", "65536"], "{out}");
        assert_eq!(lines[1], "0", "{out}");
        // Template files (host root's on disk) are root's inside, through the idmapping.
        assert_eq!(&lines[2..5], ["0 0", "0 0", "0 0"], "{out}");
        assert_eq!(lines[5], "planted", "{out}");
        assert_eq!(lines[6], "mknod-refused", "{out}");
        // Other users of the range work too (`su` switches to nobody, 65534 inside).
        assert_eq!(lines[7], "65534", "{out}");

        let planted = env.run_dir(&sbx.id).join("disk/upper/planted");
        let meta = std::fs::metadata(&planted).expect("planted file in the writable layer");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (100_000, 100_000),
            "sandbox root's file belongs to the mapped host uid"
        );
        assert_eq!(
            meta.mode() & 0o4000,
            0o4000,
            "setuid bit kept, but for uid 100000"
        );

        infra.kill(&sbx.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// `userns = None` (`--userns off`) runs sandboxes without one: root inside is host root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespaces_can_be_turned_off() {
    if support::skip_unless_root() {
        return;
    }
    let mut env = support::Env::new(1);
    env.cfg.userns = None;
    support::with_env(env, |infra, env| async move {
        let sbx = infra.create(base()).await.expect("create");
        let (code, out, err) = sh(&infra, &sbx.id, "cat /proc/self/uid_map; touch /x").await;
        assert_eq!(code, 0, "{err}");
        let map: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(map, ["0", "0", "4294967295"], "{out}");
        let meta = std::fs::metadata(env.run_dir(&sbx.id).join("disk/upper/x")).expect("file");
        assert_eq!(meta.uid(), 0);
        infra.kill(&sbx.id).await.expect("kill");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    })
    .await;
}

/// A range that would map host root, or too few ids, is refused when parsed.
#[test]
fn bad_ranges_are_refused() {
    assert!(IdRange::parse_setting("0:65536").is_err());
    assert!(IdRange::parse_setting("100000:10").is_err());
    assert_eq!(IdRange::parse_setting("off"), Ok(None));
}

/// The idmapped views of a sandbox's layers are made where they are told (the sandbox's disk,
/// not the data dir) and detached once its overlay is up; their directories stay (empty, no
/// mount points) until the sandbox's disk goes: a create frees no inode, where every one freed
/// made later creates' inode allocations dearer (see `mounts::mount_overlay_mapped`). The
/// overlay keeps its layers.
#[test]
fn idmapped_layer_views_are_detached_and_their_directories_kept() {
    use paddock_embedded::mounts;
    use paddock_embedded::userns::Userns;
    if support::skip_unless_root() {
        return;
    }
    /// Unmounts and removes the tree at the end, a failed assertion's too.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = mounts::unmount_all_under(&self.0);
            let _ = mounts::remove_tree(&self.0);
        }
    }
    let d = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let _cleanup = Cleanup(d.path().to_owned());
    let ns = Userns::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_paddock-embedded")),
        IdRange::default(),
        d.path(),
    )
    .expect("user namespace");
    let (lower, sandbox) = (d.path().join("layer"), d.path().join("sandbox"));
    std::fs::create_dir_all(lower.join("etc")).expect("mkdir");
    std::fs::write(lower.join("etc/hostname"), "template\n").expect("write");
    let (upper, work, root) = (
        sandbox.join("disk/upper"),
        sandbox.join("disk/work"),
        sandbox.join("rootfs"),
    );
    for p in [&upper, &work, &root] {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    let views = sandbox.join("disk/views");
    mounts::mount_overlay_mapped(
        std::slice::from_ref(&lower),
        &upper,
        &work,
        &views,
        &root,
        Some(&ns),
    )
    .expect("overlay");
    assert!(
        !sandbox.join("rootfs.lowers").exists(),
        "nothing beside the root"
    );
    let view = views.join("0");
    assert!(view.is_dir(), "the view's directory stays");
    assert!(!mounts::is_mount_point(&view), "the view is detached");
    assert_eq!(std::fs::read_dir(&view).expect("read").count(), 0);
    assert_eq!(mounts::mounts_under(&sandbox), vec![root.clone()]);
    // The overlay still shows the layer's files.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).expect("read"),
        "template\n"
    );
    mounts::unmount_all_under(&sandbox).expect("unmount");
    mounts::remove_tree(&sandbox).expect("remove");
    assert!(!sandbox.exists());
    assert_eq!(
        std::fs::read_to_string(lower.join("etc/hostname")).expect("the layer is untouched"),
        "template\n"
    );
}
