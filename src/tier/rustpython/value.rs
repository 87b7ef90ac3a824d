//! A run's last value as JSON, read natively from the interpreter's objects.
//!
//! The value is the snippet's: it may be a subclass with overridden methods, a
//! cycle, or a structure of millions of items. The conversion calls no Python code
//! (no `__iter__`, `items`, `__str__` or `__float__` of the snippet's), reads the
//! storage of the built-in types and their subclasses, and stops at a depth and a
//! byte budget: each item costs at least the bytes of JSON text it would add (a
//! string its length, an integer its digits), so a value whose text would pass the
//! output cap is stopped before it is built, however often it repeats one object.
//! What `json.dumps(value, allow_nan=False)` would refuse (other types, `NaN`, keys
//! that are not `str`, `int`, `float`, `bool` or `None`, cycles, integers over
//! Python's 4,300-digit limit for text) has no JSON form: the result is `None`, as
//! for a value that is `None`.
//!
//! The caller pauses the cycle collector while it reads, so that no finalizer of
//! the snippet's runs mid-read.
//!
//! Numbers keep what the JSON text of earlier versions parsed to: integers in the
//! `i64`/`u64` range exactly, larger ones as the nearest `f64` ([`to_json`], a run's
//! result), or none at all ([`to_json_exact`], a host function's arguments, which
//! the host acts on and must not receive changed).

use rustpython_vm::builtins::{PyDict, PyFloat, PyInt, PyList, PyStr, PyTuple};
use rustpython_vm::{AsObject, Py, PyObject, VirtualMachine};
use serde_json::{Map, Number, Value};

/// Python's limit on the digits of an integer turned into text
/// (`sys.get_int_max_str_digits()`), in bits: about 4,300 decimal digits.
const MAX_INT_BITS: u64 = 14_284;

/// Nesting deeper than this has no JSON form (cycles end here too). The host reads
/// the child's messages with serde_json, which refuses nesting past 128 levels (its
/// stack is the host's): a value must fit inside a message, under that.
pub const MAX_DEPTH: usize = 100;

/// A value whose JSON text would be longer than the output cap.
#[derive(Debug)]
pub struct TooBig;

/// The JSON form of `obj` (`None` when it has none), or [`TooBig`] when its text
/// would be longer than `max_len` bytes (counted from below: each scalar, list,
/// dict and key at least one byte, a string or key its length in bytes, an
/// integer its digits).
pub fn to_json(obj: &PyObject, max_len: usize, vm: &VirtualMachine) -> Result<Option<Value>, TooBig> {
    read(obj, max_len, Exact::No, vm)
}

/// As [`to_json`], for values the host acts on (a host function's arguments):
/// nothing is changed on the way, so integers outside the `i64`/`u64` range and
/// dict keys that are not `str` have no JSON form either.
pub fn to_json_exact(obj: &PyObject, max_len: usize, vm: &VirtualMachine) -> Result<Option<Value>, TooBig> {
    read(obj, max_len, Exact::Yes, vm)
}

/// Whether a value must arrive unchanged.
#[derive(Clone, Copy, PartialEq)]
enum Exact {
    Yes,
    No,
}

fn read(obj: &PyObject, max_len: usize, exact: Exact, vm: &VirtualMachine) -> Result<Option<Value>, TooBig> {
    if vm.is_none(obj) {
        return Ok(None);
    }
    let mut left = max_len.saturating_add(1);
    let value = convert(obj, 0, &mut left, exact, vm);
    if left == 0 { Err(TooBig) } else { Ok(value) }
}

/// Takes `cost` bytes from the budget `left`; `false` (and `left` 0) when they
/// are not there.
fn spend(left: &mut usize, cost: usize) -> bool {
    match left.checked_sub(cost.max(1)) {
        Some(rest) if rest > 0 => {
            *left = rest;
            true
        }
        _ => {
            *left = 0;
            false
        }
    }
}

/// Converts `obj`, counting bytes down in `left`; stops (`None`) when it reaches 0.
fn convert(obj: &PyObject, depth: usize, left: &mut usize, exact: Exact, vm: &VirtualMachine) -> Option<Value> {
    // One byte for the separator after it (`,` or the closing bracket).
    if depth > MAX_DEPTH || !spend(left, 1) {
        return None;
    }
    if vm.is_none(obj) {
        return spend(left, 4).then_some(Value::Null);
    }
    if obj.class().is(vm.ctx.types.bool_type) {
        return spend(left, 5).then(|| Value::Bool(obj.is(&vm.ctx.true_value)));
    }
    if let Some(s) = obj.downcast_ref::<PyStr>() {
        let text = s.to_str()?;
        if !spend(left, quoted_len(text)) {
            return None;
        }
        return Some(Value::String(text.to_owned()));
    }
    if let Some(i) = obj.downcast_ref::<PyInt>() {
        if !spend(left, int_digits(i)) {
            return None;
        }
        return int_value(i, exact, vm);
    }
    if let Some(f) = obj.downcast_ref::<PyFloat>() {
        let n = Number::from_f64(f.to_f64())?;
        return spend(left, n.to_string().len()).then_some(Value::Number(n));
    }
    // A container's opening bracket (the separator byte above stands for its
    // closing one, or for the comma after it).
    let container = obj.downcast_ref::<PyList>().is_some()
        || obj.downcast_ref::<PyTuple>().is_some()
        || obj.downcast_ref::<PyDict>().is_some();
    if container && !spend(left, 1) {
        return None;
    }
    if let Some(list) = obj.downcast_ref::<PyList>() {
        let items = list.borrow_vec().to_vec();
        return items
            .iter()
            .map(|x| convert(x, depth + 1, left, exact, vm))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array);
    }
    if let Some(tuple) = obj.downcast_ref::<PyTuple>() {
        let items = tuple.as_slice();
        return items
            .iter()
            .map(|x| convert(x, depth + 1, left, exact, vm))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array);
    }
    if let Some(dict) = obj.downcast_ref::<PyDict>() {
        let mut map = Map::new();
        for (k, v) in dict.items_vec() {
            if exact == Exact::Yes && k.downcast_ref::<PyStr>().is_none() {
                return None;
            }
            let key = key_text(&k, vm)?;
            // The key quoted, and its `:`.
            if !spend(left, quoted_len(&key) + 1) {
                return None;
            }
            map.insert(key, convert(&v, depth + 1, left, exact, vm)?);
        }
        return Some(Value::Object(map));
    }
    None
}

/// The length of `text` as a JSON string: its quotes, two bytes for `"` and `\`,
/// six (`\u0000`) for a control character at most.
fn quoted_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// A lower bound of the decimal digits of `i` (from its bits: 3.33 per digit).
fn int_digits(i: &Py<PyInt>) -> usize {
    usize::try_from(i.as_bigint().bits() * 3 / 10).unwrap_or(usize::MAX).max(1)
}

/// `i` as JSON: exact in the `i64`/`u64` range, else the nearest double (as the
/// JSON text of earlier versions parsed to) or, `exact`, none; `None` past the
/// digit limit.
fn int_value(i: &Py<PyInt>, exact: Exact, vm: &VirtualMachine) -> Option<Value> {
    if i.as_bigint().bits() > MAX_INT_BITS {
        return None;
    }
    if let Ok(v) = i.try_to_primitive::<i64>(vm) {
        return Some(Value::from(v));
    }
    if let Ok(v) = i.try_to_primitive::<u64>(vm) {
        return Some(Value::from(v));
    }
    if exact == Exact::Yes {
        return None;
    }
    Some(i.as_bigint().to_string().parse::<f64>().ok().and_then(Number::from_f64).map_or(Value::Null, Value::Number))
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
        return (i.as_bigint().bits() <= MAX_INT_BITS).then(|| i.as_bigint().to_string());
    }
    if let Some(f) = k.downcast_ref::<PyFloat>() {
        let f = f.to_f64();
        return f.is_finite().then(|| rustpython_vm::literal::float::to_string(f));
    }
    None
}
