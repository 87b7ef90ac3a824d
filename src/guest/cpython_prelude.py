# Terrarium's prelude for the tiers that run the real CPython (wasm: CPython on WASI;
# docker: CPython in a container): the `-c` program CPython starts with.
# Its arguments are a nonce, modules to preload, "scratch" when the run has a
# writable /scratch (else "-"), and optionally "mark" (see _mark_stdout). It says "ready" on stderr, then
# reads one request from stdin (lines: allowed modules separated by spaces, the
# policy's read-only mount points separated by tabs, the host functions the run
# may call separated by spaces, the length of the asyncio stand-in's source, then
# that source and the snippet; either to the end of stdin, or framed: a line with
# its length in bytes first, see _next_cell),
# installs the policy, runs the snippet in fresh globals, and ends by writing one
# status line to stderr: "\n<nonce> {json}\n". It imports no pure-Python module
# of its own (start-up is most of the wasm tier's latency); it has its own small
# JSON encoder for the result.
#
# Security: the wall of each tier is outside this program (WebAssembly and WASI; the
# container with its namespaces, cgroup limits, dropped capabilities and read-only
# root). This prelude adds the policy's decisions on top, so that the same policy
# gives the same answer in every tier: imports made by the snippet's own code are
# checked against `allowed_modules` (stdlib modules may still import their own
# helpers), and an audit hook refuses opening files, sockets, subprocesses, os.system
# and ctypes. CPython cannot be fully confined from inside; these are policy, not the
# wall.

import sys

# Arguments: a nonce, and the modules to import before the request (the policy's
# allowed modules: every docker container, a warm wasm instance; empty for a cold
# wasm run). They are imported before the audit hook below exists: a library the
# policy allows may open its data files or load ctypes while it initialises (pandas,
# numpy), which a snippet may not. Everything that does not depend on the request
# happens before the "ready" marker, so a warm instance has done it ahead of demand.
_nonce = sys.argv[1]
for _m in sys.argv[2].split():
    try:
        __import__(_m)
    except Exception:
        pass  # the snippet that imports it will see the error itself
_real_stderr_write = sys.stderr.write
_allowed = frozenset()
# The host functions the run may call (set from the request; see _host_module).
_functions = ()
# Directories the policy mounts read-only (set from the request).
_readable = ()
# A third argument names the run's writable directory, also its working directory:
# "scratch" (/scratch) or "workspace" (/workspace, its copy of a workspace); "-": none.
_writable = {"scratch": "/scratch", "workspace": "/workspace"}.get(sys.argv[3])
# A fourth argument, words: "mark" ends stdout with "\n<nonce> end\n" before the
# status line, so a host that receives stdout and stderr over separate channels
# (docker) knows it has all of stdout once it has both markers, without waiting for
# the process to end; "session" keeps the process for a session's cells: after each
# report it reads the next cell (see _next_cell) and runs it in the same globals.
_flags = sys.argv[4].split() if len(sys.argv) > 4 else []
_mark_stdout = "mark" in _flags
_session = "session" in _flags
_real_stdout = sys.stdout
del sys.argv[1:]


def _module_allowed(name):
    if name == "host" and _functions:
        return True
    parts = name.split(".")
    return any(".".join(parts[: i + 1]) in _allowed for i in range(len(parts)))


import _ast
import builtins as _builtins

_real_import = _builtins.__import__
_getframe = sys._getframe
# The snippet's globals; imports made by code running in them are checked.
_user_globals = {"__name__": "__main__", "__builtins__": _builtins}


# A denial is sticky: the run is reported as denied even if the snippet catches it.
# Each one goes to the host the moment it happens, as its own line on stderr,
# flushed before the snippet regains control: the snippet can change this module's
# state afterwards (it runs in the same interpreter), but not take back a line the
# host already has.
_denial = []
_real_stderr_flush = sys.stderr.flush


def _deny(message):
    if not _denial:
        _denial.append(message)
    try:
        _real_stderr_write("\n" + _nonce + " denied " + _q(message) + "\n")
        _real_stderr_flush()
    except Exception:
        pass  # stderr past the output cap: the run ends output_limit, not ok
    return PermissionError(message)


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    # Imports by the snippet's own code (code running in its globals, whatever
    # globals it passes) are checked; stdlib modules importing their helpers are not.
    if _getframe(1).f_globals is _user_globals:
        if level != 0:
            raise _deny("relative imports are not available to snippets")
        if not _module_allowed(name):
            raise _deny("import of %r is not allowed by the policy" % (name,))
    return _real_import(name, globals, locals, fromlist, level)


_builtins.__import__ = _guarded_import

_DENIED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.fork",
                  "os.posix_spawn", "ctypes.", "pty.", "shutil.")


# The import system reads the stdlib where the interpreter found it at start-up.
_STDLIB = tuple(q for q in (p.rstrip("/") for p in sys.path if p.startswith("/")) if q)


def _audit(event, args):
    if event == "open":
        path, mode = args[0], args[1]
        if path == "<snippet>":
            # CPython looking for the source line of a SyntaxError: no such file,
            # and not the snippet's doing, so no denial.
            raise FileNotFoundError(2, "No such file or directory", path)
        if _writable and isinstance(path, str):
            # Absolute under the writable directory, or relative to it (the working
            # directory).
            inside = path == _writable or path.startswith(_writable + "/") or not path.startswith("/")
            if inside and ".." not in path.split("/"):
                return
        reading = mode is None or (isinstance(mode, str) and not set(mode) & set("wax+"))
        # Absolute, no "..": a prefix test then says where the file is.
        plain = isinstance(path, str) and path.startswith("/") and ".." not in path.split("/")
        if reading and plain:
            for r in _STDLIB + _readable:
                if path == r or path.startswith(r + "/"):
                    return
        raise _deny("opening files is not allowed in the sandbox")
    for d in _DENIED_EVENTS:
        if event.startswith(d):
            raise _deny("%s is not allowed in the sandbox" % (event,))


sys.addaudithook(_audit)


def _q(text):
    # A JSON string, without importing json.
    out = ['"']
    for c in text:
        o = ord(c)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif 0x20 <= o < 0x7F:
            out.append(c)
        elif o > 0xFFFF:
            o -= 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 + (o >> 10), 0xDC00 + (o & 0x3FF)))
        else:
            out.append("\\u%04x" % o)
    out.append('"')
    return "".join(out)


def _to_json(v, depth):
    # What json.dumps(v, allow_nan=False) gives for JSON-representable values; raises
    # TypeError/ValueError otherwise. (Importing json costs ~35 ms here.)
    if depth > 500:
        raise ValueError("too deep")
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("not finite")
        return float.__repr__(v)
    if isinstance(v, str):
        return _q(v)
    # Plain loops, not generators inside join(): Python-to-Python recursion uses no C
    # stack, and this build's C stack is small.
    if isinstance(v, (list, tuple)):
        parts = []
        for x in v:
            parts.append(_to_json(x, depth + 1))
        return "[" + ", ".join(parts) + "]"
    if isinstance(v, dict):
        items = []
        for k, x in v.items():
            if isinstance(k, str):
                key = _q(k)
            elif k is None or isinstance(k, (bool, int, float)):
                key = _q(_to_json(k, depth + 1))
            else:
                raise TypeError("key")
            items.append(key + ": " + _to_json(x, depth + 1))
        return "{" + ", ".join(items) + "}"
    raise TypeError("not JSON")


def _report(status):
    sys.stdout.flush()
    if _mark_stdout:
        _real_stdout.write("\n" + _nonce + " end\n")
    _real_stdout.flush()
    sys.stderr.flush()
    body = ", ".join("%s: %s" % (_q(k), "null" if v is None else _q(v)) for k, v in status.items())
    _real_stderr_write("\n" + _nonce + " {" + body + "}\n")
    sys.stderr.flush()


def _run(code):
    # The C `_ast` module, not `ast` (which costs milliseconds to import here).
    try:
        tree = compile(code, "<snippet>", "exec", _ast.PyCF_ONLY_AST)
    except SyntaxError as e:
        return {"kind": "exception", "type": "SyntaxError", "message": str(e)}
    last = None
    if tree.body and isinstance(tree.body[-1], _ast.Expr):
        last = _ast.Expression(tree.body.pop().value)
    g = _user_globals
    try:
        exec(compile(tree, "<snippet>", "exec"), g)
        value = eval(compile(last, "<snippet>", "eval"), g) if last is not None else None
    except BaseException as e:  # the snippet's own failure, SystemExit included
        if _denial:
            return {"kind": "denied", "type": "PolicyDenied", "message": _denial[0]}
        return {"kind": "exception", "type": type(e).__name__, "message": str(e)}
    if _denial:
        return {"kind": "denied", "type": "PolicyDenied", "message": _denial[0]}
    result = None
    if value is not None:
        try:
            result = _to_json(value, 0)
        except (TypeError, ValueError, RecursionError):
            result = None
    return {"kind": "ok", "result": result}


def _request(text):
    # One request: sets the policy it carries, returns (asyncio source, snippet).
    global _allowed, _readable, _functions
    allowed_text, readable_text, functions_text, asyncio_len, rest = text.split("\n", 4)
    _allowed = frozenset(allowed_text.split())
    _readable = tuple(p for p in readable_text.split("\t") if p)
    _functions = tuple(functions_text.split())
    if _functions:
        sys.modules["host"] = _host_module()
    else:
        sys.modules.pop("host", None)
    return rest[: int(asyncio_len)], rest[int(asyncio_len):]


# A session's requests, and a single run's that may call host functions, are
# framed: a line with the length in bytes, then the request. Host function replies
# come the same way.
_stdin = sys.stdin.buffer


def _read_frame(first=None):
    header = first if first is not None else _stdin.readline()
    if not header:
        return None
    size = int(header)
    body = _stdin.read(size)
    return body.decode("utf-8") if len(body) == size else None


def _next_cell():
    return _read_frame()


def _first_request():
    # Framed (its first line is a length: a module list never starts with a
    # digit) or the whole of stdin.
    header = _stdin.readline()
    if header.strip().isdigit():
        return _read_frame(header)
    return (header + _stdin.read()).decode("utf-8")


_RAISABLE = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError, "LookupError": LookupError,
             "PermissionError": PermissionError, "TimeoutError": TimeoutError, "RuntimeError": RuntimeError,
             "NotImplementedError": NotImplementedError, "ConnectionError": ConnectionError}


def _host_call(name, args, kwargs):
    # One call: a line on stderr, "\n<nonce> call [name, {args, kwargs}]\n", then
    # the host's framed reply on stdin. The host checks every call; this side
    # only carries it.
    try:
        payload = _to_json([name, {"args": list(args), "kwargs": kwargs}], 0)
    except (TypeError, ValueError, RecursionError):
        raise TypeError("host function %s's arguments must be JSON values: dict with str keys, list, tuple, "
                        "str, int, float, bool or None" % (name,)) from None
    sys.stdout.flush()
    _real_stderr_write("\n" + _nonce + " call " + payload + "\n")
    _real_stderr_flush()
    text = _read_frame()
    if text is None:
        raise RuntimeError("the host did not answer host function %s" % (name,))
    import json as _json

    reply = _json.loads(text)
    if "value" in reply:
        return reply["value"]
    if "refused" in reply:
        raise _deny(reply["refused"])
    kind, message = reply["raise"]
    raise _RAISABLE.get(kind, RuntimeError)(message)


def _host_function(name):
    def call(*args, **kwargs):
        return _host_call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _host_module():
    import types as _types

    m = _types.ModuleType("host", "The host functions the policy declares.")
    for name in _functions:
        setattr(m, name, _host_function(name))
    return m


# Ready: read the request.
sys.stderr.write("\n" + _nonce + " ready\n")
sys.stderr.flush()
if _session:
    # The requests' channel is the prelude's alone: a cell reading it gets nothing
    # (its own session's requests come only after its report).
    sys.stdin = None
    _text = _next_cell()
    if _text is None:
        import posix as _posix

        _posix._exit(0)
    _asyncio_source, _code = _request(_text)
else:
    _asyncio_source, _code = _request(_first_request())
    if _functions:
        # The channel carries the host's replies: the snippet does not read it.
        sys.stdin = None

if _writable:
    import posix as _posix_cwd

    _posix_cwd.chdir(_writable)

# asyncio: the real event loop opens a socketpair for its self-pipe, which WASI lacks
# and the audit hook refuses; the snippet gets Terrarium's socket-free event loop
# (the same one the rustpython tier has).
if _module_allowed("asyncio"):
    import types as _types

    _asyncio = _types.ModuleType("asyncio", "Terrarium stand-in: an event loop with no sockets, pipes or threads.")
    exec(compile(_asyncio_source, "<terrarium asyncio>", "exec"), _asyncio.__dict__)
    sys.modules["asyncio"] = _asyncio

del _asyncio_source
_report(_run(_code))
while _session:
    _text = _next_cell()
    if _text is None:
        break
    # Denials are per cell (each one already reached the host as its own line).
    del _denial[:]
    _report(_run(_request(_text)[1]))
# Skip interpreter finalisation (milliseconds inside wasm): the instance is discarded.
import posix as _posix

_posix._exit(0)
