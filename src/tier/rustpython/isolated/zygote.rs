//! The zygote and its children: the worker side of isolated mode.
//!
//! The zygote is the `terrarium` binary re-executed with [`ZYGOTE_ARG`]. It is
//! single-threaded (no tokio; RustPython built without `threading`), builds one warm
//! capability-free interpreter, imports the policy's modules, and then forks a child
//! per `Spawn` message. It reaps its children and reports how each ended. Once its
//! first child is announced it moves its own code into transparent huge pages
//! ([`huge_pages::move_code`]; never writable and executable at once), which
//! children share without faulting the binary's pages in one by one, and asks for
//! them on its heap ([`huge_pages::advise_heap`]).
//!
//! # Security invariant: a child is confined before it reads its request
//! In order, before the first byte of the request: every descriptor but its request
//! socket (descriptor 3) and its last-words socket (descriptor 2, where the runtime
//! prints before an abort) is closed, it dies with the zygote,
//! it is in new user/net/mount/IPC/UTS namespaces where the kernel allows (entered
//! once by the zygote before its first child, and inherited), it takes
//! rlimits (address space, CPU seconds, no core files, no file writes, no new
//! descriptors), and it installs the seccomp filter of [`super::seccomp`]. It runs
//! exactly one request and exits with `_exit`; copy-on-write gives it the zygote's
//! pristine interpreter, so nothing one request does reaches another.
//!
//! # What a child says
//! Only this file's Rust code writes to descriptor 3: each denial as it happens,
//! then one answer with what the guest produced. No interpreter code path writes
//! there (RustPython's fallback writes go to descriptor 2). The supervisor kills the
//! child as soon as it reads the answer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::protocol::{
    self, ChildExit, ChildMessage, ChildRequest, FromZygote, GuestAnswer, GuestEnd, SpawnSpec, ToZygote,
};
use super::{huge_pages, seccomp, sys};
use crate::executor::{Outcome, Status};
use crate::tier::rustpython::worker::{Job, Worker, set_denial_sink, set_host_sink};

/// The hidden first argument that turns the `terrarium` binary into a zygote.
pub const ZYGOTE_ARG: &str = "__terrarium-zygote";

/// Descriptor number of the control socket in the zygote.
const CONTROL_FD: i32 = 3;
/// Descriptor number of the request socket in a child.
const REQUEST_FD: i32 = 3;
/// What a child runs before it reads its request, to take its copy-on-write faults
/// early.
const WARM_UP: &str = "x = [str(i) for i in range(64)]\nd = {k: len(k) for k in x}\nprint(len(d))\nsum(d.values())";
/// Common paths of allowed modules, run once in the zygote so that lazy
/// initialisation (encoders, compiled patterns, caches) is done before the fork
/// rather than again in every child.
const MODULE_WARM_UPS: &[(&str, &str)] = &[
    ("json", "import json\njson.loads(json.dumps([1, 2.5, 'x', {'k': None, 'l': [True]}], indent=1, sort_keys=True))"),
    ("re", "import re\nre.compile(r'(\\w+)-(\\d+)').findall('a-1 b-2')\nre.sub(r'\\s+', ' ', 'a  b')"),
    ("math", "import math\nmath.sqrt(2) + math.floor(2.5) + math.gcd(12, 18)"),
    (
        "collections",
        "import collections\ncollections.Counter('abca').most_common(1)\ncollections.deque([1, 2]).popleft()",
    ),
    ("itertools", "import itertools\nlist(itertools.islice(itertools.count(), 3))"),
    ("functools", "import functools\nfunctools.reduce(lambda a, b: a + b, [1, 2, 3])"),
    ("datetime", "import datetime\n(datetime.datetime(2020, 1, 2) + datetime.timedelta(days=1)).isoformat()"),
    ("random", "import random\nrandom.random() + random.randint(1, 6)"),
    ("statistics", "import statistics\nstatistics.mean([1, 2, 3])"),
    ("decimal", "import decimal\nstr(decimal.Decimal('1.1') + decimal.Decimal('2.2'))"),
    ("fractions", "import fractions\nstr(fractions.Fraction(1, 3) + 1)"),
    ("string", "import string\nstring.Template('$a').substitute(a=1)"),
];

/// What a child runs before it reads its request: [`WARM_UP`], then, when
/// `import` (no other request is running), one import of each of the policy's
/// modules (writing the reference counts of the proxies the zygote made, and of
/// what they hold) and, for `json`, a small `dumps`. Lighter than the zygote's
/// warm-ups: every child pays for these, whether its request uses the modules or
/// not. Run with the policy's modules allowed either way, so that the zygote's
/// proxies stay ready for the request (see [`crate::tier::rustpython::importer::start_run`]).
fn child_warm_up(worker: &Worker, allowed: &[String], import: bool) {
    let mut code = String::from(WARM_UP);
    if import {
        code.push_str(&import_lines(allowed));
        if allowed.iter().any(|m| m == "json") {
            code.push_str("\njson.dumps([1, 'a', None])");
        }
    }
    warm_up(worker, code, std::sync::Arc::new(allowed.iter().cloned().collect()));
}

/// An import of each module in `allowed` that this tier serves (a plain dotted
/// name), each on its own so that one missing module does not stop the rest.
fn import_lines(allowed: &[String]) -> String {
    let plain = |m: &&String| m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    let served = |m: &&String| !crate::tier::rustpython::importer::unservable(m);
    allowed
        .iter()
        .filter(plain)
        .filter(served)
        .map(|m| format!("\ntry:\n    import {m}\nexcept ImportError:\n    pass"))
        .collect()
}

/// Runs Terrarium's own warm-up `code`, in fresh globals, allowed `allowed`: the
/// module proxies its imports make are kept for the next run (see
/// [`crate::tier::rustpython::importer::start_run`]).
fn warm_up(worker: &Worker, code: String, allowed: std::sync::Arc<std::collections::BTreeSet<String>>) {
    let _ = worker.run(&Job {
        run_id: 1,
        id: None,
        code,
        allowed_modules: allowed,
        max_output: 1 << 16,
        deadline: Instant::now() + Duration::from_secs(5),
        session: false,
        functions: std::sync::Arc::from([]),
        fuel: None,
        own_code: true,
    });
}

/// Decodes a request frame and encodes an answer frame of this child's own making,
/// as its request and answer will be: the code and heap pages that takes are then
/// mapped and written before the request arrives, not on its path (a child's first
/// decode of its request took six page faults, half of the ~50 µs it took).
fn rehearse_protocol(allowed: &[String]) {
    let request = ChildRequest {
        id: Some(String::new()),
        code: "1+1".into(),
        allowed_modules: allowed.iter().cloned().collect(),
        max_output: 1,
        timeout_ms: 1,
        session: false,
        functions: Vec::new(),
        fuel: Some(1),
        #[cfg(feature = "test-hooks")]
        probe: None,
    };
    let mut frame = Vec::new();
    if protocol::write_frame(&mut frame, &request).is_ok() {
        let _ = protocol::read_frame::<ChildRequest>(&mut frame.as_slice(), MAX_REQUEST);
    }
    let answer = ChildMessage::Answer(guest_answer(
        Outcome { result: Some(2.into()), ..Outcome::blank(crate::executor::Tier::Rustpython) },
        false,
    ));
    let _ = protocol::write_message(&mut Vec::new(), &answer);
}

/// Runs [`WARM_UP`] and the warm-ups of the allowed modules in the zygote, so that
/// lazy initialisation (encoders, compiled patterns, caches) is done once, before
/// the fork, rather than again in every child.
fn warm_up_modules(worker: &Worker, allowed: &[String]) {
    let set: std::sync::Arc<std::collections::BTreeSet<String>> =
        std::sync::Arc::new(allowed.iter().cloned().collect());
    let run = |code: &str| warm_up(worker, code.into(), set.clone());
    run(WARM_UP);
    for (module, code) in MODULE_WARM_UPS {
        if set.contains(*module) {
            run(code);
        }
    }
    // Last, the proxies of every allowed module, which children inherit ready:
    // made afresh, after the warm-ups above changed what they change (`collections`
    // binds `heapq` at its first `most_common`).
    crate::tier::rustpython::importer::forget_proxies();
    run(&import_lines(allowed));
}

/// The byte a child writes once it is confined and warm, without new namespaces.
const READY: u8 = 0x52;
/// The same, from a child that entered new namespaces.
const READY_NAMESPACES: u8 = 0x4e;
/// Largest request a child reads (code is capped far lower by policy).
const MAX_REQUEST: usize = 64 << 20;
/// Largest reply to a host call a child reads (a result is at most 16 MiB of
/// JSON by the policy's cap, checked by the host).
const MAX_CALL_ANSWER: usize = 40 << 20;

/// Runs the zygote when this process was started as one; `None` otherwise.
///
/// Call it first thing in `main`, before any thread or runtime starts:
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     if let Some(code) = terrarium::run_zygote_if_requested() {
///         return code;
///     }
///     // ...
/// #   std::process::ExitCode::SUCCESS
/// }
/// ```
pub fn run_zygote_if_requested() -> Option<ExitCode> {
    if std::env::args_os().nth(1).is_some_and(|a| a == ZYGOTE_ARG) { Some(zygote_main()) } else { None }
}

fn send(ctl: &OwnedFd, msg: &FromZygote, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    sys::send_msg(ctl.as_fd(), &body, fds)
}

fn zygote_main() -> ExitCode {
    let Ok(ctl) = sys::take_inherited(CONTROL_FD) else {
        eprintln!("terrarium: {ZYGOTE_ARG} is internal: it expects a control socket on descriptor {CONTROL_FD}");
        return ExitCode::from(2);
    };
    // Panics are reported as outcomes; their text (with source paths) must not reach
    // the request socket that doubles as a child's stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let mut buf = vec![0u8; protocol::MAX_CONTROL];
    let preload = match sys::recv_msg(ctl.as_fd(), &mut buf) {
        Ok((n, _)) if n > 0 => match serde_json::from_slice::<ToZygote>(&buf[..n]) {
            Ok(ToZygote::Init { preload }) => preload,
            _ => return ExitCode::from(2),
        },
        _ => return ExitCode::from(2),
    };
    let worker = match Worker::new() {
        Ok(w) => w,
        Err(e) => {
            let _ = send(&ctl, &FromZygote::Failed { message: e.to_string() }, &[]);
            return ExitCode::from(1);
        }
    };
    worker.preload(&preload);
    if let Err(e) = worker.seal() {
        let _ = send(&ctl, &FromZygote::Failed { message: e.to_string() }, &[]);
        return ExitCode::from(1);
    }
    warm_up_modules(&worker, &preload);
    worker.freeze();
    let Ok(sigchld) = sys::sigchld_fd() else {
        let _ = send(&ctl, &FromZygote::Failed { message: "cannot watch for exiting children".into() }, &[]);
        return ExitCode::from(1);
    };
    // The zygote wakes on the host's request for a child, which comes at the end of
    // a request; as a normal task it preempted the caller's thread to fork (and its
    // children, to confine and warm themselves), which put ~2 ms on 1-2% of
    // requests (docs/benchmarks.md). As a batch task it never preempts on waking
    // and runs when a CPU is free. Children inherit it. A kernel that refuses only
    // costs that tail, so a refusal is not an error.
    let _ = sys::batch_scheduling();
    let me = sys::own_pid();
    if send(&ctl, &FromZygote::Ready { pid: me }, &[]).is_err() {
        return ExitCode::from(1);
    }
    // Children forked but still confining themselves: announced once they say ready.
    let mut confining: Vec<Confining> = Vec::new();
    // Whether this zygote entered new namespaces (once asked to; see below).
    let mut in_namespaces: Option<bool> = None;
    // The huge page size, until the code and the heap have moved into them (see below).
    let mut huge_pages_pending = huge_pages::size_on_request();
    loop {
        let mut fds = vec![ctl.as_fd(), sigchld.as_fd()];
        fds.extend(confining.iter().map(|c| c.host_end.as_fd()));
        let Ok(readable) = sys::poll_readable(&fds) else {
            return ExitCode::from(1);
        };
        drop(fds);
        if readable[1] {
            sys::drain_signalfd(sigchld.as_fd());
            while let Ok(Some(r)) = sys::reap_one() {
                let msg = FromZygote::Exited {
                    pid: r.pid,
                    code: r.code,
                    signal: r.signal,
                    cpu_us: r.cpu_us,
                    maxrss_kb: r.maxrss_kb,
                };
                if send(&ctl, &msg, &[]).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
        }
        // Announce the children that finished confining themselves (newest first, so
        // removal keeps the indices of the rest valid).
        for i in (0..confining.len()).rev() {
            if !readable[2 + i] {
                continue;
            }
            let c = confining.swap_remove(i);
            let mut byte = [0u8; 1];
            let msg = match (&c.host_end).read(&mut byte) {
                Ok(1) if byte[0] == READY || byte[0] == READY_NAMESPACES => {
                    FromZygote::Spawned { token: c.token, pid: c.pid, namespaces: byte[0] == READY_NAMESPACES }
                }
                _ => FromZygote::SpawnFailed {
                    token: c.token,
                    message: "a child died while confining itself (namespaces, rlimits or seccomp failed)".into(),
                },
            };
            let sent = match &msg {
                FromZygote::Spawned { .. } => {
                    send(&ctl, &msg, &[c.host_end.as_fd(), c.host_words.as_fd(), c.pidfd.as_fd()])
                }
                _ => send(&ctl, &msg, &[]),
            };
            if sent.is_err() {
                return ExitCode::SUCCESS;
            }
            // Once the first child is announced (so that its run, and a one-shot
            // command's, does not wait for it): the code moves into huge pages that
            // children share through fork's copy of a few page-directory entries,
            // rather than each faulting in and tearing down ~3,000 pages of the file,
            // and the heap, warm by now, asks for them too (docs/benchmarks.md).
            // ~15 ms and the code's size in memory, once; if the kernel refuses, the
            // code stays mapped from the file and runs the same.
            if let Some(huge) = huge_pages_pending.take() {
                let _ = huge_pages::move_code(huge);
                let _ = huge_pages::advise_heap(huge);
            }
        }
        if readable[0] {
            let spec = match sys::recv_msg(ctl.as_fd(), &mut buf) {
                Ok((0, _)) | Err(_) => return ExitCode::SUCCESS, // the supervisor is gone
                Ok((n, _)) => match serde_json::from_slice::<ToZygote>(&buf[..n]) {
                    Ok(ToZygote::Spawn(spec)) => spec,
                    _ => continue,
                },
            };
            // Namespaces are entered once, by the zygote, before its first child
            // that wants them: children inherit them at fork. A network namespace
            // per child cost its set-up on the request path and a teardown in the
            // kernel's background workers that lengthened the tail; children share
            // these, and the seccomp filter leaves them no call that could reach
            // another child through them (no sockets, IPC, mounts or hostname).
            if spec.namespaces && in_namespaces.is_none() {
                in_namespaces = Some(enter_namespaces());
            }
            let spec = SpawnSpec { namespaces: spec.namespaces && in_namespaces == Some(true), ..spec };
            match spawn(&worker, &spec, me, &preload) {
                Ok(c) => confining.push(c),
                Err(e) => {
                    let msg = FromZygote::SpawnFailed { token: spec.token, message: e.to_string() };
                    if send(&ctl, &msg, &[]).is_err() {
                        return ExitCode::SUCCESS;
                    }
                }
            }
        }
    }
}

/// A forked child that has not yet said it is confined.
struct Confining {
    token: u64,
    pid: i32,
    host_end: File,
    host_words: OwnedFd,
    pidfd: OwnedFd,
}

/// Bytes of address space this process has mapped now.
fn mapped_bytes() -> u64 {
    // /proc/self/statm: size in pages first.
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}

fn spawn(worker: &Worker, spec: &SpawnSpec, zygote: i32, preload: &[String]) -> io::Result<Confining> {
    let (host_end, child_end) = sys::stream_pair()?;
    let (host_words, child_words) = sys::stream_pair()?;
    let address_space = mapped_bytes().saturating_add(spec.memory);
    match sys::fork_single_threaded()? {
        None => {
            drop(host_end);
            drop(host_words);
            child_main(worker, child_end, child_words, spec, address_space, zygote, preload)
        }
        Some(pid) => {
            drop(child_end);
            drop(child_words);
            let pidfd = sys::pidfd_open(pid)?;
            Ok(Confining { token: spec.token, pid, host_end: File::from(host_end), host_words, pidfd })
        }
    }
}

/// The child: confine, read one request, answer, `_exit`. Never returns.
#[allow(clippy::too_many_arguments, reason = "the child's whole set-up, passed once at fork")]
fn child_main(
    worker: &Worker,
    sock: OwnedFd,
    words: OwnedFd,
    spec: &SpawnSpec,
    address_space: u64,
    zygote: i32,
    preload: &[String],
) -> ! {
    sys::unblock_all_signals();
    if sys::die_with_parent().is_err() || sys::parent_pid() != zygote {
        sys::exit_now(ChildExit::NotTheZygotesChild.code());
    }
    // Descriptors: the request socket as 3, the last-words socket as 2.
    if sys::dup_to(sock.as_fd(), REQUEST_FD).is_err() || sys::dup_to(words.as_fd(), 2).is_err() {
        sys::exit_now(ChildExit::Descriptors.code());
    }
    // Their numbers are closed below with the rest.
    std::mem::forget(sock);
    std::mem::forget(words);
    sys::close_all_from(REQUEST_FD + 1, &[0, 1]);
    let Ok(sock) = sys::take_inherited(REQUEST_FD) else { sys::exit_now(ChildExit::Setup.code()) };
    // In the zygote's new namespaces, when it entered them (see `zygote_main`).
    let namespaces = spec.namespaces;
    let limits = [
        (libc::RLIMIT_AS, address_space),
        (libc::RLIMIT_CPU, spec.cpu_secs.max(1)),
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_FSIZE, 0),
        (libc::RLIMIT_NOFILE, (REQUEST_FD + 1) as u64),
    ];
    for (resource, value) in limits {
        if sys::set_rlimit(resource, value).is_err() {
            sys::exit_now(ChildExit::Rlimits.code());
        }
    }
    let Ok(filter) = seccomp::build(sys::own_pid()) else { sys::exit_now(ChildExit::Seccomp.code()) };
    if seccomp::enter(&filter).is_err() {
        sys::exit_now(ChildExit::Seccomp.code());
    }
    drop(filter);
    if worker.after_fork().is_err() {
        sys::exit_now(ChildExit::Setup.code());
    }
    // Touch, ahead of demand, the pages every run writes (parser, compiler, frames,
    // refcounts of the core types and of the policy's modules): their copy-on-write
    // faults then happen here, off the request path. The warm-up is Terrarium's own
    // code, in fresh globals, the same in every child.
    child_warm_up(worker, preload, spec.warm_modules);
    rehearse_protocol(preload);
    worker.prepare_globals();
    let sock = std::rc::Rc::new(File::from(sock));
    // Each denial goes to the host the moment it happens (every way a run ends
    // `denied` passes through this sink). Both sinks are set before the request
    // comes, off its path.
    {
        let sock = sock.clone();
        set_denial_sink(Box::new(move |reason| {
            let _ = protocol::write_message(&mut &*sock, &ChildMessage::Denial { reason: reason.into() });
        }));
    }
    // Host function calls go to the host on the same socket; the child blocks for
    // the reply (the only frame the host sends during a run). A host that is gone
    // ends the child.
    {
        let sock = sock.clone();
        set_host_sink(Box::new(move |call| {
            if protocol::write_message(&mut &*sock, &ChildMessage::Call(call)).is_err() {
                sys::exit_now(0);
            }
            match protocol::read_frame::<protocol::CallAnswer>(&mut &*sock, MAX_CALL_ANSWER) {
                Ok(a) => (a.reply, Duration::from_millis(a.waited_ms)),
                Err(_) => sys::exit_now(0),
            }
        }));
    }
    // Confined and warm: say so (the zygote announces the child on this byte), then,
    // and only then, read the request.
    let ready = if namespaces { READY_NAMESPACES } else { READY };
    if (&*sock).write_all(&[ready]).is_err() {
        sys::exit_now(ChildExit::NotAnnounced.code());
    }
    let Ok(mut req) = protocol::read_frame::<ChildRequest>(&mut &*sock, MAX_REQUEST) else {
        sys::exit_now(ChildExit::NoRequest.code())
    };
    // Test hooks (test builds only): a child acting as one its snippet fully controls.
    #[cfg(feature = "test-hooks")]
    let probe = req.probe.take();
    #[cfg(feature = "test-hooks")]
    let misbehave = super::hooks::before_run(probe.as_deref(), zygote);
    // The first request decides: a single run, or the first cell of a session,
    // whose later cells come on the same socket after each answer.
    let session = req.session;
    let mut run_id = 1;
    let ok = loop {
        let job = Job {
            run_id,
            id: req.id,
            code: req.code,
            allowed_modules: std::sync::Arc::new(req.allowed_modules),
            max_output: usize::try_from(req.max_output).unwrap_or(usize::MAX),
            deadline: Instant::now() + Duration::from_millis(req.timeout_ms),
            session,
            functions: std::sync::Arc::from(std::mem::take(&mut req.functions)),
            fuel: req.fuel,
            own_code: false,
        };
        let (outcome, reusable) = worker.run(&job);
        let answer = ChildMessage::Answer(guest_answer(outcome, session && reusable));
        let ok = protocol::write_message(&mut &*sock, &answer).is_ok();
        #[cfg(feature = "test-hooks")]
        if misbehave == Some("answer_ahead") {
            super::hooks::answer_ahead(&sock);
        }
        if !(ok && session && reusable) {
            break ok;
        }
        // The session's next cell, or the end of the socket when the host ends it.
        match protocol::read_frame::<ChildRequest>(&mut &*sock, MAX_REQUEST) {
            Ok(next) => req = next,
            Err(_) => sys::exit_now(0),
        }
        run_id += 1;
    };
    #[cfg(feature = "test-hooks")]
    if let Some(how) = misbehave {
        super::hooks::keep_running(how);
    }
    // Wait to be killed: the host reads what this run cost from the kernel's
    // accounting of this live process, then kills it. If the host goes away instead,
    // the socket ends and so does this child.
    if ok {
        let mut byte = [0u8; 1];
        let _ = (&*sock).read(&mut byte);
    }
    sys::exit_now(if ok { 0 } else { 76 })
}

/// What the guest produced in a run, for the host (how the run ended is the host's
/// to decide; a denial was already sent on its own).
fn guest_answer(o: Outcome, can_continue: bool) -> GuestAnswer {
    let end = match (o.status, o.error) {
        (Status::Ok, _) => GuestEnd::Returned,
        (Status::Crashed, _) => GuestEnd::Panicked,
        (_, Some(e)) => GuestEnd::Raised { kind: e.kind, message: e.message },
        (_, None) => GuestEnd::Returned,
    };
    GuestAnswer {
        stdout: o.stdout,
        stderr: o.stderr,
        result: o.result,
        end,
        output_over: o.status == Status::OutputLimit,
        can_continue,
        fuel_used: o.usage.fuel.unwrap_or(0),
        fuel_out: o.status == Status::FuelExhausted,
    }
}

/// Enters new namespaces: as root directly, otherwise inside a new user namespace.
/// A process in a new network namespace has no interfaces but loopback (down). No new
/// PID namespace: it would apply only to the child's own children, and the seccomp
/// filter forbids it any.
fn enter_namespaces() -> bool {
    let base = libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    let flags = if sys::is_root() { base } else { base | libc::CLONE_NEWUSER };
    sys::unshare(flags).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn statm_is_readable_here() {
        assert!(super::mapped_bytes() > 0);
    }
}
