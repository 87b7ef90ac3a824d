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
//! 3. The prelude builds the snippet environment (restricted builtins, a guarded
//!    `__import__` that hands out module proxies, stand-ins for `os` and `asyncio`),
//!    the policy's modules are imported, and then the interpreter is sealed
//!    (`walls.rs`): the attributes that hand out interpreter internals are deleted
//!    from the VM's types, so no route reaches them, whatever names a snippet builds.
//! 4. Static analysis and the native attribute builtins refuse dunder and frame
//!    attribute names early, with a clear message; they are not the wall.
//! 5. A denial, the deadline or the output cap is terminal: it raises at every
//!    instruction until the run unwinds.

pub mod embedded;
mod importer;
pub mod isolated;
mod value;
mod walls;
mod worker;

pub use embedded::EmbeddedExecutor;
pub use isolated::{IsolatedConfig, IsolatedExecutor};
pub use worker::{WORKER_STACK, serves_module};
