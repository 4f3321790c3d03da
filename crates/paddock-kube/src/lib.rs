//! The Kubernetes backend of the Sandbox Manager.

pub mod keys;
