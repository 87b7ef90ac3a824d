//! The isolation tiers. Each implements [`crate::executor::Executor`]; none imports
//! another tier, the router or the audit log.

#[cfg(any(feature = "wasm", feature = "docker"))]
mod cpython;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "rustpython")]
pub mod rustpython;
#[cfg(feature = "wasm")]
pub mod wasm;
