//! Attacks on the process wall of isolated mode: a child that somehow reaches a
//! system call it should not is killed by seccomp and reported as `crashed`, and
//! the tier keeps serving.

use terrarium::Status;

use crate::common::{default_isolated, run, runtime};

#[test]
fn forbidden_system_calls_kill_the_child() {
    for syscall in ["socket", "openat", "execve", "fork", "kill", "ptrace"] {
        let o = runtime().block_on(default_isolated().probe_forbidden_syscall(syscall)).expect("host fault");
        assert_eq!(o.status, Status::Crashed, "{syscall}: {o:?}");
        let err = o.error.expect("error");
        assert_eq!(err.kind, "SeccompViolation", "{syscall}: {err:?}");
        assert!(err.message.contains("SIGSYS"), "{err:?}");
    }
    assert_eq!(run("1 + 1").result, Some(serde_json::json!(2)));
}

#[test]
fn an_unknown_probe_is_not_a_violation() {
    // The probe path itself proves nothing unless a harmless request survives it.
    let o = runtime().block_on(default_isolated().probe_forbidden_syscall("none")).expect("host fault");
    assert_ne!(o.error.map(|e| e.kind), Some("SeccompViolation".to_string()));
}

#[test]
fn errors_shown_for_crashes_carry_no_host_paths() {
    let o = runtime().block_on(default_isolated().probe_forbidden_syscall("openat")).expect("host fault");
    let text = serde_json::to_string(&o).expect("json");
    assert!(!text.contains("/root") && !text.contains("/work") && !text.contains(".rs"), "{text}");
}
