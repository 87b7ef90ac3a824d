"""Typed views of a run's outcome (the same fields as the HTTP API's JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["Outcome", "Usage", "ErrorInfo", "CallInfo", "CellInfo", "WorkspaceInfo", "WorkspaceChange"]


@dataclass(frozen=True)
class ErrorInfo:
    """Why a run did not end ``ok``: ``kind`` (``ZeroDivisionError``, ``Timeout``,
    ``ImportDenied``, ...; ``type`` in the HTTP API's JSON) and its message."""

    kind: str
    message: str


@dataclass(frozen=True)
class Usage:
    """What a run used. ``None`` where the tier does not measure it."""

    wall_ms: int
    cpu_ms: Optional[int] = None
    fuel: Optional[int] = None
    peak_memory_bytes: Optional[int] = None
    host_wait_ms: Optional[int] = None


@dataclass(frozen=True)
class CallInfo:
    """One host-function call made by the run."""

    function: str
    status: str
    ms: int


@dataclass(frozen=True)
class CellInfo:
    """A session's cell: its number, why the session ended if this cell ended it,
    and the fuel the session's cells have used so far (where the tier counts it)."""

    cell: int
    ended: Optional[str] = None
    fuel: Optional[int] = None


@dataclass(frozen=True)
class WorkspaceChange:
    """One changed path of a workspace: ``action`` is ``added``, ``modified``,
    ``mode`` or ``deleted``; ``size`` is the new size of a file."""

    path: str
    action: str
    size: Optional[int] = None


@dataclass(frozen=True)
class WorkspaceInfo:
    """What became of a run's changes to its workspace (the host's record).

    ``status`` is ``committed`` (``version`` is the new version), ``unchanged``,
    ``discarded`` (the run did not end ok), ``held`` (a session's cell that did
    not end ok: settled after the next one that does), ``refused`` (something a
    workspace may not hold, or past a quota), ``denied`` or ``expired`` (a
    human's approval), or ``conflict``.
    """

    name: str
    base: int
    status: str
    version: Optional[int] = None
    changes: List[WorkspaceChange] = field(default_factory=list)
    digest: Optional[str] = None
    message: Optional[str] = None

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "WorkspaceInfo":
        fields = _known(cls, data)
        fields["changes"] = [WorkspaceChange(**_known(WorkspaceChange, c)) for c in data.get("changes") or []]
        return cls(**fields)


@dataclass(frozen=True)
class Outcome:
    """How a run ended, decided by the host (never by the sandboxed code).

    ``status`` is ``ok``, ``exception``, ``timeout``, ``memory_limit``,
    ``fuel_exhausted``, ``output_limit``, ``denied``, ``crashed`` or ``error``;
    ``result`` is the last expression's value as JSON (``None`` when there is
    none); ``route`` says why the run went to its ``tier``.
    """

    status: str
    tier: str
    stdout: str
    stderr: str
    result: Any
    error: Optional[ErrorInfo]
    usage: Usage
    route: Optional[str] = None
    findings: List[Dict[str, Any]] = field(default_factory=list)
    session: Optional[CellInfo] = None
    calls: List[CallInfo] = field(default_factory=list)
    id: Optional[str] = None
    workspace: Optional[WorkspaceInfo] = None

    @property
    def ok(self) -> bool:
        """Whether the run ended normally."""
        return self.status == "ok"

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Outcome":
        """The outcome the extension (or the HTTP API) encoded as ``data``."""
        error = data.get("error")
        cell = data.get("session")
        return cls(
            status=data["status"],
            tier=data["tier"],
            stdout=data.get("stdout", ""),
            stderr=data.get("stderr", ""),
            result=data.get("result"),
            error=ErrorInfo(kind=error.get("type") or error.get("kind", ""), message=error.get("message", "")) if error else None,
            usage=Usage(**_known(Usage, data.get("usage") or {"wall_ms": 0})),
            route=data.get("route"),
            findings=list(data.get("findings") or []),
            session=CellInfo(**_known(CellInfo, cell)) if cell else None,
            calls=[CallInfo(**_known(CallInfo, c)) for c in data.get("calls") or []],
            id=data.get("id"),
            workspace=WorkspaceInfo.from_json(data["workspace"]) if data.get("workspace") else None,
        )


def _known(kind: type, data: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of ``data`` that ``kind`` has (newer servers may add fields)."""
    names = kind.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in data.items() if k in names}
