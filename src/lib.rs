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

/// Declares the crate's internal modules: `pub(crate)` in the library, public (and
/// hidden from the docs) only with the `internals` feature, which Terrarium's own
/// tests, benches and fuzz targets enable to reach what they exercise directly. Not a
/// stable interface.
macro_rules! internal_modules {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        $(#[$meta])*
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$meta])*
        #[cfg(not(feature = "internals"))]
        pub(crate) mod $name;
    )*};
}

internal_modules! {
    analysis;
    command;
    dirs;
    error;
    executor;
    hex;
    names;
    process;
    #[cfg(feature = "cli")]
    redteam;
    router;
    sandbox;
    text;
    tier;
}

pub mod approval;
pub mod audit;
pub mod breaker;
#[cfg(feature = "cli")]
pub mod cli;
pub mod policy;
#[cfg(feature = "server")]
pub mod server;

pub use command::Decision;
pub use error::SandboxError;
pub use executor::{ErrorInfo, ErrorKind, ExecRequest, Executor, Outcome, Status, Usage};
pub use policy::{Overrides, Policy, PolicyError, Tier, TierChoice};
pub use sandbox::{CommandReport, Sandbox, SandboxBuilder};
#[cfg(feature = "docker")]
pub use tier::docker::{DockerConfig, DockerExecutor};
#[cfg(feature = "rustpython")]
pub use tier::rustpython::isolated::run_zygote_if_requested;
#[cfg(feature = "rustpython")]
pub use tier::rustpython::{EmbeddedExecutor, IsolatedConfig, IsolatedExecutor};
#[cfg(feature = "wasm")]
pub use tier::wasm::{WasmConfig, WasmExecutor};
