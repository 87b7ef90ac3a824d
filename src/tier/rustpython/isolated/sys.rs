//! The operating-system calls isolated mode needs, each behind a safe signature.
//! Every `unsafe` block of the mode lives here or in [`super::huge_pages`], with the
//! reason it is sound.
//!
//! Linux only: `pidfd_open`, `close_range`, `signalfd` and seccomp are Linux APIs.

#![allow(unsafe_code, reason = "the one module that makes raw system calls for isolated mode")]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub(super) fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn check_long(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn socket_pair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two descriptors.
    check(unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: on success both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A connected pair of `SOCK_SEQPACKET` sockets (message boundaries kept), close-on-exec.
///
/// # Errors
/// The system call's error.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket_pair(libc::SOCK_SEQPACKET)
}

/// A connected pair of `SOCK_STREAM` sockets, close-on-exec.
///
/// # Errors
/// The system call's error.
pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket_pair(libc::SOCK_STREAM)
}

/// Most descriptors one message carries.
const MAX_FDS: usize = 4;

/// Sends one message with `fds` attached (`SCM_RIGHTS`).
///
/// # Errors
/// The system call's error.
pub fn send_msg(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} descriptors per message");
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut cmsg_buf = [0u64; 8]; // 64 bytes, aligned: room for MAX_FDS descriptors
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(fd_bytes) } as _;
        // SAFETY: msg_control points at a buffer of msg_controllen bytes (<= 64), so the
        // first header and its data (fds.len() descriptors) lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            let dst = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                dst.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg and everything it points to outlive the call.
        let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf`, with any descriptors attached. Returns 0 bytes
/// at end of stream.
///
/// # Errors
/// The system call's error.
pub fn recv_msg(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    let n = loop {
        // SAFETY: msg points at live buffers of the stated sizes.
        let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if rc >= 0 {
            break rc as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with well-formed headers; the CMSG_*
    // walkers stay within msg_controllen. Received descriptors are new and ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::other("control message truncated"));
    }
    Ok((n, fds))
}

/// Forks the calling process. `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Only sound in a single-threaded process (the zygote): no other thread can hold a
/// lock the child would inherit locked.
///
/// # Errors
/// The system call's error.
pub fn fork_single_threaded() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: the zygote is single-threaded (no tokio, RustPython without
    // `threading`), so the child inherits no lock held by another thread.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 { None } else { Some(pid) })
}

/// A pidfd for `pid`: signals sent through it reach that process and never one
/// that later reuses its number.
///
/// # Errors
/// The system call's error.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the descriptor is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable then),
/// without waiting.
pub fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd; a zero timeout does not block.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc != 0
}

/// Sends `SIGKILL` through a pidfd. A process that already exited is not an error.
///
/// # Errors
/// The system call's error.
pub fn pidfd_kill(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor we hold; null siginfo is allowed.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0)
    };
    match check_long(rc) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How a reaped child ended, and what it used.
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// User plus system CPU time, microseconds.
    pub cpu_us: u64,
    /// Peak resident set, KiB.
    pub maxrss_kb: u64,
}

fn cpu_us(ru: &libc::rusage) -> u64 {
    let us = |t: libc::timeval| (t.tv_sec as u64).saturating_mul(1_000_000).saturating_add(t.tv_usec as u64);
    us(ru.ru_utime).saturating_add(us(ru.ru_stime))
}

/// Receives what `sock` holds now, without waiting: `WouldBlock` when nothing has
/// come, `Ok(0)` when the other end is closed.
///
/// # Errors
/// The system call's error.
pub fn recv_now(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes; `sock` is open
    // for the call's duration (borrowed).
    let rc = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Reaps one exited child without blocking; `None` when none has exited.
///
/// # Errors
/// The system call's error (`ECHILD` when there are no children).
pub fn reap_one() -> io::Result<Option<Reaped>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; the pointers are to live locals.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let pid = check(unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) })?;
    if pid == 0 {
        return Ok(None);
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Some(Reaped { pid, code, signal, cpu_us: cpu_us(&ru), maxrss_kb: ru.ru_maxrss as u64 }))
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Blocks `SIGCHLD` and returns a signalfd that becomes readable when a child exits.
///
/// # Errors
/// The system call's error.
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    let set = sigchld_set();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: -1 asks for a new descriptor.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: the descriptor is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Empties a non-blocking signalfd.
pub fn drain_signalfd(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 128 * 8];
    // SAFETY: reads into a live buffer of the stated size.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Unblocks every signal (a forked child starts with the zygote's mask).
pub fn unblock_all_signals() {
    // SAFETY: an empty set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Waits until any of `fds` is readable (or hung up); returns which are.
///
/// # Errors
/// The system call's error other than `EINTR`.
pub fn poll_readable(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfds.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sets both the soft and hard limit of `resource`.
///
/// # Errors
/// The system call's error.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: `lim` is a live, initialised rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) }).map(|_| ())
}

/// Makes `fd` also open as `target` (without close-on-exec).
///
/// # Errors
/// The system call's error.
pub fn dup_to(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on a descriptor we hold; `target` is replaced atomically.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(|_| ())
}

/// Closes every descriptor from `first` up, and `also` (e.g. stdin, stdout).
///
/// Callers must not use any `OwnedFd` for those numbers afterwards.
pub fn close_all_from(first: RawFd, also: &[RawFd]) {
    for fd in also {
        // SAFETY: closing a number; the caller owns no wrapper for it any more.
        unsafe { libc::close(*fd) };
    }
    // SAFETY: close_range on a range of numbers; the caller forgot their wrappers.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) };
    if rc != 0 {
        // Kernels before 5.9: close one by one up to the descriptor limit.
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the live local.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let top = RawFd::try_from(lim.rlim_cur.min(65_536)).unwrap_or(65_536);
        for fd in first..top {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// Asks the kernel to `SIGKILL` this process when its parent dies.
///
/// # Errors
/// The system call's error.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) }).map(|_| ())
}

/// Moves this process to `SCHED_BATCH` (inherited by its children): the kernel no
/// longer lets it preempt a running task when it wakes up. Lowering the policy
/// needs no privilege.
///
/// # Errors
/// The system call's error.
pub fn batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this process.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) }).map(|_| ())
}

/// The parent's pid.
pub fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() }
}

/// This process's pid.
pub fn own_pid() -> libc::pid_t {
    std::process::id() as libc::pid_t
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Moves this process into new namespaces (`CLONE_NEW*` flags).
///
/// # Errors
/// The system call's error (`EPERM` where the kernel or container forbids it).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare with flags affects only this (single-threaded) process.
    check(unsafe { libc::unshare(flags) }).map(|_| ())
}

/// Ends this process at once: no destructors, no atexit handlers, no flushing.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Makes one system call the seccomp filter must refuse (a test of the filter):
/// `socket`, `openat`, `execve`, `fork`, `kill` (of `victim`) or `ptrace`. Only in
/// builds with the `test-hooks` feature (see `hooks.rs`).
#[cfg(feature = "test-hooks")]
pub fn attempt_forbidden(syscall: &str, victim: libc::pid_t) {
    let path = c"/etc/passwd";
    // SAFETY: each call has valid (or null) pointer arguments; under the filter none
    // returns, and without it each fails harmlessly or acts on this process only
    // (`kill` sends signal 0, which only checks the target exists).
    unsafe {
        match syscall {
            "socket" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "openat" => {
                libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY);
            }
            "execve" => {
                libc::syscall(libc::SYS_execve, path.as_ptr(), std::ptr::null::<u8>(), std::ptr::null::<u8>());
            }
            "fork" => {
                libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
            }
            "kill" => {
                libc::kill(victim, 0);
            }
            "ptrace" => {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            }
            _ => {}
        }
    }
}

/// Takes ownership of an inherited descriptor number.
///
/// # Errors
/// `EBADF` when `fd` is not open.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the descriptor is open and nothing else in this process owns it
    // (it was inherited across exec for exactly this use).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arranges for the zygote, between fork and exec: its control socket (`ctl`)
/// becomes descriptor 3 and its main stack may grow to `stack` bytes.
///
/// (No `PR_SET_PDEATHSIG` here: it fires when the spawning *thread* exits, and the
/// supervisor spawns from a pool thread. The zygote exits instead when its control
/// socket reaches end of file, which happens when the host process dies.)
pub fn zygote_pre_exec(cmd: &mut std::process::Command, ctl: RawFd, stack: u64) {
    use std::os::unix::process::CommandExt;
    let setup = move || -> io::Result<()> {
        // SAFETY: dup2 and setrlimit are async-signal-safe, as pre_exec requires,
        // and touch only the new process.
        unsafe {
            check(libc::dup2(ctl, 3))?;
            let lim = libc::rlimit { rlim_cur: stack, rlim_max: stack };
            check(libc::setrlimit(libc::RLIMIT_STACK, &lim))?;
        }
        Ok(())
    };
    // SAFETY: `setup` makes only async-signal-safe calls and allocates nothing.
    unsafe {
        cmd.pre_exec(setup);
    }
}

/// Test hooks: makes the page of code at `addr` writable (and still executable),
/// writes `byte` at `addr` and reads it back, as native code a snippet controlled
/// could. Errors when the write did not take.
#[cfg(feature = "test-hooks")]
pub fn overwrite_code_byte(addr: usize, byte: u8) -> io::Result<()> {
    let page = addr & !4095;
    // SAFETY: `page` is the page of a function of this binary, mapped; adding write
    // access changes no content.
    check(unsafe {
        libc::mprotect(page as *mut libc::c_void, 4096, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)
    })?;
    // SAFETY: `addr` is now writable; the function there is never called by a child
    // that ran this probe (the test hooks call it only for another probe).
    unsafe { std::ptr::write_volatile(addr as *mut u8, byte) };
    if code_byte(addr) == byte { Ok(()) } else { Err(io::Error::other("the code did not change")) }
}

/// Test hooks: the byte of code at `addr` (the address of one of this binary's
/// functions).
#[cfg(feature = "test-hooks")]
pub fn code_byte(addr: usize) -> u8 {
    // SAFETY: `addr` is the address of a function of this binary, in a readable mapping.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}
