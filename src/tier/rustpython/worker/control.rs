//! How a run is stopped from outside: the terminal condition, the control block
//! the host's deadline thread writes, and the per-run state natives consult; and
//! how setting up an interpreter fails (`SetupError`).

use super::*;

/// A terminal condition that ends a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Terminal {
    /// Nothing ended the run early.
    None = 0,
    /// The deadline passed.
    Timeout = 1,
    /// Output went past its cap.
    OutputLimit = 2,
    /// The policy refused something.
    Denied = 3,
    /// The run used up its fuel.
    FuelExhausted = 4,
}

impl Terminal {
    /// The outcome status and error type a terminal condition reports, if any.
    pub(super) fn status(self) -> Option<(Status, ErrorKind)> {
        match self {
            Terminal::None => None,
            Terminal::Timeout => Some((Status::Timeout, ErrorKind::Timeout)),
            Terminal::OutputLimit => Some((Status::OutputLimit, ErrorKind::OutputLimit)),
            Terminal::Denied => Some((Status::Denied, ErrorKind::PolicyDenied)),
            Terminal::FuelExhausted => Some((Status::FuelExhausted, ErrorKind::FuelExhausted)),
        }
    }

    pub(super) fn from_u8(v: u8) -> Terminal {
        match v {
            1 => Terminal::Timeout,
            2 => Terminal::OutputLimit,
            3 => Terminal::Denied,
            4 => Terminal::FuelExhausted,
            _ => Terminal::None,
        }
    }
}

/// Shared between the worker thread and whoever supervises its runs.
pub struct Control {
    pub(super) run_id: AtomicU64,
    pub(super) terminal: AtomicU8,
    pub(super) message: Mutex<String>,
    pub(super) signal: OnceLock<UserSignalSender>,
}

impl Control {
    pub(super) fn new() -> Arc<Control> {
        Arc::new(Control {
            run_id: AtomicU64::new(0),
            terminal: AtomicU8::new(0),
            message: Mutex::new(String::new()),
            signal: OnceLock::new(),
        })
    }

    /// Ends run `run_id` with `why`, unless it already ended or another run is on.
    pub fn terminate(self: &Arc<Self>, run_id: u64, why: Terminal, message: &str) {
        if self.run_id.load(Ordering::SeqCst) != run_id {
            return;
        }
        if self.terminal.compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            if let Ok(mut m) = self.message.lock() {
                *m = message.to_string();
            }
            if let Some(tx) = self.signal.get() {
                let _ = tx.send(kill_signal(self.clone(), run_id));
            }
        }
    }

    pub(super) fn terminal(&self) -> Terminal {
        Terminal::from_u8(self.terminal.load(Ordering::SeqCst))
    }
}

/// A user signal that raises in the interpreter and re-arms itself, so the next
/// instruction raises too, until the run has unwound.
pub(super) fn kill_signal(ctrl: Arc<Control>, run_id: u64) -> UserSignal {
    Box::new(move |vm: &VirtualMachine| {
        if ctrl.run_id.load(Ordering::SeqCst) != run_id || ctrl.terminal() == Terminal::None {
            return Ok(());
        }
        if let Some(tx) = ctrl.signal.get() {
            let _ = tx.send(kill_signal(ctrl.clone(), run_id));
        }
        Err(vm.new_exception_msg(vm.ctx.exceptions.keyboard_interrupt.to_owned(), "terrarium: run ended".into()))
    })
}

/// What a run that used up its fuel is told (the wasm tier's words).
pub(crate) fn fuel_message(budget: u64) -> String {
    format!("the run used up its fuel ({budget})")
}

/// What a job asks of the worker.
pub struct Job {
    /// Identifies the run for cancellation.
    pub run_id: u64,
    /// The caller's request id.
    pub id: Option<String>,
    /// Source.
    pub code: String,
    /// Modules this run may import.
    pub allowed_modules: Arc<BTreeSet<String>>,
    /// Output cap in bytes.
    pub max_output: usize,
    /// When the run must end.
    pub deadline: Instant,
    /// A cell of a session: it runs in the globals (and with the module proxies)
    /// the session's earlier cells left, and leaves its own for the next.
    pub session: bool,
    /// The host functions the run's `host` module offers (the policy's names).
    pub functions: Arc<[String]>,
    /// The run's fuel budget (`None`: no limit; the count is kept all the same).
    pub fuel: Option<u64>,
    /// Terrarium's own code (a warm-up), never a snippet's: the module proxies
    /// it makes may serve the next run, the first snippet to see them.
    pub own_code: bool,
}

/// Where a job's outcome, and whether the interpreter may be reused, go.
pub type Reply = tokio::sync::oneshot::Sender<(Outcome, bool)>;

/// Per-run state the native functions reach through a thread-local (one
/// interpreter per thread, so per-thread is per-interpreter).
pub(super) struct RunState {
    pub(super) ctrl: Arc<Control>,
    pub(super) run_id: u64,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) max_output: usize,
    pub(super) deadline: Instant,
    pub(super) allowed: Arc<BTreeSet<String>>,
    pub(super) functions: Arc<[String]>,
    /// The snippet's globals, once the run has them.
    pub(super) globals: Option<PyObjectRef>,
}

thread_local! {
    pub(super) static RUN: RefCell<Option<RunState>> = const { RefCell::new(None) };
}

pub(super) fn with_run<R>(f: impl FnOnce(&mut RunState) -> R) -> Option<R> {
    RUN.with(|r| r.borrow_mut().as_mut().map(f))
}

/// The interpreter could not be built, sealed or readied after a fork (a build
/// defect): the worker cannot serve. Says which step failed and how.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the interpreter's {step} failed: {detail}")]
pub struct SetupError {
    /// `building`, `sealing` or `after fork`.
    pub step: &'static str,
    /// The exception text or the defect.
    pub detail: String,
}

impl SetupError {
    /// A failure of [`super::Worker::seal`] or of a step it runs (the importer's,
    /// the walls').
    pub(in crate::tier::rustpython) fn sealing(detail: impl Into<String>) -> SetupError {
        SetupError { step: "sealing", detail: detail.into() }
    }
}
