"""`terrarium mcp` driven by the official MCP Python SDK (`mcp` on PyPI) as a real
client: list the tools, run print(6*7), a snippet the policy denies, one that times
out, and a session's cells; then, under a policy with a critical host function, a
run that waits for a human: the client is told (progress and a log message naming
the approval request), an operator approves it from another process, and the run
goes on. Exits non-zero with the reason on the first mismatch.

    python mcp_client.py /path/to/terrarium
"""

import asyncio
import os
import subprocess
import sys
import tempfile

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def check(ok, what, got):
    if not ok:
        sys.exit(f"mcp client: {what}: {got!r}")


async def main(exe):
    # The SDK passes a server only a few variables by default; TERRARIUM_HOME (where
    # the audit log and the approvals queue live) must reach it.
    server = StdioServerParameters(command=exe, args=["mcp"], env=dict(os.environ))
    async with stdio_client(server) as (read, write), ClientSession(read, write) as s:
        info = await s.initialize()
        check(info.serverInfo.name == "terrarium", "server name", info.serverInfo)
        names = sorted(t.name for t in (await s.list_tools()).tools)
        check(names == ["end_session", "list_sessions", "run_python", "start_session", "tier_status"], "tools", names)

        r = await s.call_tool("run_python", {"code": "print(6*7)"})
        check(not r.isError and r.structuredContent["stdout"] == "42\n", "print(6*7)", r)
        check("42" in r.content[0].text, "the text summary", r.content)

        r = await s.call_tool("run_python", {"code": "import socket"})
        check(r.isError and r.structuredContent["status"] == "denied", "a denied snippet", r)
        check("not allowed by the policy" in r.content[0].text, "the denial's reason", r.content)

        r = await s.call_tool("run_python", {"code": "while True:\n    pass", "timeout": 0.5})
        check(r.isError and r.structuredContent["status"] == "timeout", "a snippet past its timeout", r)

        started = await s.call_tool("start_session", {})
        sid = started.structuredContent["session"]
        await s.call_tool("run_python", {"code": "x = 20", "session": sid})
        r = await s.call_tool("run_python", {"code": "x + 22", "session": sid})
        check(r.structuredContent["result"] == 42, "a session's state", r)
        r = await s.call_tool("end_session", {"session": sid})
        check(not r.isError, "end_session", r)
    await critical_run(exe)
    await pandas_run(exe)
    print("mcp client: ok (the official Python SDK: tools listed, ok, denied, timeout, session, approval, pandas)")


PANDAS = """import pandas as pd
df = pd.DataFrame({"team": ["a", "b", "a", "b"], "points": [1, 2, 3, 4]})
int(df.groupby("team")["points"].sum().sum())"""


async def pandas_run(exe):
    """Under policies/local-pandas.yaml a pandas snippet goes to the docker tier by
    itself and a pure one stays on the interpreter tier; the route says why."""
    if os.environ.get("TERRARIUM_SKIP_DOCKER") == "1":
        print("SKIPPED (TERRARIUM_SKIP_DOCKER=1): the pandas run through MCP")
        return
    server = StdioServerParameters(
        command=exe, args=["mcp", "--policy", "policies/local-pandas.yaml"], env=dict(os.environ)
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        r = await s.call_tool("run_python", {"code": PANDAS})
        c = r.structuredContent
        check(not r.isError and c["tier"] == "docker" and c["result"] == 10, "a pandas snippet on docker", r)
        check("docker" in c["route"] and "pandas" in c["route"], "the route says why", c["route"])
        r = await s.call_tool("run_python", {"code": "1+1"})
        check(r.structuredContent["tier"] == "rustpython", "a pure snippet stays", r)


# The default policy and a critical host function (the script runs from the checkout).
CRITICAL_FUNCTION = """
functions:
  transfer:
    critical: true
    command: ["/bin/cat"]   # answers with the call itself, as JSON
"""


async def announced(logs, call, what):
    """The approval request's id, once a log message announces it (at most 60 s)
    while `call` still waits."""
    for _ in range(600):
        if logs or call.done():
            break
        await asyncio.sleep(0.1)
    check(logs and not call.done(), what, (logs, call))
    return logs[0]["approval"]


async def critical_run(exe):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        with open("policies/default.yaml") as default:
            f.write(default.read() + CRITICAL_FUNCTION)
    server = StdioServerParameters(command=exe, args=["mcp", "--policy", f.name], env=dict(os.environ))
    logs, progress = [], []

    async def on_log(params):
        logs.append(params.data)

    async def on_progress(done, total, message):
        progress.append(message)

    async with stdio_client(server) as (read, write), ClientSession(read, write, logging_callback=on_log) as s:
        await s.initialize()
        code = "from host import transfer\ntransfer('acct-1', amount=5)['kwargs']['amount']"
        call = asyncio.create_task(s.call_tool("run_python", {"code": code}, progress_callback=on_progress))
        item = await announced(logs, call, "the client is told the run waits for a human")
        check(f"terrarium approvals approve {item}" in logs[0]["message"], "how to approve", logs[0])
        check(progress and "approval" in (progress[0] or ""), "a progress message while waiting", progress)
        approved = subprocess.run([exe, "approvals", "approve", str(item), "--as", "mcp-test"], capture_output=True)
        check(approved.returncode == 0, "terrarium approvals approve", approved)
        r = await asyncio.wait_for(call, 60)
        check(not r.isError and r.structuredContent["result"] == 5, "the approved run", r)

        # Ending a session whose cell waits for approval stops the cell, and its
        # request can no longer be approved (found by an outside review).
        sid = (await s.call_tool("start_session", {})).structuredContent["session"]
        logs.clear()
        call = asyncio.create_task(s.call_tool("run_python", {"code": code, "session": sid}))
        item = await announced(logs, call, "the session's cell waits for a human")
        ended = await asyncio.wait_for(s.call_tool("end_session", {"session": sid}), 10)
        check(not ended.isError, "end_session while a cell waits", ended)
        r = await asyncio.wait_for(call, 10)
        check(r.isError and "ended" in r.content[0].text, "the stopped cell", r)
        late = subprocess.run([exe, "approvals", "approve", str(item), "--as", "mcp-test"], capture_output=True)
        check(late.returncode != 0, "approving the ended session's request", late)
    os.unlink(f.name)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
