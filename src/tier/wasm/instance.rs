//! One instance of python.wasm: its WASI context, store and limits, started with the
//! prelude; single runs on it (cold, or warm from the pool), read back as outcomes.
//! Sessions build their long-lived instance from the same parts (`session.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{StdinStream, StdoutStream};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use super::{Host, Runtime, Slot, TICK, UNLIMITED_FUEL, sleep};
use crate::breaker::Breaker;
use crate::error::SandboxError;
use crate::executor::{ErrorKind, Outcome, Status, Tier, millis};
use crate::policy::Policy;
use crate::tier::cpython::{PRELUDE, apply_denial, apply_output_cap, apply_status, nonce, request_text, split_status};

/// Starts a warm instance on its own thread.
pub(super) fn spawn_slot(runtime: Arc<Runtime>, policy: Policy, live: Arc<()>) -> Result<Slot, SandboxError> {
    let (host, guest) = tokio::io::duplex(1 << 16);
    let nonce = nonce();
    let pipes = Pipes::new(&policy);
    let stderr = pipes.stderr.clone();
    let window = Arc::new(std::sync::Mutex::new(None));
    let (tx, done) = tokio::sync::oneshot::channel();
    let (n, w) = (nonce.clone(), window.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let raised = stop.clone();
    // A warm instance imports the policy's modules while it waits (asyncio excepted:
    // the prelude installs Terrarium's own).
    let preload: Vec<&str> = policy.allowed_modules().iter().map(String::as_str).filter(|m| *m != "asyncio").collect();
    let preload = preload.join(" ");
    std::thread::Builder::new()
        .name("terrarium-wasm-warm".into())
        .spawn(move || {
            // Made here, off the caller's runtime: the stream's reader task then runs on
            // wasmtime-wasi's own runtime, which outlives the caller's (a task on the
            // caller's runtime dies with it at shutdown and the guest's read panics).
            let stdin = wasmtime_wasi::cli::AsyncStdinStream::new(guest);
            let _live = live;
            let launch = Launch { nonce: &n, preload: &preload, writable: None, flags: "", stop: Some(raised) };
            let _ = tx.send(run_instance(&runtime, &policy, stdin, pipes, launch, Deadline::Cell(w)));
        })
        .map_err(|e| SandboxError::Host { tier: Tier::Wasm, message: format!("cannot start a warm instance: {e}") })?;
    Ok(Slot { ready_marker: format!("\n{nonce} ready\n"), stderr, stdin: host, window, done, stop })
}

/// When a warm instance's or a session's run must end: (arrival, due) of the
/// request or cell being served; `None` before the first one (the instance may
/// take [`STARTUP_LIMIT`] to start).
pub(super) type Window = Arc<std::sync::Mutex<Option<(Instant, Instant)>>>;

/// How a run's deadline is kept.
enum Deadline {
    /// A fixed number of ticks from instantiation (cold runs).
    Ticks(u64),
    /// Set to (arrival, due) when the request arrives (warm instances, started ahead
    /// of it).
    Cell(Window),
}

/// How long a warm instance (or a session's) may take to start before it is abandoned.
pub(super) const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// The capped stdout and stderr of one instance.
#[derive(Clone)]
struct Pipes {
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Pipes {
    fn new(policy: &Policy) -> Pipes {
        let max_output = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
        // stderr also carries the ready marker and the status line.
        Pipes {
            stdout: MemoryOutputPipe::new(max_output),
            stderr: MemoryOutputPipe::new(max_output.saturating_add(64 * 1024)),
        }
    }
}

/// The writable directory a fresh instance gets.
pub(super) enum Writable {
    /// An empty `/scratch`, made in this parent directory and removed afterwards
    /// through the `file_io` breaker when there is one.
    Scratch(PathBuf, Option<Breaker>),
    /// The run's copy of a workspace, at `/workspace`.
    Workspace(crate::workspace::Mount),
}

/// Runs one request on a fresh instance (blocking), with `writable` when given.
pub(super) fn run_blocking(
    runtime: &Runtime,
    policy: &Policy,
    code: &str,
    writable: Option<Writable>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Outcome, SandboxError> {
    let nonce = nonce();
    let stdin = MemoryInputPipe::new(request_text(policy, code));
    let ticks = policy.timeout().as_millis().div_ceil(TICK.as_millis()).max(1);
    let deadline = Deadline::Ticks(u64::try_from(ticks).unwrap_or(u64::MAX));
    // The workspace's copy is held until the instance is gone: its descriptor,
    // named by `/proc/self/fd`, stays open while wasmtime opens it and after.
    let mut held = None;
    let (dir, breaker, mounted) = match writable {
        Some(Writable::Scratch(parent, breaker)) => {
            let d = ScratchDir::create(&parent, &nonce, breaker.as_ref())?;
            let by_handle = d.0.by_handle();
            (Some(d), breaker, Some(("scratch", by_handle)))
        }
        Some(Writable::Workspace(m)) => {
            let mounted = Some(("workspace", m.by_handle()));
            held = Some(m);
            (None, None, mounted)
        }
        None => (None, None, None),
    };
    let launch = Launch { nonce: &nonce, preload: "", writable: mounted, flags: "", stop: Some(stop) };
    let o = run_instance(runtime, policy, stdin, Pipes::new(policy), launch, deadline);
    drop(held);
    if let Some(d) = dir {
        d.remove(breaker.as_ref())?;
    }
    o
}

/// A run's private writable directory, removed afterwards: made in the system's
/// temporary directory only if no other user can change that ([`crate::dirs::ScratchDir`]),
/// and preopened by handle, never by path.
pub(super) struct ScratchDir(crate::dirs::ScratchDir);

impl ScratchDir {
    fn create(parent: &Path, nonce: &str, breaker: Option<&Breaker>) -> Result<ScratchDir, SandboxError> {
        let make = || crate::dirs::ScratchDir::create(parent, &format!("terrarium-scratch-{nonce}"));
        let made = match breaker {
            Some(b) => b.guard(make).map_err(|open| open.to_string()),
            None => Ok(make()),
        };
        match made {
            Ok(Ok(dir)) => Ok(ScratchDir(dir)),
            Ok(Err(e)) => Err(scratch_fault(format!("cannot create a scratch directory: {e}"))),
            Err(open) => Err(scratch_fault(format!("no scratch directory is made: {open}"))),
        }
    }

    fn remove(self, breaker: Option<&Breaker>) -> Result<(), SandboxError> {
        // Removal is always attempted, open breaker or not (as the engine's kills
        // are): an open breaker must not leave directories behind. It counts when
        // the breaker lets it.
        let removed = self.0.remove();
        if let Some(permit) = breaker.and_then(|b| b.allow().ok()) {
            match &removed {
                Err(e) => permit.failed(&format!("scratch removal: {e}")),
                Ok(()) => permit.succeeded(),
            }
        }
        removed.map_err(|e| scratch_fault(format!("cannot remove the scratch directory: {e}")))
    }
}

fn scratch_fault(message: String) -> SandboxError {
    SandboxError::Host { tier: Tier::Wasm, message }
}

/// What an instance starts with besides its streams.
pub(super) struct Launch<'a> {
    /// Marks its status lines.
    pub nonce: &'a str,
    /// Modules to import before the request (space-separated).
    pub preload: &'a str,
    /// The run's writable directory: its name under `/` (`scratch`,
    /// `workspace`) and the host path of its handle, preopened read-write.
    pub writable: Option<(&'a str, String)>,
    /// The prelude's flags (`mark session` for a session; empty for one run).
    pub flags: &'a str,
    /// Raised when the run must stop (its workspace copy is past the quota, or
    /// its caller dropped the run: an emergency stop, a client gone).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// A store for one instance of python.wasm started with the prelude: its WASI
/// context (the prelude's arguments, the given standard streams, the policy's
/// read-only mounts and the run's scratch directory, the guest's own clock; no
/// environment, no network), the policy's memory cap, `due` for its sleeps, and
/// `fuel`. No deadline yet (see [`watch_window`]).
pub(super) fn build_store(
    runtime: &Runtime,
    policy: &Policy,
    stdio: (impl StdinStream + 'static, impl StdoutStream + 'static, impl StdoutStream + 'static),
    launch: &Launch<'_>,
    due: sleep::Due,
    fuel: u64,
) -> Result<Store<Host>, SandboxError> {
    let (stdin, stdout, stderr) = stdio;
    let mut builder = WasiCtxBuilder::new();
    builder.stdin(stdin).stdout(stdout).stderr(stderr).args(&[
        "python",
        "-I",
        "-S",
        "-c",
        PRELUDE,
        launch.nonce,
        launch.preload,
        launch.writable.as_ref().map_or("-", |(name, _)| name),
        launch.flags,
    ]);
    if let Some((name, by_handle)) = &launch.writable {
        // The only host directory a guest may write: its own (an empty scratch
        // directory or its copy of a workspace), opened by handle.
        builder
            .preopened_dir(by_handle, format!("/{name}"), wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| host_err(format!("cannot open the {name} directory: {e}")))?;
    }
    for m in policy.read_only_mounts() {
        // What the policy grants, read-only (cap-std: nothing outside it is
        // reachable), and only the directory pinned at policy load: it is checked
        // through a handle, and the handle, not the path, is what is preopened
        // (its /proc/self/fd name leads to the same directory whatever happens to
        // the path meanwhile).
        let pinned = m.pinned.open().map_err(|e| host_err(format!("terrarium.read_only_mounts {}: {e}", m.target)))?;
        let by_handle = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pinned));
        builder.preopened_dir(&by_handle, &m.target, wasmtime_wasi::FsPerms::ReadOnly).map_err(|e| {
            host_err(format!("cannot open the directory mounted at {} (terrarium.read_only_mounts): {e}", m.target))
        })?;
        drop(pinned);
    }
    let clock = sleep::GuestClock(Instant::now());
    builder.monotonic_clock(clock);
    let wasi = builder.build_p1();
    let memory = usize::try_from(policy.max_memory()).unwrap_or(usize::MAX);
    let limits = StoreLimitsBuilder::new().memory_size(memory).trap_on_grow_failure(false).build();
    let mut store = runtime.store(wasi, limits, due, clock);
    if let Some(stop) = launch.stop.clone() {
        let halted: sleep::Halted = Some(std::sync::Arc::new(move || stop.load(std::sync::atomic::Ordering::SeqCst)));
        store.data_mut().halted = halted;
    }
    store.limiter(|h| &mut h.limits);
    store.set_fuel(fuel).map_err(|e| host_err(format!("cannot set fuel: {e}")))?;
    Ok(store)
}

/// Ends the run in `store` (a trap) once `window` is due; before the window is
/// set, at [`STARTUP_LIMIT`] from now. Checked at every epoch tick.
/// `stop`, when raised (a workspace copy past its quota, the run dropped), ends
/// it at the next tick.
pub(super) fn watch_window(
    store: &mut Store<Host>,
    window: Window,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) {
    let created = Instant::now();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        let due = window.lock().ok().and_then(|d| *d).map_or(created + STARTUP_LIMIT, |(_, due)| due);
        let stopped = stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
        if stopped || Instant::now() >= due {
            Err(Trap::Interrupt.into())
        } else {
            Ok(wasmtime::UpdateDeadline::Continue(1))
        }
    });
}

/// Instantiates python.wasm in `store`: its `_start`, and its linear memory.
pub(super) fn instantiate(
    runtime: &Runtime,
    store: &mut Store<Host>,
) -> Result<(TypedFunc<(), ()>, Option<Memory>), SandboxError> {
    let instance = runtime.pre.instantiate(&mut *store).map_err(|e| {
        host_err(format!("cannot instantiate python.wasm (are more than max_instances running at once?): {e}"))
    })?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(|e| host_err(format!("python.wasm has no _start: {e}")))?;
    Ok((start, instance.get_memory(&mut *store, "memory")))
}

fn host_err(message: String) -> SandboxError {
    SandboxError::Host { tier: Tier::Wasm, message }
}

/// Instantiates python.wasm with `stdin` and runs it to the end (blocking).
fn run_instance(
    runtime: &Runtime,
    policy: &Policy,
    stdin: impl StdinStream + 'static,
    pipes: Pipes,
    launch: Launch<'_>,
    deadline: Deadline,
) -> Result<Outcome, SandboxError> {
    let max_output = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
    let Pipes { stdout, stderr } = pipes;
    let due = match &deadline {
        Deadline::Ticks(_) => sleep::Due::At(Instant::now() + policy.timeout()),
        Deadline::Cell(cell) => sleep::Due::Window(cell.clone()),
    };
    let fuel = policy.fuel().unwrap_or(UNLIMITED_FUEL);
    let stdio = (stdin, stdout.clone(), stderr.clone());
    let mut store = build_store(runtime, policy, stdio, &launch, due, fuel)?;
    let cell = match deadline {
        Deadline::Ticks(t) => {
            match launch.stop.clone() {
                // Checked at every tick: a workspace's copy past its quota ends
                // the run as its deadline does (the sandbox says why).
                Some(stop) => {
                    let mut left = t;
                    store.set_epoch_deadline(1);
                    store.epoch_deadline_callback(move |_| {
                        left = left.saturating_sub(1);
                        if left == 0 || stop.load(std::sync::atomic::Ordering::SeqCst) {
                            Err(Trap::Interrupt.into())
                        } else {
                            Ok(wasmtime::UpdateDeadline::Continue(1))
                        }
                    });
                }
                None => {
                    store.set_epoch_deadline(t);
                    store.epoch_deadline_trap();
                }
            }
            None
        }
        Deadline::Cell(cell) => {
            watch_window(&mut store, cell.clone(), launch.stop.clone());
            Some(cell)
        }
    };
    let (start, memory) = instantiate(runtime, &mut store)?;
    let cpu = Instant::now();
    let ended = start.call(&mut store, ());
    // A warm instance's work starts when its request arrives.
    let window = cell.and_then(|c| c.lock().ok().and_then(|d| *d));
    let began = window.map_or(cpu, |(arrived, _)| arrived);
    let timeout = window.map_or(policy.timeout(), |(arrived, due)| due - arrived);
    let used_fuel = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    // Linear memory never shrinks: its final size is the run's peak.
    let peak = memory.map(|m| m.data_size(&store) as u64);
    let out = String::from_utf8_lossy(&stdout.contents()).into_owned();
    let err_bytes = stderr.contents();
    let report = split_status(&String::from_utf8_lossy(&err_bytes), launch.nonce);
    let status_line = report.status_line;
    let mut o = Outcome::blank(Tier::Wasm);
    o.stdout = out;
    o.stderr = report.stderr;
    o.usage.cpu_ms = Some(millis(began.elapsed()));
    o.usage.fuel = policy.fuel().map(|_| used_fuel);
    o.usage.peak_memory_bytes = peak;
    let output_full = stdout.contents().len() >= max_output || err_bytes.len() >= max_output;
    match ended {
        Err(e) => {
            if let Some(trap) = e.downcast_ref::<Trap>() {
                match trap {
                    Trap::OutOfFuel => o.end(
                        Status::FuelExhausted,
                        ErrorKind::FuelExhausted,
                        format!("the run used up its fuel ({fuel})"),
                    ),
                    Trap::Interrupt => o.end(
                        Status::Timeout,
                        ErrorKind::Timeout,
                        format!("deadline of {}s exceeded", timeout.as_secs_f64()),
                    ),
                    other => o.end(Status::Crashed, ErrorKind::Trap, format!("the interpreter trapped: {other}")),
                }
            } else if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                apply_status(&mut o, status_line.as_deref(), Some(exit.0), output_full);
            } else {
                o.end(Status::Crashed, ErrorKind::Trap, format!("the interpreter failed: {e}"));
            }
        }
        Ok(()) => apply_status(&mut o, status_line.as_deref(), None, output_full),
    }
    apply_output_cap(&mut o, max_output);
    apply_denial(&mut o, report.denial.as_deref());
    Ok(o)
}
