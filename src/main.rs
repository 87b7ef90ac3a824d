//! The `terrarium` command: a thin shell over the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    terrarium::cli::main()
}
