//! Whether a Python kernel may be installed, told from files alone.
//!
//! The code interpreter starts the default Python kernel at boot so the first execution does
//! not wait for it, and to know whether there is one it has to ask Python (see
//! `contexts::installed_kernels`): a process start that costs about 20 ms of CPU. Every
//! sandbox pays it at boot, and most of them (every `base` sandbox) have no kernel at all,
//! so it was about a third of the host's CPU per create. A few `stat` calls answer "surely
//! not" for those; Python is asked at boot only when a file hints at a kernel, and otherwise
//! on the first request that needs one, so what a client sees does not change (a kernel in a
//! place no hint covers starts on first use instead of at boot).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Install prefixes looked at besides the interpreter's own: Debian's `python3-ipykernel`
/// goes under `/usr`, a system-wide `pip install` under `/usr/local`.
pub const SYSTEM_PREFIXES: [&str; 2] = ["/usr", "/usr/local"];

/// Whether `python` (a name looked up on `path_var`, or a path) may have `ipykernel`: a
/// package directory `ipykernel` or a Jupyter kernelspec directory under the interpreter's
/// prefix (a venv's or, through its symlinks, the base install's) or under one of
/// `prefixes`. `false` means no such file exists; `true` only that Python must be asked.
/// A `PYTHONPATH` can put packages anywhere, so with one set the answer is `true`.
pub fn python_kernel_hinted(
    python: &str,
    path_var: Option<&OsStr>,
    pythonpath: Option<&OsStr>,
    prefixes: &[PathBuf],
) -> bool {
    if pythonpath.is_some_and(|p| !p.is_empty()) {
        return true;
    }
    let Some(exe) = find_executable(python, path_var) else {
        // No interpreter: no kernel either, which asking on use will tell the client.
        return false;
    };
    let mut all: Vec<PathBuf> = Vec::with_capacity(prefixes.len() + 2);
    // `venv/bin/python3` → `venv`; its target `/usr/bin/python3.11` → `/usr`.
    let resolved = std::fs::canonicalize(&exe).ok();
    for p in std::iter::once(&exe).chain(resolved.as_ref()) {
        if let Some(prefix) = p.parent().and_then(Path::parent) {
            all.push(prefix.to_owned());
        }
    }
    all.extend(prefixes.iter().cloned());
    // The usual interpreter, `/usr/bin/python3`, is its own resolved prefix and a system
    // prefix too: look at each place once (this runs at every boot).
    all.sort();
    all.dedup();
    all.iter().any(|p| kernel_files_under(p))
}

/// `ipykernel` in a `lib/python*/{site,dist}-packages` directory of `prefix` (Debian also
/// has `lib/python3/dist-packages`), or kernelspecs in its `share/jupyter/kernels`.
fn kernel_files_under(prefix: &Path) -> bool {
    if prefix.join("share/jupyter/kernels").is_dir() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
        return false;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().as_encoded_bytes().starts_with(b"python"))
        .any(|e| {
            ["site-packages", "dist-packages"]
                .iter()
                .any(|d| e.path().join(d).join("ipykernel").exists())
        })
}

/// `name` itself if it holds a `/`, else the first executable file called `name` in the
/// directories of `path_var`, as `execvp` would pick.
fn find_executable(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return runnable(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(name))
        .find(|p| runnable(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn hinted(python: &str, path_var: &Path, prefixes: &[PathBuf]) -> bool {
        python_kernel_hinted(python, Some(path_var.as_os_str()), None, prefixes)
    }

    /// A base install with Python but no kernel anywhere is a "no", whichever of the places
    /// looked at exist; each place a kernel can be installed turns it into a "yes".
    #[test]
    fn a_kernel_is_hinted_only_where_one_is_installed() {
        let t = tempfile::tempdir().unwrap();
        let usr = t.path().join("usr");
        let local = t.path().join("usr/local");
        executable(&usr.join("bin/python3.11"));
        std::os::unix::fs::symlink("python3.11", usr.join("bin/python3")).unwrap();
        std::fs::create_dir_all(usr.join("lib/python3/dist-packages/requests")).unwrap();
        std::fs::create_dir_all(usr.join("lib/python3.11/lib-dynload")).unwrap();
        std::fs::create_dir_all(usr.join("share/doc")).unwrap();
        let bin = usr.join("bin");
        let system = vec![usr.clone(), local.clone()];
        assert!(!hinted("python3", &bin, &system), "bare python");
        assert!(!hinted("python3", &bin, &[]), "prefix from the interpreter");

        // Debian's package: found through the interpreter's own prefix too.
        let deb = usr.join("lib/python3/dist-packages/ipykernel");
        std::fs::create_dir_all(&deb).unwrap();
        assert!(hinted("python3", &bin, &[]));
        std::fs::remove_dir(&deb).unwrap();

        // pip into /usr/local.
        let pip = local.join("lib/python3.11/dist-packages/ipykernel");
        std::fs::create_dir_all(&pip).unwrap();
        assert!(hinted("python3", &bin, &system));
        assert!(!hinted("python3", &bin, std::slice::from_ref(&usr)));
        std::fs::remove_dir(&pip).unwrap();

        // A kernelspec alone (a kernel whose package lives elsewhere).
        let spec = local.join("share/jupyter/kernels");
        std::fs::create_dir_all(&spec).unwrap();
        assert!(hinted("python3", &bin, &system));
        std::fs::remove_dir(&spec).unwrap();

        // A venv whose `python3` links to the base install: its own site-packages count,
        // and so do the base install's.
        let venv = t.path().join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::os::unix::fs::symlink(usr.join("bin/python3"), venv.join("bin/python3")).unwrap();
        let vbin = venv.join("bin");
        assert!(!hinted("python3", &vbin, &[]));
        std::fs::create_dir_all(venv.join("lib/python3.11/site-packages/ipykernel")).unwrap();
        assert!(hinted("python3", &vbin, &[]));
        assert!(hinted(vbin.join("python3").to_str().unwrap(), &bin, &[]));
        assert!(!hinted("python3", &bin, &[]), "the base install has none");
        std::fs::create_dir_all(&deb).unwrap();
        std::fs::remove_dir_all(venv.join("lib")).unwrap();
        assert!(
            hinted("python3", &vbin, &[]),
            "the venv's base install has one"
        );
    }

    #[test]
    fn no_interpreter_is_no_kernel_and_a_pythonpath_is_a_maybe() {
        let t = tempfile::tempdir().unwrap();
        let usr = t.path().join("usr");
        std::fs::create_dir_all(usr.join("lib/python3/dist-packages/ipykernel")).unwrap();
        // The kernel's files without an interpreter to run them.
        assert!(!hinted(
            "python3",
            &usr.join("bin"),
            std::slice::from_ref(&usr)
        ));
        // A file that is not executable is no interpreter either.
        std::fs::create_dir_all(usr.join("bin")).unwrap();
        std::fs::write(usr.join("bin/python3"), "").unwrap();
        assert!(!hinted(
            "python3",
            &usr.join("bin"),
            std::slice::from_ref(&usr)
        ));
        assert!(!python_kernel_hinted(
            "python3",
            None,
            None,
            std::slice::from_ref(&usr)
        ));

        let bare = t.path().join("bare");
        executable(&bare.join("bin/python3"));
        assert!(!hinted("python3", &bare.join("bin"), &[]));
        assert!(python_kernel_hinted(
            "python3",
            Some(bare.join("bin").as_os_str()),
            Some(OsStr::new("/opt/kernels")),
            &[],
        ));
        assert!(!python_kernel_hinted(
            "python3",
            Some(bare.join("bin").as_os_str()),
            Some(OsStr::new("")),
            &[],
        ));
    }
}
