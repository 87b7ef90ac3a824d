//! A run's last value as JSON, read natively from the interpreter's objects.
//!
//! The value is the snippet's: it may be a subclass with overridden methods, a
//! cycle, or a structure of millions of items. The conversion calls no Python code
//! (no `__iter__`, `items`, `__str__` or `__float__` of the snippet's), reads the
//! storage of the built-in types and their subclasses, and stops at a depth and an
//! item budget. What `json.dumps(value, allow_nan=False)` would refuse (other types,
//! `NaN`, keys that are not `str`, `int`, `float`, `bool` or `None`, cycles) has no
//! JSON form: the result is `None`, as for a value that is `None`.
//!
//! Numbers keep what the JSON text of earlier versions parsed to: integers in the
//! `i64`/`u64` range exactly, larger ones as the nearest `f64`.

use rustpython_vm::builtins::{PyDict, PyFloat, PyInt, PyList, PyStr, PyTuple};
use rustpython_vm::{AsObject, Py, PyObject, VirtualMachine};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this has no JSON form (`json.dumps` raises `RecursionError`
/// near 1,000 levels; cycles end here too).
const MAX_DEPTH: usize = 512;

/// A value with more items than the budget: its JSON text is longer than the
/// output cap.
#[derive(Debug)]
pub struct TooBig;

/// The JSON form of `obj` (`None` when it has none), or [`TooBig`] when it has
/// more than `max_len` items: each scalar, list, dict and key adds at least one
/// byte of JSON text, so the text would be longer than `max_len` bytes.
pub fn to_json(obj: &PyObject, max_len: usize, vm: &VirtualMachine) -> Result<Option<Value>, TooBig> {
    if vm.is_none(obj) {
        return Ok(None);
    }
    let mut left = max_len.saturating_add(1);
    let value = convert(obj, 0, &mut left, vm);
    if left == 0 { Err(TooBig) } else { Ok(value) }
}

/// Converts `obj`, counting items down in `left`; stops (`None`) when it reaches 0.
fn convert(obj: &PyObject, depth: usize, left: &mut usize, vm: &VirtualMachine) -> Option<Value> {
    if depth > MAX_DEPTH || *left == 0 {
        return None;
    }
    *left -= 1;
    if vm.is_none(obj) {
        return Some(Value::Null);
    }
    if obj.class().is(vm.ctx.types.bool_type) {
        return Some(Value::Bool(obj.is(&vm.ctx.true_value)));
    }
    if let Some(s) = obj.downcast_ref::<PyStr>() {
        return s.to_str().map(|s| Value::String(s.to_owned()));
    }
    if let Some(i) = obj.downcast_ref::<PyInt>() {
        return Some(int_value(i, vm));
    }
    if let Some(f) = obj.downcast_ref::<PyFloat>() {
        return Number::from_f64(f.to_f64()).map(Value::Number);
    }
    if let Some(list) = obj.downcast_ref::<PyList>() {
        let items = list.borrow_vec().to_vec();
        return items.iter().map(|x| convert(x, depth + 1, left, vm)).collect::<Option<Vec<_>>>().map(Value::Array);
    }
    if let Some(tuple) = obj.downcast_ref::<PyTuple>() {
        let items = tuple.as_slice();
        return items.iter().map(|x| convert(x, depth + 1, left, vm)).collect::<Option<Vec<_>>>().map(Value::Array);
    }
    if let Some(dict) = obj.downcast_ref::<PyDict>() {
        let mut map = Map::new();
        for (k, v) in dict.items_vec() {
            if *left == 0 {
                return None;
            }
            *left -= 1;
            let key = key_text(&k, vm)?;
            map.insert(key, convert(&v, depth + 1, left, vm)?);
        }
        return Some(Value::Object(map));
    }
    None
}

fn int_value(i: &Py<PyInt>, vm: &VirtualMachine) -> Value {
    if let Ok(v) = i.try_to_primitive::<i64>(vm) {
        return Value::from(v);
    }
    if let Ok(v) = i.try_to_primitive::<u64>(vm) {
        return Value::from(v);
    }
    // Out of range for both: the nearest double, as the JSON text parsed to.
    i.as_bigint().to_string().parse::<f64>().ok().and_then(Number::from_f64).map_or(Value::Null, Value::Number)
}

/// A dict key as `json.dumps` writes it, or `None` for a key it refuses.
fn key_text(k: &PyObject, vm: &VirtualMachine) -> Option<String> {
    if vm.is_none(k) {
        return Some("null".into());
    }
    if k.class().is(vm.ctx.types.bool_type) {
        return Some(if k.is(&vm.ctx.true_value) { "true" } else { "false" }.into());
    }
    if let Some(s) = k.downcast_ref::<PyStr>() {
        return s.to_str().map(str::to_owned);
    }
    if let Some(i) = k.downcast_ref::<PyInt>() {
        return Some(i.as_bigint().to_string());
    }
    if let Some(f) = k.downcast_ref::<PyFloat>() {
        let f = f.to_f64();
        return f.is_finite().then(|| rustpython_vm::literal::float::to_string(f));
    }
    None
}
