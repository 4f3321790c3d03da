//! The contract between whatever runs a sandbox (embedded infra, Kubernetes controller, manager)
//! and the Paddock runtime inside it. Defined once, here:
//!
//! * the ports the runtime listens on ([`RUNTIME_PORT`], [`INTERPRETER_PORT`]);
//! * the envd version the API advertises for it ([`ENVD_VERSION`]);
//! * the `POST /init` request ([`InitRequest`]) and the access-token header;
//! * the constant-time token comparison every token check uses ([`same_secret`]);
//! * the signature of pre-signed file URLs ([`file_signature`]);
//! * with the `client` feature, the one client that probes `/health` and sends `/init`, with
//!   one retry policy ([`client::RuntimeClient`]);
//! * with the `users` feature, the user database the runtime and the embedded infra's template
//!   layers both edit ([`users`]); the default user's name ([`DEFAULT_USER`]) always.
//!
//! * the capped log of a sandbox's init output and its relay process ([`caplog`]), which
//!   the runtime binary runs for the embedded infra;
//! * the pipe on which the runtime says it listens, for the embedded infra ([`ready`]).
//!
//! The runtime links this crate without the `client` feature: types, constants and the
//! standard-library-only [`caplog`].

pub mod bootid;
pub mod caplog;
mod init;
pub mod ready;
mod signature;
mod token;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "users")]
pub mod users;

pub use init::InitRequest;
pub use signature::file_signature;
pub use token::{RandomUnavailable, random_hex, same_secret};

/// The user a sandbox's commands run as when a request names none (E2B's `user`): the runtime
/// makes sure it exists at boot, and the embedded infra's templates carry it ready-made.
pub const DEFAULT_USER: &str = "user";

/// The port the E2B SDKs expect the runtime (envd's protocol) on.
pub const RUNTIME_PORT: u16 = 49983;

/// The port the code-interpreter SDKs expect `/execute` and `/contexts` on.
pub const INTERPRETER_PORT: u16 = 49999;

/// The envd version whose behaviour the runtime implements. The manager advertises it to the
/// SDKs, which gate features on it (metadata on writes, `include_entry` on watches and
/// octet-stream uploads need ≥ 0.6.4).
pub const ENVD_VERSION: &str = "0.6.4";

/// The header carrying the sandbox's access token on the data plane and on `/init`.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";
