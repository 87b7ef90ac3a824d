//! Sessions on the wasm tier: one python.wasm instance kept for a session's cells.
//! The prelude runs in session mode (flags `mark session`, as on the docker tier):
//! after each report it reads the next cell, framed by its length, and runs it in
//! the same globals. The instance runs on a thread of its own, blocked on stdin
//! between cells; its standard streams are drainable (`stream.rs`): the host feeds
//! each cell and reads its output as it comes, until the prelude's report (stdout's
//! end marker, then the status line on stderr), the cell's deadline, its output cap
//! or the instance's end.
//!
//! Steps, in order: the session's policy (`sessions.max_memory` as the memory cap)
//! → an instance from the pool's slots with the WASI context of any run (no
//! environment, no network, the policy's read-only mounts, no scratch directory)
//! → the prelude imports the policy's modules and says it is ready → for each cell:
//! its window opens (`(arrival, due)`, the epoch deadline and the guest's sleeps
//! end there), its fuel is set as the guest reads the cell, it is fed on
//! stdin, and once the guest has read it its output is taken up to the cap → the
//! host reads to the report → no output is taken until the next cell.
//!
//! # Security invariants
//! - The instance serves this session only: it is never a warm slot and never
//!   returns to the pool; no single run and no other session shares its store, its
//!   memory or its streams.
//! - The host decides every end. A cell's deadline is the epoch deadline of its
//!   window (the guest traps at the next tick; its sleeps end there too); a cell
//!   that ends at a limit or crashes ends the session, and the instance is
//!   stopped (its window closed, its streams closed) before the cell's outcome
//!   returns; idle and expired sessions are stopped by a watchdog; a dropped or
//!   ended session's instance is stopped at once. A stopped instance traps at its
//!   next epoch tick, its next host call, or its next write, and its blocked read
//!   of stdin ends: its thread ends and its slot is freed.
//! - The guest runs only inside a cell's window: between cells it is blocked on
//!   stdin, and should it run anyway (code it left behind after its report) it
//!   traps once the window's deadline passes. Output is taken only inside a cell,
//!   from the guest's reading of it to its report: a write outside (after the
//!   report, between cells, or before the next cell was read) traps the instance
//!   and ends the session with a protocol error, whenever it lands; so does output
//!   that comes with the report.
//! - Nothing from the guest is trusted beyond its own output and value. Within a
//!   window the snippet controls CPython, the prelude and its markers included: a
//!   forged report, early or for a later cell of its own, is the guest's word in
//!   its own session. How a cell ended at a limit (deadline, fuel, memory, output)
//!   is what the host observed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{CallHook, Trap};

use super::instance::{Launch, Window, build_store, instantiate, watch_window};
use super::stream::{Exit, Io};
use super::{Runtime, STARTUP_LIMIT, UNLIMITED_FUEL, WasmExecutor, sleep};
use crate::error::SandboxError;
use crate::executor::{CellInfo, ErrorKind, ExecRequest, Lifecycle, Outcome, Status, Tier, admit, end_reason, millis};
use crate::policy::Policy;
use crate::tier::cpython::{
    CallLines, answer_line, apply_denial, apply_output_cap, apply_status, call_reply_frame, framed, nonce,
    request_text_with, split_status, stdout_end,
};

/// Room on stderr beyond `max_output`, for the prelude's markers (as single runs).
const STDERR_SLACK: usize = 64 * 1024;
/// How long the host waits for a stopped instance's thread to end.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long the guest may take, after its report, to block waiting for its next
/// cell (the prelude takes microseconds; a loaded machine may not run its thread
/// at once). Code that keeps running past it ends the session.
const PARK_GRACE: Duration = Duration::from_millis(250);

/// What the host tells a session's instance, and what the instance's hooks publish
/// back (the only state the two threads share besides the streams).
pub(super) struct Control {
    /// The current cell's (arrival, due); the epoch deadline and the guest's
    /// sleeps end there.
    window: Window,
    /// The current cell's fuel, set as the guest takes the cell from stdin.
    fuel: AtomicU64,
    /// The host stopped the instance: it traps as soon as it runs.
    stopped: AtomicBool,
    /// Fuel left and linear memory size, as of the instance's last host call.
    fuel_left: AtomicU64,
    memory: AtomicU64,
    /// The instance's thread has not ended yet.
    running: AtomicBool,
}

impl Control {
    /// Stopped by the host and still running (what an emergency stop waits for).
    pub(super) fn lingering(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) && self.running.load(Ordering::SeqCst)
    }

    fn new() -> Arc<Control> {
        Arc::new(Control {
            window: Arc::new(std::sync::Mutex::new(None)),
            fuel: AtomicU64::new(UNLIMITED_FUEL),
            stopped: AtomicBool::new(false),
            fuel_left: AtomicU64::new(UNLIMITED_FUEL),
            memory: AtomicU64::new(0),
            running: AtomicBool::new(true),
        })
    }

    fn set_window(&self, window: (Instant, Instant)) {
        *self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(window);
    }

    /// Opens a cell's window with its fuel.
    fn open(&self, arrived: Instant, due: Instant, fuel: u64) {
        self.fuel.store(fuel, Ordering::SeqCst);
        self.set_window((arrived, due));
    }
}

/// The session's instance, while it lives; stopped when dropped (a session
/// dropped, or a start abandoned half-way, leaves no instance waiting).
struct Live {
    io: Arc<Io>,
    control: Arc<Control>,
    nonce: String,
}

impl Live {
    /// Stops the instance: its window closes (it traps at its next tick or host
    /// call), its input ends and its writes trap. Idempotent.
    fn stop(&self) {
        stop(&self.io, &self.control);
    }

    /// Stops the instance and waits (a bounded time) for its thread to end.
    async fn stop_and_wait(self) {
        self.stop();
        let until = tokio::time::Instant::now() + STOP_LIMIT;
        while self.io.exit().is_none() {
            if tokio::time::timeout_at(until, self.io.changed()).await.is_err() {
                tracing::warn!("a stopped session's wasm instance did not end within {STOP_LIMIT:?}");
                return;
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop(io: &Io, control: &Control) {
    control.stopped.store(true, Ordering::SeqCst);
    let now = Instant::now();
    control.set_window((now, now));
    io.close();
}

/// A session on the wasm tier (see the module docs).
pub(super) struct WasmSession {
    /// The executor's policy: each cell tightens it.
    policy: Policy,
    live: Option<Live>,
    cells: u64,
    /// Fuel its cells used so far, when counted (a fuel budget).
    fuel: Option<u64>,
    life: Lifecycle,
    /// Dropped with the session: stops the watchdog.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl WasmExecutor {
    /// Starts a session's instance and waits until its prelude is ready.
    pub(super) async fn start_session(&self) -> Result<WasmSession, SandboxError> {
        self.start_session_with(self.policy.for_session(), None).await
    }

    /// Starts an instance kept for cells under `policy` (its memory cap is the
    /// instance's).
    /// `mount`: a workspace's copy at `/workspace` for every cell.
    pub(super) async fn start_session_with(
        &self,
        policy: Policy,
        mount: Option<crate::workspace::Mount>,
    ) -> Result<WasmSession, SandboxError> {
        let runtime = self.runtime()?;
        let nonce = nonce();
        let io = Io::new(STDERR_SLACK);
        let control = Control::new();
        self.remember_session(&control);
        // Imported while it starts, as warm instances do (asyncio excepted: the
        // prelude installs Terrarium's own).
        let preload: Vec<&str> =
            policy.allowed_modules().iter().map(String::as_str).filter(|m| *m != "asyncio").collect();
        let preload = preload.join(" ");
        let (i, c, n) = (io.clone(), control.clone(), nonce.clone());
        std::thread::Builder::new()
            .name("terrarium-wasm-session".into())
            .spawn(move || {
                let exit = run_instance(&runtime, &policy, &i, &c, (&n, &preload), mount.as_ref());
                i.finish(exit);
                c.running.store(false, Ordering::SeqCst);
            })
            .map_err(|e| host(format!("cannot start a session's instance: {e}")))?;
        let live = Live { io, control, nonce };
        ready(&live).await?;
        // Nothing may be written until the first cell.
        live.io.shut();
        let life = Lifecycle::new(self.policy.sessions().clone());
        let (stop_tx, stopped) = tokio::sync::oneshot::channel();
        // Stops the instance once the session ended by any route (idle, lifetime,
        // an abandoned cell, its caller); gone with the session otherwise (which
        // stops it itself).
        let (watched, io, control) = (life.clone(), live.io.clone(), live.control.clone());
        tokio::spawn(async move {
            if watched.watch(stopped).await.is_some() {
                stop(&io, &control);
            }
        });
        Ok(WasmSession { policy: self.policy.clone(), live: Some(live), cells: 0, fuel: None, life, _stop: stop_tx })
    }
}

/// Waits for the prelude's ready marker (CPython started, the modules imported).
async fn ready(live: &Live) -> Result<(), SandboxError> {
    let marker = format!("\n{} ready\n", live.nonce);
    let until = tokio::time::Instant::now() + STARTUP_LIMIT;
    let mut err = Vec::new();
    loop {
        let d = live.io.drain();
        err.extend_from_slice(&d.err);
        if err.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            return Ok(());
        }
        if let Some(exit) = d.exit {
            let why = match exit {
                Exit::Setup(why) => why,
                other => format!("{other:?}"),
            };
            return Err(host(format!("a session's instance ended as it started: {why}")));
        }
        if tokio::time::timeout_at(until, live.io.changed()).await.is_err() {
            return Err(host("a session's instance did not start in time".into()));
        }
    }
}

/// Runs the session's instance to its end (blocking, on its own thread).
fn run_instance(
    runtime: &Runtime,
    policy: &Policy,
    io: &Arc<Io>,
    control: &Arc<Control>,
    (nonce, preload): (&str, &str),
    mount: Option<&crate::workspace::Mount>,
) -> Exit {
    let writable = mount.map(|m| ("workspace", m.by_handle()));
    let stop = mount.map(crate::workspace::Mount::stop_flag);
    let launch = Launch { nonce, preload, writable, flags: "mark session", stop: stop.clone() };
    let due = sleep::Due::Window(control.window.clone());
    let mut store = match build_store(runtime, policy, io.guest(), &launch, due, UNLIMITED_FUEL) {
        Ok(s) => s,
        Err(e) => return Exit::Setup(e.to_string()),
    };
    // A sleeping cell wakes when the session is stopped (ended, dropped) too.
    let (c, s) = (control.clone(), stop.clone());
    store.data_mut().halted = Some(Arc::new(move || {
        c.stopped.load(Ordering::SeqCst) || s.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }));
    watch_window(&mut store, control.window.clone(), stop);
    let (start, memory) = match instantiate(runtime, &mut store) {
        Ok(i) => i,
        Err(e) => return Exit::Setup(e.to_string()),
    };
    let (c, i) = (control.clone(), io.clone());
    let mut seen = 0;
    store.call_hook(move |mut ctx, hook| {
        match hook {
            // The guest returns from a host call. When that call was the read
            // that took a new cell from stdin, its fuel is the cell's from here.
            // Only at that return: compiled code reloads its fuel after an import
            // call, not after a libcall such as the epoch check, so fuel set when
            // a libcall returns would be overwritten (tests/sessions.rs,
            // `wasm_fuel_is_set_as_the_cell_is_read`, holds this).
            CallHook::ReturningFromHost => {
                if c.stopped.load(Ordering::SeqCst) {
                    return Err(Trap::Interrupt.into());
                }
                let delivered = i.delivered();
                if delivered != seen {
                    seen = delivered;
                    ctx.set_fuel(c.fuel.load(Ordering::SeqCst))?;
                }
            }
            // Published before any write reaches the host (the report included;
            // at a libcall the figure is as of the guest's last call, a little
            // behind).
            CallHook::CallingHost => {
                c.fuel_left.store(ctx.get_fuel().unwrap_or(0), Ordering::SeqCst);
                if let Some(m) = memory {
                    c.memory.store(m.data_size(&ctx) as u64, Ordering::SeqCst);
                }
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
        }
        Ok(())
    });
    let ended = start.call(&mut store, ());
    if let Some(m) = memory {
        control.memory.store(m.data_size(&store) as u64, Ordering::SeqCst);
    }
    match ended {
        Ok(()) => Exit::Code(0),
        Err(e) => match (e.downcast_ref::<Trap>(), e.downcast_ref::<wasmtime_wasi::I32Exit>()) {
            (Some(Trap::OutOfFuel), _) => Exit::OutOfFuel,
            (Some(Trap::Interrupt), _) => Exit::Interrupted,
            (_, Some(code)) => Exit::Code(code.0),
            _ => Exit::Trapped(e.to_string()),
        },
    }
}

impl WasmSession {
    async fn cell(&mut self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        if let Some(why) = self.life.refuse(started) {
            self.discard();
            return Err(SandboxError::SessionEnded(why));
        }
        let policy = match admit(&self.policy, &req, Tier::Wasm)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        if req.scratch {
            return Err(SandboxError::InvalidRequest("a session's cells have no scratch directory".into()));
        }
        let Some(live) = self.live.as_ref() else {
            return Err(SandboxError::SessionEnded("the session has no instance".into()));
        };
        let running = self.life.begin_cell();
        // The watchdog may have ended it since `refuse` (it ends only idle sessions).
        if let Some(why) = self.life.ended() {
            running.finish();
            self.discard();
            return Err(SandboxError::SessionEnded(why));
        }
        self.cells += 1;
        let timeout = policy.timeout();
        let due = (started + timeout).min(self.life.expires);
        let (mut outcome, broken) = run_cell(live, &policy, &req, started, (due, self.life.expires)).await;
        running.finish();
        let why = if outcome.status == Status::Timeout && due < started + timeout {
            // Stopped at the session's end, before the cell's own deadline.
            let why = self.life.lifetime_reason();
            if let Some(e) = outcome.error.as_mut() {
                e.message = format!("the session {why} while this cell ran; it was stopped");
            }
            Some(why)
        } else {
            broken.or_else(|| end_reason(&outcome, self.cells, policy.sessions(), true))
        };
        if let Some(why) = &why {
            // Stopped before the cell's outcome returns (a cell cut at a limit may
            // still be running in it).
            self.life.end(why);
            if let Some(live) = self.live.take() {
                live.stop_and_wait().await;
            }
        }
        outcome.id = req.id;
        outcome.usage.wall_ms = millis(started.elapsed());
        if let Some(used) = outcome.usage.fuel {
            self.fuel = Some(self.fuel.unwrap_or(0).saturating_add(used));
        }
        outcome.session = Some(CellInfo { cell: self.cells, ended: why, fuel: self.fuel });
        Ok(outcome)
    }

    /// Stops the instance (the session has ended).
    fn discard(&mut self) {
        self.live = None;
    }
}

crate::executor::tier_session!(WasmSession);

/// How reading a cell's output ended.
enum Ended {
    /// The prelude reported.
    Reported,
    /// The instance ended first.
    Exited(Exit),
    /// The deadline passed.
    Timeout,
    /// Output went past the cap.
    OutputFull,
    /// The host refused a host function call (the run is denied and ends now).
    Refused,
}

/// Feeds one cell and reads its output until the prelude's report, the deadline,
/// the output cap or the instance's end. `Some(why)` in the second place: the
/// session cannot go on (the outcome says how the cell ended).
async fn run_cell(
    live: &Live,
    policy: &Policy,
    req: &ExecRequest,
    arrived: Instant,
    (mut due, latest): (Instant, Instant),
) -> (Outcome, Option<String>) {
    let max_out = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
    let nonce = &live.nonce;
    let end_marker = stdout_end(nonce);
    let status_marker = format!("\n{nonce} {{");
    // Whatever came since the last report came outside any cell.
    let pending = live.io.drain();
    if pending.anything() {
        let why = if pending.exit.is_some() && !pending.stray && pending.out.is_empty() && pending.err.is_empty() {
            BETWEEN_ENDED
        } else {
            BETWEEN_WROTE
        };
        return (protocol_error(why), Some(why.to_string()));
    }
    let fuel = policy.fuel().unwrap_or(UNLIMITED_FUEL);
    live.control.open(arrived, due, fuel);
    let names = req.host.as_ref().map(crate::executor::HostLink::names).unwrap_or_default();
    let text = request_text_with(policy, &req.code, &names);
    // The end marker may take the cap's last bytes; a host call line may take the
    // largest arguments a call may carry (its bytes are given back once taken).
    let largest_call = policy.functions().values().map(|f| f.max_arg_bytes).max().unwrap_or(0);
    let call_room = if names.is_empty() { 0 } else { usize::try_from(largest_call).unwrap_or(usize::MAX) + 4096 };
    let room = (max_out.saturating_add(end_marker.len()), max_out.saturating_add(STDERR_SLACK + call_room));
    live.io.begin(framed(&text).as_bytes(), room.0, room.1);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut end_at, mut status_at) = (None, None);
    let mut calls = CallLines::new(nonce, 0);
    let mut refused = None;
    let mut ended = loop {
        let d = live.io.drain();
        let (from_out, mut from_err) = (out.len(), err.len());
        out.extend_from_slice(&d.out);
        err.extend_from_slice(&d.err);
        // Host calls: each line leaves stderr, is answered on stdin, and moves the
        // cell's deadline (and its window) by the host's wait.
        let mut stop = None;
        while let Some((call, taken)) = calls.take(&mut err) {
            live.io.credit_err(taken);
            let asked = Instant::now();
            let reply = answer_line(call, req.host.as_ref()).await;
            if let crate::executor::CallReply::Refused(why) = reply {
                refused = Some(why);
                stop = Some(Ended::Refused);
                break;
            }
            // Only the time the guest spent blocked on the reply is not its own: a
            // guest that wrote calls and went on computing gains nothing.
            let now = Instant::now();
            let blocked = live.io.parked().map_or(Duration::ZERO, |since| now - since.max(asked));
            due = (due + blocked).min(latest);
            live.control.set_window((arrived, due));
            live.io.reply(call_reply_frame(&reply).as_bytes());
        }
        if let Some(stop) = stop {
            break stop;
        }
        from_err = from_err.min(calls.scanned);
        if d.stray {
            // Code left behind the last report wrote before this cell was read.
            return (protocol_error(BETWEEN_WROTE), Some(BETWEEN_WROTE.to_string()));
        }
        if d.over {
            break Ended::OutputFull;
        }
        end_at = end_at.or_else(|| find(&out, from_out, end_marker.as_bytes(), false));
        status_at = find(&err, from_err, status_marker.as_bytes(), true).or(status_at);
        let status_done = status_at.is_some_and(|at| err[at + status_marker.len()..].contains(&b'\n'));
        if status_done && end_at.is_some() {
            break Ended::Reported;
        }
        if let Some(exit) = d.exit {
            break Ended::Exited(exit);
        }
        if tokio::time::timeout_at(due.into(), live.io.changed()).await.is_err() {
            break Ended::Timeout;
        }
    };
    // Nothing more until the next cell: a write from here on traps.
    live.io.shut();
    let mut broken = None;
    let reported = matches!(ended, Ended::Reported);
    let after_report = "its instance wrote output after a cell's report";
    if let Some(at) = end_at {
        if out.len() > at + end_marker.len() {
            broken = Some(after_report.to_string());
        }
        out.truncate(at);
    }
    if out.len() > max_out {
        out.truncate(max_out);
        ended = Ended::OutputFull;
    }
    if let (Ended::Reported, Some(at)) = (&ended, status_at) {
        let line = at + status_marker.len();
        let after = err[line..].iter().position(|b| *b == b'\n').map_or(err.len(), |nl| line + nl + 1);
        if err.len() > after {
            broken = Some(after_report.to_string());
        }
    }
    let report = split_status(&String::from_utf8_lossy(&err), nonce);
    let mut o = Outcome::blank(Tier::Wasm);
    o.stdout = String::from_utf8_lossy(&out).into_owned();
    o.stderr = report.stderr;
    o.usage.cpu_ms = Some(millis(arrived.elapsed()));
    o.usage.peak_memory_bytes = Some(live.control.memory.load(Ordering::SeqCst));
    let deadline = || format!("deadline of {}s exceeded", policy.timeout().as_secs_f64());
    match ended {
        Ended::Timeout => o.end(Status::Timeout, ErrorKind::Timeout, deadline()),
        Ended::OutputFull => {
            o.end(Status::OutputLimit, ErrorKind::OutputLimit, "the run's output exceeded the policy's max_output")
        }
        // Each of these is a limit or a crash: the session ends (`end_reason`).
        Ended::Exited(Exit::OutOfFuel) => {
            o.end(Status::FuelExhausted, ErrorKind::FuelExhausted, format!("the cell used up its fuel ({fuel})"))
        }
        // The deadline, as the epoch saw it before the host's timer did.
        Ended::Exited(Exit::Interrupted) => o.end(Status::Timeout, ErrorKind::Timeout, deadline()),
        Ended::Exited(Exit::Code(code)) => apply_status(&mut o, None, Some(code), false),
        Ended::Exited(Exit::Trapped(why) | Exit::Setup(why)) => {
            o.end(Status::Crashed, ErrorKind::Trap, format!("the interpreter trapped: {why}"))
        }
        Ended::Reported => apply_status(&mut o, report.status_line.as_deref(), None, false),
        // The host's refusal, applied below; the instance goes.
        Ended::Refused => {
            broken = broken.or_else(|| Some("the host refused a host function call; its instance was stopped".into()));
        }
    }
    if policy.fuel().is_some() {
        let left = if o.status == Status::FuelExhausted { 0 } else { live.control.fuel_left.load(Ordering::SeqCst) };
        o.usage.fuel = Some(fuel.saturating_sub(left));
    }
    apply_output_cap(&mut o, max_out);
    apply_denial(&mut o, report.denial.as_deref());
    apply_denial(&mut o, refused.as_deref());
    // After its report (its usage read above) the guest goes back to waiting for
    // its next cell, and its window closes: code that goes on running (behind a
    // forged report) would run, unaccounted, between cells.
    if reported && broken.is_none() {
        let until = tokio::time::Instant::now() + PARK_GRACE;
        while live.io.parked().is_none() {
            if live.io.exit().is_some() {
                // A write after the report traps the instance: say which.
                let wrote = live.io.drain().stray;
                broken = Some(if wrote { after_report } else { "its instance ended after its cell's report" }.into());
                break;
            }
            if tokio::time::timeout_at(until, live.io.changed()).await.is_err() {
                broken = Some("its instance kept running after its cell's report".to_string());
                break;
            }
        }
        let now = Instant::now();
        live.control.set_window((now, now));
    }
    (o, broken)
}

/// Where `needle` occurs in `buf` (its first occurrence, or its last with `last`),
/// searching from a little before `from` so that one split across drains is found.
fn find(buf: &[u8], from: usize, needle: &[u8], last: bool) -> Option<usize> {
    let start = from.saturating_sub(needle.len());
    let mut hits = buf.get(start..)?.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle);
    let hit = if last { hits.next_back() } else { hits.next() };
    hit.map(|(i, _)| start + i)
}

const BETWEEN_WROTE: &str = "its instance wrote output between cells";
const BETWEEN_ENDED: &str = "its instance ended between cells";

/// A cell's outcome when its session's protocol broke (`why`).
fn protocol_error(why: &str) -> Outcome {
    let mut o = Outcome::blank(Tier::Wasm);
    o.end(Status::Crashed, ErrorKind::ProtocolError, format!("{why}; the session's instance was stopped"));
    o
}

fn host(message: String) -> SandboxError {
    SandboxError::Host { tier: Tier::Wasm, message }
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn markers_are_found_across_drains() {
        let buf = b"xx\nabc end\nyy\nabc end\n";
        assert_eq!(find(buf, 5, b"\nabc end\n", false), Some(2));
        assert_eq!(find(buf, 5, b"\nabc end\n", true), Some(13));
        assert_eq!(find(buf, 20, b"\nabc end\n", false), Some(13));
        assert_eq!(find(b"", 0, b"\nabc", false), None);
    }
}
