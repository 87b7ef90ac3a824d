"""The exceptions Terrarium raises in the calling process.

They are for host-side failures only: a bad policy, a request that cannot be
served, a tier that is not available. An exception raised by the sandboxed code
is never one of these; it is an :class:`terrarium.Outcome` with
``status == "exception"``.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "SandboxError",
    "PolicyError",
    "InvalidRequest",
    "TierUnavailable",
    "Busy",
    "NotApproved",
    "SessionEnded",
    "Stopped",
]


class SandboxError(Exception):
    """A request Terrarium could not run (the base of every Terrarium exception)."""

    def __init__(self, message: str, **_: object) -> None:
        super().__init__(message)
        self.message = message


class PolicyError(SandboxError):
    """The policy is invalid, or a request tried to loosen it.

    ``field`` is the policy field at fault (``security.sandbox.timeout``),
    ``line`` its 1-based line in the policy text (0 when unknown), ``origin``
    the file (or ``<policy dict>``).
    """

    def __init__(
        self,
        message: str,
        *,
        field: Optional[str] = None,
        line: int = 0,
        origin: Optional[str] = None,
        **_: object,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.line = line
        self.origin = origin


class InvalidRequest(SandboxError):
    """The request itself is malformed (empty code, an unknown tier, a bad timeout)."""


class TierUnavailable(SandboxError):
    """The tier asked for (or the only one that can serve the request) is not available."""


class Busy(SandboxError):
    """Too many runs or sessions at once; retry later."""


class NotApproved(SandboxError):
    """A critical operation was denied by a human, or its approval expired."""


class SessionEnded(SandboxError):
    """The session has ended (idle, lifetime, a limit, or ``end()``); start a new one."""


class Stopped(SandboxError):
    """An operator stopped the deployment (an emergency stop); nothing runs until it is resumed."""
