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
pub mod launch;
mod paths;
mod process;
pub mod ready;
mod server;
mod state;
pub mod sudo;
use paddock_contract::users;

pub use filesystem::DEFAULT_MAX_WATCHERS;
pub use server::{app, interpreter_app, listen, serve_on};
pub use state::{Runtime, RuntimeOptions};

// The contract with orchestrators (ports, advertised envd version, the /init body) is defined
// once, in paddock-contract.
pub use paddock_contract::{ENVD_VERSION, INTERPRETER_PORT, RUNTIME_PORT as DEFAULT_PORT};
