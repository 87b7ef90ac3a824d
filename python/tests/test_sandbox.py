"""terrarium.Sandbox from Python: outcomes on every tier, errors, sessions, host
functions, async use."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import terrarium
from terrarium import Outcome, PolicyError

from conftest import LOCAL_DOCKER, default_policy


def test_a_run_prints_and_returns_a_typed_outcome(sandbox: terrarium.Sandbox) -> None:
    out = sandbox.run("print(6 * 7)\n[1, 2]")
    assert isinstance(out, Outcome)
    assert (out.status, out.ok, out.stdout, out.result) == ("ok", True, "42\n", [1, 2])
    assert out.tier == "rustpython"
    assert out.route, "the route says why it went to its tier"
    assert out.usage.wall_ms >= 0
    assert out.error is None


def test_a_guest_exception_is_an_outcome_not_a_python_exception(sandbox: terrarium.Sandbox) -> None:
    out = sandbox.run("print('before')\n1 / 0")
    assert out.status == "exception"
    assert out.error is not None and out.error.kind == "ZeroDivisionError"
    assert out.stdout == "before\n"


def test_a_denied_import_is_an_outcome(sandbox: terrarium.Sandbox) -> None:
    out = sandbox.run("import os\nos.system('true')")
    assert out.status == "denied", out


def test_a_run_past_its_timeout_is_killed(sandbox: terrarium.Sandbox) -> None:
    started = time.monotonic()
    out = sandbox.run("while True:\n    pass", timeout=0.5)
    assert out.status == "timeout", out
    assert time.monotonic() - started < 5


def test_a_fuel_budget_is_deterministic_and_ends_the_run(sandbox: terrarium.Sandbox) -> None:
    code = "t = 0\nfor i in range(1000):\n    t += i\nt"
    first = sandbox.run(code, tier="rustpython")
    second = sandbox.run(code, tier="rustpython")
    assert first.ok and first.usage.fuel is not None and first.usage.fuel == second.usage.fuel, (first, second)
    short = sandbox.run(code, tier="rustpython", fuel=first.usage.fuel - 1)
    assert short.status == "fuel_exhausted" and short.usage.fuel == first.usage.fuel - 1, short
    assert short.error is not None and short.error.kind == "FuelExhausted", short
    assert sandbox.run(code, tier="rustpython", fuel=first.usage.fuel).ok
    with pytest.raises(PolicyError) as e:
        sandbox.run("1", fuel=0)
    assert e.value.field == "fuel"


def test_memory_past_the_limit_ends_the_run(sandbox: terrarium.Sandbox) -> None:
    out = sandbox.run("x = bytearray(200 * 1024 * 1024)", memory="64m")
    # The interpreter tier reports an allocation the limit refuses as the guest's
    # MemoryError (it never got the memory); a process killed at the cap is memory_limit.
    assert out.status == "memory_limit" or (out.error is not None and out.error.kind == "MemoryError"), out


def test_an_invalid_policy_names_the_field_and_the_line(audit) -> None:
    policy = default_policy()
    policy["security"]["sandbox"]["timeout"] = 100000
    with pytest.raises(PolicyError) as e:
        terrarium.Sandbox(policy, audit=audit)
    assert e.value.field == "security.sandbox.timeout"
    assert e.value.line == 4, e.value
    assert e.value.origin == "<policy dict>"


def test_an_invalid_policy_file_names_its_line(tmp_path, audit) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("security:\n  sandbox:\n    timeout: 5\n    color: blue\n")
    with pytest.raises(PolicyError) as e:
        terrarium.Sandbox(path, audit=audit)
    assert e.value.line == 4, e.value
    assert "color" in str(e.value)
    with pytest.raises(PolicyError, match="cannot read"):
        terrarium.Sandbox(tmp_path / "missing.yaml", audit=audit)
    path.write_bytes(b"security:\n  \xff\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        terrarium.Sandbox(path, audit=audit)


def test_overrides_only_tighten(sandbox: terrarium.Sandbox) -> None:
    with pytest.raises(PolicyError) as e:
        sandbox.run("1", timeout=3600)
    assert e.value.field == "timeout"
    with pytest.raises(terrarium.InvalidRequest):
        sandbox.run("1", timeout=-1)
    with pytest.raises(terrarium.InvalidRequest):
        sandbox.run("1", tier="vm")
    with pytest.raises(terrarium.InvalidRequest):
        sandbox.run(b"1")  # type: ignore[arg-type]


def test_empty_and_huge_code_get_clear_answers(sandbox: terrarium.Sandbox) -> None:
    with pytest.raises(terrarium.InvalidRequest):
        sandbox.run("")
    with pytest.raises(terrarium.InvalidRequest):
        sandbox.run("x = 1\n" * 2_000_000)


def test_every_built_tier_runs(wasm_ready, docker_ready, audit) -> None:
    sandbox = terrarium.Sandbox(LOCAL_DOCKER, audit=audit)
    for tier in ["rustpython", "wasm", "docker"]:
        out = sandbox.run("import math\nprint(math.factorial(5))\n1 / 0", tier=tier)
        assert out.tier == tier
        assert out.stdout == "120\n", (tier, out)
        assert out.status == "exception" and out.error and out.error.kind == "ZeroDivisionError", (tier, out)


def test_async_runs_overlap(sandbox: terrarium.Sandbox) -> None:
    async def main() -> list:
        return await asyncio.gather(*(sandbox.run_async(f"{i} * 2") for i in range(4)))

    outs = asyncio.run(main())
    assert [o.result for o in outs] == [0, 2, 4, 6]


def test_a_session_keeps_state_until_it_ends(sandbox: terrarium.Sandbox) -> None:
    with sandbox.session() as s:
        assert s.tier == "rustpython"
        assert s.run("import math\nx = 41").ok
        out = s.run("x + 1")
        assert out.result == 42 and out.session is not None and out.session.cell == 2
        assert s.cells == 2 and s.ended is None
    with pytest.raises(terrarium.SessionEnded):
        s.run("x")
    # A single run never sees a session's state.
    assert sandbox.run("x").status == "exception"


def test_a_session_cell_runs_async(sandbox: terrarium.Sandbox) -> None:
    with sandbox.session() as s:
        s.run("y = 3")
        assert asyncio.run(s.run_async("y * y")).result == 9


def test_host_functions_are_python_callables(audit) -> None:
    seen = []

    def add(a: int, b: int = 0) -> int:
        seen.append((a, b))
        return a + b

    def fail(message: str) -> None:
        raise ValueError(message)

    policy = default_policy()
    policy["functions"] = {"add": {"timeout": 5, "max_calls": 3}, "fail": {}}
    sandbox = terrarium.Sandbox(policy, functions={"add": add, "fail": fail}, audit=audit)
    out = sandbox.run("from host import add\nadd(2, b=3)")
    assert (out.status, out.result, seen) == ("ok", 5, [(2, 3)])
    assert [c.function for c in out.calls] == ["add"]
    out = sandbox.run("from host import fail\ntry:\n    fail('no')\nexcept ValueError as e:\n    print('caught', e)")
    assert out.stdout == "caught no\n", out
    out = sandbox.run("from host import add\nfor i in range(4):\n    add(i)")
    assert out.status == "denied", "the fourth call is over max_calls"


def test_an_undeclared_function_is_not_reachable(audit) -> None:
    called = []
    sandbox = terrarium.Sandbox(functions={"nope": lambda: called.append(1)}, audit=audit)
    out = sandbox.run("from host import nope\nnope()")
    assert out.status in ("denied", "exception"), out
    assert called == [], "registering a callable does not declare it: the policy does"


def test_ending_a_session_stops_its_running_cell(sandbox: terrarium.Sandbox) -> None:
    """Found by an outside review: end() waited for the running cell to finish."""
    import threading

    s = sandbox.session()
    got: list = []
    cell = threading.Thread(target=lambda: got.append(_outcome_or_error(s, "import time\ntime.sleep(8)")))
    cell.start()
    time.sleep(0.5)
    started = time.monotonic()
    s.end()
    cell.join(10)
    assert time.monotonic() - started < 3
    assert got and isinstance(got[0], terrarium.SessionEnded), got


def _outcome_or_error(session: terrarium.Session, code: str) -> object:
    try:
        return session.run(code)
    except terrarium.SandboxError as e:
        return e


def test_a_stopped_deployment_raises_stopped_until_resumed(audit) -> None:
    # What `terrarium stop --offline` keeps beside the audit log.
    stop = audit.parent / "stopped.json"
    stop.write_text(json.dumps({"reason": "drill", "by": "ops", "at_us": 1}))
    sandbox = terrarium.Sandbox(audit=audit)
    with pytest.raises(terrarium.Stopped, match=r"stopped by ops \(drill\)"):
        sandbox.run("1 + 1")
    stop.unlink()
    assert terrarium.Sandbox(audit=audit).run("1 + 1").result == 2
