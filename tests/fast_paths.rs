//! The vendored interpreter's fast paths give what its generic paths give: `sum`
//! adding exact ints as machine words (vendor/patches/rustpython-vm.patch), and a
//! module's or class body's names read and written as a dict when the namespace is
//! an exact dict, starting at the entry where the name was last found. Each case is
//! at an edge of a fast path (overflow both ways, bools, int subclasses that override
//! `+`, errors midway, a namespace that is not a plain dict, one class body's code
//! run in namespaces that keep the name at other entries, keys equal to a name but
//! not the same object, a key whose `__eq__` turns equal to a name (or raises) after
//! the name was stored, entries moved by deletions and growth), run in both modes of
//! the rustpython tier and, as the oracle the expected answers come from, on the wasm
//! tier's CPython.

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
    (
        "class Meta(type):\n    @classmethod\n    def __prepare__(mcs, name, bases, **kw):\n        return {k: 'pre-' + k for k in kw['pre']}\n    def __new__(mcs, name, bases, ns, **kw):\n        return dict(ns)\nr = []\nfor pre in [['x'], ['p', 'q', 'x'], ['x'], ['q', 'x', 'a']]:\n    class C(metaclass=Meta, pre=pre):\n        a = x\n        x = a + '!'\n        b = x\n    r.append([C['a'], C['b'], [k for k in C if k[0] != '_']])\nr",
        "[[\"pre-x\", \"pre-x!\", [\"x\", \"a\", \"b\"]], [\"pre-x\", \"pre-x!\", [\"p\", \"q\", \"x\", \"a\", \"b\"]], [\"pre-x\", \"pre-x!\", [\"x\", \"a\", \"b\"]], [\"pre-x\", \"pre-x!\", [\"q\", \"x\", \"a\", \"b\"]]]",
    ),
    ("x = 1\ndel x\ny = 2\nx = 3\n[x, list(globals())[-2:]]", "[3, [\"y\", \"x\"]]"),
    (
        "globals()[''.join(['a', 'b'])] = 5\nr = ab\nab = 6\n[r, ab, len([k for k in globals() if k == 'ab'])]",
        "[5, 6, 1]",
    ),
    (
        "class S(str):\n    pass\nglobals()[S('zz')] = 1\nzz = 2\nzz = 3\nks = [k for k in globals() if k == 'zz']\n[zz, len(ks), type(ks[0]).__name__]",
        "[3, 1, \"S\"]",
    ),
    (
        "class S(str):\n    def __eq__(self, o):\n        return False\n    __hash__ = str.__hash__\nglobals()[S('zz')] = 1\nzz = 2\nzz = 3\n[zz, len([k for k in globals() if str.__eq__(k, 'zz')])]",
        "[3, 2]",
    ),
    (
        "class K(str):\n    on = False\n    def __hash__(self):\n        return str.__hash__(self)\n    def __eq__(self, o):\n        return K.on and str.__eq__(self, o)\ng = globals()\ng[K('zz')] = 'shadow'\nzz = 'real'\nzz\nK.on = True\nr1 = zz\nzz = 'stored'\n[r1, zz, sorted([type(k).__name__, v] for k, v in g.items() if k == 'zz')]",
        "[\"shadow\", \"stored\", [[\"K\", \"stored\"], [\"str\", \"real\"]]]",
    ),
    (
        "class K(str):\n    on = False\n    def __hash__(self):\n        return str.__hash__(self)\n    def __eq__(self, o):\n        if K.on:\n            raise RuntimeError('eq')\n        return False\nglobals()[K('zz')] = 'shadow'\nzz = 'real'\nzz\nK.on = True\nout = []\ntry:\n    out.append(zz)\nexcept RuntimeError:\n    out.append('load raised')\ntry:\n    zz = 5\n    out.append('store ok')\nexcept RuntimeError:\n    out.append('store raised')\nK.on = False\nout",
        "[\"load raised\", \"store raised\"]",
    ),
    (
        "class K(str):\n    on = False\n    def __hash__(self):\n        return str.__hash__(self)\n    def __eq__(self, o):\n        return K.on and str.__eq__(self, o)\nres = []\nclass M(type):\n    @classmethod\n    def __prepare__(mcs, name, bases):\n        K.on = False\n        return {K('attr'): 'shadow'}\n    def __new__(mcs, name, bases, ns):\n        res.append(sorted([type(k).__name__, v] for k, v in ns.items() if k == 'attr'))\n        return super().__new__(mcs, name, bases, dict(ns))\nfor i in range(3):\n    class C(metaclass=M):\n        attr = 'real'\n        attr\n        K.on = True\n        got = attr\n        attr = 'stored'\n    res.append(C.got)\nK.on = False\nres",
        "[[[\"K\", \"stored\"], [\"str\", \"real\"]], \"shadow\", [[\"K\", \"stored\"], [\"str\", \"real\"]], \"shadow\", [[\"K\", \"stored\"], [\"str\", \"real\"]], \"shadow\"]",
    ),
    (
        "t = 0\nfor i in range(300):\n    globals()['v%d' % i] = i\n    t += i\n    if i % 7 == 0:\n        del globals()['v%d' % i]\n[t, v299, len([k for k in globals() if k.startswith('v')])]",
        "[44850, 299, 257]",
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
