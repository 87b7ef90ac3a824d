//! The isolation tiers. Each implements [`crate::executor::Executor`]; none imports
//! another tier, the router or the audit log.

// Pure decoding and request text, no engine: in every build (the fuzz targets use
// it without the CPython tiers).
#[cfg_attr(not(any(feature = "wasm", feature = "docker")), allow(dead_code))]
pub mod cpython;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "rustpython")]
pub mod rustpython;
#[cfg(feature = "wasm")]
pub mod wasm;
