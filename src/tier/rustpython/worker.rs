//! One interpreter on one thread: builds it capability-free, then runs jobs.
//!
//! RustPython built without `threading` keeps its type context in thread-locals and
//! its objects are not `Send`, so each interpreter is created on, used on, and
//! dropped on the thread that owns it.
//!
//! # Security
//! - Only modules that cannot reach the host are compiled in (no `host_env`); the
//!   module tables are further pruned of introspection modules here.
//! - Snippets get restricted builtins and module proxies (see `prelude.py`); once
//!   the prelude and the policy's modules are loaded, [`Worker::seal`] removes the
//!   interpreter internals from the VM's types (`walls.rs`).
//! - Denials go to a sink the moment they happen ([`set_denial_sink`]): the
//!   isolated child sends each to the host before the snippet regains control.
//! - Terminal conditions (deadline, output cap, denial) raise at *every*
//!   instruction until the run unwinds, so `except BaseException` cannot swallow
//!   them; native calls already running finish first (embedded mode's limit).
//! - A panic inside the interpreter is caught, reported as `crashed`, and the
//!   interpreter is discarded.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rustpython_vm::builtins::{PyBaseExceptionRef, PyCode, PyDictRef, PyStrRef};
use rustpython_vm::common::rc::PyRc;
use rustpython_vm::compiler::Mode;
use rustpython_vm::function::{ArgIntoFloat, OptionalArg};
use rustpython_vm::scope::Scope;
use rustpython_vm::signal::{UserSignal, UserSignalSender, user_signal_channel};
use rustpython_vm::{AsObject, Interpreter, PyObjectRef, PyResult, Settings, VirtualMachine};

use crate::analysis;
use crate::executor::{ErrorInfo, Outcome, Status, Tier, Usage};
use crate::policy::module_allowed;

use super::{importer, value, walls};

/// The prelude that builds the snippet environment (see its header).
const PRELUDE: &str = include_str!("prelude.py");
/// The asyncio stand-in the prelude installs.
const ASYNCIO_STANDIN: &str = include_str!("../asyncio_standin.py");

/// Stack of an interpreter thread. RustPython recurses on the native stack for
/// every Python call and for deep data; 2 MB overflows (and aborts the process) on
/// 100k-deep input, 256 MB turns it into `RecursionError`. It is reserved, not
/// committed.
pub const WORKER_STACK: usize = 256 << 20;

/// Native modules never registered: they expose the object graph, code objects,
/// other interpreters, the debugger, or (in builds with host access) the host.
#[rustfmt::skip]
const NATIVE_DENY: &[&str] = &[
    "gc", "_interpreters", "_interpchannels", "_interpqueues", "_testinternalcapi",
    "_remote_debugging", "_symtable", "faulthandler", "_ctypes", "_pickle", "_posixsubprocess",
    "_socket", "select", "mmap", "_multiprocessing", "_posixshmem", "pyexpat",
];

/// Frozen (pure-Python) modules never registered. `os` and `asyncio` are replaced
/// by the prelude's capability-free stand-ins.
#[rustfmt::skip]
const FROZEN_DENY: &[&str] = &[
    "os", "subprocess", "socket", "selectors", "ssl", "ctypes", "multiprocessing", "concurrent",
    "pdb", "bdb", "code", "codeop", "runpy", "pkgutil", "zipimport", "shutil", "tempfile",
    "threading", "asyncio", "http", "urllib", "ftplib", "smtplib", "imaplib", "poplib", "xmlrpc",
    "webbrowser", "sqlite3", "dbm", "shelve", "pickle", "pickletools", "tracemalloc", "trace",
];

/// Whether this tier can serve module `name` to a snippet under some policy: it is
/// in RustPython's module tables (native or frozen), not removed from them, and
/// one the importer hands out (only its vetted `SERVED` list, see `importer.rs`).
/// `asyncio` is served by the prelude's stand-in. The router asks this to decide
/// when a request needs a heavier tier.
pub fn serves_module(name: &str) -> bool {
    static KNOWN: OnceLock<BTreeSet<String>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let builder = Interpreter::builder(Settings::default());
        let mut names: BTreeSet<String> =
            rustpython_stdlib::stdlib_module_defs(&builder.ctx).iter().map(|d| d.name.as_str().to_string()).collect();
        // The VM's own modules (`time` among them) are in neither list above.
        names.extend(
            rustpython_vm::stdlib::builtin_module_defs(&builder.ctx).iter().map(|d| d.name.as_str().to_string()),
        );
        names.extend(rustpython_pylib::FROZEN_STDLIB.decode().map(|(n, _)| n.to_string()));
        names
    });
    let parts: Vec<&str> = name.split('.').collect();
    if name.is_empty() || importer::unservable(name) {
        return false;
    }
    if parts[0] == "asyncio" {
        return true;
    }
    !denied_name(NATIVE_DENY, name) && !denied_name(FROZEN_DENY, name) && known.contains(parts[0])
}

fn denied_name(list: &[&str], name: &str) -> bool {
    list.iter().any(|d| name == *d || name.strip_prefix(d).is_some_and(|rest| rest.starts_with('.')))
}

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
}

impl Terminal {
    /// The outcome status and error type a terminal condition reports, if any.
    fn status(self) -> Option<(Status, &'static str)> {
        match self {
            Terminal::None => None,
            Terminal::Timeout => Some((Status::Timeout, "Timeout")),
            Terminal::OutputLimit => Some((Status::OutputLimit, "OutputLimit")),
            Terminal::Denied => Some((Status::Denied, "PolicyDenied")),
        }
    }

    fn from_u8(v: u8) -> Terminal {
        match v {
            1 => Terminal::Timeout,
            2 => Terminal::OutputLimit,
            3 => Terminal::Denied,
            _ => Terminal::None,
        }
    }
}

/// Shared between the worker thread and whoever supervises its runs.
pub struct Control {
    run_id: AtomicU64,
    terminal: AtomicU8,
    message: Mutex<String>,
    signal: OnceLock<UserSignalSender>,
}

impl Control {
    fn new() -> Arc<Control> {
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

    fn terminal(&self) -> Terminal {
        Terminal::from_u8(self.terminal.load(Ordering::SeqCst))
    }
}

/// A user signal that raises in the interpreter and re-arms itself, so the next
/// instruction raises too, until the run has unwound.
fn kill_signal(ctrl: Arc<Control>, run_id: u64) -> UserSignal {
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

/// What a job asks of the worker.
pub struct Job {
    /// Identifies the run for cancellation.
    pub run_id: u64,
    /// The caller's request id.
    pub id: Option<String>,
    /// Source.
    pub code: String,
    /// Modules this run may import.
    pub allowed_modules: BTreeSet<String>,
    /// Output cap in bytes.
    pub max_output: usize,
    /// When the run must end.
    pub deadline: Instant,
}

/// Where a job's outcome, and whether the interpreter may be reused, go.
pub type Reply = tokio::sync::oneshot::Sender<(Outcome, bool)>;

/// Per-run state the native functions reach through a thread-local (one
/// interpreter per thread, so per-thread is per-interpreter).
struct RunState {
    ctrl: Arc<Control>,
    run_id: u64,
    stdout: String,
    stderr: String,
    max_output: usize,
    deadline: Instant,
    allowed: BTreeSet<String>,
    /// The snippet's globals, once the run has them.
    globals: Option<PyObjectRef>,
}

thread_local! {
    static RUN: RefCell<Option<RunState>> = const { RefCell::new(None) };
}

fn with_run<R>(f: impl FnOnce(&mut RunState) -> R) -> Option<R> {
    RUN.with(|r| r.borrow_mut().as_mut().map(f))
}

fn terminal_exc(vm: &VirtualMachine) -> PyBaseExceptionRef {
    vm.new_exception_msg(vm.ctx.exceptions.keyboard_interrupt.to_owned(), "terrarium: run ended".into())
}

/// `sys.stdout.write`: appends to the run's capture, returns the characters written.
fn native_stdout(text: PyStrRef, vm: &VirtualMachine) -> PyResult<usize> {
    capture(1, &text, vm)?;
    Ok(text.char_len())
}

/// `sys.stderr.write`.
fn native_stderr(text: PyStrRef, vm: &VirtualMachine) -> PyResult<usize> {
    capture(2, &text, vm)?;
    Ok(text.char_len())
}

/// Appends `text` to the run's stdout (1) or stderr (2), ending the run when the
/// output cap is passed.
fn capture(fd: i32, text: &PyStrRef, vm: &VirtualMachine) -> PyResult<()> {
    let text = text.as_wtf8().to_string_lossy().into_owned();
    let over = with_run(|run| {
        let used = run.stdout.len() + run.stderr.len();
        let room = run.max_output.saturating_sub(used);
        let buf = if fd == 2 { &mut run.stderr } else { &mut run.stdout };
        if text.len() <= room {
            buf.push_str(&text);
            None
        } else {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            buf.push_str(&text[..cut]);
            Some((run.ctrl.clone(), run.run_id, run.max_output))
        }
    })
    .flatten();
    if let Some((ctrl, run_id, cap)) = over {
        ctrl.terminate(run_id, Terminal::OutputLimit, &format!("output exceeded {cap} bytes"));
        return Err(terminal_exc(vm));
    }
    Ok(())
}

/// Where a run's denials go the moment they happen (the isolated child sends each
/// to the host at once, so a snippet cannot take one back).
pub type DenialSink = Box<dyn Fn(&str)>;

thread_local! {
    static DENIALS: RefCell<Option<DenialSink>> = const { RefCell::new(None) };
}

/// Sends this thread's denials to `sink` from now on.
pub fn set_denial_sink(sink: DenialSink) {
    DENIALS.with(|d| *d.borrow_mut() = Some(sink));
}

fn report_denial(reason: &str) {
    DENIALS.with(|d| {
        if let Some(sink) = d.borrow().as_ref() {
            sink(reason);
        }
    });
}

/// Ends the current run as denied for `reason` and returns the `PermissionError`
/// to raise.
pub(super) fn deny(reason: &str, vm: &VirtualMachine) -> PyBaseExceptionRef {
    report_denial(reason);
    if let Some((ctrl, run_id)) = with_run(|run| (run.ctrl.clone(), run.run_id)) {
        ctrl.terminate(run_id, Terminal::Denied, reason);
    }
    vm.new_exception_msg(vm.ctx.exceptions.permission_error.to_owned(), reason.to_owned().into())
}

fn native_deny(reason: PyStrRef, vm: &VirtualMachine) -> PyBaseExceptionRef {
    deny(&reason.as_wtf8().to_string_lossy(), vm)
}

fn native_sleep(secs: ArgIntoFloat, vm: &VirtualMachine) -> PyResult<()> {
    let secs = secs.into_float();
    if !secs.is_finite() || secs < 0.0 {
        return Err(vm.new_value_error("sleep length must be a non-negative finite number"));
    }
    let Some((ctrl, deadline)) = with_run(|run| (run.ctrl.clone(), run.deadline)) else {
        return Ok(());
    };
    let end = Instant::now() + Duration::from_secs_f64(secs.min(1e9));
    loop {
        if ctrl.terminal() != Terminal::None {
            return Err(terminal_exc(vm));
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        // Wake at the deadline at the latest; the supervisor then ends the run.
        let step = (end - now)
            .min(Duration::from_millis(5))
            .min(deadline.saturating_duration_since(now).max(Duration::from_millis(1)));
        std::thread::sleep(step);
    }
}

/// `_t_gc_pause(True)` when an outermost import begins, `(False)` when it ends
/// (the prelude's `_find_and_load`). While an import is in progress, automatic
/// cycle collection does not run, so no snippet finalizer (`__del__`, a weakref
/// callback) runs while modules loaded by the import are not yet hardened: a
/// snippet's `__del__` fired mid-import once read host paths through a freshly
/// loaded `inspect` that still had the real `sys`.
fn native_gc_pause(pause: bool, vm: &VirtualMachine) {
    if pause {
        vm.state.gc.disable();
    } else {
        vm.state.gc.enable();
    }
}

fn native_urandom(n: isize, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let n = usize::try_from(n).map_err(|_| vm.new_value_error("negative argument not allowed"))?;
    if n > 1 << 20 {
        return Err(vm.new_value_error("urandom is limited to 1 MiB per call in the sandbox"));
    }
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).map_err(|e| vm.new_os_error(format!("entropy unavailable: {e}")))?;
    Ok(vm.ctx.new_bytes(buf).into())
}

/// Whether the innermost Python frame is the snippet's own code (its globals are
/// the run's): `globals()` and `locals()` answer only there, so that a stdlib
/// function calling back a snippet's callable never hands out its own module's
/// names.
fn in_snippet_code(vm: &VirtualMachine) -> bool {
    is_run_globals(&vm.current_globals().into())
}

/// Whether `obj` is the running snippet's globals dict.
pub(super) fn is_run_globals(obj: &PyObjectRef) -> bool {
    with_run(|run| run.globals.as_ref().is_some_and(|g| g.is(obj))).unwrap_or(false)
}

fn native_globals(vm: &VirtualMachine) -> PyResult<PyDictRef> {
    if !in_snippet_code(vm) {
        return Err(deny("globals() is available only in the snippet's own code", vm));
    }
    Ok(vm.current_globals())
}

fn native_locals(vm: &VirtualMachine) -> PyResult<rustpython_vm::function::ArgMapping> {
    if !in_snippet_code(vm) {
        return Err(deny("locals() is available only in the snippet's own code", vm));
    }
    vm.current_locals()
}

/// Snippets' `eval` and `exec`: text only (a code object is never handed out), read
/// by its exact `str` value, refused as the snippet itself would be by the static
/// analysis and the policy's imports, compiled as `<snippet>`, and run with the
/// snippet's builtins. Without `globals`, the snippet's own globals (only from the
/// snippet's own code: a stdlib function calling `eval` back gets no module's
/// names); the caller's function locals are not seen.
fn run_text(
    mode: Mode,
    source: PyObjectRef,
    globals: OptionalArg<PyObjectRef>,
    locals: OptionalArg<PyObjectRef>,
    vm: &VirtualMachine,
) -> PyResult {
    let eval = matches!(mode, Mode::Eval);
    let name = if eval { "eval" } else { "exec" };
    let Some(text) = source.downcast_ref::<rustpython_vm::builtins::PyStr>() else {
        return Err(deny(&format!("{name}() runs text only in the sandbox, not {}", source.class().name()), vm));
    };
    let text = text.as_wtf8().to_string_lossy().into_owned();
    let allowed = with_run(|run| run.allowed.clone()).unwrap_or_default();
    if let Some(reason) = static_denial(&text, &allowed) {
        return Err(deny(&format!("{name}(): {reason}"), vm));
    }
    let globals: PyDictRef = match globals {
        OptionalArg::Present(g) if !vm.is_none(&g) => g
            .downcast::<rustpython_vm::builtins::PyDict>()
            .map_err(|g| vm.new_type_error(format!("globals must be a dict, not {}", g.class().name())))?,
        _ if in_snippet_code(vm) => vm.current_globals(),
        _ => return Err(deny(&format!("{name}() without globals is available only in the snippet's own code"), vm)),
    };
    // (get_item_opt, not contains_key: a key the snippet planted may raise in
    // its __eq__, which contains_key would turn into a panic.)
    if globals.get_item_opt("__builtins__", vm)?.is_none() {
        // The snippet's builtins, never the interpreter's (which `Scope` would add).
        let run_globals = with_run(|run| run.globals.clone()).flatten();
        let builtins = run_globals
            .and_then(|g| g.downcast::<rustpython_vm::builtins::PyDict>().ok())
            .and_then(|g| g.get_item_opt("__builtins__", vm).ok().flatten());
        let Some(builtins) = builtins else {
            return Err(deny(&format!("{name}() is available only during a run"), vm));
        };
        globals.set_item("__builtins__", builtins, vm)?;
    }
    let locals = match locals {
        OptionalArg::Present(l) if !vm.is_none(&l) => {
            Some(<rustpython_vm::function::ArgMapping as rustpython_vm::TryFromObject>::try_from_object(vm, l)?)
        }
        _ => None,
    };
    let code = vm.compile(&text, mode, "<snippet>").map_err(|e| e.into_pyexception(vm, Some(&text)))?;
    let value = vm.run_code_obj(code, Scope::with_builtins(locals, globals, vm))?;
    Ok(if eval { value } else { vm.ctx.none() })
}

fn native_eval(
    source: PyObjectRef,
    globals: OptionalArg<PyObjectRef>,
    locals: OptionalArg<PyObjectRef>,
    vm: &VirtualMachine,
) -> PyResult {
    run_text(Mode::Eval, source, globals, locals, vm)
}

fn native_exec(
    source: PyObjectRef,
    globals: OptionalArg<PyObjectRef>,
    locals: OptionalArg<PyObjectRef>,
    vm: &VirtualMachine,
) -> PyResult {
    run_text(Mode::Exec, source, globals, locals, vm)
}

/// Whether the running snippet's policy lets it import `name` (false between runs).
pub(super) fn module_allowed_now(name: &str) -> bool {
    with_run(|run| module_allowed(&run.allowed, name)).unwrap_or(false)
}

/// The static analysis' refusal of text that trusted stdlib code is about to
/// evaluate for a snippet (typing's forward references), or `None`.
fn native_check(source: PyStrRef) -> Option<String> {
    let source = source.as_wtf8().to_string_lossy().into_owned();
    analysis::analyze(&source).denial().map(|f| f.message.clone())
}

/// A warm interpreter and the pieces of its prelude each run uses.
pub struct Worker {
    interp: Interpreter,
    ctrl: Arc<Control>,
    /// The builtins every run gets a private copy of.
    snippet_builtins: PyDictRef,
    after_fork: PyObjectRef,
    harden_all: PyObjectRef,
    /// Globals made ahead of the next run (see [`Worker::prepare_globals`]).
    next_globals: RefCell<Option<PyDictRef>>,
    /// The last run's globals, dropped by [`Worker::tidy`] off the request path.
    retired: RefCell<Option<PyObjectRef>>,
}

impl Worker {
    /// Builds a capability-free interpreter on the current thread.
    ///
    /// # Errors
    /// The prelude's exception text, when it fails (a build defect).
    pub fn new() -> Result<Worker, String> {
        let ctrl = Control::new();
        let (tx, rx) = user_signal_channel();
        let _ = ctrl.signal.set(tx);
        let mut settings = Settings::default();
        settings.isolated = true;
        settings.ignore_environment = true;
        settings.import_site = false;
        settings.user_site_directory = false;
        settings.safe_path = true;
        settings.install_signal_handlers = false;
        settings.write_bytecode = false;
        settings.path_list = Vec::new();
        let builder = Interpreter::builder(settings);
        let defs: Vec<_> = rustpython_stdlib::stdlib_module_defs(&builder.ctx)
            .into_iter()
            .filter(|d| !denied_name(NATIVE_DENY, d.name.as_str()))
            .collect();
        let frozen = rustpython_pylib::FROZEN_STDLIB.decode().filter(|(name, _)| !denied_name(FROZEN_DENY, name));
        let interp = builder
            .add_native_modules(&defs)
            .add_frozen_modules(frozen)
            .init_hook(move |vm| {
                vm.set_user_signal_channel(rx);
                if let Some(state) = PyRc::get_mut(&mut vm.state) {
                    state.module_defs.retain(|name, _| !denied_name(NATIVE_DENY, name));
                    state.frozen.retain(|name, _| !denied_name(FROZEN_DENY, name));
                }
            })
            .build();
        let (snippet_builtins, after_fork, harden_all) = interp.enter(|vm| -> Result<_, String> {
            let globals = vm.ctx.new_dict();
            let set = |k: &str, v: PyObjectRef| globals.set_item(k, v, vm).map_err(|e| exc_text(vm, &e));
            set("__builtins__", vm.builtins.clone().into())?;
            set("__name__", vm.ctx.new_str("terrarium_prelude").into())?;
            set("_t_stdout", vm.new_function("write", native_stdout).into())?;
            set("_t_stderr", vm.new_function("write", native_stderr).into())?;
            set("_t_deny", vm.new_function("_t_deny", native_deny).into())?;
            set("_t_sleep", vm.new_function("_t_sleep", native_sleep).into())?;
            set("_t_urandom", vm.new_function("_t_urandom", native_urandom).into())?;
            set("_t_gc_pause", vm.new_function("_t_gc_pause", native_gc_pause).into())?;
            set("_t_import", vm.new_function("__import__", importer::native_import).into())?;
            set("_t_importer_setup", vm.new_function("_t_importer_setup", importer::native_setup).into())?;
            set("_t_proxy_override", vm.new_function("_t_proxy_override", importer::native_override).into())?;
            set("_t_hide", vm.new_function("_t_hide", importer::native_hide).into())?;
            set(
                "_t_import_time_caller",
                vm.new_function("_t_import_time_caller", importer::native_import_time_caller).into(),
            )?;
            set("_t_check", vm.new_function("_t_check", native_check).into())?;
            set("_t_asyncio_source", vm.ctx.new_str(ASYNCIO_STANDIN).into())?;
            set("_t_getattr", vm.new_function("getattr", walls::native_getattr).into())?;
            set("_t_setattr", vm.new_function("setattr", walls::native_setattr).into())?;
            set("_t_delattr", vm.new_function("delattr", walls::native_delattr).into())?;
            set("_t_hasattr", vm.new_function("hasattr", walls::native_hasattr).into())?;
            set("_t_globals", vm.new_function("globals", native_globals).into())?;
            set("_t_eval", vm.new_function("eval", native_eval).into())?;
            set("_t_exec", vm.new_function("exec", native_exec).into())?;
            set("_t_locals", vm.new_function("locals", native_locals).into())?;
            set("_t_attr_allowed", vm.new_function("_t_attr_allowed", walls::native_attr_allowed).into())?;
            set("_t_abc_subclasses", vm.new_function("__subclasses__", walls::native_abc_subclasses).into())?;
            let code = vm.compile(PRELUDE, Mode::Exec, "<terrarium prelude>").map_err(|e| e.to_string())?;
            vm.run_code_obj(code, Scope::with_builtins(None, globals.clone(), vm)).map_err(|e| exc_text(vm, &e))?;
            let get = |k: &str| globals.get_item(k, vm).map_err(|e| exc_text(vm, &e));
            // str.format walks attributes in its fields; replace it on the type
            // (per thread: the type context is thread-local in this build).
            let patch = get("_HOST_PATCH_STR_FORMAT")?;
            let fmt = patch.get_item(&0, vm).map_err(|e| exc_text(vm, &e))?;
            let fmt_map = patch.get_item(&1, vm).map_err(|e| exc_text(vm, &e))?;
            vm.ctx.types.str_type.set_attr(vm.ctx.intern_str("format"), fmt);
            vm.ctx.types.str_type.set_attr(vm.ctx.intern_str("format_map"), fmt_map);
            let snippet_builtins = get("_snippet_builtins")?
                .downcast::<rustpython_vm::builtins::PyDict>()
                .map_err(|_| "the prelude's _snippet_builtins is not a dict".to_string())?;
            Ok((snippet_builtins, get("after_fork")?, get("harden_all")?))
        })?;
        Ok(Worker {
            interp,
            ctrl,
            snippet_builtins,
            after_fork,
            harden_all,
            next_globals: RefCell::new(None),
            retired: RefCell::new(None),
        })
    }

    /// Imports `modules` (trusted, before any snippet) so that runs find them
    /// loaded. Modules that fail to import are skipped: the run that imports one
    /// reports the error itself.
    pub fn preload(&self, modules: &[String]) {
        self.interp.enter(|vm| {
            for m in modules {
                let name = vm.ctx.new_str(m.as_str());
                let _ = vm.import(&name, 0);
            }
        });
    }

    /// Removes the interpreter internals from the VM's types (see `walls.rs`): the
    /// last step before the first snippet, after the prelude and the preloaded
    /// modules (some stdlib modules read the removed attributes while they import).
    ///
    /// # Errors
    /// A listed attribute that the interpreter does not have (a build defect).
    pub fn seal(&self) -> Result<(), String> {
        self.interp.enter(|vm| {
            self.harden_all.call((), vm).map_err(|e| exc_text(vm, &e))?;
            importer::seal(vm)?;
            walls::remove_internals(vm)
        })
    }

    /// Makes the next run's fresh globals now, off the request path (a single-use
    /// child does this while it waits for its request).
    pub fn prepare_globals(&self) {
        let g = self.interp.enter(|vm| self.fresh_globals(vm));
        *self.next_globals.borrow_mut() = Some(g);
    }

    /// Fresh globals for one run: a private copy of the snippet builtins (a run may
    /// change its own), `__name__` and `__doc__`.
    fn fresh_globals(&self, vm: &VirtualMachine) -> PyDictRef {
        use rustpython_vm::PyPayload;
        let globals = vm.ctx.new_dict();
        let builtins = self.snippet_builtins.copy().into_ref(&vm.ctx);
        // Setting str keys on a new dict cannot fail.
        let _ = globals.set_item("__builtins__", builtins.into(), vm);
        let _ = globals.set_item("__name__", vm.ctx.new_str("__main__").into(), vm);
        let _ = globals.set_item("__doc__", vm.ctx.none(), vm);
        globals
    }

    /// Work a reused interpreter does after answering, off the request path: drops
    /// the last run's globals and prepares the next run's.
    pub fn tidy(&self) {
        let retired = self.retired.borrow_mut().take();
        drop(retired);
        if self.next_globals.borrow().is_none() {
            self.prepare_globals();
        }
    }

    /// Re-seeds per-process state (the `random` module) in a freshly forked child.
    ///
    /// # Errors
    /// The exception text, when reseeding fails.
    pub fn after_fork(&self) -> Result<(), String> {
        self.interp.enter(|vm| self.after_fork.call((), vm).map(|_| ()).map_err(|e| exc_text(vm, &e)))
    }

    /// The control block supervisors use to end runs.
    pub fn control(&self) -> Arc<Control> {
        self.ctrl.clone()
    }

    /// Runs one job. Returns the outcome and whether this interpreter may be reused.
    /// `usage.wall_ms` is left to the supervisor, which measures from accepting the
    /// request.
    pub fn run(&self, job: &Job) -> (Outcome, bool) {
        self.ctrl.run_id.store(job.run_id, Ordering::SeqCst);
        self.ctrl.terminal.store(0, Ordering::SeqCst);
        importer::new_run();
        RUN.with(|r| {
            *r.borrow_mut() = Some(RunState {
                ctrl: self.ctrl.clone(),
                run_id: job.run_id,
                stdout: String::new(),
                stderr: String::new(),
                max_output: job.max_output,
                deadline: job.deadline,
                allowed: job.allowed_modules.clone(),
                globals: None,
            });
        });
        let result = catch_unwind(AssertUnwindSafe(|| self.run_inner(job)));
        let run = RUN.with(|r| r.borrow_mut().take());
        // Retire the run id so that late signals for it are ignored.
        self.ctrl.run_id.store(0, Ordering::SeqCst);
        let (stdout, stderr) = run
            .map(|r| {
                *self.retired.borrow_mut() = r.globals;
                (r.stdout, r.stderr)
            })
            .unwrap_or_default();
        let mut outcome = Outcome {
            id: job.id.clone(),
            status: Status::Ok,
            tier: Tier::Rustpython,
            stdout,
            stderr,
            result: None,
            error: None,
            usage: Usage::default(),
            route: None,
            findings: Vec::new(),
        };
        let terminal = self.ctrl.terminal();
        // A terminal condition wins over however the run unwound; an interpreter that
        // hit one, or panicked, is not reused.
        let (status, error, reusable) = match (terminal.status(), result) {
            (Some((status, kind)), _) => {
                let message = self.ctrl.message.lock().map(|m| m.clone()).unwrap_or_default();
                (status, Some((kind.to_string(), message)), false)
            }
            (None, Err(_panic)) => (
                Status::Crashed,
                Some(("InterpreterPanic".into(), "the interpreter failed internally; the run was discarded".into())),
                false,
            ),
            (None, Ok(RunResult::Denied(message))) => (Status::Denied, Some(("PolicyDenied".into(), message)), true),
            (None, Ok(RunResult::Exception(kind, message))) => (Status::Exception, Some((kind, message)), true),
            (None, Ok(RunResult::Value(value))) => {
                outcome.result = value;
                (Status::Ok, None, true)
            }
        };
        outcome.status = status;
        outcome.error = error.map(|(kind, message)| ErrorInfo { kind, message });
        (outcome, reusable)
    }

    fn run_inner(&self, job: &Job) -> RunResult {
        if let Some(reason) = static_denial(&job.code, &job.allowed_modules) {
            report_denial(&reason);
            return RunResult::Denied(reason);
        }
        self.interp.enter(|vm| {
            let code = match compile(&job.code, Mode::BlockExpr, vm) {
                Ok(c) => c,
                Err(message) => return RunResult::Exception("SyntaxError".into(), message),
            };
            let prepared = self.next_globals.borrow_mut().take();
            let globals = prepared.unwrap_or_else(|| self.fresh_globals(vm));
            with_run(|run| run.globals = Some(globals.clone().into()));
            match vm.run_code_obj(code, Scope::with_builtins(None, globals, vm)) {
                Ok(value) => match value::to_json(&value, job.max_output, vm) {
                    Ok(json) => RunResult::Value(json),
                    Err(value::TooBig) => {
                        let message = format!("the result exceeded the output cap of {} bytes", job.max_output);
                        self.ctrl.terminate(job.run_id, Terminal::OutputLimit, &message);
                        RunResult::Value(None)
                    }
                },
                Err(exc) => {
                    let kind = exc.class().name().to_string();
                    let message =
                        exc.as_object().str(vm).map(|s| s.as_wtf8().to_string_lossy().into_owned()).unwrap_or_default();
                    RunResult::Exception(kind, message)
                }
            }
        })
    }
}

/// Compiles snippet text. The parser and code generator only: the interpreter's
/// own `compile` first re-parses the text twice to emit `SyntaxWarning`s, which
/// a snippet has no use for.
fn compile(source: &str, mode: Mode, vm: &VirtualMachine) -> Result<rustpython_vm::PyRef<PyCode>, String> {
    rustpython_vm::compiler::compile(source, mode, "<snippet>", vm.compile_opts())
        .map(|code| PyCode::new_ref_from_bytecode(vm, code))
        .map_err(|e| e.to_string())
}

/// The static analysis' refusal of `code` under `allowed`, if any.
fn static_denial(code: &str, allowed: &BTreeSet<String>) -> Option<String> {
    let analysis = analysis::analyze(code);
    if let Some(f) = analysis.denial() {
        return Some(format!("line {}: {}", f.line, f.message));
    }
    analysis.imports.iter().find_map(|imp| {
        if imp.level != 0 {
            Some(format!("line {}: relative imports are not available to snippets", imp.line))
        } else if !module_allowed(allowed, &imp.module) {
            Some(format!("line {}: import of {:?} is not allowed by the policy", imp.line, imp.module))
        } else {
            None
        }
    })
}

enum RunResult {
    Value(Option<serde_json::Value>),
    Exception(String, String),
    Denied(String),
}

fn exc_text(vm: &VirtualMachine, e: &PyBaseExceptionRef) -> String {
    let mut s = String::new();
    let _ = vm.write_exception(&mut s, e);
    s
}

/// Runs a worker loop on the current thread (after importing `preload` and sealing
/// the interpreter) until the job channel closes or the interpreter must be
/// discarded. `ready` receives the control block, or the
/// reason the interpreter could not be built.
pub fn serve(
    preload: &[String],
    jobs: mpsc::Receiver<(Job, Reply)>,
    ready: mpsc::SyncSender<Result<Arc<Control>, String>>,
) {
    let worker = match Worker::new().and_then(|w| {
        w.preload(preload);
        w.seal().map(|()| w)
    }) {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(worker.control())).is_err() {
        return;
    }
    loop {
        // Poll briefly before sleeping: a caller sending its next job right away
        // then finds this thread awake (see `embedded::SPIN`).
        let next = super::embedded::spin_until(super::embedded::SPIN, || match jobs.try_recv() {
            Ok(job) => Some(Some(job)),
            Err(mpsc::TryRecvError::Disconnected) => Some(None),
            Err(mpsc::TryRecvError::Empty) => None,
        });
        let Some((job, reply)) = next.unwrap_or_else(|| jobs.recv().ok()) else {
            return;
        };
        let (outcome, reusable) = worker.run(&job);
        let _ = reply.send((outcome, reusable));
        if !reusable {
            break;
        }
        worker.tidy();
    }
}

#[cfg(test)]
mod tests {
    //! The walls behind the snippet guards, checked from *trusted* code: even code
    //! with the real builtins finds nothing that reaches the host.

    use super::*;

    /// Runs `code` as trusted code (the real builtins, no analysis) in a sealed
    /// interpreter that first imported `preload`; during the run `_t_allowed` answers
    /// for `preload`, and the globals also hold `snippet_globals` (a fresh snippet
    /// environment) and `allowed`. Returns `str(result)`, or `raised ...`.
    fn trusted_with(code: &'static str, preload: Vec<String>) -> String {
        std::thread::Builder::new()
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let w = Worker::new().expect("worker");
                w.preload(&preload);
                w.seal().expect("seal");
                RUN.with(|r| {
                    *r.borrow_mut() = Some(RunState {
                        ctrl: w.ctrl.clone(),
                        run_id: 0,
                        stdout: String::new(),
                        stderr: String::new(),
                        max_output: 1 << 20,
                        deadline: Instant::now() + Duration::from_secs(600),
                        allowed: preload.iter().cloned().collect(),
                        globals: None,
                    });
                });
                w.interp.enter(|vm| {
                    let snippet_globals: PyObjectRef = w.fresh_globals(vm).into();
                    let names: Vec<PyObjectRef> = preload.iter().map(|m| vm.ctx.new_str(m.as_str()).into()).collect();
                    let globals = vm.ctx.new_dict();
                    globals.set_item("__builtins__", vm.builtins.clone().into(), vm).expect("builtins");
                    globals.set_item("snippet_globals", snippet_globals, vm).expect("roots");
                    globals.set_item("allowed", vm.ctx.new_list(names).into(), vm).expect("allowed");
                    let code = vm.compile(code, Mode::BlockExpr, "<trusted>").expect("compile");
                    match vm.run_code_obj(code, Scope::with_builtins(None, globals, vm)) {
                        Ok(v) => v.str(vm).map(|s| s.as_wtf8().to_string_lossy().into_owned()).unwrap_or_default(),
                        Err(e) => format!("raised {}", exc_text(vm, &e)),
                    }
                })
            })
            .expect("spawn")
            .join()
            .expect("join")
    }

    /// Runs `code` with the real builtins and returns `str(result)`.
    fn trusted(code: &'static str) -> String {
        trusted_with(code, Vec::new())
    }

    /// Walks the object graph from a snippet's names (`walk_test.py`) under a policy
    /// allowing `allowed`, with the real getattr; returns the walk's report.
    fn walk(allowed: Vec<String>) -> String {
        trusted_with(include_str!("walk_test.py"), allowed)
    }

    #[track_caller]
    fn assert_walk_reaches_nothing(allowed: Vec<String>) {
        let report = walk(allowed);
        assert!(report.contains(" 0 reached"), "{report}");
        eprintln!("{report}");
    }

    #[test]
    fn the_object_graph_from_a_snippet_reaches_no_internals_default_policy() {
        // See: issue 15.
        assert_walk_reaches_nothing(vec!["math".into(), "time".into(), "json".into()]);
    }

    #[test]
    fn the_object_graph_from_a_snippet_reaches_no_internals_every_module_served() {
        let builder = Interpreter::builder(Settings::default());
        let mut names: BTreeSet<String> =
            rustpython_stdlib::stdlib_module_defs(&builder.ctx).iter().map(|d| d.name.as_str().to_string()).collect();
        names.extend(rustpython_pylib::FROZEN_STDLIB.decode().map(|(n, _)| n.to_string()));
        let served: Vec<String> = names.into_iter().filter(|n| !n.contains('.') && serves_module(n)).collect();
        assert!(served.len() > 30, "{served:?}");
        assert_walk_reaches_nothing(served);
    }

    #[test]
    fn the_removed_internals_are_gone_even_for_trusted_code() {
        // Trusted code has the real builtins and no static analysis: what it cannot
        // reach, no snippet route can.
        for (what, code) in [
            (
                "function globals",
                "def f(): pass
hasattr(f, '__globals__') or hasattr(f, '__code__') or hasattr(f, '__closure__')",
            ),
            (
                "match class patterns",
                "r = False
match getattr:
    case object(__globals__=g):
        r = True
r",
            ),
            ("a builtin's module", "hasattr(len, '__self__')"),
            ("subclasses", "hasattr(object, '__subclasses__')"),
            (
                "generator frames",
                "def g():
    yield 1
x = g()
hasattr(x, 'gi_frame') or hasattr(x, 'gi_code')",
            ),
            (
                "traceback frames",
                "try:
    1/0
except Exception as e:
    r = hasattr(e.__traceback__, 'tb_frame')
r",
            ),
            (
                "frame internals",
                "import sys
f = sys._getframe()
any(hasattr(f, n) for n in ('f_back', 'f_globals', 'f_locals', 'f_builtins', 'f_code'))",
            ),
            (
                "code rebuilding",
                "c = compile('0', 'x', 'eval')
hasattr(c, 'replace')",
            ),
            (
                "functions from code",
                "c = compile('0', 'x', 'eval')\ntry:\n    type(lambda: 0)(c, {})\n    r = True\nexcept TypeError:\n    r = False\nr",
            ),
            (
                "code from parts",
                "c = compile('0', 'x', 'eval')\ntry:\n    type(c)(0, 0, 0, 0, 0, 0, b'', (), (), (), 'x', 'x', 'x', 1, b'', b'')\n    r = True\nexcept TypeError:\n    r = False\nr",
            ),
        ] {
            assert_eq!(trusted(code), "False", "{what} is still reachable");
        }
        // ABCs still answer isinstance through their own subclasses.
        assert_eq!(
            trusted(
                "import collections.abc
isinstance([], collections.abc.Sequence) and isinstance({}, collections.abc.Mapping)"
            ),
            "True"
        );
        assert_eq!(
            trusted(
                "import abc
class A(abc.ABC): pass
class B(A): pass
B in A.__subclasses__()"
            ),
            "True"
        );
        assert!(
            trusted(
                "import abc
abc.ABCMeta.__subclasses__(object)"
            )
            .starts_with("raised"),
            "plain classes stay unlisted"
        );
    }

    #[test]
    fn create_builtin_cannot_recreate_pruned_modules() {
        let r = trusted(
            "import _imp\nclass S:\n    name = 'gc'\n    origin = 'built-in'\ntry:\n    m = _imp.create_builtin(S())\n    r = 'created ' + repr(m)\nexcept Exception as e:\n    r = 'refused'\nr",
        );
        assert!(!r.starts_with("created <module 'gc'"), "{r}");
    }

    #[test]
    fn no_file_access_even_with_real_builtins() {
        let r = trusted(
            "try:\n    open('/etc/passwd').read()\n    r = 'READ'\nexcept Exception as e:\n    r = type(e).__name__\nr",
        );
        assert_ne!(r, "READ");
        let r =
            trusted("import os\ntry:\n    os.listdir('/')\n    r = 'LISTED'\nexcept OSError:\n    r = 'refused'\nr");
        assert_eq!(r, "refused");
        let r = trusted("import os\nsorted(os.environ)");
        assert_eq!(r, "[]");
    }

    #[test]
    fn no_sockets_processes_or_threads_exist() {
        for m in ["socket", "_socket", "subprocess", "_posixsubprocess", "threading", "select", "mmap", "gc", "_ctypes"]
        {
            let code: &'static str = Box::leak(
                format!("try:\n    __import__('{m}')\n    r = 'IMPORTED'\nexcept ImportError:\n    r = 'absent'\nr")
                    .into_boxed_str(),
            );
            assert_eq!(trusted(code), "absent", "{m} is importable");
        }
    }

    #[test]
    fn thread_starts_no_os_thread() {
        // Without the `threading` feature only a pure-Python `_thread` stand-in
        // exists, which runs the function inline.
        let r = trusted(
            "import _thread\nseen = []\ntry:\n    _thread.start_new_thread(lambda: seen.append(_thread.get_ident()), ())\nexcept Exception as e:\n    seen.append(type(e).__name__)\nstr(seen == [_thread.get_ident()] or seen)",
        );
        assert!(r == "True" || r.contains("Error"), "{r}");
    }

    #[test]
    fn interpreter_settings_are_gone_from_sys() {
        let r = trusted(
            "import sys\n[n for n in ('settrace', 'setprofile', 'setrecursionlimit', '_current_frames', 'monitoring') if hasattr(sys, n)]",
        );
        assert_eq!(r, "[]");
    }
}
