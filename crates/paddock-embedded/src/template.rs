//! Templates: recipes for root filesystems, built once and cached under the data dir.
//!
//! A built template is a list of read-only layer directories (topmost first) that sandboxes use
//! as overlayfs lower layers. Layer `k` of template `t` lives at
//! `<data>/templates/<t>/<recipe hash>/layer`; the hash covers the recipe and the parent's
//! hash, so changing a recipe (or its parent's) rebuilds it, and nothing else does.
//! A build writes to `<hash>.tmp` and renames it into place only when complete, so a build that
//! fails half way leaves nothing that looks built.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;

use paddock_infra::Limits;
use sha2::{Digest, Sha256};

use crate::build_container::BuildBox;
use crate::mounts;

/// Debian suite and mirror used by the built-in templates.
pub const DEBIAN_SUITE: &str = "bookworm";
/// Debian mirror used by the built-in templates.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Where a template's root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// `debootstrap --variant=minbase --include=<packages>`.
    Debootstrap {
        /// Debian suite.
        suite: String,
        /// Debian mirror URL.
        mirror: String,
        /// Extra packages.
        packages: Vec<String>,
    },
    /// Another template plus packages installed with apt (and pip for what Debian lacks).
    Layer {
        /// Template built on.
        parent: String,
        /// Debian packages to install.
        apt: Vec<String>,
        /// Python packages to install with pip (`--break-system-packages`).
        pip: Vec<String>,
    },
    /// A root filesystem directory on this host, used in place (never written to).
    RootfsDir(PathBuf),
    /// A tarball (optionally gzipped) of a root filesystem, unpacked once.
    Tarball(PathBuf),
    /// An image in a local OCI image layout directory; `reference` picks a manifest by its
    /// `org.opencontainers.image.ref.name` annotation (the first manifest if `None`).
    OciLayout {
        /// The layout directory (holds `oci-layout` and `index.json`).
        path: PathBuf,
        /// Tag to pick.
        reference: Option<String>,
    },
}

/// A template: where its rootfs comes from and how its sandboxes run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSpec {
    /// Name (`base`, `code-interpreter-v1`, ...).
    pub name: String,
    /// Root filesystem recipe.
    pub source: TemplateSource,
    /// Default limits of its sandboxes.
    pub limits: Limits,
    /// Environment given to the sandbox's runtime.
    pub env: BTreeMap<String, String>,
    /// `uid[:gid]` the runtime runs as (root if `None`).
    pub user: Option<String>,
    /// Warm pool size.
    pub pool_size: usize,
}

impl TemplateSpec {
    /// The built-in `base` template.
    pub fn base() -> Self {
        Self {
            name: "base".into(),
            source: TemplateSource::Debootstrap {
                suite: DEBIAN_SUITE.into(),
                mirror: DEBIAN_MIRROR.into(),
                packages: [
                    "bash",
                    "coreutils",
                    "procps",
                    "python3",
                    "curl",
                    "ca-certificates",
                ]
                .map(String::from)
                .to_vec(),
            },
            limits: Limits {
                disk_bytes: Some(crate::config::DEFAULT_DISK_BYTES),
                ..Limits::default()
            },
            env: BTreeMap::new(),
            user: None,
            pool_size: 2,
        }
    }

    /// The built-in `code-interpreter-v1` template: `base` plus a Jupyter kernel and the usual
    /// data libraries, all from Debian.
    pub fn code_interpreter() -> Self {
        Self {
            name: "code-interpreter-v1".into(),
            source: TemplateSource::Layer {
                parent: "base".into(),
                apt: [
                    "python3-ipykernel",
                    "python3-jupyter-client",
                    "python3-numpy",
                    "python3-pandas",
                    "python3-matplotlib",
                ]
                .map(String::from)
                .to_vec(),
                pip: Vec::new(),
            },
            ..Self::base()
        }
    }

    fn recipe(&self) -> String {
        // Debug output of the source is stable for a given recipe; bump the prefix to force
        // rebuilds when the build procedure itself changes.
        format!("paddock-template-v1\n{:?}", self.source)
    }
}

/// Errors of template lookups and builds.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No template of that name.
    #[error("unknown template {0:?}")]
    Unknown(String),
    /// A template's parent chain loops.
    #[error("template {0:?} has a cyclic parent chain")]
    Cycle(String),
    /// A build step failed; the partial build was removed.
    #[error("building template {template:?} failed at {step}: {source}")]
    Build {
        /// Which template.
        template: String,
        /// Which step.
        step: String,
        /// What went wrong.
        #[source]
        source: BuildStepError,
    },
    /// The OCI image layout is malformed.
    #[error("OCI layout {path}: {source}")]
    Oci {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: crate::oci::OciError,
    },
    /// File system error.
    #[error("template io on {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why one step of a template build failed; [`TemplateError::Build`] names the step.
#[derive(Debug, thiserror::Error)]
pub enum BuildStepError {
    /// A build tool failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Mounting or unmounting the build's file systems failed.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// Unpacking the source tarball failed.
    #[error(transparent)]
    Unpack(Box<TemplateError>),
    /// The build finished without leaving its layer.
    #[error("layer missing after build")]
    LayerMissing,
    /// A step in the build container failed.
    #[error(transparent)]
    Container(#[from] crate::build_container::BuildContainerError),
    /// Layer steps run in containers, and this catalogue has no container set up.
    #[error(
        "layer build steps run in a container and this template catalogue has none \
         (Templates::set_build_box)"
    )]
    NoBuildBox,
}

/// Why a build tool could not be run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The output pipe could not be set up.
    #[error("{0}")]
    Pipe(#[source] std::io::Error),
    /// The tool could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line, as `Command`'s `Debug` shows it.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the tool failed.
    #[error("{0}")]
    Wait(#[source] std::io::Error),
    /// The tool exited unsuccessfully.
    #[error("{status}; last output:\n{output}")]
    Failed {
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its last lines of merged output.
        output: String,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The template catalogue and its build cache.
#[derive(Debug)]
pub struct Templates {
    dir: PathBuf,
    specs: BTreeMap<String, TemplateSpec>,
    build_lock: std::sync::Mutex<()>,
    /// Runs `Layer` steps (apt, pip) in containers; set once by the owner.
    build_box: std::sync::OnceLock<BuildBox>,
}

impl Templates {
    /// A catalogue caching builds under `dir` (normally `<data>/templates`).
    pub fn new(dir: PathBuf, specs: impl IntoIterator<Item = TemplateSpec>) -> Self {
        let specs = specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        Self {
            dir,
            specs,
            build_lock: std::sync::Mutex::new(()),
            build_box: std::sync::OnceLock::new(),
        }
    }

    /// Sets how `Layer` steps run (once; later calls are ignored). Without it a `Layer` build
    /// fails: its steps never run as host root (security review M6).
    pub fn set_build_box(&self, b: BuildBox) {
        let _ = self.build_box.set(b);
    }

    /// Adds or replaces a template.
    pub fn insert(&mut self, spec: TemplateSpec) {
        self.specs.insert(spec.name.clone(), spec);
    }

    /// Looks a template up.
    pub fn get(&self, name: &str) -> Result<&TemplateSpec, TemplateError> {
        self.specs
            .get(name)
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()))
    }

    /// All templates, by name.
    pub fn specs(&self) -> impl Iterator<Item = &TemplateSpec> {
        self.specs.values()
    }

    /// The recipe hash of a template (covers its parents).
    pub fn hash(&self, name: &str) -> Result<String, TemplateError> {
        let mut chain = Vec::new();
        let mut cur = name;
        loop {
            if chain.len() > 16 {
                return Err(TemplateError::Cycle(name.to_owned()));
            }
            let spec = self.get(cur)?;
            chain.push(spec.recipe());
            match &spec.source {
                TemplateSource::Layer { parent, .. } => cur = parent,
                _ => break,
            }
        }
        let mut h = Sha256::new();
        for r in chain.iter().rev() {
            h.update(r.as_bytes());
            h.update([0]);
        }
        Ok(hex::encode(&h.finalize()[..8]))
    }

    fn layer_dir(&self, name: &str, hash: &str) -> PathBuf {
        self.dir.join(name).join(hash)
    }

    /// The lower layers (topmost first) if the template is built.
    pub fn layers(&self, name: &str) -> Result<Option<Vec<PathBuf>>, TemplateError> {
        let spec = self.get(name)?;
        let own = match &spec.source {
            TemplateSource::RootfsDir(p) => p.clone(),
            _ => {
                let d = self.layer_dir(name, &self.hash(name)?).join("layer");
                if !d.is_dir() {
                    return Ok(None);
                }
                d
            }
        };
        let mut out = vec![own];
        if let TemplateSource::Layer { parent, .. } = &spec.source {
            match self.layers(parent)? {
                Some(p) => out.extend(p),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Builds a template (and its parents) unless cached; returns its layers.
    /// `progress` receives one line per step and tool output line.
    pub fn build(
        &self,
        name: &str,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<PathBuf>, TemplateError> {
        // A built template needs no lock: its layer directories appear by an atomic rename
        // once complete, so seeing them means they are whole. Every cold create comes here,
        // and must not queue behind another template's build (or another process's) for that.
        if let Some(layers) = self.layers(name)? {
            return Ok(layers);
        }
        // One build at a time: builds are IO-heavy and share parents. The file lock extends this
        // to every process (and every `Templates`) sharing the cache, e.g. parallel tests.
        let _guard = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(".build.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let _flock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| TemplateError::Io {
                path: lock_path.clone(),
                source: e.into(),
            })?;
        self.build_locked(name, progress)
    }

    /// The read-only layers a sandbox of template `name` is made of (topmost first): the
    /// template's (built now unless cached) under its default user's layer (see
    /// [`user_layer`]) and its login layer (see [`login_layer`]).
    pub fn sandbox_layers(
        &self,
        name: &str,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<PathBuf>, TemplateError> {
        let layers = self.build(name, progress)?;
        let own = match &self.get(name)?.source {
            // A directory used in place is not ours to add to.
            TemplateSource::RootfsDir(_) => return Ok(layers),
            _ => self.layer_dir(name, &self.hash(name)?),
        };
        let mut out = Vec::with_capacity(layers.len() + 2);
        out.extend(user_layer(&own, &layers)?);
        out.extend(login_layer(&own, &layers)?);
        out.extend(layers);
        Ok(out)
    }

    fn build_locked(
        &self,
        name: &str,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<PathBuf>, TemplateError> {
        if let Some(layers) = self.layers(name)? {
            return Ok(layers);
        }
        let spec = self.get(name)?.clone();
        let parent_layers = match &spec.source {
            TemplateSource::Layer { parent, .. } => self.build_locked(parent, progress)?,
            _ => Vec::new(),
        };
        let hash = self.hash(name)?;
        let final_dir = self.layer_dir(name, &hash);
        let tmp = final_dir.with_extension("tmp");
        // A build cut short by a crash may have left its overlay mounted: `mounts::remove_tree`
        // detaches it instead of emptying the layer under it.
        mounts::remove_tree(&tmp).map_err(|e| TemplateError::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        progress(&format!("building template {name} ({hash})"));
        let _span = tracing::info_span!("template_build", template = name, %hash).entered();
        let result = build_into(
            &spec,
            &tmp,
            &parent_layers,
            self.build_box.get(),
            &format!("build-{hash}"),
            progress,
        );
        if let Err(e) = result {
            // Leave nothing half-made behind; the error says what failed.
            let _ = mounts::remove_tree(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        // Drop builds of older recipes of this template.
        if let Ok(entries) = std::fs::read_dir(self.dir.join(name)) {
            for e in entries.flatten() {
                if e.path() != final_dir {
                    let _ = remove_tree(&e.path());
                }
            }
        }
        progress(&format!("template {name} built"));
        self.layers(name)?.ok_or_else(|| TemplateError::Build {
            template: name.into(),
            step: "finish".into(),
            source: BuildStepError::LayerMissing,
        })
    }
}

fn build_into(
    spec: &TemplateSpec,
    tmp: &Path,
    parent_layers: &[PathBuf],
    build_box: Option<&BuildBox>,
    container_id: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), TemplateError> {
    let layer = tmp.join("layer");
    let fail = |step: &str, source: BuildStepError| TemplateError::Build {
        template: spec.name.clone(),
        step: step.into(),
        source,
    };
    match &spec.source {
        TemplateSource::RootfsDir(_) => Ok(()),
        TemplateSource::Debootstrap {
            suite,
            mirror,
            packages,
        } => {
            let mut cmd = Command::new("debootstrap");
            cmd.arg("--variant=minbase");
            if !packages.is_empty() {
                cmd.arg(format!("--include={}", packages.join(",")));
            }
            cmd.arg(suite).arg(&layer).arg(mirror);
            run(&mut cmd, progress).map_err(|e| fail("debootstrap", e.into()))?;
            for junk in ["var/cache/apt/archives", "var/lib/apt/lists"] {
                clear_dir_files(&layer.join(junk));
            }
            Ok(())
        }
        TemplateSource::Layer { apt, pip, .. } => {
            let bx = build_box.ok_or_else(|| fail("layer", BuildStepError::NoBuildBox))?;
            std::fs::create_dir_all(&layer).map_err(io(&layer))?;
            let merged = tmp.join("merged");
            let work = tmp.join("work");
            for d in [&merged, &work] {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            mounts::mount_overlay(parent_layers, &layer, &work, &merged)
                .map_err(|e| fail("overlay", e.into()))?;
            let r = (|| {
                let bundle = tmp.join("bundle");
                let env =
                    BTreeMap::from([("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())]);
                // Each step in its own container, as root there but not on the host (M6).
                let step = |name: &str, args: &[&str]| {
                    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                    bx.run(container_id, &merged, &bundle, &args, &env, progress)
                        .map_err(|e| fail(name, e.into()))
                };
                step("apt-get update", &["apt-get", "update", "-q"])?;
                if !apt.is_empty() {
                    let mut args =
                        vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
                    args.extend(apt.iter().map(String::as_str));
                    step("apt-get install", &args)?;
                }
                if !pip.is_empty() {
                    let mut args =
                        vec!["python3", "-m", "pip", "install", "--break-system-packages"];
                    args.extend(pip.iter().map(String::as_str));
                    step("pip install", &args)?;
                }
                step("apt-get clean", &["apt-get", "clean"])?;
                clear_dir_files(&merged.join("var/lib/apt/lists"));
                Ok(())
            })();
            let u = mounts::unmount_all_under(tmp);
            r?;
            u.map_err(|e| fail("unmount", e.into()))?;
            remove_tree(&work)?;
            remove_tree(&merged)?;
            // The mount point libcontainer made for the init binary is no part of the image.
            remove_tree(&layer.join(".paddock"))?;
            Ok(())
        }
        TemplateSource::Tarball(path) => {
            progress(&format!("unpacking {}", path.display()));
            crate::oci::unpack_tar_file(path, &layer)
                .map_err(|e| fail("unpack", BuildStepError::Unpack(Box::new(e))))
        }
        TemplateSource::OciLayout { path, reference } => {
            progress(&format!("unpacking OCI layout {}", path.display()));
            crate::oci::unpack_layout(path, reference.as_deref(), &layer, progress)
        }
    }
}

/// The files of the login layer, each with how its text changes. Both edits keep what a
/// login shell ends up with (environment, `PATH`, working directory) and only drop a
/// process start from every login, which is how the E2B SDKs run each command
/// (`bash -l -c CMD`): the time to interactive of a sandbox is mostly such a command.
const LOGIN_EDITS: &[(&str, &str, &str)] = &[
    // Debian's profile picks `PATH` by `$(id -u)`, a fork and exec of `id`; bash has the
    // same number as `$EUID` (other shells, where it is unset, still run `id`).
    ("etc/profile", "\"$(id -u)\"", "\"${EUID:-$(id -u)}\""),
    // root's profile runs `mesg n`, which only acts on a terminal on its standard input and
    // fails (silently) without one; the test skips the process start where it cannot act.
    (
        "root/.profile",
        "\nmesg n 2> /dev/null || true",
        "\nif [ -t 0 ]; then mesg n 2> /dev/null || true; fi",
    ),
];

/// A read-only layer named `name` (which carries a version, bumped when what goes into it
/// changes) made once per built template next to its layer (in `own`, the template's build
/// directory) and dropped with it: `make` fills the directory it is given and says whether
/// the layer has anything in it. `None` (remembered) when it has not. Made beside the build
/// rather than by it, so that caches built before it exist need no rebuild.
fn made_once(
    own: &Path,
    name: &str,
    make: impl FnOnce(&Path) -> Result<bool, TemplateError>,
) -> Result<Option<PathBuf>, TemplateError> {
    let dir = own.join(name);
    let none = own.join(format!("{name}.none"));
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    if none.exists() {
        return Ok(None);
    }
    // Another process, or another create of this one, may be making it too: each works in
    // a directory of its own and the first rename wins. (Named by the process alone, two
    // creates at once emptied each other's directory and one failed.)
    static MAKING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MAKING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = own.join(format!("{name}.tmp{}-{n}", std::process::id()));
    remove_tree(&tmp)?;
    match make(&tmp) {
        Ok(true) => {}
        Ok(false) => {
            remove_tree(&tmp)?;
            std::fs::write(&none, b"").map_err(io(&none))?;
            return Ok(None);
        }
        Err(e) => {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Someone else's rename won: theirs is the same.
        Err(_) if dir.is_dir() => remove_tree(&tmp)?,
        Err(e) => return Err(io(&dir)(e)),
    }
    Ok(Some(dir))
}

/// The layer over a template's `layers` holding the profile files of [`LOGIN_EDITS`] with
/// their edits ([`made_once`]); `None` when no file needs an edit.
fn login_layer(own: &Path, layers: &[PathBuf]) -> Result<Option<PathBuf>, TemplateError> {
    made_once(own, "login-v1", |tmp| {
        let mut edited = 0;
        for (file, from, to) in LOGIN_EDITS {
            let Some(src) = topmost(layers, file) else {
                continue;
            };
            let meta = src.symlink_metadata().map_err(io(&src))?;
            if !meta.file_type().is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&src).map_err(io(&src))?;
            if !text.contains(from) {
                continue;
            }
            copy_parents(layers, tmp, Path::new(file))?;
            let dst = tmp.join(file);
            std::fs::write(&dst, text.replace(from, to)).map_err(io(&dst))?;
            copy_owner_and_mode(&meta, &dst)?;
            edited += 1;
        }
        Ok(edited > 0)
    })
}

/// The account files the default user is added to, when the template has them.
const USER_FILES: [&str; 3] = ["etc/passwd", "etc/group", "etc/shadow"];

/// The layer over a template's `layers` holding its [`paddock_contract::DEFAULT_USER`]
/// ready-made ([`made_once`]): the account files with the user added, as the runtime would
/// add it at boot (the same [`paddock_contract::users::UserDb`]), and the user's home.
/// Without it every sandbox's runtime copied `/etc/passwd`, `/etc/group` and `/etc/shadow` up
/// into the sandbox's own disk and appended to them on each boot; with it the runtime finds
/// the user and writes nothing. `None` when the template has no `/etc/passwd`, already has
/// the user, or has its home directory (the runtime then does what it always did).
fn user_layer(own: &Path, layers: &[PathBuf]) -> Result<Option<PathBuf>, TemplateError> {
    use paddock_contract::users::{UserDb, UserError};
    let name = paddock_contract::DEFAULT_USER;
    let topmost = |file: &str| topmost(layers, file);
    let home = format!("home/{name}");
    made_once(own, "user-v1", |tmp| {
        if !topmost(USER_FILES[0]).is_some_and(|p| p.is_file()) || topmost(&home).is_some() {
            return Ok(false);
        }
        for file in USER_FILES {
            let Some(src) = topmost(file) else { continue };
            let meta = src.symlink_metadata().map_err(io(&src))?;
            if !meta.file_type().is_file() {
                // A symlinked account file is the image's own arrangement: left to the runtime.
                return Ok(false);
            }
            copy_parents(layers, tmp, Path::new(file))?;
            let dst = tmp.join(file);
            std::fs::copy(&src, &dst).map_err(io(&dst))?;
            copy_owner_and_mode(&meta, &dst)?;
        }
        let db = UserDb::new(tmp.to_owned());
        let failed = |e: UserError| io(tmp)(std::io::Error::other(e.to_string()));
        match db.lookup(name) {
            Ok(_) => return Ok(false),
            Err(UserError::Unknown(_)) => {}
            Err(e) => return Err(failed(e)),
        }
        copy_parents(layers, tmp, Path::new(&home))?;
        db.ensure(name).map_err(failed)?;
        Ok(true)
    })
}

/// `file` (relative) as a sandbox over `layers` sees it: in the topmost layer that has it.
fn topmost(layers: &[PathBuf], file: &str) -> Option<PathBuf> {
    layers
        .iter()
        .map(|l| l.join(file))
        .find(|p| p.symlink_metadata().is_ok())
}

/// Makes the directories above `file` in `tmp` with the owner and mode they have in the
/// layers: in an overlay, the topmost layer's directory decides what the merged one shows.
fn copy_parents(layers: &[PathBuf], tmp: &Path, file: &Path) -> Result<(), TemplateError> {
    let mut rel = PathBuf::new();
    let parents: Vec<_> = file
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    for c in parents {
        rel.push(c);
        let dst = tmp.join(&rel);
        if dst.is_dir() {
            continue;
        }
        std::fs::create_dir(&dst).map_err(io(&dst))?;
        if let Some(meta) = layers.iter().find_map(|l| l.join(&rel).metadata().ok()) {
            copy_owner_and_mode(&meta, &dst)?;
        }
    }
    Ok(())
}

fn copy_owner_and_mode(meta: &std::fs::Metadata, dst: &Path) -> Result<(), TemplateError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(io(dst))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io(dst))
}

/// Runs a build tool, streaming its merged output to `progress`; on failure returns its last
/// lines.
fn run(cmd: &mut Command, progress: &(dyn Fn(&str) + Sync)) -> Result<(), RunError> {
    let (reader, writer) = std::io::pipe().map_err(RunError::Pipe)?;
    let writer2 = writer.try_clone().map_err(RunError::Pipe)?;
    cmd.stdout(writer)
        .stderr(writer2)
        .stdin(std::process::Stdio::null());
    progress(&format!("$ {cmd:?}"));
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        command: format!("{cmd:?}"),
        source,
    })?;
    // The Command still holds the write ends; drop them so EOF arrives when the child exits.
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        progress(&line);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().map_err(RunError::Wait)?;
    if status.success() {
        Ok(())
    } else {
        Err(RunError::Failed {
            status,
            output: Vec::from(tail).join("\n"),
        })
    }
}

fn clear_dir_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `rm -rf` that tolerates a missing path.
pub(crate) fn remove_tree(p: &Path) -> Result<(), TemplateError> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TemplateError::Io {
            path: p.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(dir: &Path) -> Templates {
        Templates::new(
            dir.to_owned(),
            [TemplateSpec::base(), TemplateSpec::code_interpreter()],
        )
    }

    #[test]
    fn hash_changes_with_the_recipe_and_the_parent() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut t = templates(d.path());
        let (b, ci) = (
            t.hash("base").expect("h"),
            t.hash("code-interpreter-v1").expect("h"),
        );
        assert_ne!(b, ci);
        let mut base = TemplateSpec::base();
        if let TemplateSource::Debootstrap { packages, .. } = &mut base.source {
            packages.push("vim".into());
        }
        t.insert(base);
        assert_ne!(t.hash("base").expect("h"), b);
        assert_ne!(
            t.hash("code-interpreter-v1").expect("h"),
            ci,
            "child follows its parent"
        );
    }

    #[test]
    fn unknown_and_cyclic_templates_are_errors() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut t = templates(d.path());
        assert!(matches!(t.get("nope"), Err(TemplateError::Unknown(_))));
        t.insert(TemplateSpec {
            name: "loop".into(),
            source: TemplateSource::Layer {
                parent: "loop".into(),
                apt: vec![],
                pip: vec![],
            },
            ..TemplateSpec::base()
        });
        assert!(matches!(t.hash("loop"), Err(TemplateError::Cycle(_))));
    }

    #[test]
    fn rootfs_dir_templates_are_used_in_place() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut t = templates(d.path());
        t.insert(TemplateSpec {
            name: "dir".into(),
            source: TemplateSource::RootfsDir(d.path().join("r")),
            ..TemplateSpec::base()
        });
        assert_eq!(
            t.layers("dir").expect("layers"),
            Some(vec![d.path().join("r")])
        );
        assert_eq!(t.layers("base").expect("layers"), None, "not built yet");
    }

    #[test]
    fn a_failing_build_leaves_nothing_behind() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut t = templates(d.path());
        t.insert(TemplateSpec {
            name: "bad".into(),
            source: TemplateSource::Tarball(d.path().join("missing.tar")),
            ..TemplateSpec::base()
        });
        let err = t.build("bad", &|_| {}).expect_err("must fail");
        assert!(
            matches!(err, TemplateError::Build { ref step, .. } if step == "unpack"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(d.path().join("bad"))
            .expect("dir")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        assert_eq!(t.layers("bad").expect("layers"), None);
    }

    /// Security review M6: without a build container a layer's steps never run (no chroot
    /// fallback as host root), and the failed build leaves nothing behind.
    #[test]
    fn layer_builds_need_a_build_container() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut t = templates(&d.path().join("cache"));
        t.insert(TemplateSpec {
            name: "root".into(),
            source: TemplateSource::RootfsDir(d.path().join("rootfs")),
            ..TemplateSpec::base()
        });
        t.insert(TemplateSpec {
            name: "layer".into(),
            source: TemplateSource::Layer {
                parent: "root".into(),
                apt: vec!["hello".into()],
                pip: vec![],
            },
            ..TemplateSpec::base()
        });
        let err = t.build("layer", &|_| {}).expect_err("must fail");
        assert!(
            matches!(
                err,
                TemplateError::Build {
                    source: BuildStepError::NoBuildBox,
                    ..
                }
            ),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(d.path().join("cache/layer"))
            .expect("dir")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// `dir/r.tar`: a root filesystem holding only `etc/hello`.
    fn hello_tarball(dir: &Path) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("etc")).expect("mkdir");
        std::fs::write(src.join("etc/hello"), "hi").expect("write");
        tarball_of(&src, &dir.join("r.tar"))
    }

    /// A tarball at `tarball` of directory `src`'s contents, as a tarball template's source.
    fn tarball_of(src: &Path, tarball: &Path) -> PathBuf {
        let mut b = tar::Builder::new(std::fs::File::create(tarball).expect("create"));
        b.append_dir_all(".", src).expect("append");
        b.finish().expect("finish");
        tarball.to_owned()
    }

    #[test]
    fn concurrent_builds_through_separate_catalogues_build_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let tarball = hello_tarball(d.path());
        let builds = std::sync::atomic::AtomicUsize::new(0);
        let spec = TemplateSpec {
            name: "tb".into(),
            source: TemplateSource::Tarball(tarball),
            ..TemplateSpec::base()
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (cache, spec, builds) = (d.path().join("cache"), spec.clone(), &builds);
                s.spawn(move || {
                    let t = Templates::new(cache, [spec]);
                    let layers = t
                        .build("tb", &|l| {
                            if l.starts_with("building") {
                                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        })
                        .expect("build");
                    assert!(layers[0].join("etc/hello").is_file());
                });
            }
        });
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn tarball_templates_unpack_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let tarball = hello_tarball(d.path());
        let mut t = templates(&d.path().join("cache"));
        t.insert(TemplateSpec {
            name: "tb".into(),
            source: TemplateSource::Tarball(tarball),
            ..TemplateSpec::base()
        });
        let lines = std::sync::Mutex::new(Vec::<String>::new());
        let layers = t
            .build("tb", &|l| lines.lock().expect("lock").push(l.into()))
            .expect("build");
        assert_eq!(
            std::fs::read_to_string(layers[0].join("etc/hello")).expect("read"),
            "hi"
        );
        assert!(
            lines
                .lock()
                .expect("lock")
                .iter()
                .any(|l| l.contains("built"))
        );
        let again = t.build("tb", &|l| panic!("rebuilt: {l}")).expect("cached");
        assert_eq!(again, layers);
    }

    /// The login layer carries the template's profile files with the process starts taken
    /// out, over the template's layers, with the directories' owner and mode; a template
    /// without such files gets none.
    #[test]
    fn the_login_layer_edits_the_profiles_and_keeps_the_directories() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("etc")).expect("mkdir");
        std::fs::create_dir_all(src.join("root")).expect("mkdir");
        std::fs::set_permissions(src.join("root"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let profile = "if [ \"$(id -u)\" -eq 0 ]; then\n  PATH=/sbin\nfi\n";
        std::fs::write(src.join("etc/profile"), profile).expect("write");
        std::fs::write(
            src.join("root/.profile"),
            "x=1\n\nmesg n 2> /dev/null || true\n",
        )
        .expect("write");
        let tarball = tarball_of(&src, &d.path().join("r.tar"));
        let mut t = templates(&d.path().join("cache"));
        t.insert(TemplateSpec {
            name: "tb".into(),
            source: TemplateSource::Tarball(tarball),
            ..TemplateSpec::base()
        });
        let layers = t.sandbox_layers("tb", &|_| {}).expect("layers");
        assert_eq!(layers.len(), 2, "{layers:?}");
        assert_eq!(
            layers[1..],
            t.layers("tb").expect("layers").expect("built")[..]
        );
        let login = &layers[0];
        assert_eq!(
            std::fs::read_to_string(login.join("etc/profile")).expect("profile"),
            "if [ \"${EUID:-$(id -u)}\" -eq 0 ]; then\n  PATH=/sbin\nfi\n"
        );
        assert_eq!(
            std::fs::read_to_string(login.join("root/.profile")).expect("profile"),
            "x=1\n\nif [ -t 0 ]; then mesg n 2> /dev/null || true; fi\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&login.join("root")), 0o700);
        assert_eq!(mode(&login.join("etc")), mode(&layers[1].join("etc")));
        assert_eq!(
            mode(&login.join("etc/profile")),
            mode(&layers[1].join("etc/profile"))
        );
        // Made once: asked again, the same layer.
        assert_eq!(t.sandbox_layers("tb", &|_| {}).expect("again"), layers);

        // Nothing to edit: no login layer.
        let plain = hello_tarball(&d.path().join("plain"));
        t.insert(TemplateSpec {
            name: "plain".into(),
            source: TemplateSource::Tarball(plain),
            ..TemplateSpec::base()
        });
        let layers = t.sandbox_layers("plain", &|_| {}).expect("layers");
        assert_eq!(layers, t.layers("plain").expect("layers").expect("built"));
    }

    /// The default user's layer holds the account files with the user added, as the runtime
    /// would add it, and its home; the files and directories keep the template's owner and
    /// mode. A template that has the user already gets none.
    #[test]
    fn the_user_layer_adds_the_default_user_as_the_runtime_would() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("etc")).expect("mkdir");
        std::fs::create_dir_all(src.join("home")).expect("mkdir");
        std::fs::write(
            src.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .expect("write");
        std::fs::write(src.join("etc/group"), "root:x:0:\nalice:x:1000:\n").expect("write");
        std::fs::write(src.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").expect("write");
        std::fs::set_permissions(
            src.join("etc/shadow"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        let tarball = tarball_of(&src, &d.path().join("r.tar"));
        let mut t = templates(&d.path().join("cache"));
        t.insert(TemplateSpec {
            name: "tu".into(),
            source: TemplateSource::Tarball(tarball),
            ..TemplateSpec::base()
        });
        let layers = t.sandbox_layers("tu", &|_| {}).expect("layers");
        assert_eq!(layers.len(), 2, "{layers:?}");
        let (user, base) = (&layers[0], &layers[1]);
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(
            read(user.join("etc/passwd")),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n\
             user:x:1001:1001::/home/user:/bin/bash\n"
        );
        assert_eq!(
            read(user.join("etc/group")),
            "root:x:0:\nalice:x:1000:\nuser:x:1001:\n"
        );
        assert!(read(user.join("etc/shadow")).ends_with("\nuser:!:19000:0:99999:7:::\n"));
        let meta = |p: &Path| std::fs::metadata(p).expect("stat");
        for file in ["etc", "etc/shadow", "etc/passwd", "home"] {
            assert_eq!(
                meta(&user.join(file)).mode(),
                meta(&base.join(file)).mode(),
                "{file}"
            );
        }
        let home = meta(&user.join("home/user"));
        assert!(home.is_dir());
        assert_eq!(home.mode() & 0o7777, 0o750);
        if rustix::process::geteuid().is_root() {
            assert_eq!((home.uid(), home.gid()), (1001, 1001));
        }
        // The template's own files are untouched, and the layer is made once.
        assert!(!read(base.join("etc/passwd")).contains("user:x"));
        assert_eq!(t.sandbox_layers("tu", &|_| {}).expect("again"), layers);

        // A template with the user already: no layer.
        let has = d.path().join("has");
        std::fs::create_dir_all(has.join("etc")).expect("mkdir");
        std::fs::write(
            has.join("etc/passwd"),
            "user:x:1000:1000::/home/user:/bin/sh\n",
        )
        .expect("write");
        let tarball = tarball_of(&has, &d.path().join("has.tar"));
        t.insert(TemplateSpec {
            name: "has".into(),
            source: TemplateSource::Tarball(tarball),
            ..TemplateSpec::base()
        });
        let layers = t.sandbox_layers("has", &|_| {}).expect("layers");
        assert_eq!(layers, t.layers("has").expect("layers").expect("built"));
    }

    /// The first creates of a template often come at once (a pool filling, a burst), each
    /// asking for the layers from its own thread: every one gets the same, whole layers.
    #[test]
    fn concurrent_first_asks_get_whole_layers() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("etc")).expect("mkdir");
        std::fs::create_dir_all(src.join("root")).expect("mkdir");
        std::fs::write(src.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").expect("write");
        std::fs::write(src.join("etc/group"), "root:x:0:\n").expect("write");
        std::fs::write(src.join("root/.profile"), "\nmesg n 2> /dev/null || true\n")
            .expect("write");
        let tarball = tarball_of(&src, &d.path().join("r.tar"));
        for round in 0..10 {
            let mut t = templates(&d.path().join(format!("cache{round}")));
            t.insert(TemplateSpec {
                name: "tc".into(),
                source: TemplateSource::Tarball(tarball.clone()),
                ..TemplateSpec::base()
            });
            t.build("tc", &|_| {}).expect("build");
            let t = std::sync::Arc::new(t);
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let asks: Vec<_> = (0..8)
                .map(|_| {
                    let (t, start) = (t.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        t.sandbox_layers("tc", &|_| {})
                    })
                })
                .collect();
            let got: Vec<_> = asks
                .into_iter()
                .map(|a| a.join().expect("thread").expect("layers"))
                .collect();
            assert!(got.iter().all(|l| *l == got[0]), "round {round}: {got:?}");
            let layers = &got[0];
            assert_eq!(layers.len(), 3, "round {round}: {layers:?}");
            let passwd = std::fs::read_to_string(layers[0].join("etc/passwd")).expect("passwd");
            assert!(
                passwd.contains("\nuser:x:1000:1000:"),
                "round {round}: {passwd}"
            );
            assert!(layers[0].join("home/user").is_dir(), "round {round}");
            assert!(layers[1].join("root/.profile").is_file(), "round {round}");
            let own = layers[0].parent().expect("own");
            let left: Vec<_> = std::fs::read_dir(own)
                .expect("read")
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect();
            assert_eq!(left, Vec::<String>::new(), "round {round}");
        }
    }

    /// Every cold create asks for its template's layers: a built one is answered without the
    /// build locks, so creates never queue behind a build running elsewhere.
    #[test]
    fn a_built_template_is_answered_while_a_build_holds_the_locks() {
        let d = tempfile::tempdir().expect("tempdir");
        let tarball = hello_tarball(d.path());
        let mut t = templates(&d.path().join("cache"));
        t.insert(TemplateSpec {
            name: "tb".into(),
            source: TemplateSource::Tarball(tarball),
            ..TemplateSpec::base()
        });
        let layers = t.build("tb", &|_| {}).expect("build");
        // Another process building: its file lock is held.
        let lock = std::fs::File::open(d.path().join("cache/.build.lock")).expect("lock file");
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("flock");
        let t = std::sync::Arc::new(t);
        let (tx, rx) = std::sync::mpsc::channel();
        let t2 = t.clone();
        std::thread::spawn(move || {
            let _ = tx.send(t2.build("tb", &|l| panic!("rebuilt: {l}")));
        });
        // A lookup that waited for the lock would never answer while we hold it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let got = loop {
            if let Ok(r) = rx.try_recv() {
                break r.expect("cached");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lookup waited for the build lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(got, layers);
    }
}
