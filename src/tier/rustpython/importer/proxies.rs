//! A run's module proxies: made (from the real module, by Rust alone), kept for
//! the next run only when Terrarium's own warm-ups alone have had them, and
//! dropped when a run ends.
//!
//! # Security invariant
//! A proxy holds only what [`proxy`] decided from the real module before writing
//! anything to it; a snippet's run never starts with a proxy another snippet had.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use rustpython_vm::builtins::{PyDict, PyType};
use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};

use super::{Proxy, REMOVED, STATE, exact, exact_text, initialized, unservable, worker};

/// Called when a run starts, with the modules it may import, whether it is
/// Terrarium's own code (a warm-up), and whether it is a session's cell.
///
/// Proxies are per run: a snippet's run starts with none, except those made for
/// the same modules by Terrarium's own warm-ups alone (in a child, the zygote's
/// and its own, before its one request: no snippet has had them, and they are
/// what the run's first imports would make). A session's cell keeps its earlier
/// cells' proxies. The first snippet run marks whatever it keeps as seen, so no
/// later run starts with it.
pub fn start_run(allowed: &Arc<BTreeSet<String>>, own_code: bool, session: bool) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let fits = s.prepared.as_deref() == Some(&**allowed);
        if own_code {
            if !fits {
                s.proxies.clear();
                s.prepared = Some(allowed.clone());
            }
            return;
        }
        if !fits && (!session || s.prepared.is_some()) {
            s.proxies.clear();
        }
        s.prepared = None;
    });
}

/// Drops every proxy: the next run makes its own (Terrarium's warm-ups call this
/// before the one that makes a child's proxies, so that those hold the modules'
/// names as the earlier warm-ups left them, e.g. a lazily bound submodule).
pub fn forget_proxies() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.proxies.clear();
        s.prepared = None;
    });
}

/// Called when a run that is not a session's cell ends: its proxies go (a cycle
/// hung on one would otherwise outlive the run's collection), unless only
/// Terrarium's own code had them.
pub fn end_run() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.prepared.is_none() {
            s.proxies.clear();
        }
    });
}

/// The run's proxy of `module`, refreshed with the module's current public names.
///
/// What goes in is decided entirely in Rust from the real module (trusted) before
/// anything is written to the proxy, and a name is only ever added, once: the
/// proxy's namespace is the snippet's to change, so it is never read here (a key
/// the snippet planted there could run its code mid-refresh), and a hidden or
/// removed name is never in it, not even for a moment.
pub(super) fn proxy(module: &PyObjectRef, vm: &VirtualMachine) -> PyResult {
    let module_type = vm.ctx.types.module_type;
    if !module.class().is(module_type) {
        return Err(vm.new_runtime_error("the sandbox serves modules only"));
    }
    let source = module.dict().ok_or_else(|| vm.new_runtime_error("a module has no namespace"))?;
    let name = source.get_item_opt("__name__", vm)?.as_ref().and_then(exact).unwrap_or_default();
    // A module still running its import-time code is not hardened yet, and a load
    // the snippet makes fail (from a hook its own import-time code calls) never
    // is: snippets get a module only once it has finished loading.
    if !initialized(module, vm) {
        return Err(worker::deny(&format!("import of {name:?} while it is still loading"), vm));
    }
    // The real module's key set, stamped before the walk (a change during it
    // leaves the next import a different stamp, and so a walk of its own).
    let stamp = source.keys_stamp(vm);
    let existing = STATE.with(|s| {
        s.borrow().proxies.get(&name).map(|p| {
            if stamp != 0 && p.stamp == stamp { Err(p.module.clone()) } else { Ok((p.module.clone(), p.names.clone())) }
        })
    });
    let (p, mut given) = match existing {
        // No name added since the last walk: nothing to add.
        Some(Err(unchanged)) => return Ok(unchanged),
        Some(Ok(found)) => found,
        None => (vm.new_module(&name, vm.ctx.new_dict(), None).into(), HashSet::new()),
    };
    let (skip_type, hidden, make) = STATE.with(|s| {
        let s = s.borrow();
        (
            s.setup.as_ref().map(|s| s.skip_type.clone()),
            s.hidden.get(&name).cloned().unwrap_or_default(),
            s.overrides.get(&name).cloned(),
        )
    });
    let removed: &[&str] = REMOVED.iter().find(|(m, _)| *m == name).map_or(&[], |(_, names)| names);
    let skip_type = skip_type.as_ref().and_then(|t| t.downcast_ref::<PyType>());
    // Each name to add: the key its proxy gets (the module's own key object when
    // that is an exact `str`, which no code can change, else a new `str` of its
    // text), its text, and its value.
    let mut add: Vec<(PyObjectRef, String, PyObjectRef)> = Vec::new();
    let str_type = vm.ctx.types.str_type;
    let key_of = |k: PyObjectRef, text: &str| if k.class().is(str_type) { k } else { vm.ctx.new_str(text).into() };
    for (k, v) in source.items_vec() {
        let Some(text) = exact_text(&k) else { continue };
        if text.starts_with('_')
            || given.contains(text.as_ref())
            || hidden.contains(text.as_ref())
            || removed.contains(&text.as_ref())
            || skip_type.is_some_and(|t| v.class().fast_issubclass(t))
        {
            continue;
        }
        let key = text.into_owned();
        if v.class().is(module_type) || v.class().fast_issubclass(module_type) {
            let sub = v.dict().and_then(|d| d.get_item_opt("__name__", vm).ok().flatten()).as_ref().and_then(exact);
            let sub = sub.unwrap_or_default();
            if sub.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with('.'))
                && worker::module_allowed_now(&sub)
                && !unservable(&sub)
            {
                let sub = proxy(&v, vm)?;
                add.push((key_of(k, &key), key, sub));
            }
            continue;
        }
        add.push((key_of(k, &key), key, v));
    }
    if let Some(make) = make {
        // The prelude's code, run when a proxy is made: not the snippet's work,
        // and not charged, so that an import costs the same whether its proxy
        // was made ahead (a child's, by its zygote) or by this import.
        let paused = terrarium_fuel::pause();
        let names = make.call((), vm);
        drop(paused);
        let names = names?;
        let names =
            names.downcast::<PyDict>().map_err(|_| vm.new_runtime_error("a proxy override must return a dict"))?;
        for (k, v) in names.items_vec() {
            if let Some(key) = exact(&k)
                && !given.contains(&key)
            {
                add.retain(|(_, n, _)| *n != key);
                add.push((key_of(k, &key), key, v));
            }
        }
    }
    // Recorded before writing: a snippet's code may run during a write (a key it
    // planted with the same hash), and a re-entrant import must not add twice.
    given.extend(add.iter().map(|(_, text, _)| text.clone()));
    STATE.with(|s| s.borrow_mut().proxies.insert(name.clone(), Proxy { module: p.clone(), names: given, stamp }));
    let d = p.dict().ok_or_else(|| vm.new_runtime_error("a proxy has no namespace"))?;
    for (k, _, v) in add {
        d.set_item(&*k, v, vm)?;
    }
    Ok(p)
}
