"""Terrarium: run untrusted Python snippets under a policy, in the lightest
isolation tier that can serve them.

>>> from terrarium import Sandbox
>>> sandbox = Sandbox()
>>> outcome = sandbox.run("print(6 * 7)")
>>> outcome.stdout
'42\\n'

Untrusted code never runs in this process: the interpreter tier runs it in a
confined child of the ``terrarium`` binary shipped with the package, the wasm tier
in a WebAssembly instance, the docker tier in a container. Exceptions are raised
only for host-side failures (:mod:`terrarium.errors`); an exception in the
sandboxed code is an :class:`Outcome` with ``status == "exception"``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Tuple, Union

from . import _native
from .errors import (
    Busy,
    InvalidRequest,
    NotApproved,
    PolicyError,
    SandboxError,
    SessionEnded,
    Stopped,
    TierUnavailable,
)
from .outcome import CallInfo, CellInfo, ErrorInfo, Outcome, Usage, WorkspaceChange, WorkspaceInfo

__all__ = [
    "Sandbox",
    "Session",
    "Outcome",
    "Usage",
    "ErrorInfo",
    "CallInfo",
    "CellInfo",
    "SandboxError",
    "PolicyError",
    "InvalidRequest",
    "TierUnavailable",
    "Stopped",
    "Busy",
    "NotApproved",
    "SessionEnded",
    "worker_exe",
    "WorkspaceInfo",
    "WorkspaceChange",
]

__version__ = _native.__version__

PolicyLike = Union[str, "os.PathLike[str]", Mapping[str, Any], None]
HostFunction = Callable[..., Any]
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def worker_exe() -> Path:
    """The ``terrarium`` binary that runs the interpreter tier's zygote:
    ``$TERRARIUM_WORKER_EXE`` when set, else the one shipped in this package.

    Raises :class:`TierUnavailable` when there is none.
    """
    named = os.environ.get("TERRARIUM_WORKER_EXE")
    exe = Path(named) if named else Path(__file__).parent / "_bin" / "terrarium"
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise TierUnavailable(
            f"no terrarium binary at {exe}: install a wheel built by scripts/build-python "
            "(it ships the binary), or set TERRARIUM_WORKER_EXE to a terrarium binary "
            "built from the same version"
        )
    return exe


class Sandbox:
    """Runs snippets under one policy.

    ``policy`` is a path to a YAML policy file, a mapping with the same structure,
    or ``None`` for the built-in default. ``functions`` maps host functions the
    policy declares (``functions.NAME``) to Python callables: sandboxed code calls
    them as ``from host import NAME``; they get and return JSON values, and an
    exception they raise is raised in the sandboxed code (as ``RuntimeError`` when
    its class is not one the guest knows). ``audit`` is the audit log's path (where
    approvals of critical operations wait too); ``True`` (the default) puts it where
    the ``terrarium`` command does (``$TERRARIUM_HOME``), ``False`` keeps no log
    (critical operations are then refused). ``pool_size`` children are kept forked
    ahead of demand.
    """

    def __init__(
        self,
        policy: PolicyLike = None,
        *,
        functions: Optional[Mapping[str, HostFunction]] = None,
        audit: Union[bool, str, "os.PathLike[str]"] = True,
        pool_size: int = 2,
    ) -> None:
        text, origin = _policy_text(policy)
        if audit is True:
            log: Optional[str] = os.fspath(_native.default_audit_path())
        elif audit is False:
            log = None
        else:
            log = os.fspath(audit)
        dispatchers = [(name, _dispatcher(fn)) for name, fn in (functions or {}).items()]
        self._native = _native.NativeSandbox(text, origin, os.fspath(worker_exe()), log, dispatchers, pool_size)

    def run(
        self,
        code: str,
        *,
        timeout: Optional[float] = None,
        tier: Optional[str] = None,
        memory: Optional[str] = None,
        workspace: Optional[str] = None,
        fuel: Optional[int] = None,
    ) -> Outcome:
        """Runs ``code`` and returns how it ended.

        ``timeout`` (seconds), ``memory`` (``"64m"``) and ``fuel`` (a budget of
        work: instructions and native work on the rustpython tier, the same figure
        on every run; wasmtime's fuel on the wasm tier) may only tighten the
        policy; ``tier`` is ``"auto"`` (the default: the lightest tier that can
        serve it), ``"rustpython"``, ``"wasm"`` or ``"docker"``. ``workspace``
        names a workspace (the policy's ``workspaces.allow``) mounted read-write
        at ``/workspace``: the run works on a copy, and what it changed becomes
        the workspace's next version (``outcome.workspace`` says what happened).
        """
        _check_code(code)
        return _outcome(self._native.run(code, timeout, tier, memory, workspace, fuel))

    async def run_async(
        self,
        code: str,
        *,
        timeout: Optional[float] = None,
        tier: Optional[str] = None,
        memory: Optional[str] = None,
        workspace: Optional[str] = None,
        fuel: Optional[int] = None,
    ) -> Outcome:
        """:meth:`run` without blocking the event loop (it waits on a worker thread;
        the run itself is in the sandbox, as ever)."""
        call = functools.partial(
            self.run, code, timeout=timeout, tier=tier, memory=memory, workspace=workspace, fuel=fuel
        )
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def session(self, *, tier: Optional[str] = None, workspace: Optional[str] = None) -> "Session":
        """Starts a session: cells that share interpreter state on one tier. With
        ``workspace``, every cell sees it at ``/workspace``; each cell that ends ok
        is settled as a run would be."""
        return Session(self._native.session(tier, workspace))

    def flush_audit(self, timeout: float = 5.0) -> None:
        """Waits (at most ``timeout`` seconds) until the audit log holds every event so far."""
        self._native.flush_audit(timeout)


class Session:
    """Cells sharing interpreter state (definitions, imports) on one tier, in one
    sandboxed process of their own. Use it as a context manager, or call
    :meth:`end`."""

    def __init__(self, native: "_native.NativeSession") -> None:
        self._native = native

    @property
    def id(self) -> str:
        """The session's id (in the audit log)."""
        return self._native.id

    @property
    def tier(self) -> str:
        """The tier it runs on."""
        return self._native.tier

    @property
    def cells(self) -> Optional[int]:
        """Cells run so far (``None`` while a cell runs)."""
        state = self._native.state()
        return state[0] if state else None

    @property
    def ended(self) -> Optional[str]:
        """Why it ended, or ``None`` while it is open (or a cell runs)."""
        state = self._native.state()
        return state[1] if state else None

    def run(
        self, code: str, *, timeout: Optional[float] = None, memory: Optional[str] = None, fuel: Optional[int] = None
    ) -> Outcome:
        """Runs ``code`` as the next cell (``fuel``: this cell's budget). Raises
        :class:`SessionEnded` once it has ended."""
        _check_code(code)
        return _outcome(self._native.run(code, timeout, memory, fuel))

    async def run_async(
        self, code: str, *, timeout: Optional[float] = None, memory: Optional[str] = None, fuel: Optional[int] = None
    ) -> Outcome:
        """:meth:`run` without blocking the event loop."""
        call = functools.partial(self.run, code, timeout=timeout, memory=memory, fuel=fuel)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def end(self) -> None:
        """Ends it now: a running cell is stopped (it gets :class:`SessionEnded`), its
        process killed and its state gone."""
        self._native.end()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *_: object) -> None:
        self.end()


def _check_code(code: object) -> None:
    if not isinstance(code, str):
        raise InvalidRequest(f"code must be str, not {type(code).__name__}")


def _outcome(text: str) -> Outcome:
    return Outcome.from_json(json.loads(text))


def _policy_text(policy: PolicyLike) -> Tuple[Optional[str], str]:
    """The policy as YAML text and the name its errors give it."""
    if policy is None:
        return None, "<default policy>"
    if isinstance(policy, Mapping):
        return "\n".join(_yaml(policy, 0)) + "\n", "<policy dict>"
    if isinstance(policy, (str, os.PathLike)):
        path = os.fspath(policy)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PolicyError(f"{path}: cannot read policy: {e.strerror}", origin=path) from None
        try:
            return data.decode("utf-8"), path
        except UnicodeDecodeError:
            raise PolicyError(f"{path}:0: the file is not UTF-8 text", origin=path) from None
    raise PolicyError(f"policy must be a path, a mapping or None, not {type(policy).__name__}")


def _yaml(value: Mapping[str, Any], indent: int) -> list:
    """Block YAML for a mapping, one key per line (so that a policy error names the
    line of its field); scalars are written as JSON, which YAML reads as is."""
    lines = []
    pad = " " * indent
    for key, item in value.items():
        if not isinstance(key, str):
            raise PolicyError(f"policy keys must be strings, not {key!r}")
        name = key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)
        if isinstance(item, Mapping) and item:
            lines.append(f"{pad}{name}:")
            lines.extend(_yaml(item, indent + 2))
        else:
            lines.append(f"{pad}{name}: {json.dumps(item, default=_unencodable)}")
    return lines


def _unencodable(value: object) -> object:
    raise PolicyError(f"a policy value must be YAML data, not {type(value).__name__}")


def _dispatcher(fn: HostFunction) -> Callable[[str, str], Tuple[Any, ...]]:
    """Wraps a host function for the extension: JSON in, ``(True, json)`` or
    ``(False, exception class, message)`` out."""
    if not callable(fn):
        raise InvalidRequest(f"host function {fn!r} is not callable")

    def dispatch(args: str, kwargs: str) -> Tuple[Any, ...]:
        try:
            result = fn(*json.loads(args), **json.loads(kwargs))
            return (True, json.dumps(result))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the guest
            return (False, type(e).__name__, str(e))

    return dispatch
