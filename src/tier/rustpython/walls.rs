//! The interpreter tier's walls below Python: capabilities removed from the VM's
//! types, and the native attribute guards snippets get.
//!
//! A snippet controls the interpreter it runs in: it can subclass `str`, use
//! `match` class patterns, `super()`, `operator`, `string.Formatter`, `typing`'s
//! forward references, descriptors and metaclasses to look attributes up by any
//! route. So a capability a snippet must not have is not guarded by name; it is
//! removed from the type that hands it out, in Rust, before any snippet runs, and
//! no route can reach it.
//!
//! # Security invariant
//! After [`remove_internals`], no object reachable from a snippet hands out a
//! function's globals (but the snippet's own, which it has anyway), builtins,
//! closure cells or code, a module through a builtin
//! function's `__self__`, a frame (from generators, coroutines, async generators or
//! tracebacks), a frame's globals, locals, builtins, code or caller, a code object's
//! `replace` or constructor, a function made from a code object, or the
//! subclasses of an arbitrary class (only an ABC's, which
//! `isinstance` checks need). Trusted stdlib code loses these too: the prelude
//! patches the few served modules that used them. A test walks the object graph
//! from every name a snippet has and finds none of them.
//!
//! The attribute guards here ([`native_getattr`] and friends) read the attribute
//! name's exact `str` value (never a method of the object given) and are early,
//! well-worded refusals on top of the removal, not the wall.

use rustpython_vm::builtins::{PyStr, PyStrRef, PyType, PyTypeRef};
use rustpython_vm::function::{FuncArgs, OptionalArg};
use rustpython_vm::{AsObject, Py, PyObject, PyObjectRef, PyResult, VirtualMachine};

use super::worker::SetupError;
use crate::analysis;

/// Attributes deleted from the interpreter's types, by type.
fn removals(vm: &VirtualMachine) -> Vec<(&'static Py<PyType>, &'static [&'static str])> {
    let t = &vm.ctx.types;
    vec![
        // A function's globals hold its module's names (`sys`, importers, the real
        // builtins); its closure cells and code are the rest of its private state.
        (t.function_type, &["__globals__", "__builtins__", "__closure__", "__code__"]),
        // A module-level builtin's `__self__` is its module (`len.__self__` is the
        // real `builtins`).
        // (Bound builtin methods' type inherits it from this one.)
        (t.builtin_function_or_method_type, &["__self__"]),
        // Frames and code of suspended generators, coroutines and async generators.
        (t.generator_type, &["gi_frame", "gi_code"]),
        (t.coroutine_type, &["cr_frame", "cr_code", "cr_origin"]),
        (t.async_generator, &["ag_frame", "ag_code"]),
        // An exception's traceback leads to the frames it passed through.
        (t.traceback_type, &["tb_frame"]),
        // A frame, should one still be handed out, is inert: no caller, no names.
        (t.frame_type, &["f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "f_generator", "clear"]),
        // Code objects cannot be rebuilt with other bytecode or constants.
        (t.code_type, &["replace", "__replace__"]),
        // Closure cells' contents.
        (t.cell_type, &["cell_contents"]),
        // Every class in the interpreter, importers and the prelude's among them.
        (t.type_type, &["__subclasses__"]),
        // An exception's instance dict holds what the VM stored on it (see `obj`
        // below).
        (vm.ctx.exceptions.base_exception_type, &["__dict__"]),
    ]
}

/// Deletes the capabilities listed in [`removals`] from the VM's types. Call once,
/// after the prelude has run and before any snippet.
///
/// # Errors
/// The name of a listed attribute that was already absent: the list no longer
/// matches the interpreter, which is a build defect to fix, not to skip.
pub fn remove_internals(vm: &VirtualMachine) -> Result<(), SetupError> {
    // The real `type.__subclasses__`, kept for the native ABC variant below.
    let subclasses = vm.ctx.types.type_type.get_attr(vm.ctx.intern_str("__subclasses__"));
    if let Some(real) = &subclasses {
        freeze_existing_classes(real, vm)?;
    }
    SUBCLASSES.with(|s| *s.borrow_mut() = subclasses);
    for (typ, names) in removals(vm) {
        for name in names {
            let key = vm.ctx.intern_str(*name);
            match typ.attributes.remove(key) {
                Some(removed) if typ.is(vm.ctx.types.function_type) && *name == "__globals__" => {
                    GLOBALS.with(|g| *g.borrow_mut() = Some(removed));
                }
                Some(_) => {}
                None if OPTIONAL.contains(name) => {}
                None => {
                    return Err(SetupError::sealing(format!("type {} has no attribute {name} to remove", typ.name())));
                }
            }
        }
        typ.modified();
    }
    // No functions from code objects, and no code objects from parts: stdlib code
    // still makes code objects (a forward reference's compiled text), but a snippet
    // that gets one can neither run it with globals of its choosing nor rebuild it
    // with other bytecode.
    for typ in [vm.ctx.types.function_type, vm.ctx.types.code_type] {
        typ.slots.new.store(Some(refuse_new));
        typ.attributes.remove(vm.ctx.intern_str("__new__"));
        typ.modified();
    }
    // A function the snippet defined may show its globals: they are the run's own
    // (`globals()`), and typing's get_type_hints reads them for string annotations.
    // Any other function's are its module's, and stay gone.
    let function = vm.ctx.types.function_type;
    let globals = vm.ctx.new_readonly_getset("__globals__", function, snippet_function_globals);
    function.attributes.set(vm.ctx.intern_str("__globals__"), globals.into());
    function.modified();
    // AttributeError.obj is the object whose attribute was missing: raised inside
    // stdlib code, a real module. The VM stores it in the instance dict; a data
    // descriptor on the type that keeps nothing and answers None shadows it.
    let attribute_error = vm.ctx.exceptions.attribute_error;
    let obj = vm.ctx.new_getset(
        "obj",
        attribute_error,
        |_zelf: PyObjectRef, vm: &VirtualMachine| vm.ctx.none(),
        |_zelf: PyObjectRef, _value: PyObjectRef, _vm: &VirtualMachine| -> PyResult<()> { Ok(()) },
    );
    attribute_error.attributes.set(vm.ctx.intern_str("obj"), obj.into());
    attribute_error.modified();
    Ok(())
}

/// Makes every class that exists now (the stdlib's, the prelude's) immutable: a
/// snippet cannot plant its code in one (a hook on an enum metaclass, a property on
/// `Enum.value`) for trusted stdlib code to run, or change what a class does for
/// stdlib code. Classes made later (the snippet's, those of modules loaded later)
/// are not affected; instances keep their own attributes.
fn freeze_existing_classes(subclasses: &PyObjectRef, vm: &VirtualMachine) -> Result<(), SetupError> {
    use rustpython_vm::types::PyTypeFlags;
    let immutable = PyTypeFlags::from_slice(&[PyTypeFlags::IMMUTABLETYPE]);
    let mut seen = std::collections::HashSet::new();
    let mut queue: Vec<PyTypeRef> = vec![vm.ctx.types.object_type.to_owned()];
    while let Some(typ) = queue.pop() {
        if !seen.insert(typ.get_id()) {
            continue;
        }
        if typ.slots.flags.has_feature(PyTypeFlags::HEAPTYPE) {
            typ.slots.flags.replace_masked(immutable, immutable);
        }
        let subs = subclasses
            .call((typ.clone(),), vm)
            .map_err(|e| SetupError::sealing(format!("listing subclasses: {e:?}")))?;
        let subs: Vec<PyObjectRef> =
            subs.try_to_value(vm).map_err(|e| SetupError::sealing(format!("listing subclasses: {e:?}")))?;
        queue.extend(subs.into_iter().filter_map(|s| s.downcast::<PyType>().ok()));
    }
    Ok(())
}

/// The constructor of a type snippets may not instantiate.
fn refuse_new(cls: PyTypeRef, _args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    Err(vm.new_type_error(format!("cannot create '{}' instances in the sandbox", cls.name())))
}

/// Attributes this RustPython build may not define at all.
const OPTIONAL: &[&str] = &["f_generator", "__replace__", "cr_origin", "f_trace", "clear"];

thread_local! {
    static SUBCLASSES: std::cell::RefCell<Option<PyObjectRef>> = const { std::cell::RefCell::new(None) };
    /// The removed `function.__globals__` member, read only by
    /// [`snippet_function_globals`].
    static GLOBALS: std::cell::RefCell<Option<PyObjectRef>> = const { std::cell::RefCell::new(None) };
}

/// `function.__globals__` after the walls: the globals of a function whose
/// globals are the running snippet's, and no attribute for any other function.
fn snippet_function_globals(f: PyObjectRef, vm: &VirtualMachine) -> PyResult {
    let missing = || vm.new_attribute_error("'function' object has no attribute '__globals__'");
    let member = GLOBALS.with(|g| g.borrow().clone()).ok_or_else(missing)?;
    let globals = vm.call_method(&member, "__get__", (f.clone(), f.class().to_owned()))?;
    if super::worker::is_run_globals(&globals) { Ok(globals) } else { Err(missing()) }
}

/// `ABCMeta.__subclasses__` (installed by the prelude): the subclasses of a class
/// whose metaclass is not plain `type`, which is what `isinstance` against an ABC
/// needs. Classes made by plain `type` (importers, the prelude's own) are never
/// listed.
pub fn native_abc_subclasses(cls: PyObjectRef, vm: &VirtualMachine) -> PyResult {
    let Some(typ) = cls.downcast_ref::<PyType>() else {
        return Err(vm.new_type_error("__subclasses__ needs a class"));
    };
    if typ.class().is(vm.ctx.types.type_type) {
        return Err(vm.new_attribute_error("__subclasses__ is not available in the sandbox"));
    }
    let real = SUBCLASSES.with(|s| s.borrow().clone());
    match real {
        Some(method) => method.call((cls,), vm),
        None => Ok(vm.ctx.new_list(Vec::new()).into()),
    }
}

/// The exact `str` value of an attribute name, as a plain `str` (a subclass's
/// methods are never called), or a `TypeError` as the builtin would raise.
fn exact_name(name: &PyObject, vm: &VirtualMachine) -> PyResult<PyStrRef> {
    match name.downcast_ref::<PyStr>() {
        Some(s) => Ok(vm.ctx.new_str(s.as_wtf8().to_owned())),
        None => Err(vm.new_type_error(format!("attribute name must be string, not '{}'", name.class().name()))),
    }
}

/// Whether snippets may name attribute `name` (the analysis' rule, on the exact
/// value).
fn allowed(name: &Py<PyStr>) -> bool {
    analysis::attr_allowed(&name.as_wtf8().to_string_lossy())
}

/// The refusal for attribute `name`: ends the run as denied.
fn refuse(name: &Py<PyStr>, vm: &VirtualMachine) -> rustpython_vm::builtins::PyBaseExceptionRef {
    super::worker::deny(
        &format!("attribute {:?} is not accessible in the sandbox", name.as_wtf8().to_string_lossy()),
        vm,
    )
}

/// Snippets' `getattr`.
pub fn native_getattr(
    obj: PyObjectRef,
    name: PyObjectRef,
    default: OptionalArg<PyObjectRef>,
    vm: &VirtualMachine,
) -> PyResult {
    let name = exact_name(&name, vm)?;
    if !allowed(&name) {
        return Err(refuse(&name, vm));
    }
    match default {
        OptionalArg::Present(d) => Ok(vm.get_attribute_opt(&obj, &name)?.unwrap_or(d)),
        OptionalArg::Missing => obj.get_attr(&name, vm),
    }
}

/// Snippets' `setattr`.
pub fn native_setattr(obj: PyObjectRef, name: PyObjectRef, value: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    let name = exact_name(&name, vm)?;
    if !allowed(&name) {
        return Err(refuse(&name, vm));
    }
    obj.set_attr(&name, value, vm)
}

/// Snippets' `delattr`.
pub fn native_delattr(obj: PyObjectRef, name: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    let name = exact_name(&name, vm)?;
    if !allowed(&name) {
        return Err(refuse(&name, vm));
    }
    obj.del_attr(&name, vm)
}

/// Snippets' `hasattr`: a name they may not use is absent.
pub fn native_hasattr(obj: PyObjectRef, name: PyObjectRef, vm: &VirtualMachine) -> PyResult<bool> {
    let name = exact_name(&name, vm)?;
    if !allowed(&name) {
        return Ok(false);
    }
    obj.has_attr(&name, vm)
}

/// Whether snippets may use attribute `name` (for the prelude's checks of
/// `str.format` fields and `operator.attrgetter` paths); a non-`str` is allowed (the
/// real function raises the `TypeError`).
pub fn native_attr_allowed(name: PyObjectRef) -> bool {
    name.downcast_ref::<PyStr>().is_none_or(allowed)
}
