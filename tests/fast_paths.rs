//! The vendored interpreter's fast paths give what its generic paths give: `sum`
//! adding exact ints as machine words (vendor/patches/rustpython-vm.patch), and a
//! module's or class body's names read and written as a dict when the namespace is
//! an exact dict. Each case is at an edge of a fast path (overflow both ways, bools,
//! int subclasses that override `+`, errors midway, a namespace that is not a plain
//! dict), run in both modes of the rustpython tier and, as the oracle the expected
//! answers come from, on the wasm tier's CPython.

use terrarium::ExecRequest;

use crate::common::{run_embedded, run_wide};

/// Snippet, expected result (JSON). Integers past 64 bits are compared as text.
const CASES: &[(&str, &str)] = &[
    ("str(sum([1, 2**62, 2**62, -5]))", "\"9223372036854775804\""),
    ("sum([True, True, 3])", "5"),
    ("sum([1, 2.5])", "3.5"),
    ("class I(int):\n    def __radd__(self, other):\n        return 'radd'\nsum([1, I(2)])", "\"radd\""),
    ("class J(int):\n    def __add__(self, other):\n        return 'add'\nsum([1], J(0))", "\"add\""),
    (
        "[str(sum(range(10), -2**63)), str(sum([-1], -2**63)), str(sum([2**64, 1])), str(sum([2**63 - 1, 1]))]",
        "[\"-9223372036854775763\", \"-9223372036854775809\", \"18446744073709551617\", \"9223372036854775808\"]",
    ),
    (
        "def g():\n    yield 1\n    raise ValueError('x')\ntry:\n    sum(g())\nexcept ValueError as e:\n    r = str(e)\nr",
        "\"x\"",
    ),
    (
        "try:\n    sum([1, 'a'])\nexcept TypeError as e:\n    r = str(e)\nr",
        "\"unsupported operand type(s) for +: 'int' and 'str'\"",
    ),
    ("[sum([], 7), sum([[1], [2]], []), sum([1], True), type(sum([True, False])).__name__]", "[7, [1, 2], 2, \"int\"]"),
    ("x = 1\ndel x\ntry:\n    x\nexcept NameError as e:\n    r = str(e)\nr", "\"name 'x' is not defined\""),
    ("len = lambda s: 0\na = len('abc')\ndel len\n[a, len('abc')]", "[0, 3]"),
    ("g = 5\nclass C:\n    a = g\n    b = len('ab')\n    g = 6\n    c = g\n[C.a, C.b, C.c, g]", "[5, 2, 6, 5]"),
    (
        "class M(dict):\n    def __getitem__(self, k):\n        return 'custom' if k == 'magic' else dict.__getitem__(self, k)\n    def __setitem__(self, k, v):\n        dict.__setitem__(self, k, ['set', v] if k == 'y' else v)\nclass Meta(type):\n    @classmethod\n    def __prepare__(mcs, name, bases):\n        return M()\n    def __new__(mcs, name, bases, ns):\n        return dict(ns)\nclass C(metaclass=Meta):\n    y = 1\n    z = magic\n[C['y'], C['z']]",
        "[[\"set\", 1], \"custom\"]",
    ),
];

/// Runs the table with `run` and returns what did not give its expected result.
fn failures(run: impl Fn(&str) -> terrarium::Outcome) -> Vec<String> {
    CASES
        .iter()
        .filter_map(|(code, expected)| {
            crate::common::unexpected(run(code), expected).map(|what| format!("{code:?}: {what}"))
        })
        .collect()
}

#[test]
fn fast_paths_answer_as_the_generic_paths_in_both_modes() {
    for (mode, failed) in [("isolated", failures(run_wide)), ("embedded", failures(run_embedded))] {
        assert!(failed.is_empty(), "{mode} mode:\n{}", failed.join("\n"));
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn the_expected_answers_are_cpythons() {
    let Some(exec) = crate::common::wasm_executor(crate::common::wide_policy()) else { return };
    let failed = failures(|code| crate::common::exec_wasm(&exec, ExecRequest::new(code)));
    assert!(failed.is_empty(), "CPython on the wasm tier disagrees with the table:\n{}", failed.join("\n"));
}
