//! Attacks through introspection: subclasses, frames, tracebacks, generators, code
//! objects. Each names the hatch it tries.

use terrarium::Status;

use crate::common::{assert_denied, run, run_wide};

#[test]
fn subclasses_of_object_are_out_of_reach() {
    assert_denied("object.__subclasses__()");
    assert_denied("().__class__.__base__.__subclasses__()");
    assert_denied("getattr(object, '__subcl' + 'asses__')()");
    assert_denied("type.__subclasses__(object)");
    assert_denied("object.__getattribute__(object, '__subclasses__')");
}

#[test]
fn code_objects_cannot_be_read_or_built() {
    assert_denied("(lambda: 0).__code__.replace(co_code=b'')");
    assert_denied("getattr(lambda: 0, '__co' + 'de__')");
    assert_denied("def f(): pass\nf.func_code");
    assert_denied("def g():\n    yield 1\ng().gi_code");
}

#[test]
fn frames_cannot_be_reached() {
    assert_denied("def g():\n    yield 1\nx = g()\nx.gi_frame.f_globals");
    assert_denied("def g():\n    yield 1\nx = g()\ngetattr(x, 'gi_' + 'frame')");
    assert_denied("try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame.f_back");
    assert_denied("try:\n    1/0\nexcept Exception as e:\n    getattr(e.__traceback__, 'tb_' + 'frame')");
    assert_denied("async def c():\n    pass\nx = c()\ngetattr(x, 'cr_' + 'frame')");
}

#[test]
fn the_interpreter_settings_are_out_of_reach() {
    // sys is never served; these stay refused whatever the spelling.
    assert_denied("import sys\nsys.setrecursionlimit(10**9)");
    assert_denied("__import__('sys').settrace(print)");
    assert_denied("__import__('sys')._getframe(0)");
}

#[test]
fn dunder_names_outside_the_safe_set_are_refused() {
    assert_denied("print.__self__");
    assert_denied("(1).__reduce_ex__(2)");
    assert_denied("setattr(int, '__dict__', 1)");
    assert_denied("'{0.__class__.__mro__}'.format(1)");
}

#[test]
fn ordinary_classes_still_work() {
    let o = run(
        "class A:\n    def __init__(self, x):\n        self._x = x\n    def __repr__(self):\n        return f'A({self._x})'\n    def __eq__(self, o):\n        return self._x == o._x\nrepr(A(1)) + str(A(1) == A(1)) + type(A(2)).__name__",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!("A(1)TrueA")));
}

/// Asserts that `code` under the wide policy ends `denied` or raises, without
/// printing the marker.
#[track_caller]
fn assert_refused_wide(code: &str) {
    let o = run_wide(&format!("{code}\nprint('ESCAPED')"));
    assert!(matches!(o.status, Status::Denied | Status::Exception), "{code:?} was not refused: {o:?}");
    assert!(!o.stdout.contains("ESCAPED"), "{code:?} escaped: {o:?}");
}

#[test]
fn string_annotations_are_evaluated_with_snippet_builtins() {
    // typing evaluates string annotations with eval(); the text must meet the same
    // walls as snippet source and never see the real builtins.
    assert_refused_wide(
        "import typing\nA = type('A', (), {'__annotations__': {'x': '__import__(\"sys\")'}})\ntyping.get_type_hints(A, globalns={})",
    );
    assert_refused_wide(
        "import typing\nA = type('A', (), {'__annotations__': {'x': '().__class__.__base__.__subclasses__()'}})\ntyping.get_type_hints(A)",
    );
    assert_refused_wide("import typing\ndef f(x: 'open'): pass\ntyping.get_type_hints(f)['x']('/etc/passwd')");
    assert_refused_wide(
        "import typing\nA = type('A', (), {'__annotations__': {'x': 'eval(\"1\")'}})\ntyping.get_type_hints(A)",
    );
    // A name resolved through a module (ForwardRef's `module=`) finds no module.
    assert_refused_wide(
        "import typing\nA = type('A', (), {'__module__': 'builtins', '__annotations__': {'x': 'compile'}})\ntyping.get_type_hints(A)['x']('1', 's', 'eval')",
    );
}

#[test]
fn dataclass_field_names_cannot_inject_code() {
    // dataclasses writes __init__ as text from field names.
    assert_refused_wide(
        "import dataclasses\nA = type('A', (), {'__annotations__': {'x=().__class__.__base__.__subclasses__()': int}})\ndataclasses.dataclass(A)",
    );
}

#[test]
fn typing_and_dataclasses_still_work() {
    let o = run_wide(
        "import typing, dataclasses\n\
         def f(x: 'int', y: 'list[str]') -> 'typing.Optional[int]': pass\n\
         @dataclasses.dataclass(frozen=True)\n\
         class P:\n    x: int\n    y: str = 's'\n\
         N = typing.NamedTuple('N', [('a', int)])\n\
         [sorted(typing.get_type_hints(f)), repr(P(1)), P(1) == P(1, 's'), N(3).a]",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!([["return", "x", "y"], "P(x=1, y='s')", true, 3])));
}
