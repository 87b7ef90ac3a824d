//! Supervising one child's run: the request written, the deadline enforced with
//! SIGKILL, and the outcome decided by the host from what it saw.
//!
//! With one request in flight, the host polls for the answer for up to
//! [`ANSWER_SPIN`] before it sleeps on the runtime, giving up its CPU between polls
//! ([`spin_read`]). What it reads that way goes through the same capped parser as
//! any other read. The polling stops at the deadline, late by at most one of the
//! child's scheduler time slices (see [`ANSWER_SPIN`]); the kill is the same.

use super::*;

/// Why supervising a child gave no outcome.
pub(super) enum Supervise {
    /// The zygote died, and the child with it, before the child's end was known.
    ZygoteGone,
    /// A host fault.
    Host(SandboxError),
}

impl From<SandboxError> for Supervise {
    fn from(e: SandboxError) -> Supervise {
        Supervise::Host(e)
    }
}

/// The bounds one run is held to.
pub(super) struct RunLimits {
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    /// Bytes the answer stream may take.
    pub(super) cap: usize,
    /// Address-space limit, for messages.
    pub(super) memory: u64,
    /// Output cap, checked by the host on what the child sends.
    pub(super) max_output: u64,
    /// The run's fuel budget.
    pub(super) fuel: Option<u64>,
    /// Where the run's host function calls go.
    pub(super) host: Option<crate::executor::HostLink>,
    /// The deadline never moves past this (a session's lifetime), however long
    /// the host's functions take.
    pub(super) latest: Option<Instant>,
    /// Poll for the answer for up to [`ANSWER_SPIN`] before sleeping on the
    /// runtime: only when this is the only request or session cell in flight on
    /// the zygote's children.
    pub(super) spin: bool,
}

/// How long the host polls for a child's answer before it sleeps. Waking a thread
/// that slept costs tens of microseconds on the virtual machines measured, each
/// way (docs/benchmarks.md): a short run answers within this. Polled with the CPU
/// given up between polls (`sched_yield`), so that a child woken on the host's CPU
/// runs at once; a busy loop without yielding held that child off its CPU (1.7×
/// slower). With two requests in flight the polling CPU is one a child could use,
/// so only a lone request (or session cell: both are counted) polls.
///
/// A yield returns when the thread is scheduled again: at once when nothing else
/// wants its CPU, when the child blocks (its answer written), or, when a
/// CPU-bound child shares the CPU, at the end of the child's time slice (3–7 ms
/// measured on Linux 6.18). So one poll can hold its runtime thread, and see the
/// deadline, that much later; the thread is off the CPU meanwhile, which is the
/// child's. Tokio's own timer is no finer than a millisecond.
pub(super) const ANSWER_SPIN: Duration = Duration::from_micros(300);

/// Kills its child when dropped: whatever path a request takes out of
/// [`supervise`] (an answer, an error, a cancelled request), the child dies.
pub(super) struct KillOnDrop(OwnedFd);

impl KillOnDrop {
    pub(super) fn kill(&self) {
        // ESRCH (already dead and reaped) is the only expected failure.
        let _ = sys::pidfd_kill(self.0.as_fd());
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The longest denial reason an outcome carries, bytes.
const MAX_DENIAL: usize = 1024;

/// How reading a child's answer stream ended.
pub(super) enum Read {
    Answer(GuestAnswer),
    Closed,
    Broken(StreamError),
}

/// A child taken from the pool for one request or for a session's cells, until it
/// is killed (when this is dropped, at the latest).
pub(super) struct Live {
    pid: i32,
    stream: tokio::net::UnixStream,
    words: std::os::unix::net::UnixStream,
    child: KillOnDrop,
    exit: oneshot::Receiver<Exit>,
    accounting: Option<Accounting>,
}

/// How one request on a live child ended.
pub(super) enum Turn {
    /// The child answered and lives on (until killed): the outcome, and whether it
    /// can run a session's next cell (the guest's word, with the host's own checks).
    Answered(Outcome, bool),
    /// The child is dead (killed at a limit or on a protocol error, or it died).
    Ended(Outcome),
}

impl Live {
    pub(super) fn new(child: ReadyChild, want_namespaces: bool) -> Result<Live, Supervise> {
        let ReadyChild { pid, stream, words, pidfd, exit, namespaces, accounting } = child;
        let child = KillOnDrop(pidfd);
        if want_namespaces && !namespaces {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "isolated children run without new namespaces: this kernel or container refuses unshare \
                     (seccomp and rlimits still apply)"
                );
            });
        }
        stream.set_nonblocking(true).map_err(|e| host(&e.to_string()))?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| host(&e.to_string()))?;
        Ok(Live { pid, stream, words, child, exit, accounting })
    }

    /// The child's process id.
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// A second handle on the child's pidfd (for a watchdog that may kill it).
    pub(super) fn pidfd(&self) -> std::io::Result<OwnedFd> {
        self.child.0.try_clone()
    }

    /// Kills the child (it runs no more code).
    pub(super) fn kill(&self) {
        self.child.kill();
    }

    /// Sends `request`, enforces the deadline, and decides from what the host saw
    /// (and the guest's word for its own output) how the run ended. A child that
    /// answered is left alive: what its run cost is read from the kernel's
    /// accounting first (not from anything it said), and each turn is charged only
    /// the CPU time used since the previous one.
    pub(super) async fn turn(&mut self, request: &ChildRequest, limits: &RunLimits) -> Result<Turn, Supervise> {
        let mut frame = Vec::new();
        protocol::write_frame(&mut frame, request).map_err(|e| host(&e.to_string()))?;
        // Between a session's cells the child has nothing to say: bytes waiting
        // now were written ahead, which breaks the protocol. (A single run's child
        // has said nothing yet: no system call spent on looking.)
        let mut probe = [0u8; 1];
        let early = match request.session.then(|| self.stream.try_read(&mut probe)) {
            Some(Ok(0)) => Some(Read::Closed),
            Some(Ok(_)) => Some(Read::Broken(StreamError::Malformed)),
            Some(Err(_)) | None => None,
        };
        let mut answers = AnswerStream::new(limits.cap);
        let stream = &mut self.stream;
        // The deadline moves by the time the host's functions take.
        let mut deadline = limits.deadline;
        let mut calls = 0u64;
        let exchange = async {
            if let Some(read) = early {
                return Ok(read);
            }
            // A child that died during confinement has closed its end: the write
            // fails, and how it ended is read from its exit below.
            let _ = stream.write_all(&frame).await;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut first = if limits.spin { spin_read(stream, &mut chunk, deadline) } else { None };
            loop {
                let read = match first.take() {
                    Some(r) => Ok(r),
                    None => tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await,
                };
                let n = match read {
                    Err(_) => return Err(()),
                    Ok(Ok(0) | Err(_)) => return Ok(Read::Closed),
                    Ok(Ok(n)) => n,
                };
                let call = match answers.push(&chunk[..n]) {
                    Ok(Some(Heard::Answer(answer))) => return Ok(Read::Answer(answer)),
                    Ok(None) => continue,
                    Ok(Some(Heard::Call(call))) => call,
                    Err(e) => return Ok(Read::Broken(e)),
                };
                // The child waits for the reply: nothing may come before it.
                if answers.has_leftover() {
                    return Ok(Read::Broken(StreamError::Malformed));
                }
                calls += 1;
                let asked = Instant::now();
                let reply = match &limits.host {
                    Some(host) => host.call(call).await,
                    None => CallReply::Refused("this run has no host functions".into()),
                };
                let waited = asked.elapsed();
                if let CallReply::Refused(why) = &reply {
                    // The host's own record: the run is denied whatever the child does.
                    answers.denials.push(why.clone());
                }
                deadline += waited;
                if let Some(latest) = limits.latest {
                    deadline = deadline.min(latest);
                }
                let answer = CallAnswer { reply, waited_ms: millis(waited) };
                let mut out = Vec::new();
                if protocol::write_frame(&mut out, &answer).is_err() || stream.write_all(&out).await.is_err() {
                    return Ok(Read::Closed);
                }
            }
        };
        let mut read = exchange.await;
        // A session's child must stop at its answer: bytes after it were written
        // ahead of a request the host has not sent.
        if request.session && matches!(read, Ok(Read::Answer(_))) && answers.has_leftover() {
            read = Ok(Read::Broken(StreamError::Malformed));
        }
        let mut turn = match read {
            // The usual end: the kernel's accounting of the live child.
            Ok(Read::Answer(answer)) => {
                let e = observe(self.pid, self.accounting.as_ref()).unwrap_or(Exit {
                    code: None,
                    signal: None,
                    cpu_us: 0,
                    maxrss_kb: 0,
                });
                if let Some(a) = &mut self.accounting {
                    a.cpu_ns_at_ready = a.cpu_ns_at_ready.saturating_add(e.cpu_us.saturating_mul(1000));
                }
                let go_on = answer.can_continue;
                Turn::Answered(decide(answer, limits, e), go_on)
            }
            // Otherwise the child's run is over too: it dies now, and the turn ends
            // once the zygote has reaped it and said how it ended.
            read => {
                self.child.kill();
                let e = match tokio::time::timeout(EXIT_WAIT, &mut self.exit).await {
                    // Charged what it used since its last answer (or since it was
                    // ready), as an answered turn is.
                    Ok(Ok(mut e)) => {
                        let before = self.accounting.as_ref().map_or(0, |a| a.cpu_ns_at_ready / 1000);
                        e.cpu_us = e.cpu_us.saturating_sub(before);
                        e
                    }
                    // The reader drops every pending report when the zygote goes away.
                    // A run that called the host had effects outside its child: it
                    // is not run again.
                    Ok(Err(_)) if calls > 0 => {
                        return Err(Supervise::Host(host(
                            "the zygote died during a run that had called host functions; it is not run again",
                        )));
                    }
                    Ok(Err(_)) => return Err(Supervise::ZygoteGone),
                    Err(_) => return Err(Supervise::Host(host("the zygote did not report how a child ended"))),
                };
                Turn::Ended(match read {
                    Err(()) => {
                        let msg = format!("deadline of {}s exceeded; the run was killed", limits.timeout.as_secs_f64());
                        ended(Status::Timeout, ErrorKind::Timeout, msg, e)
                    }
                    Ok(Read::Broken(StreamError::TooBig)) => {
                        let msg = format!("the run's answer exceeded {} bytes; it was killed", limits.cap);
                        ended(Status::OutputLimit, ErrorKind::OutputLimit, msg, e)
                    }
                    Ok(Read::Broken(StreamError::Malformed)) => ended(
                        Status::Crashed,
                        ErrorKind::ProtocolError,
                        "the run's process broke the answer protocol; it was killed".into(),
                        e,
                    ),
                    Ok(Read::Closed) => classify(e, &last_words(&self.words), limits.memory)?,
                    Ok(Read::Answer(answer)) => decide(answer, limits, e),
                })
            }
        };
        // A denial the child sent stands, however the run ended afterwards (but for
        // the host's own deadline kill).
        let outcome = match &mut turn {
            Turn::Answered(o, _) | Turn::Ended(o) => o,
        };
        if let Some(reason) = answers.denials.first()
            && outcome.status != Status::Timeout
        {
            // A reason names what the snippet asked for (a module's name, of any
            // length): bounded like output, since callers and the audit log keep it.
            let mut reason = reason.clone();
            truncate(&mut reason, MAX_DENIAL.min(usize::try_from(limits.max_output).unwrap_or(usize::MAX)));
            outcome.result = None;
            outcome.end(Status::Denied, ErrorKind::PolicyDenied, reason);
        }
        Ok(turn)
    }
}

/// Polls `stream` for up to [`ANSWER_SPIN`] (never past `deadline`), yielding the
/// CPU between polls: what the first receive that did not find the socket empty
/// gave (bytes, the end of the stream, or an error), or `None` when nothing came.
/// Holds the calling runtime thread for [`ANSWER_SPIN`], or one time slice of a
/// CPU-bound child on the same CPU (see there).
fn spin_read(stream: &tokio::net::UnixStream, chunk: &mut [u8], deadline: Instant) -> Option<std::io::Result<usize>> {
    let budget = ANSWER_SPIN.min(deadline.saturating_duration_since(Instant::now()));
    crate::tier::rustpython::embedded::yield_until(budget, || match sys::recv_now(stream.as_fd(), chunk) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => None,
        r => Some(r),
    })
}

/// Runs `request` on `child`, a single-use child of `zygote`: it is killed as soon
/// as the host has its answer (SIGKILL lets it run no more code; the zygote reaps it
/// off the request path, so the request does not wait for its address space to be
/// torn down, and its descriptors are closed when the zygote reports it reaped, see
/// [`Zygote::bury`]), or at the deadline, or on any protocol error.
pub(super) async fn supervise(
    zygote: &Zygote,
    child: ReadyChild,
    request: &ChildRequest,
    limits: &RunLimits,
    want_namespaces: bool,
) -> Result<Outcome, Supervise> {
    let mut live = Live::new(child, want_namespaces)?;
    match live.turn(request, limits).await? {
        Turn::Answered(o, _) => {
            live.kill();
            zygote.bury(live);
            Ok(o)
        }
        Turn::Ended(o) => Ok(o),
    }
}

/// The outcome of a child that answered: its output and value are the guest's
/// word; the status is the host's, from the output sizes it sees.
pub(super) fn decide(answer: GuestAnswer, limits: &RunLimits, e: Exit) -> Outcome {
    let GuestAnswer { mut stdout, mut stderr, result, end, output_over, can_continue: _, fuel_used, fuel_out } = answer;
    let cap = usize::try_from(limits.max_output).unwrap_or(usize::MAX);
    // The value counts against the cap as well (the CPython tiers carry it on stderr),
    // and so does an exception's text, which the caller and the audit log keep.
    let value_len = result.as_ref().map_or(0, |r| serde_json::to_string(r).map_or(0, |t| t.len()));
    let raised_len = match &end {
        GuestEnd::Raised { kind, message } => kind.len().saturating_add(message.len()),
        _ => 0,
    };
    let over =
        output_over || stdout.len().saturating_add(stderr.len()).saturating_add(raised_len) > cap || value_len > cap;
    if over {
        truncate(&mut stdout, cap);
        truncate(&mut stderr, cap.saturating_sub(stdout.len()));
    }
    let mut o = with_usage(Outcome::blank(Tier::Rustpython), e);
    o.stdout = stdout;
    o.stderr = stderr;
    // The count is the child's interpreter's (the host cannot see instructions); it
    // never goes past the budget the host gave.
    o.usage.fuel = Some(limits.fuel.map_or(fuel_used, |budget| fuel_used.min(budget)));
    if over {
        o.status = Status::OutputLimit;
        o.error = Some(ErrorInfo::new(ErrorKind::OutputLimit, format!("output exceeded {cap} bytes")));
        return o;
    }
    if let Some(budget) = limits.fuel
        && fuel_out
    {
        o.status = Status::FuelExhausted;
        o.error = Some(ErrorInfo::new(ErrorKind::FuelExhausted, crate::tier::rustpython::worker::fuel_message(budget)));
        return o;
    }
    match end {
        GuestEnd::Returned => o.result = result,
        GuestEnd::Raised { kind, message } => {
            o.status = Status::Exception;
            o.error = Some(ErrorInfo::raised(kind, message));
        }
        GuestEnd::Panicked => {
            o.status = Status::Crashed;
            o.error = Some(ErrorInfo::new(
                ErrorKind::InterpreterPanic,
                "the interpreter failed internally; the run was discarded",
            ));
        }
    }
    o
}

pub(super) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// CPU time and peak resident set of live process `pid`, from the kernel's own
/// accounting (`/proc/<pid>/schedstat` and `VmHWM` in `/proc/<pid>/status`), read
/// through the files opened ahead when there are some.
pub(super) fn observe(pid: i32, opened: Option<&Accounting>) -> Option<Exit> {
    use std::os::unix::fs::FileExt;
    let read = |file: Option<&std::fs::File>, name: &str| -> Option<String> {
        match file {
            Some(f) => {
                let mut buf = vec![0u8; 16 << 10];
                let n = f.read_at(&mut buf, 0).ok()?;
                buf.truncate(n);
                String::from_utf8(buf).ok()
            }
            None => std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok(),
        }
    };
    let sched = read(opened.map(|a| &a.schedstat), "schedstat")?;
    let cpu_ns = cpu_ns(&sched)?;
    let status = read(opened.map(|a| &a.status), "status")?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cpu_ns = cpu_ns.saturating_sub(opened.map_or(0, |a| a.cpu_ns_at_ready));
    Some(Exit { code: None, signal: None, cpu_us: cpu_ns / 1000, maxrss_kb: hwm_kb })
}

/// CPU time, ns, from the text of `/proc/<pid>/schedstat` (its first field).
pub(super) fn cpu_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// What a dead child printed on its last-words socket (at most 4 KiB).
pub(super) fn last_words(words: &std::os::unix::net::UnixStream) -> String {
    use std::io::Read as _;
    let mut buf = Vec::new();
    if words.set_nonblocking(true).is_ok() {
        let _ = words.take(4096).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

pub(super) fn ended(status: Status, kind: ErrorKind, message: String, e: Exit) -> Outcome {
    with_usage(Outcome::refused(None, Tier::Rustpython, status, kind, message), e)
}

/// `o` with what the kernel counted for the child.
fn with_usage(mut o: Outcome, e: Exit) -> Outcome {
    o.usage.cpu_ms = Some(e.cpu_us / 1000);
    o.usage.peak_memory_bytes = Some(e.maxrss_kb.saturating_mul(1024));
    o
}

/// A child that ended without a complete answer: what happened to it. The host saw
/// the death (exit code or signal); the child's last words only name its cause.
pub(super) fn classify(e: Exit, last_words: &str, memory: u64) -> Result<Outcome, SandboxError> {
    if let Some(code) = e.code {
        // The child could not confine or set itself up (see zygote::child_main).
        if let Some(exit) = protocol::ChildExit::from_code(code).filter(|e| e.before_request()) {
            return Err(host(&format!(
                "an isolated child ended before running anything: {} (exit code {code}); no request ran",
                exit.step()
            )));
        }
        let msg = format!("the interpreter process exited with code {code} without answering");
        return Ok(ended(Status::Crashed, ErrorKind::Crashed, msg, e));
    }
    let signal = e.signal.unwrap_or(0);
    let (kind, msg) = match signal {
        libc::SIGABRT if last_words.contains("memory allocation of") => {
            let msg = format!("the run exceeded its memory limit of {memory} bytes");
            return Ok(ended(Status::MemoryLimit, ErrorKind::MemoryLimit, msg, e));
        }
        libc::SIGSYS => (
            ErrorKind::SeccompViolation,
            "the run attempted a system call the sandbox does not allow and was killed (SIGSYS)".to_string(),
        ),
        libc::SIGXCPU => {
            return Ok(ended(Status::Timeout, ErrorKind::CpuLimit, "the run used up its CPU time limit".into(), e));
        }
        libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS if last_words.contains("overflowed its stack") => {
            (ErrorKind::StackOverflow, "the interpreter overflowed its stack; the run was killed".to_string())
        }
        s => (ErrorKind::Crashed, format!("the interpreter process was killed by {}", signal_name(s))),
    };
    Ok(ended(Status::Crashed, kind, msg, e))
}

pub(super) fn signal_name(s: i32) -> String {
    let name = match s {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("signal {s}"),
    };
    name.to_string()
}
