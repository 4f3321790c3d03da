//! Where one sandbox's files live: what must last on the data dir's disk, and what needs no
//! disk on Paddock's run tmpfs (see [`crate::rundir`]).

use std::path::{Path, PathBuf};

use paddock_infra::SandboxId;

/// Per-sandbox paths.
#[derive(Debug, Clone)]
pub(super) struct Paths {
    /// On the data dir's file system: the disk image and the log.
    pub(super) dir: PathBuf,
    /// On the run tmpfs: the bundle, the boot id and the mount points of the disk and the
    /// root. Nothing here outlives the host's boot, and nothing needs to: a sandbox does not
    /// survive a reboot either.
    pub(super) run: PathBuf,
}

impl Paths {
    pub(super) fn new(data: &Path, id: &SandboxId) -> Self {
        Self {
            dir: data.join("sandboxes").join(id.as_str()),
            run: crate::rundir::sandboxes(data).join(id.as_str()),
        }
    }
    /// Holds the writable layer: a file system as big as the sandbox's disk limit.
    pub(super) fn disk(&self) -> PathBuf {
        self.run.join("disk")
    }
    /// The image file behind [`Self::disk`] with the image disk backend.
    pub(super) fn disk_image(&self) -> PathBuf {
        self.dir.join("disk.img")
    }
    pub(super) fn upper(&self) -> PathBuf {
        self.disk().join("upper")
    }
    pub(super) fn work(&self) -> PathBuf {
        self.disk().join("work")
    }
    /// Where the template's layers are idmapped for the overlay (see
    /// [`crate::mounts::mount_overlay_mapped`]): on the sandbox's disk, out of its view.
    pub(super) fn layer_views(&self) -> PathBuf {
        self.disk().join("views")
    }
    pub(super) fn rootfs(&self) -> PathBuf {
        self.run.join("rootfs")
    }
    pub(super) fn bundle(&self) -> PathBuf {
        self.run.join("bundle")
    }
    /// The current boot's `/proc/sys/kernel/random/boot_id`.
    pub(super) fn boot_id(&self) -> PathBuf {
        self.run.join("boot_id")
    }
    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("runtime.log")
    }
}
