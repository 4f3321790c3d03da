//! Templates from an OCI image layout and from a local directory, run as real sandboxes.

mod support;

use std::io::Write;
use std::path::Path;

use paddock_embedded::{TemplateSource, TemplateSpec};
use paddock_infra::{CreateSandbox, Infra};
use sha2::Digest;

fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match content {
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, c.as_bytes())
                    .expect("append file");
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, std::io::empty())
                    .expect("append dir");
            }
        }
    }
    b.into_inner().expect("tar")
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = hex::encode(sha2::Sha256::digest(data));
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).expect("blob");
    (format!("sha256:{hex}"), data.len())
}

/// A two-layer image: the second layer (gzipped) overwrites a file, deletes one with a
/// whiteout and replaces a directory's content with an opaque marker.
fn build_layout(layout: &Path) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let l1 = tar_of(&[
        ("etc", None),
        ("etc/a", Some("one")),
        ("etc/b", Some("gone soon")),
        ("opt", None),
        ("opt/dir", None),
        ("opt/dir/x", Some("x")),
        ("opt/dir/y", Some("y")),
    ]);
    let l2_tar = tar_of(&[
        ("etc/a", Some("two")),
        ("etc/.wh.b", Some("")),
        ("opt/dir/.wh..wh..opq", Some("")),
        ("opt/dir/z", Some("z")),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&l2_tar).expect("gzip");
    let l2 = gz.finish().expect("gzip");
    let (d1, s1) = put_blob(layout, &l1);
    let (d2, s2) = put_blob(layout, &l2);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d1.clone(), format!("sha256:{}", hex::encode(sha2::Sha256::digest(&l2_tar)))]},
        "config": {}
    });
    let (dc, sc) = put_blob(layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": sc},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d1, "size": s1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d2, "size": s2},
        ]
    });
    let (dm, sm) = put_blob(layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dm, "size": sm,
            "annotations": {"org.opencontainers.image.ref.name": "v1"}
        }]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_and_directory_templates_run() {
    if support::skip_unless_root() {
        return;
    }
    let src = tempfile::tempdir().expect("tempdir");
    let layout = src.path().join("layout");
    build_layout(&layout);
    let dir_root = src.path().join("dirroot");
    std::fs::create_dir_all(dir_root.join("etc")).expect("mkdir");
    std::fs::write(dir_root.join("etc/from-dir"), "yes").expect("write");

    let mut env = support::Env::new(30);
    // These root filesystems are nearly empty: use the stand-in, which needs nothing from them.
    env.cfg.runtime_binary = support::standin_binary();
    // A private cache: these templates are built by the test itself.
    env.cfg.template_cache = env.dir.path().join("templates");
    env.cfg.templates.push(TemplateSpec {
        name: "oci".into(),
        source: TemplateSource::OciLayout {
            path: layout.clone(),
            reference: Some("v1".into()),
        },
        pool_size: 0,
        ..TemplateSpec::base()
    });
    env.cfg.templates.push(TemplateSpec {
        name: "dir".into(),
        source: TemplateSource::RootfsDir(dir_root.clone()),
        pool_size: 0,
        ..TemplateSpec::base()
    });
    env.cfg.templates.push(TemplateSpec {
        name: "badref".into(),
        source: TemplateSource::OciLayout {
            path: layout.clone(),
            reference: Some("nope".into()),
        },
        pool_size: 0,
        ..TemplateSpec::base()
    });
    let env = std::sync::Arc::new(env);
    let infra = env.start().await;
    let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        let s = infra
            .create(CreateSandbox {
                template: "oci".into(),
                ..Default::default()
            })
            .await
            .expect("create oci");
        let root = env.run_dir(&s.id).join("rootfs");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/a")).expect("a"),
            "two",
            "later layer wins"
        );
        assert!(!root.join("etc/b").exists(), "whiteout honoured");
        let mut names: Vec<String> = std::fs::read_dir(root.join("opt/dir"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["z".to_string()], "opaque directory honoured");
        assert!(infra.get(&s.id).await.is_ok());

        let d = infra
            .create(CreateSandbox {
                template: "dir".into(),
                ..Default::default()
            })
            .await
            .expect("create dir");
        let root = env.run_dir(&d.id).join("rootfs");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/from-dir")).expect("from-dir"),
            "yes"
        );
        // Writes land in the sandbox's upper layer, never in the template directory.
        std::fs::write(root.join("etc/new"), "x").expect("write in sandbox root");
        assert!(!dir_root.join("etc/new").exists());

        let e = infra
            .create(CreateSandbox {
                template: "badref".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad ref");
        assert!(e.to_string().contains("no manifest"), "{e}");
        assert!(
            !env.dir
                .path()
                .join("templates/badref")
                .read_dir()
                .map(|mut d| d.next().is_some())
                .unwrap_or(false),
            "failed build left files"
        );

        infra.kill_all().await.expect("kill all");
        assert_eq!(env.leaks().await, Vec::<String>::new());
    }))
    .await;
    env.cleanup(Some(&infra)).await;
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
