"""A drop-in code executor for smolagents' agents, behind Terrarium's walls.

>>> from smolagents import CodeAgent
>>> from terrarium.smolagents import TerrariumExecutor
>>> agent = CodeAgent(tools=[...], model=model, executor=TerrariumExecutor())

It implements smolagents' ``PythonExecutor`` interface (``__call__(code)`` gives a
``CodeOutput`` with the last value, the printed logs and whether ``final_answer``
was called; ``send_tools``; ``send_variables``). State persists between the agent's
steps in one Terrarium session. The agent's tools run in *this* process as host
functions (declared in the policy for them, so every call is checked, limited and
audited); the code calls them with JSON arguments and gets JSON results.
``final_answer`` is answered here too, so its value never has to cross the wall.

Needs ``pip install terrarium[smolagents]`` (smolagents and PyYAML).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import yaml
from smolagents.local_python_executor import CodeOutput, PythonExecutor
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.utils import AgentError

from . import Sandbox, Session, _native

__all__ = ["TerrariumExecutor"]

_FINAL_ANSWER = "final_answer"
# Defined in the session before the agent's code: `final_answer` reports its value
# to the host, which keeps it, then stops the step.
_PRELUDE = """
class FinalAnswerException(BaseException):
    pass

def final_answer(*args, **kwargs):
    _terrarium_final_answer(*args, **kwargs)
    raise FinalAnswerException()
"""


class TerrariumExecutor(PythonExecutor):
    """Runs an agent's code in a Terrarium session.

    ``policy`` is a policy file, a mapping, or ``None`` for Terrarium's default;
    ``additional_authorized_imports`` are added to its ``allowed_modules`` (as an
    agent's authorized imports are to smolagents' local executor); each tool is
    declared as a host function with ``tool_timeout`` seconds per call. ``tier``
    picks the session's tier (default: the policy's).
    """

    def __init__(
        self,
        additional_authorized_imports: Iterable[str] = (),
        logger: Optional[AgentLogger] = None,
        *,
        policy: Union[str, "os.PathLike[str]", Mapping[str, Any], None] = None,
        tier: Optional[str] = None,
        tool_timeout: float = 60,
        audit: Union[bool, str, "os.PathLike[str]"] = True,
    ) -> None:
        self.logger = logger or AgentLogger(level=LogLevel.INFO)
        self.additional_authorized_imports = list(additional_authorized_imports)
        self._policy = _policy_dict(policy)
        self._tier = tier
        self._tool_timeout = tool_timeout
        self._audit = audit
        self._tools: Dict[str, Any] = {}
        self._variables: Dict[str, Any] = {}
        self._sandbox: Optional[Sandbox] = None
        self._session: Optional[Session] = None
        self._final: Optional[tuple] = None
        # Each call of the executor is a step; a final answer counts only in the step
        # whose code asked for it (a late one, past its timeout, is dropped).
        self._step = 0
        self.state: Dict[str, Any] = {}

    # --- smolagents' interface ------------------------------------------------------

    def send_tools(self, tools: Dict[str, Any]) -> None:
        """Makes ``tools`` callable from the code (a tool sent again under the same
        name replaces the old one at once). A different set of names starts a new
        session (the code's state so far is lost)."""
        if set(tools) != set(self._tools):
            self.cleanup()
        self._tools = dict(tools)

    def send_variables(self, variables: Dict[str, Any]) -> None:
        """Defines ``variables`` (JSON values) in the code's namespace."""
        if not variables:
            return
        for name, value in variables.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError) as e:
                raise AgentError(f"variable {name!r} cannot be sent to the sandbox as JSON: {e}", self.logger) from None
        self._variables.update(variables)
        if self._session is not None:
            self._define(variables)

    def __call__(self, code_action: str) -> CodeOutput:
        session = self._open()
        self._step += 1
        self._final = None
        outcome = session.run(code_action)
        error = outcome.error
        final = self._final
        if final is not None and final[1] == self._step and error is not None and error.kind == "FinalAnswerException":
            return CodeOutput(output=final[0], logs=outcome.stdout, is_final_answer=True)
        if outcome.ok:
            return CodeOutput(output=outcome.result, logs=outcome.stdout, is_final_answer=False)
        kind, message = (error.kind, error.message) if error else (outcome.status, "")
        raise AgentError(
            f"{outcome.stdout}\nExecuting code yielded an error:\n{kind}\n{message}\n{outcome.stderr}".strip(),
            self.logger,
        )

    def cleanup(self) -> None:
        """Ends the session (and its sandboxed process)."""
        if self._session is not None:
            self._session.end()
        self._session = None
        self._sandbox = None

    # --- the session ----------------------------------------------------------------

    def _open(self) -> Session:
        if self._session is not None and self._session.ended is None:
            return self._session
        if self._sandbox is None:
            self._sandbox = self._build()
        self._session = self._sandbox.session(tier=self._tier)
        names = [n for n in self._tools if n != _FINAL_ANSWER]
        imports = [f"from host import {_FINAL_ANSWER} as _terrarium_final_answer"]
        imports += [f"from host import {n}" for n in names]
        setup = self._session.run("\n".join(imports) + "\n" + _PRELUDE)
        if not setup.ok:
            raise AgentError(f"the sandbox's session could not start: {setup.error}", self.logger)
        if self._variables:
            self._define(self._variables)
        return self._session

    def _define(self, variables: Mapping[str, Any]) -> None:
        assert self._session is not None
        lines = ["import json as _terrarium_json"]
        for name, value in variables.items():
            if not name.isidentifier():
                raise AgentError(f"variable name {name!r} is not an identifier", self.logger)
            lines.append(f"{name} = _terrarium_json.loads({json.dumps(value)!r})")
        out = self._session.run("\n".join(lines))
        if not out.ok:
            raise AgentError(f"variables could not be defined: {out.error}", self.logger)

    def _build(self) -> Sandbox:
        policy = copy.deepcopy(self._policy)
        sandbox = policy.setdefault("security", {}).setdefault("sandbox", {})
        modules = list(sandbox.get("allowed_modules") or [])
        for m in ["json", *self.additional_authorized_imports]:
            if m not in modules:
                modules.append(m)
        sandbox["allowed_modules"] = modules
        functions = policy.setdefault("functions", {})
        implementations = {}
        for name in self._tools:
            if name == _FINAL_ANSWER:
                continue
            functions.setdefault(name, {"timeout": self._tool_timeout})
            implementations[name] = self._tool_call(name)
        functions.setdefault(_FINAL_ANSWER, {"timeout": self._tool_timeout})
        implementations[_FINAL_ANSWER] = self._answer
        return Sandbox(policy, functions=implementations, audit=self._audit)

    def _tool_call(self, name: str) -> Any:
        """The host function for tool ``name``: the tool sent last under that name."""

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._tools[name](*args, **kwargs)

        return call

    def _answer(self, *args: Any, **kwargs: Any) -> None:
        """The host side of ``final_answer``: the agent's own tool (custom ones too)
        makes the answer, which stays in this process, marked with its step."""
        step = self._step
        tool = self._tools.get(_FINAL_ANSWER)
        if tool is not None:
            value = tool(*args, **kwargs)
        else:
            value = args[0] if args else next(iter(kwargs.values()), None)
        if step == self._step:
            self._final = (value, step)


def _policy_dict(policy: Union[str, "os.PathLike[str]", Mapping[str, Any], None]) -> Dict[str, Any]:
    if policy is None:
        return yaml.safe_load(_native.DEFAULT_POLICY_YAML)
    if isinstance(policy, Mapping):
        return copy.deepcopy(dict(policy))
    with open(os.fspath(policy), encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    if not isinstance(loaded, dict):
        raise AgentError(f"{os.fspath(policy)}: a policy is a mapping", AgentLogger(level=LogLevel.INFO))
    return loaded
