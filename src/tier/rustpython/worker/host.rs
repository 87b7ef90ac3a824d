//! The snippet's `host` module: one native function per host function the
//! policy declares, each sending its call to the host through the sink the
//! isolated child installs ([`set_host_sink`]) and turning the reply into Python
//! values or an exception.
//!
//! # Security
//! Nothing here decides anything: the host checks every call (name, size, count,
//! approval) whatever this side sends, and a guest that controls the interpreter
//! can send anything through the same sink. What comes back is data (JSON made
//! into fresh `dict`, `list`, `str`, numbers) or an exception of a fixed set of
//! classes; a refusal ends the run as denied, like any denial.

use std::collections::HashMap;

use rustpython_vm::function::FuncArgs;

use super::*;
use crate::executor::{CallReply, HostCall};

/// Carries one call to the host and blocks for its reply: the reply and how long
/// the host took, which moves the run's deadline.
pub type HostSink = Box<dyn Fn(HostCall) -> (CallReply, Duration)>;

thread_local! {
    static SINK: RefCell<Option<HostSink>> = const { RefCell::new(None) };
    /// Each name's native function, made once per process (a native function's
    /// name is static).
    static FUNCTIONS: RefCell<HashMap<String, PyObjectRef>> = RefCell::new(HashMap::new());
}

/// Sends this thread's host calls to `sink` from now on.
pub fn set_host_sink(sink: HostSink) {
    SINK.with(|s| *s.borrow_mut() = Some(sink));
}

/// The largest JSON text of one call's arguments this side sends (the policy's
/// cap, checked by the host, is at most this).
const MAX_ARGS: usize = 16 << 20;

/// The `host` module for this run: its declared functions, or `None` when the
/// run has none (the import is then refused like any module outside the policy).
pub(crate) fn host_module(vm: &VirtualMachine) -> Option<PyResult> {
    let names = with_run(|run| run.functions.clone()).unwrap_or_default();
    if names.is_empty() {
        return None;
    }
    let module = vm.new_module("host", vm.ctx.new_dict(), None);
    for name in names.iter() {
        let f = FUNCTIONS.with(|fs| {
            fs.borrow_mut()
                .entry(name.clone())
                .or_insert_with(|| {
                    let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
                    vm.new_function(leaked, move |args: FuncArgs, vm: &VirtualMachine| call(leaked, args, vm)).into()
                })
                .clone()
        });
        if let Err(e) = module.set_attr(vm.ctx.intern_str(name.as_str()), f, vm) {
            return Some(Err(e));
        }
    }
    Some(Ok(module.into()))
}

/// One call of `name` with the snippet's arguments.
fn call(name: &str, args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    let positional = vm.ctx.new_list(args.args);
    let keywords = vm.ctx.new_dict();
    for (k, v) in args.kwargs {
        keywords.set_item(vm.ctx.new_str(k).as_object(), v, vm)?;
    }
    let both = vm.ctx.new_dict();
    both.set_item("args", positional.into(), vm)?;
    both.set_item("kwargs", keywords.into(), vm)?;
    let json = match value::to_json_exact(both.as_object(), MAX_ARGS, vm) {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(vm.new_type_error(format!(
                "host function {name}'s arguments must be JSON values: dict with str keys, list, tuple, str, int \
                 (64-bit), float (finite), bool or None, nested at most {} deep",
                value::MAX_DEPTH
            )));
        }
        Err(value::TooBig) => {
            return Err(deny(&format!("host function {name}'s arguments are larger than any call may be"), vm));
        }
    };
    let sent = SINK.with(|s| s.borrow().as_ref().map(|sink| sink(HostCall { name: name.to_string(), args: json })));
    let Some((reply, waited)) = sent else {
        return Err(vm.new_runtime_error("host functions are served only in isolated runs"));
    };
    // The run's own time does not include the host's.
    with_run(|run| run.deadline += waited);
    match reply {
        CallReply::Value(v) => Ok(from_json(&v, vm)),
        CallReply::Raise { kind, message } => Err(vm.new_exception_msg(exception_type(&kind, vm), message.into())),
        CallReply::Refused(reason) => Err(deny(&reason, vm)),
    }
}

/// The exception class named `kind` (one of `executor::RAISABLE`).
fn exception_type(kind: &str, vm: &VirtualMachine) -> rustpython_vm::builtins::PyTypeRef {
    let e = &vm.ctx.exceptions;
    match kind {
        "ValueError" => e.value_error,
        "TypeError" => e.type_error,
        "KeyError" => e.key_error,
        "LookupError" => e.lookup_error,
        "PermissionError" => e.permission_error,
        "TimeoutError" => e.timeout_error,
        "NotImplementedError" => e.not_implemented_error,
        "ConnectionError" => e.connection_error,
        _ => e.runtime_error,
    }
    .to_owned()
}

/// A fresh Python value for JSON `v` (its depth is bounded by the JSON parser's).
fn from_json(v: &serde_json::Value, vm: &VirtualMachine) -> PyObjectRef {
    use serde_json::Value;
    match v {
        Value::Null => vm.ctx.none(),
        Value::Bool(b) => vm.ctx.new_bool(*b).into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => vm.ctx.new_int(i).into(),
            (None, Some(u)) => vm.ctx.new_int(u).into(),
            _ => vm.ctx.new_float(n.as_f64().unwrap_or(f64::NAN)).into(),
        },
        Value::String(s) => vm.ctx.new_str(s.as_str()).into(),
        Value::Array(items) => vm.ctx.new_list(items.iter().map(|i| from_json(i, vm)).collect()).into(),
        Value::Object(map) => {
            let d = vm.ctx.new_dict();
            for (k, item) in map {
                // Setting a str key on a new dict cannot fail.
                let _ = d.set_item(k.as_str(), from_json(item, vm), vm);
            }
            d.into()
        }
    }
}
