//! The pure-computation stdlib works when a policy allows it: each module is
//! imported and exercised (a table of module, code, expected result).

use terrarium::Status;

use crate::common::run_wide;

const CASES: &[(&str, &str, &str)] = &[
    (
        "collections",
        "import collections\ncollections.Counter('abca').most_common(1)[0][0] + collections.OrderedDict(a=1).popitem()[0]",
        "\"aa\"",
    ),
    (
        "itertools",
        "import itertools\nlist(itertools.accumulate(itertools.islice(itertools.count(1), 4)))",
        "[1, 3, 6, 10]",
    ),
    (
        "functools",
        "import functools\n@functools.lru_cache\ndef fib(n): return n if n < 2 else fib(n-1) + fib(n-2)\nfib(30) + functools.reduce(lambda a, b: a * b, [1, 2, 3])",
        "832046",
    ),
    ("re", "import re\nre.findall(r'\\d+', 'a1b22c333')", "[\"1\", \"22\", \"333\"]"),
    (
        "dataclasses",
        "import dataclasses\n@dataclasses.dataclass(frozen=True)\nclass P:\n    x: int\n    y: int = 2\ndataclasses.asdict(P(1))",
        "{\"x\": 1, \"y\": 2}",
    ),
    ("decimal", "import decimal\nstr(decimal.Decimal('1.1') + decimal.Decimal('2.2'))", "\"3.3\""),
    ("fractions", "import fractions\nstr(fractions.Fraction(1, 3) + fractions.Fraction(1, 6))", "\"1/2\""),
    ("datetime", "import datetime\n(datetime.date(2026, 11, 28) - datetime.date(2026, 1, 1)).days", "331"),
    ("statistics", "import statistics\n[statistics.mean([1, 2, 3, 4]), statistics.median([3, 1, 2])]", "[2.5, 2]"),
    ("heapq", "import heapq\nh = [5, 1, 4]\nheapq.heapify(h)\n[heapq.heappop(h) for _ in range(3)]", "[1, 4, 5]"),
    ("bisect", "import bisect\nbisect.bisect_left([1, 3, 5], 4)", "2"),
    (
        "typing",
        "import typing\nT = typing.TypeVar('T')\ndef first(xs: typing.List[T]) -> T: return xs[0]\nfirst([7])",
        "7",
    ),
    ("enum", "import enum\nclass C(enum.Enum):\n    RED = 1\n    BLUE = 2\n[c.name for c in C]", "[\"RED\", \"BLUE\"]"),
    (
        "abc",
        "import abc\nclass A(abc.ABC):\n    @abc.abstractmethod\n    def f(self): ...\ntry:\n    A()\n    r = 'made'\nexcept TypeError:\n    r = 'abstract'\nr",
        "\"abstract\"",
    ),
    (
        "string",
        "import string\nstring.Template('$a-$b').substitute(a=1, b=2) + string.ascii_lowercase[:3]",
        "\"1-2abc\"",
    ),
    (
        "random",
        "import random\nr1, r2 = random.Random(42), random.Random(42)\n[r1.random() for _ in range(3)] == [r2.random() for _ in range(3)] and len(set(random.sample(range(100), 10))) == 10",
        "true",
    ),
    ("copy", "import copy\na = [[1], [2]]\nb = copy.deepcopy(a)\nb[0].append(9)\na", "[[1], [2]]"),
    (
        "hashlib",
        "import hashlib\nhashlib.sha256(b'abc').hexdigest()[:16] + hashlib.md5(b'').hexdigest()[:4]",
        "\"ba7816bf8f01cfead41d\"",
    ),
    (
        "contextlib",
        "import contextlib\n@contextlib.contextmanager\ndef cm():\n    yield 5\nwith cm() as v:\n    r = v\nwith contextlib.suppress(KeyError):\n    {}['x']\nr",
        "5",
    ),
    (
        "asyncio",
        "import asyncio\nasync def f(i):\n    await asyncio.sleep(0.01)\n    return i * 2\nasync def main():\n    return await asyncio.gather(*(f(i) for i in range(3)))\nasyncio.run(main())",
        "[0, 2, 4]",
    ),
    ("operator", "import operator\noperator.itemgetter(1)([4, 5]) + operator.attrgetter('real')(3)", "8"),
    ("math", "import math\nmath.isqrt(17) + math.gcd(12, 18)", "10"),
    ("json", "import json\njson.loads(json.dumps({'k': [1, 2.5, None]}))", "{\"k\": [1, 2.5, null]}"),
];

/// Runs the table with `run` and returns what did not work.
fn failures(run: impl Fn(&str) -> Option<terrarium::Outcome>) -> Option<Vec<String>> {
    let mut failures = Vec::new();
    for (module, code, expected) in CASES {
        if let Some(what) = crate::common::unexpected(run(code)?, expected) {
            failures.push(format!("{module}: {what}"));
        }
    }
    Some(failures)
}

#[test]
fn every_pure_stdlib_module_works() {
    let failed = failures(|code| Some(run_wide(code))).expect("the rustpython tier is always there");
    assert!(failed.is_empty(), "modules that do not work:\n{}", failed.join("\n"));
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn every_pure_stdlib_module_works_on_the_wasm_tier() {
    let Some(exec) = crate::common::wasm_executor(crate::common::wide_policy()) else { return };
    let failed = failures(|code| Some(crate::common::exec_wasm(&exec, terrarium::ExecRequest::new(code))))
        .expect("no skips past this point");
    assert!(failed.is_empty(), "modules that do not work on the wasm tier:\n{}", failed.join("\n"));
}

#[test]
fn random_draws_fresh_entropy() {
    let a = run_wide("import random\nrandom.getrandbits(64)").result;
    let b = run_wide("import random\nrandom.getrandbits(64)").result;
    assert!(a.is_some() && a != b, "{a:?} {b:?}");
}

#[test]
fn asyncio_stand_in_has_no_host_access() {
    let o = run_wide("import asyncio\nasyncio.open_connection");
    assert_eq!(o.status, Status::Exception, "{o:?}");
    let o = run_wide("import asyncio\nasyncio.create_subprocess_exec");
    assert_eq!(o.status, Status::Exception, "{o:?}");
}
