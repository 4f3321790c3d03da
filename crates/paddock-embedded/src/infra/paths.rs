//! Where one sandbox's files live under the data dir.

use std::path::PathBuf;

use paddock_infra::SandboxId;

/// Per-sandbox paths under the data dir.
#[derive(Debug, Clone)]
pub(super) struct Paths {
    pub(super) dir: PathBuf,
}

impl Paths {
    pub(super) fn new(data: &std::path::Path, id: &SandboxId) -> Self {
        Self {
            dir: data.join("sandboxes").join(id.as_str()),
        }
    }
    /// Holds the writable layer: a file system as big as the sandbox's disk limit.
    pub(super) fn disk(&self) -> PathBuf {
        self.dir.join("disk")
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
        self.dir.join("rootfs")
    }
    pub(super) fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    /// The current boot's `/proc/sys/kernel/random/boot_id`.
    pub(super) fn boot_id(&self) -> PathBuf {
        self.dir.join("boot_id")
    }
    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("runtime.log")
    }
}
