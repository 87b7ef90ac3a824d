//! The native functions the prelude hands to snippet code in place of the
//! capabilities it removed: output capture, denials, sleep, eval/exec, urandom.

use super::*;

pub(super) fn terminal_exc(vm: &VirtualMachine) -> PyBaseExceptionRef {
    vm.new_exception_msg(vm.ctx.exceptions.keyboard_interrupt.to_owned(), "terrarium: run ended".into())
}

/// `sys.stdout.write`: appends to the run's capture, returns the characters written.
pub(super) fn native_stdout(text: PyStrRef, vm: &VirtualMachine) -> PyResult<usize> {
    capture(1, &text, vm)?;
    Ok(text.char_len())
}

/// `sys.stderr.write`.
pub(super) fn native_stderr(text: PyStrRef, vm: &VirtualMachine) -> PyResult<usize> {
    capture(2, &text, vm)?;
    Ok(text.char_len())
}

/// Appends `text` to the run's stdout (1) or stderr (2), ending the run when the
/// output cap is passed.
pub(super) fn capture(fd: i32, text: &PyStrRef, vm: &VirtualMachine) -> PyResult<()> {
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
    pub(super) static DENIALS: RefCell<Option<DenialSink>> = const { RefCell::new(None) };
}

/// Sends this thread's denials to `sink` from now on.
pub fn set_denial_sink(sink: DenialSink) {
    DENIALS.with(|d| *d.borrow_mut() = Some(sink));
}

pub(super) fn report_denial(reason: &str) {
    DENIALS.with(|d| {
        if let Some(sink) = d.borrow().as_ref() {
            sink(reason);
        }
    });
}

/// Ends the current run as denied for `reason` and returns the `PermissionError`
/// to raise.
pub(crate) fn deny(reason: &str, vm: &VirtualMachine) -> PyBaseExceptionRef {
    report_denial(reason);
    if let Some((ctrl, run_id)) = with_run(|run| (run.ctrl.clone(), run.run_id)) {
        ctrl.terminate(run_id, Terminal::Denied, reason);
    }
    vm.new_exception_msg(vm.ctx.exceptions.permission_error.to_owned(), reason.to_owned().into())
}

pub(super) fn native_deny(reason: PyStrRef, vm: &VirtualMachine) -> PyBaseExceptionRef {
    deny(&reason.as_wtf8().to_string_lossy(), vm)
}

pub(super) fn native_sleep(secs: ArgIntoFloat, vm: &VirtualMachine) -> PyResult<()> {
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
pub(super) fn native_gc_pause(pause: bool, vm: &VirtualMachine) {
    if pause {
        vm.state.gc.disable();
    } else {
        vm.state.gc.enable();
    }
}

/// `sys.unraisablehook`: an exception no one can catch (a finalizer that raised)
/// is dropped. Native, so that it runs no bytecode: a Python hook raises again once
/// the run has ended (every instruction does), and the interpreter then prints
/// that exception on the host process's own stdout, outside any outcome.
pub(super) fn native_unraisable(_args: rustpython_vm::function::FuncArgs) {}

pub(super) fn native_urandom(n: isize, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
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
pub(super) fn in_snippet_code(vm: &VirtualMachine) -> bool {
    // No frame at all (a native called from a finalizer as the run's objects
    // are dropped): not the snippet's code. `vm.current_globals()` would panic
    // there, and a second such panic in a destructor aborts the process.
    vm.current_frame().is_some_and(|f| is_run_globals(&f.f_globals().into()))
}

/// Whether `obj` is the running snippet's globals dict.
pub(crate) fn is_run_globals(obj: &PyObjectRef) -> bool {
    with_run(|run| run.globals.as_ref().is_some_and(|g| g.is(obj))).unwrap_or(false)
}

pub(super) fn native_globals(vm: &VirtualMachine) -> PyResult<PyDictRef> {
    if !in_snippet_code(vm) {
        return Err(deny("globals() is available only in the snippet's own code", vm));
    }
    Ok(vm.current_globals())
}

pub(super) fn native_locals(vm: &VirtualMachine) -> PyResult<rustpython_vm::function::ArgMapping> {
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
pub(super) fn run_text(
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
    let (allowed, host) = with_run(|run| (run.allowed.clone(), !run.functions.is_empty())).unwrap_or_default();
    if let Some(reason) = static_denial(&text, &allowed, host) {
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

pub(super) fn native_eval(
    source: PyObjectRef,
    globals: OptionalArg<PyObjectRef>,
    locals: OptionalArg<PyObjectRef>,
    vm: &VirtualMachine,
) -> PyResult {
    run_text(Mode::Eval, source, globals, locals, vm)
}

pub(super) fn native_exec(
    source: PyObjectRef,
    globals: OptionalArg<PyObjectRef>,
    locals: OptionalArg<PyObjectRef>,
    vm: &VirtualMachine,
) -> PyResult {
    run_text(Mode::Exec, source, globals, locals, vm)
}

/// Whether the running snippet's policy lets it import `name` (false between runs).
pub(crate) fn module_allowed_now(name: &str) -> bool {
    with_run(|run| module_allowed(&run.allowed, name)).unwrap_or(false)
}

/// The static analysis' refusal of text that trusted stdlib code is about to
/// evaluate for a snippet (typing's forward references), or `None`.
pub(super) fn native_check(source: PyStrRef) -> Option<String> {
    let source = source.as_wtf8().to_string_lossy().into_owned();
    analysis::analyze(&source).denial().map(|f| f.message.clone())
}
