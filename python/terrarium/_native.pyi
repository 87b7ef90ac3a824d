"""Type stubs of Terrarium's extension module (the Rust side of the package).

Use :class:`terrarium.Sandbox`; these are its building blocks.
"""

from os import PathLike
from typing import Callable, Optional, Sequence, Tuple, Union

__version__: str
DEFAULT_POLICY_YAML: str

Dispatch = Callable[[str, str], Union[Tuple[bool, str], Tuple[bool, str, str]]]

class NativeSandbox:
    def __init__(
        self,
        policy_text: Optional[str],
        origin: str,
        worker_exe: Union[str, PathLike[str]],
        audit: Optional[Union[str, PathLike[str]]],
        functions: Sequence[Tuple[str, Dispatch]],
        pool_size: int,
    ) -> None: ...
    def run(
        self,
        code: str,
        timeout: Optional[float] = None,
        tier: Optional[str] = None,
        memory: Optional[str] = None,
        workspace: Optional[str] = None,
        fuel: Optional[int] = None,
    ) -> str: ...
    def session(self, tier: Optional[str] = None, workspace: Optional[str] = None) -> NativeSession: ...
    def flush_audit(self, seconds: float) -> None: ...

class NativeSession:
    id: str
    tier: str
    def run(
        self, code: str, timeout: Optional[float] = None, memory: Optional[str] = None, fuel: Optional[int] = None
    ) -> str: ...
    def state(self) -> Optional[Tuple[int, Optional[str]]]: ...
    def end(self) -> None: ...

def default_audit_path() -> str: ...
