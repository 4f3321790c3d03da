//! Code contexts: each one a kernel of its own, with its own state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::kernel::{Kernel, KernelError, Launch};
use crate::state::Runtime;

/// Languages a context can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    Python,
    Bash,
}

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Bash => "bash",
        }
    }
}

/// Contexts clients may create by default (see [`KernelConfig::max_contexts`]).
/// An idle ipykernel takes about 50 MiB, so 8 of them fit in a 512 MiB
/// sandbox with room left for the work itself.
pub const DEFAULT_MAX_CONTEXTS: usize = 8;

/// How the runtime finds kernels.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Python interpreter that has `ipykernel` (and runs `bash_kernel`).
    pub python: String,
    /// Security review M3: most contexts `POST /contexts` may have alive at
    /// once. The per-language default contexts do not count, so filling
    /// the cap cannot stop plain `/execute` calls.
    pub max_contexts: usize,
    /// Install prefixes, besides the interpreter's own, whose files may tell that a Python
    /// kernel is installed (see [`super::hint`]): [`super::hint::SYSTEM_PREFIXES`].
    pub hint_prefixes: Vec<PathBuf>,
}

impl KernelConfig {
    /// Kernels from `python`, with the default context cap.
    pub fn new(python: impl Into<String>) -> Self {
        Self {
            python: python.into(),
            max_contexts: DEFAULT_MAX_CONTEXTS,
            hint_prefixes: super::hint::SYSTEM_PREFIXES
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// What [`Contexts::warm_default`] did at boot.
#[derive(Debug, PartialEq, Eq)]
pub enum Warmed {
    /// The default Python kernel is up.
    Started,
    /// No file hints at a Python kernel: Python was not asked, and will be on first use.
    NoHint,
    /// Python was asked, and has no kernel.
    NoKernel,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("language '{requested}' is not supported in this sandbox; available: {available}")]
    Unsupported {
        requested: String,
        available: String,
    },
    #[error("context '{0}' not found")]
    NotFound(String),
    #[error("cwd '{0}' does not exist")]
    BadCwd(String),
    #[error(
        "too many code contexts: at most {max} may exist at a time; delete one with DELETE /contexts/<id> first"
    )]
    TooMany { max: usize },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    User(#[from] crate::users::UserError),
}

/// A context as the SDKs see it.
#[derive(Debug, Clone, Serialize)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

pub struct Context {
    pub info: ContextInfo,
    pub language: Language,
    kernel: tokio::sync::Mutex<Option<Arc<Kernel>>>,
    /// Held for the whole of an execution: a kernel runs one cell at a time.
    pub exec_lock: tokio::sync::Mutex<()>,
    /// The global environment this kernel has been given so far.
    pub applied_env: Mutex<BTreeMap<String, String>>,
    /// A language's default context, which the context cap does not count.
    is_default: bool,
}

pub struct Contexts {
    rt: Arc<Runtime>,
    config: KernelConfig,
    map: Mutex<HashMap<String, Arc<Context>>>,
    defaults: tokio::sync::Mutex<HashMap<Language, String>>,
    /// Which kernels are installed: probed once, it does not change.
    available: tokio::sync::OnceCell<Vec<Language>>,
    /// Security review M3: kernels start one at a time, so a burst of
    /// creations is paced and the cap check cannot race a start.
    creating: tokio::sync::Mutex<()>,
}

/// The kernel modules probed for, and the language each one serves.
const KERNEL_MODULES: [(&str, Language); 2] = [
    ("ipykernel", Language::Python),
    ("bash_kernel", Language::Bash),
];

/// Which kernels `python` can start: the [`KERNEL_MODULES`] it finds, asked of one
/// interpreter. Every sandbox asks once at boot (the default kernel is started in the
/// background), and starting Python costs ~20 ms of CPU: one start per module was a third of
/// the host's CPU per create of a `base` sandbox, which has neither.
fn installed_kernels(python: &str) -> Vec<Language> {
    const SCRIPT: &str = "import importlib.util,sys\n\
                          for m in sys.argv[1:]:\n    \
                          print(m) if importlib.util.find_spec(m) else None";
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .args(KERNEL_MODULES.iter().map(|(m, _)| m))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out.map_err(|e| tracing::debug!(error = %e, python, "no python for kernels"))
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    let found = String::from_utf8_lossy(&out.stdout);
    KERNEL_MODULES
        .iter()
        .filter(|(m, _)| found.lines().any(|l| l.trim() == *m))
        .map(|(_, lang)| *lang)
        .collect()
}

/// Which kernels `python` can start.
async fn probe(python: String) -> Vec<Language> {
    tokio::task::spawn_blocking(move || installed_kernels(&python))
        .await
        .unwrap_or_default()
}

impl Contexts {
    pub fn new(rt: Arc<Runtime>, config: KernelConfig) -> Self {
        Self {
            rt,
            config,
            map: Mutex::new(HashMap::new()),
            defaults: tokio::sync::Mutex::new(HashMap::new()),
            available: tokio::sync::OnceCell::new(),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Languages whose kernels are installed here.
    pub async fn available(&self) -> Vec<Language> {
        let python = self.config.python.clone();
        self.available.get_or_init(|| probe(python)).await.clone()
    }

    /// Starts the default Python kernel ahead of the first execution, if there is one. Python
    /// is asked only when a file hints at a kernel (see [`super::hint`]): a sandbox without
    /// one should not pay a Python start at every boot.
    pub async fn warm_default(&self) -> Result<Warmed, ContextError> {
        let python = self.config.python.clone();
        let prefixes = self.config.hint_prefixes.clone();
        let hinted = tokio::task::spawn_blocking(move || {
            super::hint::python_kernel_hinted(
                &python,
                std::env::var_os("PATH").as_deref(),
                std::env::var_os("PYTHONPATH").as_deref(),
                &prefixes,
            )
        })
        .await
        .unwrap_or(true);
        if !hinted {
            return Ok(Warmed::NoHint);
        }
        if !self.available().await.contains(&Language::Python) {
            return Ok(Warmed::NoKernel);
        }
        self.default_for(Language::Python).await?;
        Ok(Warmed::Started)
    }

    /// Maps what a client sent to a language this sandbox can run.
    pub async fn language(&self, requested: Option<&str>) -> Result<Language, ContextError> {
        let wanted = requested
            .map(str::trim)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let lang = match wanted.as_str() {
            "" | "python" | "python3" | "py" => Some(Language::Python),
            "bash" | "sh" | "shell" => Some(Language::Bash),
            _ => None,
        };
        let available = self.available().await;
        match lang {
            Some(l) if available.contains(&l) => Ok(l),
            _ => Err(ContextError::Unsupported {
                requested: if wanted.is_empty() {
                    "python".into()
                } else {
                    wanted
                },
                available: if available.is_empty() {
                    "none (no Jupyter kernel is installed)".into()
                } else {
                    available
                        .iter()
                        .map(|l| l.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    fn launch(&self, language: Language, cwd: &Path) -> Result<Launch, ContextError> {
        let settings = self.rt.settings();
        let user = self.rt.users.lookup(&settings.default_user)?;
        let module = match language {
            Language::Python => "ipykernel_launcher",
            Language::Bash => "bash_kernel",
        };
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), crate::process::DEFAULT_PATH.into()),
            ("HOME".into(), user.home.display().to_string()),
            ("USER".into(), user.name.clone()),
            ("LOGNAME".into(), user.name.clone()),
            // Plots render to PNG without a display.
            (
                "MPLBACKEND".into(),
                "module://matplotlib_inline.backend_inline".into(),
            ),
            ("PYDEVD_DISABLE_FILE_VALIDATION".into(), "1".into()),
        ];
        env.extend(settings.env);
        let mut argv = vec![
            self.config.python.clone(),
            "-m".into(),
            module.into(),
            "-f".into(),
            "{connection_file}".into(),
        ];
        if language == Language::Python {
            // Tracebacks go to the SDKs as text: no terminal colour codes.
            argv.push("--InteractiveShell.colors=nocolor".into());
        }
        Ok(Launch {
            language: language.name().into(),
            argv,
            cwd: cwd.to_path_buf(),
            env,
            user,
        })
    }

    /// Creates a context with a freshly started kernel, unless the cap on
    /// client-created contexts is reached.
    pub async fn create(
        &self,
        language: Language,
        cwd: Option<&str>,
    ) -> Result<Arc<Context>, ContextError> {
        self.start_context(language, cwd, false).await
    }

    async fn start_context(
        &self,
        language: Language,
        cwd: Option<&str>,
        is_default: bool,
    ) -> Result<Arc<Context>, ContextError> {
        let _one_at_a_time = self.creating.lock().await;
        let counted = self.map().values().filter(|c| !c.is_default).count();
        if !is_default && counted >= self.config.max_contexts {
            tracing::warn!(
                max = self.config.max_contexts,
                "refused a code context: the cap is reached"
            );
            return Err(ContextError::TooMany {
                max: self.config.max_contexts,
            });
        }
        let cwd = match cwd.filter(|c| !c.is_empty()) {
            Some(c) => PathBuf::from(c),
            None => {
                let settings = self.rt.settings();
                match settings.default_workdir {
                    Some(w) => w,
                    None => self.rt.users.lookup(&settings.default_user)?.home,
                }
            }
        };
        if !cwd.is_dir() {
            return Err(ContextError::BadCwd(cwd.display().to_string()));
        }
        let launch = self.launch(language, &cwd)?;
        let env_at_start: BTreeMap<_, _> = self.rt.settings().env;
        let kernel = Kernel::start(launch).await?;
        let id = random_id();
        let ctx = Arc::new(Context {
            info: ContextInfo {
                id: id.clone(),
                language: language.name().into(),
                cwd: cwd.display().to_string(),
            },
            language,
            kernel: tokio::sync::Mutex::new(Some(kernel)),
            exec_lock: tokio::sync::Mutex::new(()),
            applied_env: Mutex::new(env_at_start),
            is_default,
        });
        self.map().insert(id.clone(), ctx.clone());
        tracing::info!(context = %id, language = language.name(), "context created");
        Ok(ctx)
    }

    /// The language's default context, created on first use.
    pub async fn default_for(&self, language: Language) -> Result<Arc<Context>, ContextError> {
        let mut defaults = self.defaults.lock().await;
        if let Some(ctx) = defaults.get(&language).and_then(|id| self.get(id)) {
            return Ok(ctx);
        }
        let ctx = self.start_context(language, None, true).await?;
        defaults.insert(language, ctx.info.id.clone());
        Ok(ctx)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Context>> {
        self.map().get(id).cloned()
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let mut list: Vec<_> = self.map().values().map(|c| c.info.clone()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    pub async fn remove(&self, id: &str) -> Result<(), ContextError> {
        let ctx = self
            .map()
            .remove(id)
            .ok_or_else(|| ContextError::NotFound(id.into()))?;
        // Dropping the kernel kills its process.
        ctx.kernel.lock().await.take();
        Ok(())
    }

    /// Replaces the context's kernel with a fresh one (state is lost).
    pub async fn restart(&self, ctx: &Context) -> Result<(), ContextError> {
        let mut slot = ctx.kernel.lock().await;
        slot.take();
        let launch = self.launch(ctx.language, Path::new(&ctx.info.cwd))?;
        let env_at_start = self.rt.settings().env;
        *slot = Some(Kernel::start(launch).await?);
        *ctx.applied_env.lock().unwrap_or_else(|p| p.into_inner()) = env_at_start;
        tracing::info!(context = %ctx.info.id, "context restarted");
        Ok(())
    }

    /// The context's kernel, restarted first if it died.
    pub async fn kernel(&self, ctx: &Context) -> Result<Arc<Kernel>, ContextError> {
        {
            let slot = ctx.kernel.lock().await;
            if let Some(k) = slot.as_ref().filter(|k| k.death().is_none()) {
                return Ok(k.clone());
            }
        }
        self.restart(ctx).await?;
        ctx.kernel
            .lock()
            .await
            .clone()
            .ok_or(ContextError::Kernel(KernelError::Dead))
    }

    /// The runtime's global environment, for diffing against a context's.
    pub fn global_env(&self) -> BTreeMap<String, String> {
        self.rt.settings().env
    }
}

fn random_id() -> String {
    let mut buf = [0u8; 16];
    let _ = getrandom::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script that counts its starts in `dir/starts` and runs the host's `python3`, with
    /// `pythonpath` (if any) on its path.
    fn counting_python(dir: &Path, pythonpath: Option<&Path>) -> PathBuf {
        let python = dir.join("bin/python");
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        let env = pythonpath
            .map(|p| format!("PYTHONPATH='{}' ", p.display()))
            .unwrap_or_default();
        std::fs::write(
            &python,
            format!(
                "#!/bin/sh\necho start >> '{}'\n{env}exec python3 \"$@\"\n",
                dir.join("starts").display(),
            ),
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        python
    }

    fn starts(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("starts"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn contexts(python: &Path) -> Contexts {
        let mut config = KernelConfig::new(python.to_str().unwrap());
        // Only the interpreter's own prefix: whatever the test host has installed under
        // `/usr` must not count.
        config.hint_prefixes.clear();
        Contexts::new(
            crate::state::Runtime::new(crate::state::RuntimeOptions::default()),
            config,
        )
    }

    /// Without a file that hints at a kernel, the boot-time warm-up starts no Python; the
    /// first request that needs a kernel still asks Python, and finds one that is there.
    /// With a hint, Python is asked at boot (here it has no kernel).
    #[tokio::test]
    async fn a_boot_without_a_kernel_hint_starts_no_python() {
        if std::env::var_os("PYTHONPATH").is_some_and(|p| !p.is_empty()) {
            panic!("PYTHONPATH is set: every boot would have a hint; unset it for this test");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // The kernel package is where only the script puts it on Python's path.
        let pkgs = dir.path().join("elsewhere");
        std::fs::create_dir_all(pkgs.join("ipykernel")).expect("mkdir");
        std::fs::write(pkgs.join("ipykernel/__init__.py"), "").expect("write");
        let python = counting_python(dir.path(), Some(&pkgs));
        let c = contexts(&python);
        assert_eq!(c.warm_default().await.expect("warm"), Warmed::NoHint);
        assert_eq!(starts(dir.path()), 0, "no Python start at boot");
        assert_eq!(
            c.language(Some("python")).await.expect("lang"),
            Language::Python
        );
        assert_eq!(starts(dir.path()), 1, "asked on first use");

        // A kernel's directory under the interpreter's prefix is a hint; this Python does
        // not have that directory on its path, so it answers that there is no kernel.
        let dir = tempfile::tempdir().expect("tempdir");
        let python = counting_python(dir.path(), None);
        std::fs::create_dir_all(dir.path().join("lib/python3/dist-packages/ipykernel"))
            .expect("mkdir");
        let c = contexts(&python);
        assert_eq!(c.warm_default().await.expect("warm"), Warmed::NoKernel);
        assert_eq!(starts(dir.path()), 1, "asked at boot");
        assert!(c.language(Some("python")).await.is_err());
        assert_eq!(starts(dir.path()), 1, "asked once");
    }

    /// One interpreter start finds every kernel module there is. `python` here counts its
    /// starts and runs the host's `python3` with a fake `ipykernel` package on its path (the
    /// host need not have any kernel installed).
    #[test]
    fn one_python_start_finds_the_installed_kernels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pkgs = dir.path().join("site");
        std::fs::create_dir_all(pkgs.join("ipykernel")).expect("mkdir");
        std::fs::write(pkgs.join("ipykernel/__init__.py"), "").expect("write");
        let python = counting_python(dir.path(), Some(&pkgs));

        assert_eq!(
            installed_kernels(python.to_str().unwrap()),
            vec![Language::Python]
        );
        assert_eq!(starts(dir.path()), 1);
        // No python at all: no kernels, no error.
        assert!(installed_kernels("/nonexistent/python3").is_empty());
    }
}
