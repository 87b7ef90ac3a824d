"""Workspaces from Python: a run edits one and its outcome says which version it
made; a session sees it at /workspace; a bad name is an exception."""

from __future__ import annotations

from pathlib import Path

import pytest

import terrarium
from conftest import default_policy


def test_a_run_edits_a_workspace_and_a_session_sees_it(wasm_ready, tmp_path: Path, audit: Path) -> None:
    policy = default_policy()
    policy["workspaces"] = {"allow": ["*"], "root": str(tmp_path / "ws")}
    sandbox = terrarium.Sandbox(policy, audit=audit)
    out = sandbox.run("open('notes.txt', 'w').write('hi')", tier="wasm", workspace="notes")
    assert out.ok, out
    assert out.workspace is not None
    assert (out.workspace.status, out.workspace.version) == ("committed", 1)
    assert [(c.path, c.action, c.size) for c in out.workspace.changes] == [("notes.txt", "added", 2)]
    assert (tmp_path / "ws" / "notes" / "live" / "notes.txt").read_text() == "hi"
    with sandbox.session(tier="wasm", workspace="notes") as session:
        cell = session.run("open('notes.txt').read()")
        assert cell.result == "hi", cell
        assert cell.workspace is not None and cell.workspace.status == "unchanged"
    failed = sandbox.run("open('notes.txt', 'w').write('lost')\nraise ValueError('no')", tier="wasm", workspace="notes")
    assert failed.status == "exception" and failed.workspace is not None
    assert failed.workspace.status == "discarded"
    assert (tmp_path / "ws" / "notes" / "live" / "notes.txt").read_text() == "hi"
    with pytest.raises(terrarium.InvalidRequest, match="not a workspace name"):
        sandbox.run("1", workspace="../x")
