//! The isolation tiers. Each implements [`crate::executor::Executor`]; none imports
//! another tier, the router or the audit log.

#[cfg(feature = "rustpython")]
pub mod rustpython;
#[cfg(any(feature = "wasm", feature = "docker"))]
mod cpython;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "wasm")]
pub mod wasm;
