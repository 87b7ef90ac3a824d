//! The limits every tier must hold, written once and run on each: a snippet that
//! tries to outrun the deadline, the output cap or the memory cap must end with the
//! matching status on the interpreter tier (isolated), the wasm tier and the docker
//! tier alike, so that the tiers cannot drift apart. A tier opted out with
//! `TERRARIUM_SKIP_WASM=1` or `TERRARIUM_SKIP_DOCKER=1` shows its rows as ignored.

use std::time::{Duration, Instant};

use terrarium::{ExecRequest, Executor, Outcome, Overrides, Policy, Status};

use crate::common::{default_isolated, docker_executor, docker_policy, exec, wasm_executor};

/// Declares each check once per tier: `fn name(run) { ... }`, where `run` sends an
/// [`ExecRequest`] to that tier and returns its outcome.
macro_rules! every_tier {
    ($($(#[$doc:meta])* fn $name:ident($run:ident) $body:block)*) => {
        mod rustpython {
            use super::*;
            $(
                $(#[$doc])*
                #[test]
                fn $name() {
                    let $run = |req: ExecRequest| exec(default_isolated(), req);
                    $body
                }
            )*
        }
        mod wasm {
            use super::*;
            $(
                $(#[$doc])*
                #[test]
                #[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
                fn $name() {
                    let tier = wasm_executor(Policy::default_policy()).expect("the wasm tier");
                    let $run = |req: ExecRequest| exec(&tier as &dyn Executor, req);
                    $body
                }
            )*
        }
        mod docker {
            use super::*;
            $(
                $(#[$doc])*
                #[test]
                #[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
                fn $name() {
                    let tier = docker_executor(docker_policy(), 0).expect("the docker tier");
                    let $run = |req: ExecRequest| exec(&tier as &dyn Executor, req);
                    $body
                }
            )*
        }
    };
}

fn with(code: &str, overrides: Overrides) -> ExecRequest {
    ExecRequest::new(code).with_overrides(overrides)
}

fn timeout(secs: u64) -> Overrides {
    Overrides { timeout: Some(Duration::from_secs(secs)), ..Overrides::default() }
}

/// Ends with `status` within `bound` of being sent.
fn assert_ends(run: impl Fn(ExecRequest) -> Outcome, req: ExecRequest, status: Status, bound: Duration) -> Outcome {
    let started = Instant::now();
    let o = run(req);
    let took = started.elapsed();
    assert_eq!(o.status, status, "{o:?}");
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    o
}

every_tier! {
    /// A busy loop ends at the deadline.
    fn a_busy_loop_ends_at_the_deadline(run) {
        assert_ends(run, with("while True: pass", timeout(1)), Status::Timeout, Duration::from_secs(6));
    }

    /// Catching whatever the deadline raises does not keep the run alive.
    fn catching_the_deadline_does_not_help(run) {
        let code = "while True:\n    try:\n        while True: pass\n    except BaseException:\n        pass";
        assert_ends(run, with(code, timeout(1)), Status::Timeout, Duration::from_secs(6));
    }

    /// Sleeping is time too.
    fn a_sleep_ends_at_the_deadline(run) {
        assert_ends(run, with("import time\ntime.sleep(60)", timeout(1)), Status::Timeout, Duration::from_secs(6));
    }

    /// An output flood ends at the output cap, with no more than the cap kept.
    fn an_output_flood_ends_at_the_output_cap(run) {
        let cap = 64 << 10;
        let o = assert_ends(
            run,
            with("while True: print('x' * 10000)", Overrides { max_output: Some(cap), ..timeout(10) }),
            Status::OutputLimit,
            Duration::from_secs(12),
        );
        let kept = o.stdout.len() + o.stderr.len();
        assert!(kept as u64 <= cap, "{kept} bytes kept, cap {cap}");
    }

    /// A gibibyte allocation under a 64 MiB cap ends the run (the memory limit, or
    /// the guest's own `MemoryError`) and nothing after it runs.
    fn a_huge_allocation_ends_at_the_memory_cap(run) {
        let req = with(
            "b = bytearray(2**30)\nprint('survived')",
            Overrides { max_memory: Some(64 << 20), ..timeout(10) },
        );
        let o = run(req);
        let clean = o.status == Status::MemoryLimit
            || (o.status == Status::Exception && o.error.as_ref().is_some_and(|e| e.kind == "MemoryError"));
        assert!(clean, "{o:?}");
        assert!(!o.stdout.contains("survived"), "{o:?}");
        // The tier still serves.
        let after = run(ExecRequest::new("print(1 + 1)"));
        assert_eq!((after.status, after.stdout.as_str()), (Status::Ok, "2\n"), "{after:?}");
    }
}
