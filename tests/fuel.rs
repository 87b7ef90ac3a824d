//! Fuel on the rustpython tier: a deterministic budget of interpreter work.
//!
//! Each snippet of the table must report the same `usage.fuel` on every run, in a
//! fresh child each time, in embedded mode as in isolated mode, and with a CPU hog
//! running beside it; a budget one unit short must end it `fuel_exhausted` having
//! used exactly that budget, and a budget of exactly its figure must let it end
//! `ok`. The attacks below try to do work that fuel does not see: native calls that
//! do a lot in one instruction, handlers that catch the exhaustion, finalizers,
//! imports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use terrarium::{ExecRequest, Overrides, Policy, Status};

use crate::common::{self, WIDE_POLICY};

/// Loops, recursion, comprehensions, big integers, strings, sorting, natives that
/// iterate, regular expressions (one with heavy backtracking), json, a generator, a
/// class with methods, exceptions caught and raised.
const TABLE: &[(&str, &str)] = &[
    ("loop", "t = 0\nfor i in range(20000):\n    t += i * 2\nt"),
    ("recursion", "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib(16)"),
    ("comprehension", "len([x * x for x in range(6000) if x % 3]) + len({x: x for x in range(2000)})"),
    ("big integers", "x = 3 ** 30000\ny = x * x + (x << 4000) - x // 7\nlen(str(y % (10 ** 4000)))"),
    ("strings", "s = 'ab' * 40000 + 'c'\nlen(s.replace('a', 'xyz')) + s.count('b') + len(s.upper())"),
    ("sorting", "import random\nr = random.Random(7)\nxs = [r.random() for _ in range(3000)]\nsorted(xs)[10] < 1"),
    ("native iteration", "sum(range(200000)) + max(range(50000)) + len(list(range(30000)))"),
    (
        "regex",
        "import re\nlen(re.findall(r'(a+)+b', 'aaaaaaaaaaaaaaaab' * 40)) + len(re.sub(r'\\d', '#', 'a1b2' * 500))",
    ),
    ("regex backtracking", "import re\nre.match(r'(a|aa)*c', 'a' * 22) is None"),
    (
        "json",
        "import json\nlen(json.dumps({'k': list(range(2000)), 's': 'x' * 100})) + len(json.loads('[' + '1,' * 999 + '1]'))",
    ),
    ("generator", "def g(n):\n    for i in range(n):\n        yield i * i\nsum(g(10000))"),
    (
        "classes and exceptions",
        "class P:\n    def __init__(self, x):\n        self.x = x\n    def bump(self):\n        self.x += 1\n        if self.x % 100 == 0:\n            raise ValueError(self.x)\nn = 0\np = P(0)\nfor _ in range(5000):\n    try:\n        p.bump()\n    except ValueError:\n        n += 1\nn",
    ),
];

fn with_fuel(code: &str, fuel: u64) -> ExecRequest {
    ExecRequest::new(code).with_overrides(Overrides { fuel: Some(fuel), ..Overrides::default() })
}

fn used(o: &terrarium::Outcome) -> u64 {
    o.usage.fuel.unwrap_or_else(|| panic!("no usage.fuel on a rustpython outcome: {o:?}"))
}

/// Two threads spinning (this machine has two cores) until dropped.
struct Hog(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Hog {
    fn start() -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        Hog(stop, threads)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn fuel_is_the_same_on_every_run_in_both_modes_and_under_load_and_runs_out_at_its_budget() {
    let isolated = common::isolated(common::wide_policy());
    let embedded = terrarium::EmbeddedExecutor::new(common::wide_policy());
    for (name, code) in TABLE {
        let first = common::exec(&isolated, ExecRequest::new(*code));
        assert_eq!(first.status, Status::Ok, "{name}: {first:?}");
        let figure = used(&first);
        assert!(figure > 100, "{name}: {figure} units is too little for its work");
        for run in 1..20 {
            let o = common::exec(&isolated, ExecRequest::new(*code));
            assert_eq!((o.status, used(&o)), (Status::Ok, figure), "{name}, isolated run {run}: {o:?}");
        }
        // Embedded mode: the same count on every run of a reused interpreter (its
        // stdlib caches aside, which the table avoids but for `re`'s, cleared before
        // each run; docs/security-model.md). The modes need not agree.
        let embedded_figure = used(&common::exec(&embedded, ExecRequest::new(*code)));
        for run in 1..5 {
            let o = common::exec(&embedded, ExecRequest::new(*code));
            assert_eq!((o.status, used(&o)), (Status::Ok, embedded_figure), "{name}, embedded run {run}: {o:?}");
        }
        {
            let _hog = Hog::start();
            for run in 0..3 {
                let o = common::exec(&isolated, ExecRequest::new(*code));
                assert_eq!((o.status, used(&o)), (Status::Ok, figure), "{name}, beside a CPU hog, run {run}: {o:?}");
            }
        }
        // Just below its figure: out of fuel, having used the whole budget.
        for (mode, exec, figure) in
            [("isolated", &isolated as &dyn terrarium::Executor, figure), ("embedded", &embedded, embedded_figure)]
        {
            let short = common::exec(exec, with_fuel(code, figure - 1));
            assert_eq!(short.status, Status::FuelExhausted, "{name}, {mode}, budget {}: {short:?}", figure - 1);
            assert_eq!(used(&short), figure - 1, "{name}, {mode}: {short:?}");
            let error = short.error.as_ref().expect("an error");
            assert_eq!(error.kind, "FuelExhausted");
            assert!(error.message.contains(&(figure - 1).to_string()), "{error:?}");
            let exact = common::exec(exec, with_fuel(code, figure));
            assert_eq!(
                (exact.status, used(&exact)),
                (Status::Ok, figure),
                "{name}, {mode}, budget {figure}: {exact:?}"
            );
        }
    }
}

/// A budget that a snippet spends in native work: each of these does its work in a
/// handful of instructions, and must stop well before its deadline.
#[test]
fn native_work_is_charged_and_stopped_by_fuel() {
    let isolated = common::isolated(common::wide_policy());
    let attacks = [
        ("sum of a huge range", "sum(range(10 ** 12))"),
        ("list of a huge map", "len(list(map(abs, range(10 ** 9))))"),
        ("max of a huge range", "max(range(10 ** 12))"),
        ("string repetition", "len('ab' * (10 ** 8))"),
        ("list repetition", "len([None] * (10 ** 8))"),
        ("in-place repetition", "a = [1, 2]\na *= 10 ** 8\nlen(a)"),
        ("sort", "xs = list(range(400000)) * 4\nxs.sort()\nxs[0]"),
        ("big multiplication", "x = 7 ** 400000\nlen(str(x * x % 10))"),
        ("big power", "x = 3 ** (10 ** 7)\n0"),
        ("big modular power", "pow(3, 10 ** 50000, 10 ** 3000 + 7)"),
        ("big division", "x = 7 ** 400000\ny = 3 ** 200000\nx // y % 10"),
        ("big shifts", "for _ in range(3):\n    x = 1 << (10 ** 9)\n0"),
        ("catastrophic regex", "import re\nre.match(r'(a*)*b', 'a' * 40)"),
        ("catastrophic regex search", "import re\nre.search(r'(x+x+)+y', 'x' * 40)"),
        ("join of a huge generator", "''.join(str(i % 10) for i in range(10 ** 9))"),
        ("any over a huge range", "any(x < 0 for x in range(10 ** 12))"),
    ];
    for (name, code) in attacks {
        let started = Instant::now();
        let o = common::exec(&isolated, with_fuel(code, 2_000_000));
        assert_eq!(o.status, Status::FuelExhausted, "{name}: {o:?}");
        assert_eq!(used(&o), 2_000_000, "{name}: {o:?}");
        // The policy's deadline is 10 s; a fuel stop is far sooner on any load.
        assert!(started.elapsed() < Duration::from_secs(8), "{name} took {:?}", started.elapsed());
    }
}

/// Single calls whose native work grows with their data (copies, scans, conversions,
/// text made, keys that collide), each in a loop: the charges for the data, not the
/// one instruction per call, stop the loop, in both modes, long before the deadline.
#[test]
fn a_loop_of_large_native_calls_is_stopped_by_fuel() {
    let isolated = common::isolated(common::wide_policy());
    let embedded = terrarium::EmbeddedExecutor::new(common::wide_policy());
    let setup = "import hashlib, itertools, math, collections\nL = [0] * 200000\nL2 = [0] * 200000\nT = tuple(range(20000))\n\
                 D = dict.fromkeys(range(20000))\nD2 = dict.fromkeys(range(20000))\nS2 = set(range(20000))\n\
                 S = 'a' * 200000\nS3 = 'a' * 200000\nB = b'a' * 200000\nM = 2 ** 61 - 1\nN = '7' * 4000\n\
                 BA = bytearray(200000)\nMV = memoryview(bytes(200000))\nMV2 = memoryview(bytes(200000))\n\
                 F = tuple(map(float, range(20000)))\nDQ = collections.deque(range(200000))\nW = ' ' * 200000\n\
                 H = set(range(100000))\nH.difference_update(range(99999))\nFS = '{}' * 100000\n";
    let calls = [
        "str(L)",
        "str(D)",
        "{*L}",
        "dict(D)",
        "D.update(D2)",
        "S2 & S2",
        "D == D2",
        "L == L2",
        "L < L2",
        "L.count(0)",
        "1 in L",
        "L.reverse()",
        "L[::-1]",
        "L.insert(0, 1)\n    L.pop(0)",
        "del L[:1]\n    L.append(0)",
        "L + L2",
        "bytes(L)",
        "hash(T)",
        "T.count(1)",
        "'b' in S",
        "S.count('b')",
        "S.find('b')",
        "S.replace('b', 'c')",
        "S + S3",
        "S[1:]",
        "S == S3",
        "S.upper()",
        "S.isalpha()",
        "S.startswith(S3)",
        "S.translate({})",
        "S.encode()",
        "B == B[:]",
        "b'b' in B",
        "'a'.ljust(200000)",
        "format(1, '>200000')",
        "'%*d' % (200000, 1)",
        "int(N)",
        "hashlib.sha256(B)",
        "set(range(0, 3000 * M, M))",
        "dict.fromkeys(range(0, 3000 * M, M))",
        "S.strip('a')",
        "W.split()",
        "hash(B)",
        "BA.reverse()",
        "MV == MV2",
        "DQ.rotate(100000)",
        "next(filter(None, itertools.repeat(0, 200000)), None)",
        "next(itertools.islice(itertools.repeat(0), 200000, None))",
        "next(itertools.dropwhile(bool, itertools.repeat(1, 200000)), None)",
        "math.hypot(*F)",
        "'%.1070f' % 5e-324",
        "format(5e-324, '.1000e')",
        "import math",
        "from math import *",
        "next(iter(H))",
        "H.copy()",
        "FS.format(*range(100000))",
    ];
    for (mode, exec) in [("isolated", &isolated as &dyn terrarium::Executor), ("embedded", &embedded)] {
        for call in calls {
            let code = format!("{setup}while True:\n    {call}");
            let o = common::exec(exec, with_fuel(&code, 2_000_000));
            assert_eq!(o.status, Status::FuelExhausted, "{mode}: `{call}` ran past its budget: {o:?}");
            assert_eq!(used(&o), 2_000_000, "{mode}: `{call}`: {o:?}");
        }
    }
}

/// The exhaustion is raised at every instruction until the run has unwound: no
/// handler, `finally`, generator or finalizer gets work done past the budget.
#[test]
fn catching_the_exhaustion_does_not_help() {
    let isolated = common::isolated(common::wide_policy());
    let embedded = terrarium::EmbeddedExecutor::new(common::wide_policy());
    let attacks = [
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
        "def f():\n    try:\n        while True:\n            pass\n    finally:\n        while True:\n            print('x')\nf()",
        "import contextlib\nwhile True:\n    with contextlib.suppress(BaseException):\n        sum(range(10 ** 12))",
        "def g():\n    while True:\n        try:\n            yield 1\n        except BaseException:\n            pass\nfor _ in g():\n    pass",
        "class D:\n    def __del__(self):\n        while True:\n            pass\na = D()\na.me = a\ndel a\nwhile True:\n    pass",
        "import re\nwhile True:\n    try:\n        re.match(r'(a*)*b', 'a' * 40)\n    except BaseException:\n        print('caught')",
        // Out of fuel in a finalizer on a refcount drop: the interpreter reports the
        // uncatchable error (importing `sys`), and the run still ends out of fuel.
        "class A:\n    def __del__(self):\n        while True:\n            pass\na = A()\ndel a\nprint('caught')",
    ];
    for (mode, exec) in [("isolated", &isolated as &dyn terrarium::Executor), ("embedded", &embedded)] {
        for code in attacks {
            let started = Instant::now();
            let o = common::exec(exec, with_fuel(code, 300_000));
            assert_eq!(o.status, Status::FuelExhausted, "{mode}: {code:?}: {o:?}");
            assert_eq!(used(&o), 300_000, "{mode}: {code:?}: {o:?}");
            assert!(!o.stdout.contains("caught"), "{mode}: a handler ran past the budget: {o:?}");
            assert!(o.stdout.len() < 10_000, "{mode}: a handler kept printing past the budget: {o:?}");
            assert!(started.elapsed() < Duration::from_secs(8), "{mode}: {code:?} took {:?}", started.elapsed());
        }
        // The interpreter serves the next run with a full budget.
        let next = common::exec(exec, with_fuel("sum(range(1000))", 300_000));
        assert_eq!(
            (next.status, next.result.clone()),
            (Status::Ok, Some(serde_json::json!(499500))),
            "{mode}: {next:?}"
        );
    }
}

/// The policy's `terrarium.fuel` applies to the rustpython tier; an override may
/// only lower it; with no budget, the count is reported all the same.
#[test]
fn the_policys_budget_applies_and_overrides_only_tighten_it() {
    let yaml = format!("{WIDE_POLICY}\nterrarium:\n  fuel: 50000\n");
    let policy = Policy::from_yaml(&yaml, "fuel.yaml").expect("policy with fuel");
    assert_eq!(policy.fuel(), Some(50_000), "the test policy must carry its budget");
    let isolated = common::isolated(policy.clone());
    let o = common::exec(&isolated, ExecRequest::new("while True:\n    pass"));
    assert_eq!((o.status, used(&o)), (Status::FuelExhausted, 50_000), "{o:?}");
    let o = common::exec(&isolated, with_fuel("while True:\n    pass", 1_000));
    assert_eq!((o.status, used(&o)), (Status::FuelExhausted, 1_000), "{o:?}");
    let looser = policy.tighten(&Overrides { fuel: Some(50_001), ..Overrides::default() });
    assert!(looser.is_err_and(|e| e.to_string().contains("fuel")), "a larger budget loosened the policy");
    let zero = policy.tighten(&Overrides { fuel: Some(0), ..Overrides::default() });
    assert!(zero.is_err(), "a budget of 0 was accepted");
    let runtime = common::runtime();
    let refused = runtime.block_on(terrarium::Executor::execute(&isolated, with_fuel("1", 60_000)));
    assert!(refused.is_err() || refused.as_ref().is_ok_and(|o| o.status != Status::Ok), "{refused:?}");
    // No budget: usage is still counted, and the same each time.
    let a = common::run("x = [i for i in range(100)]\nlen(x)");
    let b = common::run("x = [i for i in range(100)]\nlen(x)");
    assert_eq!(a.status, Status::Ok);
    assert_eq!(used(&a), used(&b));
}

/// A session's cells are counted one by one, and a cell out of fuel ends the
/// session like any limit.
#[test]
fn a_sessions_cells_are_counted_each() {
    let isolated = common::isolated(common::wide_policy());
    let runtime = common::runtime();
    let mut session = runtime.block_on(terrarium::Executor::open_session(&isolated)).expect("a session");
    let mut cell = |req: ExecRequest| runtime.block_on(session.execute(req)).expect("cell");
    let one = cell(ExecRequest::new("xs = [i * i for i in range(1000)]\nlen(xs)"));
    let two = cell(ExecRequest::new("sum(xs)"));
    assert_eq!((one.status, two.status), (Status::Ok, Status::Ok), "{one:?} {two:?}");
    assert!(used(&one) > used(&two), "the cells were not counted apart: {one:?} {two:?}");
    let total = |o: &terrarium::Outcome| o.session.as_ref().and_then(|s| s.fuel);
    assert_eq!(total(&one), Some(used(&one)), "{one:?}");
    assert_eq!(total(&two), Some(used(&one) + used(&two)), "the session's count is its cells' sum: {two:?}");
    let three = cell(with_fuel("while True:\n    pass", 10_000));
    assert_eq!((three.status, used(&three)), (Status::FuelExhausted, 10_000), "{three:?}");
    let ended = three.session.as_ref().and_then(|s| s.ended.clone()).unwrap_or_default();
    assert!(ended.contains("fuel_exhausted"), "the session went on after a cell ran out of fuel: {three:?}");
}
