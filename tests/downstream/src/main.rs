//! The README's library example as a program of its own: a sandbox with the default
//! policy runs one snippet in isolated mode and prints its result.

use std::process::ExitCode;

use terrarium::{ExecRequest, Policy, Sandbox, Status};

/// Fuel charges what runs allocate only with Terrarium's allocator installed (the
/// isolated children are this program).
#[global_allocator]
static ALLOCATOR: terrarium::FuelCountingAlloc = terrarium::FuelCountingAlloc;

fn main() -> ExitCode {
    // Isolated mode re-executes this program as its zygote.
    if let Some(code) = terrarium::run_zygote_if_requested() {
        return code;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("downstream: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let sandbox = match Sandbox::builder().policy(Policy::default_policy()).build() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("downstream: {e}");
                return ExitCode::FAILURE;
            }
        };
        match sandbox.execute(ExecRequest::new("import json\njson.dumps([1, 2])")).await {
            Ok(outcome) if outcome.status == Status::Ok => {
                println!("{}", outcome.result.unwrap_or(serde_json::Value::Null));
                ExitCode::SUCCESS
            }
            Ok(outcome) => {
                eprintln!("downstream: {:?}: {:?}", outcome.status, outcome.error);
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("downstream: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
