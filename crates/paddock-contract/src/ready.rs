//! The runtime's word that it listens, for the embedded infra's creates.
//!
//! The host hands a sandbox's init the write end of a pipe as descriptor [`READY_FD`] and names
//! it in [`READY_FD_ENV`]; the init passes it on to the runtime, which writes [`READY_BYTE`]
//! once its ports listen and closes it. The host waits for that byte instead of probing the
//! runtime's port every few milliseconds from the moment the container starts: each probe was
//! a connection into the sandbox (a SYN and its reset through the bridge) and a wake-up of a
//! host thread, dozens per cold create on a loaded host. EOF on the pipe before the byte means
//! every holder of the write end is gone: the sandbox's init died.
//!
//! Nothing depends on the byte coming: a runtime that never writes it (an older binary, one
//! run outside the embedded infra) is found by the probes as before, after a short wait.

/// The environment variable that names the descriptor, for the runtime.
pub const READY_FD_ENV: &str = "PADDOCK_RUNTIME_READY_FD";

/// The descriptor the sandbox's init gets the pipe on: the first one after stdio, which is
/// where an OCI runtime passes on the descriptors it is asked to preserve.
pub const READY_FD: i32 = 3;

/// What the runtime writes once it listens.
pub const READY_BYTE: u8 = b'R';
