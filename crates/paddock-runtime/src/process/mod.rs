//! The `process.Process` service: starting, streaming, feeding and
//! signalling processes inside the sandbox.

mod handle;
mod service;
mod spawn;
mod stream;
mod table;

pub use service::ProcessService;
pub use stream::keepalive_interval;
pub use table::ProcessTable;
