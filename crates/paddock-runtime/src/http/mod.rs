//! envd's plain HTTP routes.

pub mod files;
pub mod info;
pub mod init;
mod upload_limit;
