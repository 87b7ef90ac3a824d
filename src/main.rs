//! The `terrarium` command: a thin shell over the library.

use std::process::ExitCode;

/// Charges the interpreter tier's fuel for large allocations (see
/// `terrarium::FuelCountingAlloc`): the isolated children are this binary.
#[cfg(feature = "rustpython")]
#[global_allocator]
static ALLOCATOR: terrarium::FuelCountingAlloc = terrarium::FuelCountingAlloc;

fn main() -> ExitCode {
    // Isolated mode re-executes this binary as its zygote; that must happen before
    // anything else starts (no threads, no runtime).
    #[cfg(feature = "rustpython")]
    if let Some(code) = terrarium::run_zygote_if_requested() {
        return code;
    }
    terrarium::cli::main()
}
