//! Test hooks: a child that misbehaves on purpose, so that the tests of the walls
//! around a child (the seccomp filter, the supervisor's reading of answers and its
//! kills) can act as a snippet that fully controls its process.
//!
//! Compiled only with the `test-hooks` feature, which this package enables for its
//! own tests and benches and nothing else: a build of the library or of the
//! `terrarium` binary for use has no probe field in its protocol and no code here.

use std::time::{Duration, Instant};

use super::protocol::{self, ChildMessage, GuestAnswer, GuestEnd};
use super::sys;

/// The x86 `int3` instruction: what the `rewrite_code` probe writes into the code.
const BREAKPOINT: u8 = 0xCC;

/// What a child does for the probe `probe` before its run: `None` to run as usual,
/// or the way it keeps running after its answer. A forbidden system call does not
/// return: the filter kills the child, or the child exits with 77.
// Never inlined: their symbols are how scripts/test tells a build with the hooks
// from one without.
#[inline(never)]
pub(super) fn before_run(probe: Option<&str>, zygote: libc::pid_t) -> Option<&str> {
    match probe {
        Some("forge_on_stderr") => {
            // What the runtime's fallback writes would put on descriptor 2: a
            // complete answer frame that claims another output.
            let forged = GuestAnswer {
                stdout: "FORGED\n".into(),
                stderr: String::new(),
                result: None,
                end: GuestEnd::Returned,
                output_over: false,
                can_continue: false,
                fuel_used: 0,
                fuel_out: false,
            };
            let _ = protocol::write_message(&mut std::io::stderr(), &ChildMessage::Answer(forged));
            None
        }
        Some(after @ ("linger_after_answer" | "spin_after_answer" | "hold_memory_after_answer" | "answer_ahead")) => {
            Some(after)
        }
        Some("rewrite_code") => {
            // Native code the snippet controls makes the code of a function every
            // child has writable and overwrites its first byte with a breakpoint. It
            // must take in this child (or the test proves nothing): if not, it exits
            // with `Setup`, which the host reports as a crash.
            if sys::overwrite_code_byte(answer_ahead as fn(&std::fs::File) as usize, BREAKPOINT).is_err() {
                sys::exit_now(protocol::ChildExit::Setup.code());
            }
            None
        }
        Some("check_code") => {
            // A later child: the breakpoint another child wrote must not be here.
            if sys::code_byte(answer_ahead as fn(&std::fs::File) as usize) == BREAKPOINT {
                sys::exit_now(protocol::ChildExit::Setup.code());
            }
            None
        }
        Some(syscall) => {
            sys::attempt_forbidden(syscall, zygote);
            sys::exit_now(protocol::ChildExit::ForbiddenCallReturned.code()); // not reached when the filter holds
        }
        None => None,
    }
}

/// A session's child that writes, after its answer, a complete answer frame for a
/// cell the host has not sent yet.
#[inline(never)]
pub(super) fn answer_ahead(sock: &std::fs::File) {
    let forged = GuestAnswer {
        stdout: "FORGED AHEAD\n".into(),
        stderr: String::new(),
        result: None,
        end: GuestEnd::Returned,
        output_over: false,
        can_continue: true,
        fuel_used: 0,
        fuel_out: false,
    };
    let _ = protocol::write_message(&mut &*sock, &ChildMessage::Answer(forged));
}

/// A child that does not exit after its answer: it sleeps, spins, or fills memory
/// and sleeps, for as long as nobody kills it.
#[inline(never)]
pub(super) fn keep_running(how: &str) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    if how == "hold_memory_after_answer" {
        for _ in 0..64 {
            // Touched pages, 1 MiB at a time, as far as the address-space limit allows.
            let mut block = Vec::new();
            if block.try_reserve_exact(1 << 20).is_err() {
                break;
            }
            block.resize(1 << 20, 1u8);
            held.push(block);
        }
    }
    if how == "answer_ahead" {
        return;
    }
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        if how == "spin_after_answer" {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(held);
}
