//! The Paddock runtime: the small agent that runs inside every sandbox.
//!
//! It speaks the envd protocol that the E2B SDKs use on port 49983: the
//! `process.Process` and `filesystem.Filesystem` Connect services (JSON and
//! protobuf codecs, unary and streaming) plus plain HTTP routes for file
//! transfer (`/files`), start-up configuration (`/init`), `/envs`, `/health`
//! and `/metrics`.

pub mod proto {
    //! Messages and service traits generated from `proto/`.
    #![allow(missing_docs, clippy::all)]
    connectrpc::include_generated!();
}

mod auth;
mod errors;
mod filesystem;
mod http;
mod identity;
pub mod interpreter;
mod paths;
mod process;
mod server;
mod state;
mod users;

pub use filesystem::DEFAULT_MAX_WATCHERS;
pub use server::{app, interpreter_app, serve};
pub use state::{Runtime, RuntimeOptions};

/// The envd version whose behaviour this runtime implements. The manager
/// advertises it to the SDKs, which gate features on it (metadata on writes,
/// `include_entry` on watches and octet-stream uploads need ≥ 0.6.4).
pub const ENVD_VERSION: &str = "0.6.4";

/// The port the E2B SDKs expect the runtime on.
pub const DEFAULT_PORT: u16 = 49983;
