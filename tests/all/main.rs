//! Terrarium's integration tests, built as one binary. Security tests are named
//! after the attack they try (`escape_*`, `limits`).
//!
//! The slowest tests (a batch of 10,000 runs, 1,000 concurrent clients, the review
//! page in a real browser) are named `slow_*`: CI runs them; a developer can leave
//! them out with `cargo test -- --skip slow_`.

#[path = "../common/mod.rs"]
mod common;

/// As Terrarium's binary: embedded runs in these tests charge fuel for large
/// allocations too.
#[global_allocator]
static ALLOCATOR: terrarium::FuelCountingAlloc = terrarium::FuelCountingAlloc;

#[path = "../alerts.rs"]
mod alerts;
#[path = "../architecture.rs"]
mod architecture;
#[path = "../audit.rs"]
mod audit;
#[path = "../bad_input.rs"]
mod bad_input;
#[path = "../breaker.rs"]
mod breaker;
#[path = "../cli.rs"]
mod cli;
#[path = "../command.rs"]
mod command;
#[path = "../docker.rs"]
mod docker;
#[path = "../escape_builtins.rs"]
mod escape_builtins;
#[path = "../escape_docker.rs"]
mod escape_docker;
#[path = "../escape_imports.rs"]
mod escape_imports;
#[path = "../escape_interpreter.rs"]
mod escape_interpreter;
#[path = "../escape_introspection.rs"]
mod escape_introspection;
#[path = "../escape_seccomp.rs"]
mod escape_seccomp;
#[path = "../escape_sessions.rs"]
mod escape_sessions;
#[path = "../escape_state.rs"]
mod escape_state;
#[path = "../escape_workspace.rs"]
mod escape_workspace;
#[path = "../every_tier.rs"]
mod every_tier;
#[path = "../fast_paths.rs"]
mod fast_paths;
#[path = "../fuel.rs"]
mod fuel;
#[path = "../functions.rs"]
mod functions;
#[path = "../isolation.rs"]
mod isolation;
#[path = "../limits.rs"]
mod limits;
#[path = "../mcp.rs"]
mod mcp;
#[path = "../ops.rs"]
mod ops;
#[path = "../policy_parity.rs"]
mod policy_parity;
#[path = "../redteam.rs"]
mod redteam;
#[path = "../review_browser.rs"]
mod review_browser;
#[path = "../router.rs"]
mod router;
#[path = "../sealing.rs"]
mod sealing;
#[path = "../server.rs"]
mod server;
#[path = "../sessions.rs"]
mod sessions;
#[path = "../stdlib.rs"]
mod stdlib;
#[path = "../wasm.rs"]
mod wasm;
#[path = "../workspace.rs"]
mod workspace;
