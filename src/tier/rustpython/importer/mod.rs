//! Snippets' `__import__` and the module proxies it hands out: native functions
//! whose state (the real importer, the per-run proxies, what each proxy hides)
//! lives in Rust, where no snippet route reaches it.
//!
//! # Security invariant
//! A snippet's import gives it a proxy, never a module: a fresh module object
//! holding only the public, non-module attributes of the real one, proxies of
//! its allowed submodules, and the guarded replacements the prelude registered.
//! The import name and `fromlist` are read by their exact `str` values (a
//! subclass's `__hash__`/`__eq__` never choose what the import system looks up).
//! A module is imported only if the policy allows it and this tier serves it
//! (only the pure-computation modules in [`SERVED`] ever are, whatever the policy
//! says). No Python object holds the real `__import__` for
//! snippets: the prelude hands it to [`native_setup`] once, before the seal.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use rustpython_vm::builtins::{PyStr, PyStrRef};
use rustpython_vm::{AsObject, FromArgs, PyObjectRef, PyResult, VirtualMachine};

use crate::analysis;

use super::worker;

mod proxies;

use proxies::proxy;
pub use proxies::{end_run, forget_proxies, start_run};

/// The only modules (and their public submodules) this tier hands to snippets,
/// when the policy allows them: pure computation, each read for what it does with
/// text and names (nothing here evaluates text a snippet chose with the real
/// builtins, or imports or looks up a module by a name a snippet chose, beyond what
/// the prelude fences: typing's and dataclasses' evaluation, enum's `_convert_`,
/// contextlib's redirects, warnings' `catch_warnings`, operator's and string's
/// attribute paths). Anything else the policy allows (`timeit`, `rlcompleter`,
/// `logging`, ... which run text or import by name with the interpreter's own
/// builtins) is served by the wasm and docker tiers, where a process or VM wall
/// stands behind the interpreter; the router escalates there.
#[rustfmt::skip]
pub const SERVED: &[&str] = &[
    "abc", "array", "asyncio", "base64", "binascii", "bisect", "calendar", "cmath", "collections",
    "colorsys", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "enum", "fnmatch", "fractions", "functools", "graphlib", "hashlib", "heapq", "hmac", "html",
    "itertools", "json", "keyword", "math", "numbers", "operator", "pprint", "random", "re",
    "reprlib", "statistics", "string", "struct", "textwrap", "time", "typing", "unicodedata",
    "warnings", "zlib",
];

/// Submodules of served packages that are not served.
const NOT_SERVED: &[&str] = &["json.tool", "asyncio.subprocess"];

/// Public names of served modules that would hand out host or interpreter access.
const REMOVED: &[(&str, &[&str])] = &[("io", &["open", "open_code", "FileIO"]), ("random", &["SystemRandom"])];

/// Whether module `name` is never served: its package is not in [`SERVED`], it
/// (or a package above it) is in [`NOT_SERVED`], or a part of its name is private.
pub fn unservable(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.iter().any(|p| p.is_empty() || p.starts_with('_'))
        || !SERVED.contains(&parts[0])
        || (1..=parts.len()).any(|i| NOT_SERVED.contains(&parts[..i].join(".").as_str()))
}

/// What the prelude hands over once, before the seal.
struct Setup {
    /// The interpreter's real `__import__` (every load it makes is hardened by the
    /// prelude's `_find_and_load` as soon as that load finishes).
    real_import: PyObjectRef,
    /// A type whose instances (its subclasses' included) a proxy never carries (the
    /// prelude's `sys` views).
    skip_type: PyObjectRef,
}

#[derive(Default)]
struct State {
    setup: Option<Setup>,
    /// Module name → a callable returning the names that replace the module's
    /// own in its proxy (guarded `operator.attrgetter`, `string.Formatter`, …).
    overrides: HashMap<String, PyObjectRef>,
    /// Module name → names the prelude set on the module for its own code.
    hidden: HashMap<String, Rc<HashSet<String>>>,
    /// No more overrides once the interpreter is sealed.
    sealed: bool,
    /// This run's proxies, by module name (one proxy per module per run, so that
    /// `import a` and `from a import b` agree).
    proxies: HashMap<String, Proxy>,
    /// The modules the proxies were made for while only Terrarium's own code
    /// (its warm-ups) has run since they were last cleared; `None` once a
    /// snippet's run has started with them. Only then may they serve the next
    /// run (see [`start_run`]).
    prepared: Option<Arc<BTreeSet<String>>>,
}

/// A proxy and the names it has been given (never read back from its namespace,
/// which the snippet may change).
#[derive(Clone)]
struct Proxy {
    module: PyObjectRef,
    names: HashSet<String>,
    /// The real module's key-set stamp when its names were last walked (0: none):
    /// while the stamp is the same, no name was added, and the walk would add nothing.
    stamp: u32,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// `_t_importer_setup(real_import, skip_type)`: once per interpreter.
pub fn native_setup(real_import: PyObjectRef, skip_type: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.setup.is_some() {
            return Err(vm.new_runtime_error("the importer is already set up"));
        }
        s.setup = Some(Setup { real_import, skip_type });
        Ok(())
    })
}

/// `_t_proxy_override(module, make)`: `make()` returns a dict of names that replace
/// the module's own in every proxy of it. Refused once the interpreter is sealed.
pub fn native_override(module: PyStrRef, make: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.sealed {
            return Err(vm.new_runtime_error("the importer is sealed"));
        }
        s.overrides.insert(module.as_wtf8().to_string_lossy().into_owned(), make);
        Ok(())
    })
}

/// `_t_hide(module, name)`: a name the prelude set on a module for the module's
/// own code; proxies of the module never show it. (Hiding more is never a
/// capability, so this stays available after the seal: hardening runs when a
/// module is first loaded, which may be during a run.)
pub fn native_hide(module: PyStrRef, name: PyStrRef) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let names = s.hidden.entry(module.as_wtf8().to_string_lossy().into_owned()).or_default();
        Rc::make_mut(names).insert(name.as_wtf8().to_string_lossy().into_owned());
    });
}

thread_local! {
    /// The interpreter's real `sys.modules`.
    static MODULES: RefCell<Option<PyObjectRef>> = const { RefCell::new(None) };
}

/// Called when the interpreter is sealed: the overrides are final, and
/// `sys.modules` answers snippet code with an empty dict.
///
/// Why: `from m import name`, when `m` has no attribute `name`, falls back to
/// `sys.modules[m.__name__ + "." + name]` (the interpreter reads it in Rust). A
/// snippet chooses `m.__name__` (on a proxy, or on any object its own
/// `__import__` returns), so without this that fallback hands out any loaded
/// module. `sys` becomes an instance of a module subtype whose `modules` is a
/// data descriptor: the real dict for trusted code, a fresh empty one when the
/// running frame's code is the snippet's (compiled as `<snippet>`; a snippet cannot
/// make code objects under another name). The native importer reads the real dict
/// directly.
///
/// # Errors
/// `sys.modules` is missing (a build defect).
pub fn seal(vm: &VirtualMachine) -> Result<(), worker::SetupError> {
    STATE.with(|s| s.borrow_mut().sealed = true);
    let sys = vm.sys_module.clone();
    let real = sys.dict().get_item("modules", vm).map_err(|_| worker::SetupError::sealing("sys.modules is missing"))?;
    MODULES.with(|m| *m.borrow_mut() = Some(real));
    let typ = vm.ctx.new_class(None, "module", vm.ctx.types.module_type.to_owned(), Default::default());
    let modules = vm.ctx.new_getset(
        "modules",
        &typ,
        |_zelf: PyObjectRef, vm: &VirtualMachine| -> PyResult {
            if in_snippet_code(vm) {
                return Ok(vm.ctx.new_dict().into());
            }
            real_modules(vm)
        },
        |_zelf: PyObjectRef, _value: PyObjectRef, vm: &VirtualMachine| -> PyResult<()> {
            Err(vm.new_attribute_error("sys.modules cannot be replaced"))
        },
    );
    typ.set_attr(vm.ctx.intern_str("modules"), modules.into());
    sys.as_object().set_class(typ, vm);
    Ok(())
}

/// `_t_import_time_caller(name)`: before the seal, whether the running code was
/// called, through trusted frames only, by module `name`'s own import-time code
/// (its `<module>` frame). The prelude's `sys` views show a module that is still loading only to
/// such callers (re's import-time `enum.global_enum` registers in `re`); a snippet
/// frame anywhere between (a hook the snippet planted and stdlib import-time code
/// ran) means no.
pub fn native_import_time_caller(name: PyStrRef, vm: &VirtualMachine) -> bool {
    // After the seal, never: code can run inside import-time code with no frame
    // of its own (a native callable as a snippet object's finalizer, run by the
    // collector wherever it happens to be), so the frames prove nothing then.
    // Stdlib modules that register in their own namespace as they load (re) are
    // loaded before the seal.
    if STATE.with(|s| s.borrow().sealed) {
        return false;
    }
    let Ok(module) = loaded(&name.as_wtf8().to_string_lossy(), vm) else { return false };
    let Some(namespace) = module.dict() else { return false };
    let real_builtins = vm.builtins.dict();
    for offset in 0..100_000 {
        let Some(frame) = rustpython_vm::frame::frame_at_offset(offset, vm) else { return false };
        let code = frame.f_code();
        if code.source_path().as_str() == "<snippet>" || !frame.f_builtins().is(real_builtins.as_object()) {
            return false;
        }
        if frame.f_globals().is(&namespace) && code.code.obj_name.as_str() == "<module>" {
            return true;
        }
    }
    false
}

/// Whether the innermost frame runs snippet code, or code with the snippet's
/// power: compiled as `<snippet>` (the snippet, its `eval`/`exec` text, and what
/// stdlib modules compile from text for it), or running with builtins other than
/// the interpreter's (everything the prelude evaluates for a snippet runs with the
/// snippet builtins). Trusted stdlib code is neither.
fn in_snippet_code(vm: &VirtualMachine) -> bool {
    let snippet_code = rustpython_vm::frame::current_code().is_some_and(|c| c.source_path().as_str() == "<snippet>");
    let real_builtins = rustpython_vm::frame::current_builtins().is_none_or(|b| b.is(vm.builtins.dict().as_object()));
    snippet_code || !real_builtins
}

/// The real `sys.modules`.
fn real_modules(vm: &VirtualMachine) -> PyResult {
    match MODULES.with(|m| m.borrow().clone()) {
        Some(m) => Ok(m),
        None => vm.sys_module.dict().get_item("modules", vm),
    }
}

/// Empties `re`'s pattern cache, when `re` is loaded and the cache holds anything:
/// a reused (embedded) interpreter calls it before each run, so that the fuel a
/// snippet's patterns cost does not depend on which patterns earlier runs compiled.
/// Trusted code, before the run's count starts. The emptiness check is Rust's: a
/// run that compiled no pattern pays no Python call (whose leftovers would cost the
/// next run its skipped end-of-run collection).
pub(super) fn clear_pattern_cache(vm: &VirtualMachine) {
    let Ok(re) = loaded("re", vm) else { return };
    let Some(namespace) = re.dict() else { return };
    let holds = |name: &str| {
        namespace
            .get_item_opt(name, vm)
            .ok()
            .flatten()
            .and_then(|d| d.downcast::<rustpython_vm::builtins::PyDict>().ok())
            .is_some_and(|d| d.__len__() > 0)
    };
    if (holds("_cache") || holds("_cache2"))
        && let Ok(purge) = re.get_attr("purge", vm)
    {
        let _ = purge.call((), vm);
    }
}

/// The exact value of a `str` (or subclass) as a Rust string, or `None`.
fn exact(obj: &PyObjectRef) -> Option<String> {
    exact_text(obj).map(Cow::into_owned)
}

/// [`exact`], borrowed when the value is valid UTF-8 (the usual case).
fn exact_text(obj: &PyObjectRef) -> Option<Cow<'_, str>> {
    obj.downcast_ref::<PyStr>().map(|s| s.as_wtf8().to_string_lossy())
}

/// The arguments of `__import__`, by position or keyword.
#[derive(FromArgs)]
pub struct ImportArgs {
    #[pyarg(any)]
    name: PyObjectRef,
    #[allow(
        dead_code,
        reason = "bound so that callers may pass it; the snippet never chooses the globals an import sees"
    )]
    #[pyarg(any, optional)]
    globals: Option<PyObjectRef>,
    #[allow(
        dead_code,
        reason = "bound so that callers may pass it; the snippet never chooses the globals an import sees"
    )]
    #[pyarg(any, optional)]
    locals: Option<PyObjectRef>,
    #[pyarg(any, default)]
    fromlist: Option<PyObjectRef>,
    #[pyarg(any, default)]
    level: i32,
}

/// Units of fuel every import statement (or `__import__` call) costs, whatever it
/// finds: a loop of imports of a loaded module, of a missing submodule or of
/// `from m import *` did 100–300 instructions' worth of native work per import.
pub(crate) const IMPORT_FUEL: u64 = 300;

/// Snippets' `__import__(name, globals=None, locals=None, fromlist=(), level=0)`.
pub fn native_import(args: ImportArgs, vm: &VirtualMachine) -> PyResult {
    let ImportArgs { name, fromlist, level, .. } = args;
    if level != 0 {
        return Err(worker::deny("relative imports are not available to snippets", vm));
    }
    let name = match exact(&name) {
        Some(n) if !n.is_empty() => n,
        _ => return Err(vm.new_type_error("__import__() argument 1 must be a non-empty str")),
    };
    // Plain str values from here on.
    let fromlist: Vec<PyObjectRef> = match fromlist {
        Some(f) if !vm.is_none(&f) => f.try_to_value::<Vec<PyObjectRef>>(vm)?,
        _ => Vec::new(),
    };
    // Fuel: a flat charge per import (finding a module, cached or not, and copying
    // names for `import *` is native work of a few hundred instructions' time), and
    // one unit per name, which the checks below walk.
    vm.charge_fuel(IMPORT_FUEL.saturating_add(u64::try_from(fromlist.len()).unwrap_or(u64::MAX)))?;
    // Exact strings only: a module's first load runs with fuel paused (see
    // `terrarium_fuel::pause`) and must not call a snippet's object.
    let fromlist: Vec<PyObjectRef> = fromlist
        .into_iter()
        .map(|f| {
            exact(&f)
                .map(|s| vm.ctx.new_str(s).into())
                .ok_or_else(|| vm.new_type_error("Item in from list must be str"))
        })
        .collect::<PyResult<_>>()?;
    // The run's host functions, when the policy declares any.
    if name == "host"
        && let Some(module) = worker::host_module(vm)
    {
        return module;
    }
    if !worker::module_allowed_now(&name) {
        return Err(worker::deny(&format!("import of {name:?} is not allowed by the policy"), vm));
    }
    if unservable(&name) {
        return Err(worker::deny(
            &format!(
                "the rustpython tier does not provide {name:?} (it has no host access and hides interpreter internals)"
            ),
            vm,
        ));
    }
    let real_import = STATE
        .with(|s| s.borrow().setup.as_ref().map(|s| s.real_import.clone()))
        .ok_or_else(|| vm.new_runtime_error("the importer is not set up"))?;
    // `from pkg import name` imports `pkg.name` when `name` is not already an
    // attribute of the package: that submodule must be one the policy allows and
    // the tier serves, checked before anything is imported. The same pass finds
    // whether every name is already there (attribute or loaded submodule).
    let mut names_there = false;
    if let Ok(package) = loaded(&name, vm) {
        let namespace = package.dict();
        names_there = true;
        for f in &fromlist {
            let Some(f) = exact(f) else {
                names_there = false;
                continue;
            };
            let present = namespace.as_ref().is_some_and(|d| d.get_item_opt(f.as_str(), vm).ok().flatten().is_some());
            let sub = format!("{name}.{f}");
            if f != "*" && !present && (!worker::module_allowed_now(&sub) || unservable(&sub)) {
                return Err(worker::deny(&format!("import of {sub:?} is not allowed by the policy or this tier"), vm));
            }
            names_there &= f != "*" && (present || loaded(&sub, vm).is_ok());
        }
    }
    // Already loaded (the usual case: the policy's modules are preloaded), with
    // every package above it: taken from sys.modules directly, without the import
    // machinery or another hardening pass.
    let parts: Vec<&str> = name.split('.').collect();
    let cached = (1..=parts.len()).all(|i| loaded(&parts[..i].join("."), vm).is_ok_and(|m| initialized(&m, vm)));
    let top = if cached && (fromlist.is_empty() || names_there) {
        loaded(parts[0], vm)?
    } else {
        let none = vm.ctx.none();
        let from_tuple: PyObjectRef = vm.ctx.new_tuple(fromlist.clone()).into();
        real_import.call((vm.ctx.new_str(name.as_str()), none.clone(), none, from_tuple, 0), vm)?
    };
    if !fromlist.is_empty() {
        for f in &fromlist {
            if let Some(f) = exact(f)
                && f != "*"
                && !analysis::attr_allowed(&f)
            {
                return Err(worker::deny(&format!("attribute {f:?} is not accessible in the sandbox"), vm));
            }
        }
        return proxy(&loaded(&name, vm)?, vm);
    }
    // Refresh every proxy on the dotted path, so `import a.b` makes `a.b` visible;
    // the last one refreshed is the top package's, which is what the import gives
    // (walked once, not again for the answer).
    let mut top_proxy = None;
    for i in (1..=parts.len()).rev() {
        let module = loaded(&parts[..i].join("."), vm)?;
        let p = proxy(&module, vm)?;
        if i == 1 && module.is(&top) {
            top_proxy = Some(p);
        }
    }
    match top_proxy {
        Some(p) => Ok(p),
        None => proxy(&top, vm),
    }
}

/// Whether module `m` has finished its import-time code.
fn initialized(m: &PyObjectRef, vm: &VirtualMachine) -> bool {
    let spec = m.dict().and_then(|d| d.get_item_opt("__spec__", vm).ok().flatten());
    match spec {
        Some(spec) if !vm.is_none(&spec) => vm
            .get_attribute_opt(&spec, vm.ctx.intern_str("_initializing"))
            .ok()
            .flatten()
            .is_none_or(|v| !v.try_to_bool(vm).unwrap_or(true)),
        _ => true,
    }
}

/// `sys.modules[name]` (the real one, whoever is running).
fn loaded(name: &str, vm: &VirtualMachine) -> PyResult {
    real_modules(vm)?.get_item(name, vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unservable_covers_packages_and_private_names() {
        assert!(unservable("os"));
        assert!(unservable("os.path"));
        assert!(unservable("importlib.machinery"));
        assert!(unservable("json._private"));
        assert!(unservable("_json"));
        assert!(!unservable("json"));
        assert!(!unservable("json.decoder"));
        assert!(!unservable("asyncio"));
        assert!(unservable("asyncio.subprocess"));
        assert!(unservable("timeit") && unservable("rlcompleter") && unservable("logging"));
        assert!(unservable("sys") && unservable("types") && unservable("inspect") && unservable("io"));
        assert!(unservable("") && unservable("json."));
    }
}
