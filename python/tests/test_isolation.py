"""The package runs no untrusted code in the Python process: what a snippet does to
its interpreter and its process happens elsewhere."""

from __future__ import annotations

import json
import math
import resource

import terrarium


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_a_snippets_cpu_time_is_not_this_process(sandbox: terrarium.Sandbox) -> None:
    sandbox.run("1")  # the zygote is warm
    before = _cpu_seconds()
    out = sandbox.run("t = 0\nfor i in range(8_000_000):\n    t += i\nt", timeout=8)
    spent = _cpu_seconds() - before
    assert out.ok, out
    assert out.usage.cpu_ms is not None and out.usage.cpu_ms >= 300, out.usage
    # The work was done by another process: this one only waited for it.
    assert spent < out.usage.cpu_ms / 1000 / 4, (spent, out.usage.cpu_ms)


def test_a_snippets_memory_is_not_this_process(sandbox: terrarium.Sandbox) -> None:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = sandbox.run("x = bytearray(300 * 1024 * 1024)\nlen(x)")
    assert out.ok and out.result == 300 * 1024 * 1024, out
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib
    assert grown < 100 * 1024, f"this process grew by {grown} KiB"


def test_a_snippet_cannot_change_this_interpreters_state(sandbox: terrarium.Sandbox) -> None:
    # Run in this interpreter, these would rewrite modules this process has loaded.
    code = "import json, math\njson.dumps = None\nmath.pi = 3\nmath.TERRARIUM_MARK = 1\nmath.pi"
    out = sandbox.run(code)
    assert out.ok and out.result == 3, out
    assert json.dumps([1]) == "[1]"
    assert math.pi > 3.14 and not hasattr(math, "TERRARIUM_MARK")


def test_a_snippet_that_kills_its_interpreter_leaves_this_process_running(sandbox: terrarium.Sandbox) -> None:
    out = sandbox.run("def f():\n    return f()\nf()")
    assert out.status in ("exception", "crashed"), out
    assert sandbox.run("2 + 2").result == 4
