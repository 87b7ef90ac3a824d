//! The rustpython tier: RustPython 0.6, built capability-free, in two modes.
//!
//! - [`IsolatedExecutor`] (the default for untrusted code): a zygote process builds
//!   one warm interpreter and forks single-use children ahead of demand; each child
//!   enters rlimits, namespaces and a seccomp filter before it reads its request, and
//!   the host enforces the deadline with `SIGKILL`.
//! - [`EmbeddedExecutor`] (opt-in, trusted library calls): interpreters on worker
//!   threads of the calling process, limits enforced best-effort.
//!
//! # Confinement common to both, in order
//! 1. The interpreter is built without RustPython's `host_env`, `stdio` and
//!    `threading` features: no `os`/`posix`, sockets, `FileIO`, subprocesses or
//!    threads exist in the binary for it to call.
//! 2. Its module tables are pruned of introspection and host modules.
//! 3. Static analysis refuses imports outside the policy, dunder and frame
//!    attribute chains, and nesting deeper than [`crate::analysis::MAX_NESTING`].
//! 4. Snippets run with restricted builtins, a guarded `__import__` that hands out
//!    module proxies, guarded `getattr`/`str.format`, and `sys` stripped of
//!    `settrace`, `setrecursionlimit`, `_getframe` and the like.

pub mod embedded;
pub mod isolated;
mod walls;
mod worker;

pub use embedded::EmbeddedExecutor;
pub use isolated::{IsolatedConfig, IsolatedExecutor};
pub use worker::{WORKER_STACK, serves_module};
