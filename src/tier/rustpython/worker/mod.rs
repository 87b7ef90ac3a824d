//! One interpreter on one thread: builds it capability-free, then runs jobs.
//!
//! RustPython built without `threading` keeps its type context in thread-locals and
//! its objects are not `Send`, so each interpreter is created on, used on, and
//! dropped on the thread that owns it.
//!
//! # Security
//! - Only modules that cannot reach the host are compiled in (no `host_env`); the
//!   module tables are further pruned of introspection modules here.
//! - Snippets get restricted builtins and module proxies (see `src/guest/rustpython_prelude.py`); once
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
use crate::executor::{ErrorInfo, ErrorKind, Outcome, Status, Tier};
use crate::policy::module_allowed;

use super::{importer, value, walls};

mod control;
pub use control::*;
mod natives;
pub use natives::*;
mod host;
pub(crate) use host::host_module;
mod garbage;
use garbage::collect_the_runs_garbage;
pub use host::set_host_sink;

/// The prelude that builds the snippet environment (see its header).
const PRELUDE: &str = include_str!("../../../guest/rustpython_prelude.py");
/// The asyncio stand-in the prelude installs.
const ASYNCIO_STANDIN: &str = include_str!("../../../guest/asyncio_standin.py");

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
/// one the importer hands out (only its vetted `SERVED` list, see `importer/mod.rs`).
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
    /// The session's globals between its cells (see [`Job::session`]).
    session_globals: RefCell<Option<PyDictRef>>,
    /// Whether the interpreter serves another run after this one (embedded
    /// mode): then each run ends by collecting its own cyclic garbage.
    reused: std::cell::Cell<bool>,
    /// Set when a run's garbage could not all be collected before it ended: the
    /// interpreter is then not reused.
    tainted: std::cell::Cell<bool>,
}

impl Worker {
    /// Builds a capability-free interpreter on the current thread.
    ///
    /// # Errors
    /// [`SetupError`] with the prelude's exception text, when it fails (a build
    /// defect).
    pub fn new() -> Result<Worker, SetupError> {
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
        let (snippet_builtins, after_fork, harden_all) = interp.enter(|vm| -> Result<_, SetupError> {
            let building = |detail: String| SetupError { step: "building", detail };
            let globals = vm.ctx.new_dict();
            let set = |k: &str, v: PyObjectRef| globals.set_item(k, v, vm).map_err(|e| building(exc_text(vm, &e)));
            set("__builtins__", vm.builtins.clone().into())?;
            set("__name__", vm.ctx.new_str("terrarium_prelude").into())?;
            set("_t_stdout", vm.new_function("write", native_stdout).into())?;
            set("_t_stderr", vm.new_function("write", native_stderr).into())?;
            set("_t_deny", vm.new_function("_t_deny", native_deny).into())?;
            set("_t_sleep", vm.new_function("_t_sleep", native_sleep).into())?;
            set("_t_urandom", vm.new_function("_t_urandom", native_urandom).into())?;
            set("_t_gc_pause", vm.new_function("_t_gc_pause", native_gc_pause).into())?;
            set("_t_unraisable", vm.new_function("unraisablehook", native_unraisable).into())?;
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
            let code = vm.compile(PRELUDE, Mode::Exec, "<terrarium prelude>").map_err(|e| building(e.to_string()))?;
            vm.run_code_obj(code, Scope::with_builtins(None, globals.clone(), vm))
                .map_err(|e| building(exc_text(vm, &e)))?;
            let get = |k: &str| globals.get_item(k, vm).map_err(|e| building(exc_text(vm, &e)));
            // str.format walks attributes in its fields; replace it on the type
            // (per thread: the type context is thread-local in this build).
            let patch = get("_HOST_PATCH_STR_FORMAT")?;
            let fmt = patch.get_item(&0, vm).map_err(|e| building(exc_text(vm, &e)))?;
            let fmt_map = patch.get_item(&1, vm).map_err(|e| building(exc_text(vm, &e)))?;
            vm.ctx.types.str_type.set_attr(vm.ctx.intern_str("format"), fmt);
            vm.ctx.types.str_type.set_attr(vm.ctx.intern_str("format_map"), fmt_map);
            let snippet_builtins = get("_snippet_builtins")?
                .downcast::<rustpython_vm::builtins::PyDict>()
                .map_err(|_| building("the prelude's _snippet_builtins is not a dict".into()))?;
            Ok((snippet_builtins, get("after_fork")?, get("harden_all")?))
        })?;
        Ok(Worker {
            interp,
            ctrl,
            snippet_builtins,
            after_fork,
            harden_all,
            next_globals: RefCell::new(None),
            session_globals: RefCell::new(None),
            reused: std::cell::Cell::new(false),
            tainted: std::cell::Cell::new(false),
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
    pub fn seal(&self) -> Result<(), SetupError> {
        self.interp.enter(|vm| {
            self.harden_all.call((), vm).map_err(|e| SetupError::sealing(exc_text(vm, &e)))?;
            importer::seal(vm)?;
            walls::remove_internals(vm)?;
            // From here on the cycle collector runs only inside runs (see
            // `run_inner`); imports during set-up re-enabled it. What exists now
            // is never garbage of a run: frozen, no collection walks it.
            vm.state.gc.disable();
            vm.state.gc.freeze();
            Ok(())
        })
    }

    /// Freezes what Terrarium's own warm-ups left (module proxies, caches), as
    /// [`Self::seal`] froze the set-up: no collection of a run walks it.
    pub fn freeze(&self) {
        self.interp.enter(|vm| vm.state.gc.freeze());
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

    /// Work a reused interpreter does after answering, off the request path:
    /// prepares the next run's globals (the collector is paused: nothing of a
    /// snippet's runs here).
    pub fn tidy(&self) {
        if self.next_globals.borrow().is_none() {
            self.prepare_globals();
        }
    }

    /// Re-seeds per-process state (the `random` module) in a freshly forked child.
    ///
    /// # Errors
    /// [`SetupError`] with the exception text, when reseeding fails.
    pub fn after_fork(&self) -> Result<(), SetupError> {
        self.interp.enter(|vm| {
            self.after_fork
                .call((), vm)
                .map(|_| ())
                .map_err(|e| SetupError { step: "after fork", detail: exc_text(vm, &e) })
        })
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
        importer::start_run(&job.allowed_modules, job.own_code, job.session);
        RUN.with(|r| {
            *r.borrow_mut() = Some(RunState {
                ctrl: self.ctrl.clone(),
                run_id: job.run_id,
                stdout: String::new(),
                stderr: String::new(),
                max_output: job.max_output,
                deadline: job.deadline,
                allowed: job.allowed_modules.clone(),
                functions: job.functions.clone(),
                globals: None,
            });
        });
        if self.reused.get() && !job.session {
            self.interp.enter(importer::clear_pattern_cache);
        }
        // Fuel counts from here: the snippet's instructions and natives, the
        // prelude code it calls, and (on a reused interpreter) the finalizers its
        // garbage runs at the end. Never the analysis or the compiler (Rust).
        terrarium_fuel::start(job.fuel);
        let result = catch_unwind(AssertUnwindSafe(|| self.run_inner(job)));
        let fuel_used = terrarium_fuel::used();
        if terrarium_fuel::exhausted() {
            let budget = job.fuel.unwrap_or(fuel_used);
            self.ctrl.terminate(job.run_id, Terminal::FuelExhausted, &fuel_message(budget));
        }
        // Nothing after the run is charged to anyone.
        terrarium_fuel::start(None);
        let run = RUN.with(|r| r.borrow_mut().take());
        // Retire the run id so that late signals for it are ignored.
        self.ctrl.run_id.store(0, Ordering::SeqCst);
        let (stdout, stderr) = run.map(|r| (r.stdout, r.stderr)).unwrap_or_default();
        let mut outcome = Outcome { id: job.id.clone(), stdout, stderr, ..Outcome::blank(Tier::Rustpython) };
        let terminal = self.ctrl.terminal();
        // A terminal condition wins over however the run unwound; an interpreter that
        // hit one, or panicked, is not reused.
        let (status, error, reusable) = match (terminal.status(), result) {
            (Some((status, kind)), _) => {
                let message = self.ctrl.message.lock().map(|m| m.clone()).unwrap_or_default();
                (status, Some(ErrorInfo::new(kind, message)), false)
            }
            (None, Err(_panic)) => (
                Status::Crashed,
                Some(ErrorInfo::new(
                    ErrorKind::InterpreterPanic,
                    "the interpreter failed internally; the run was discarded",
                )),
                false,
            ),
            (None, Ok(RunResult::Denied(message))) => {
                (Status::Denied, Some(ErrorInfo::new(ErrorKind::PolicyDenied, message)), true)
            }
            (None, Ok(RunResult::Exception(kind, message))) => {
                (Status::Exception, Some(ErrorInfo::raised(kind, message)), true)
            }
            (None, Ok(RunResult::Value(value))) => {
                outcome.result = value;
                (Status::Ok, None, true)
            }
        };
        outcome.status = status;
        outcome.error = error;
        outcome.usage.fuel = Some(fuel_used);
        (outcome, reusable && !self.tainted.get())
    }

    fn run_inner(&self, job: &Job) -> RunResult {
        if let Some(reason) = static_denial(&job.code, &job.allowed_modules, !job.functions.is_empty()) {
            report_denial(&reason);
            return RunResult::Denied(reason);
        }
        self.interp.enter(|vm| {
            let code = match compile(&job.code, Mode::BlockExpr, vm) {
                Ok(c) => c,
                Err(e) => return RunResult::Exception("SyntaxError".into(), e.to_string()),
            };
            let kept = if job.session { self.session_globals.borrow_mut().take() } else { None };
            let prepared = kept.or_else(|| self.next_globals.borrow_mut().take());
            let globals = prepared.unwrap_or_else(|| self.fresh_globals(vm));
            with_run(|run| run.globals = Some(globals.clone().into()));
            // The cycle collector runs only inside a run (see `Worker::new`): a
            // snippet's finalizer never runs between runs, where no deadline
            // reaches it and the next request would be charged for it.
            vm.state.gc.enable();
            let ran = {
                let _allocations = terrarium_fuel::charge_allocations();
                vm.run_code_obj(code, Scope::with_builtins(None, globals.clone(), vm))
            };
            // Paused again before the value is read, so that no finalizer changes
            // the value mid-read (the reader calls no Python code of its own).
            vm.state.gc.disable();
            let result = match ran {
                Ok(value) => match value::to_json(&value, job.max_output, vm).and_then(|json| {
                    // The reader's count is from below; the text itself decides.
                    // An isolated child's answer is measured by the host, so only
                    // an embedded interpreter serializes the value to check it.
                    let long = match &json {
                        Some(j) if self.reused.get() => serde_json::to_string(j).map_or(0, |t| t.len()),
                        _ => 0,
                    };
                    if long > job.max_output { Err(value::TooBig) } else { Ok(json) }
                }) {
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
            };
            // The run's objects go while the run is still current: a `__del__` they
            // run is the run's own work, under its deadline and output cap. On an
            // interpreter that serves another run, so do its cycles: the next
            // request is never charged for this one's finalizers.
            with_run(|run| run.globals = None);
            if job.session {
                // A session's state stays for its next cell, in this child alone.
                *self.session_globals.borrow_mut() = Some(globals);
                vm.state.gc.disable();
                return result;
            }
            drop(globals);
            // So do the run's module proxies, on an interpreter that serves another
            // run (a cycle hung on one would otherwise outlive this run's collection
            // and be finalized in the next run). A single-use child's go with it:
            // dropping them would write the reference counts of every name they
            // hold, pages the child has not copied yet.
            if self.reused.get() {
                importer::end_run();
            }
            // As for the collector's own passes (see the vendored `gc_state.rs`): the
            // stdlib's finalizers and callbacks it runs are not charged (a child
            // never runs this collection), the run's own finalizers are.
            let paused = terrarium_fuel::pause();
            let collected = !self.reused.get() || collect_the_runs_garbage(vm);
            drop(paused);
            if !collected {
                // Finalizers kept making new objects: this interpreter serves no
                // other run, so none of them can reach another request.
                self.tainted.set(true);
            }
            // A finalizer may have imported (an import's end re-enables collection).
            vm.state.gc.disable();
            result
        })
    }
}

/// Compiles snippet text. The parser and code generator only: the interpreter's
/// own `compile` first re-parses the text twice to emit `SyntaxWarning`s, which
/// a snippet has no use for.
fn compile(
    source: &str,
    mode: Mode,
    vm: &VirtualMachine,
) -> Result<rustpython_vm::PyRef<PyCode>, rustpython_vm::compiler::CompileError> {
    rustpython_vm::compiler::compile(source, mode, "<snippet>", vm.compile_opts())
        .map(|code| PyCode::new_ref_from_bytecode(vm, code))
}

/// The static analysis' refusal of `code` under `allowed`, if any (`host` is the
/// run's host functions, when it has any).
fn static_denial(code: &str, allowed: &BTreeSet<String>, host: bool) -> Option<String> {
    let analysis = analysis::analyze(code);
    if let Some(f) = analysis.denial() {
        return Some(format!("line {}: {}", f.line, f.message));
    }
    analysis.imports.iter().find_map(|imp| {
        if imp.level != 0 {
            Some(format!("line {}: relative imports are not available to snippets", imp.line))
        } else if !(module_allowed(allowed, &imp.module) || host && imp.module == "host") {
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
    ready: mpsc::SyncSender<Result<Arc<Control>, SetupError>>,
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
    worker.reused.set(true);
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

/// Says once per process, as a warning, that this program did not install
/// `terrarium::FuelCountingAlloc`: its runs are not charged fuel for what they
/// allocate (docs/security-model.md, "Fuel on the interpreter tier").
pub(crate) fn warn_without_counting_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !terrarium_fuel::allocator_installed() {
            tracing::warn!(
                "this program does not install terrarium::FuelCountingAlloc as its global allocator: \
                 interpreter runs here are not charged fuel for the data they make (docs/library.md)"
            );
        }
    });
}

#[cfg(test)]
mod tests;
