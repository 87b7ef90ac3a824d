"""The libraries agents reach for: a pandas snippet goes to the docker tier by
itself (the only tier whose image has pandas), a pure one stays on the interpreter
tier, and the route says why."""

from __future__ import annotations

import terrarium
from conftest import LOCAL_PANDAS

PANDAS = """
import pandas as pd
df = pd.DataFrame({"team": ["a", "b", "a", "b"], "points": [1, 2, 3, 4]})
totals = df.groupby("team")["points"].sum()
print(totals.to_dict())
int(totals.sum())
"""


def test_pandas_goes_to_docker_and_a_pure_snippet_stays(docker_ready, audit) -> None:
    sandbox = terrarium.Sandbox(LOCAL_PANDAS, audit=audit)
    out = sandbox.run(PANDAS)
    assert out.ok, out
    assert (out.tier, out.result, out.stdout) == ("docker", 10, "{'a': 4, 'b': 6}\n")
    assert out.route and "docker" in out.route and "pandas" in out.route, out.route
    pure = sandbox.run("1+1")
    assert (pure.tier, pure.result) == ("rustpython", 2), pure


def test_numpy_goes_to_docker(docker_ready, audit) -> None:
    sandbox = terrarium.Sandbox(LOCAL_PANDAS, audit=audit)
    out = sandbox.run("import numpy as np\nfloat(np.arange(5).mean())")
    assert (out.status, out.tier, out.result) == ("ok", "docker", 2.0), out
