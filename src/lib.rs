//! Terrarium runs untrusted Python snippets under a policy, in the lightest
//! isolation tier that can serve them, and says exactly how each run ended.
//!
//! # Threat model, in short
//! Snippets are hostile: written by an AI agent, a user or a fuzzer. They must not
//! read, write or list host files, open sockets, start processes, or outlive their
//! run; every limit ends a run within its bound; the host process survives. The
//! walls are, from the inside out: a capability-free interpreter (nothing in it can
//! reach the host), a module whitelist enforced by a guarded importer, static and
//! run-time refusal of introspection, and resource limits. See `SECURITY.md` and
//! each tier's module docs for what each wall does and does not cover.
//!
//! ```no_run
//! # async fn demo() -> Result<(), terrarium::SandboxError> {
//! use terrarium::{ExecRequest, Executor, Policy, EmbeddedExecutor};
//! let exec = EmbeddedExecutor::new(Policy::default_policy());
//! let outcome = exec.execute(ExecRequest::new("import json\njson.dumps([1, 2])")).await?;
//! assert_eq!(outcome.result, Some(serde_json::json!("[1, 2]")));
//! # Ok(()) }
//! ```

pub mod analysis;
pub mod approval;
pub mod audit;
pub mod breaker;
#[cfg(feature = "cli")]
pub mod cli;
pub mod command;
pub mod dirs;
pub mod error;
pub mod executor;
pub mod hex;
pub mod names;
pub mod policy;
pub mod process;
#[cfg(feature = "redteam")]
pub mod redteam;
pub mod router;
pub mod sandbox;
#[cfg(feature = "server")]
pub mod server;
pub mod text;
pub mod tier;

pub use error::SandboxError;
pub use executor::{ErrorInfo, ErrorKind, ExecRequest, Executor, Outcome, Status, Usage};
pub use policy::{Overrides, Policy, PolicyError, Tier, TierChoice};
pub use sandbox::{Sandbox, SandboxBuilder};
#[cfg(feature = "docker")]
pub use tier::docker::{DockerConfig, DockerExecutor};
#[cfg(feature = "rustpython")]
pub use tier::rustpython::{EmbeddedExecutor, IsolatedConfig, IsolatedExecutor};
#[cfg(feature = "wasm")]
pub use tier::wasm::{WasmConfig, WasmExecutor};
