"""`terrarium mcp` driven by the official MCP Python SDK (`mcp` on PyPI) as a real
client: list the tools, run print(6*7), a snippet the policy denies, one that times
out, and a session's cells. Exits non-zero with the reason on the first mismatch.

    python mcp_client.py /path/to/terrarium
"""

import asyncio
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def check(ok, what, got):
    if not ok:
        sys.exit(f"mcp client: {what}: {got!r}")


async def main(exe):
    server = StdioServerParameters(command=exe, args=["mcp"])
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
    print("mcp client: ok (the official Python SDK: tools listed, ok, denied, timeout, session)")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
