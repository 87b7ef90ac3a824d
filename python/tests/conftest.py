"""Shared set-up of the package's tests: each test's sandbox keeps its audit log in
the test's own directory, and the tiers that need set-up fail loudly when it is
missing (unless TERRARIUM_SKIP_WASM=1 / TERRARIUM_SKIP_DOCKER=1 says to skip, which
is printed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import terrarium
from terrarium import _native

ROOT = Path(__file__).resolve().parents[2]
LOCAL_DOCKER = ROOT / "policies" / "local-docker.yaml"
# local-docker.yaml with numpy and pandas allowed (the local image carries them).
LOCAL_PANDAS = ROOT / "policies" / "local-pandas.yaml"


def default_policy() -> dict:
    """Terrarium's built-in default policy as a dict, to change in a test."""
    return yaml.safe_load(_native.DEFAULT_POLICY_YAML)


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def sandbox(audit: Path) -> terrarium.Sandbox:
    return terrarium.Sandbox(audit=audit)


def _skip(var: str, why: str) -> None:
    if os.environ.get(var) == "1":
        print(f"SKIPPED ({var}=1): {why}")
        pytest.skip(f"{var}=1: {why}")


@pytest.fixture
def wasm_ready() -> None:
    """Fails (or skips, with TERRARIUM_SKIP_WASM=1) when python.wasm is missing."""
    probe = terrarium.Sandbox(audit=False)
    try:
        out = probe.run("1", tier="wasm")
    except terrarium.TierUnavailable as e:
        _skip("TERRARIUM_SKIP_WASM", str(e))
        pytest.fail(f"the wasm tier is not set up: {e}\n(run scripts/setup-wasm, or set TERRARIUM_SKIP_WASM=1)")
    assert out.ok, out


@pytest.fixture
def docker_ready() -> None:
    """Fails (or skips, with TERRARIUM_SKIP_DOCKER=1) when no engine answers."""
    why = None
    if shutil.which("docker") is None:
        why = "no docker client"
    elif subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        why = "no Docker engine answers"
    if why:
        _skip("TERRARIUM_SKIP_DOCKER", why)
        pytest.fail(f"the docker tier is not set up: {why}\n(run scripts/setup-docker, or set TERRARIUM_SKIP_DOCKER=1)")
