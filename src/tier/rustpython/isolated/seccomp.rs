//! The seccomp filter a child enters before it reads its request.
//!
//! # Security invariant
//! After [`enter`], the process can read and write the descriptors it already holds
//! (its request socket), manage its own memory, use clocks, futexes and entropy, and
//! exit. Everything else (`open`/`openat`, `socket`, `connect`, `execve`, `fork`/
//! `clone`, `ptrace`, `kill` of any process, `ioctl`, `prctl`, `setrlimit`, …) kills
//! the process with `SIGSYS`, which the supervisor reports as `crashed`. The filter
//! is built with `seccompiler` (no hand-written BPF) and applied with
//! `PR_SET_NO_NEW_PRIVS`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// System calls a running interpreter needs, allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrusage,
    libc::SYS_getpid,
    libc::SYS_gettid,
];

/// Builds the filter for process `pid`: `tgkill` is allowed only towards itself, so
/// `abort()` still ends the process with `SIGABRT`.
///
/// # Errors
/// seccompiler's (an unsupported architecture).
pub fn build(pid: libc::pid_t) -> Result<BpfProgram, seccompiler::Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|n| (*n, Vec::new())).collect();
    let own = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, pid as u64)
        .and_then(|c| SeccompRule::new(vec![c]))?;
    rules.insert(libc::SYS_tgkill, vec![own]);
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch)?;
    Ok(BpfProgram::try_from(filter)?)
}

/// Installs `program` on the calling thread (the child is single-threaded).
///
/// # Errors
/// The kernel's refusal.
pub fn enter(program: &BpfProgram) -> Result<(), seccompiler::Error> {
    seccompiler::apply_filter(program)
}
