# Terrarium's wall probe for the docker tier. It runs in a container with the
# policy's hardening but WITHOUT the prelude's policy, tries what a snippet must not
# be able to do, and prints one JSON object saying what happened to each attempt.
# Arguments: host:port addresses to try to connect to.
import errno
import json
import os
import signal
import socket
import sys
import time

report = {}


def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


report["uid"] = os.getuid()
report["gid"] = os.getgid()
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        if key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs"):
            report[key] = value.strip()
report["interfaces"] = sorted(os.listdir("/sys/class/net"))


def connect(target):
    host, port = target.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=3).close()


report["connect"] = {t: attempt(lambda t=t: connect(t)) for t in sys.argv[1:]}
report["write_root"] = attempt(lambda: open("/terrarium-probe", "w").close())
report["write_usr"] = attempt(lambda: open("/usr/local/bin/terrarium-probe", "w").close())


def write_tmp():
    with open("/tmp/probe", "w") as f:
        f.write("x")


report["write_tmp"] = attempt(write_tmp)


# Executing a file written to /tmp (noexec): the child reports exec's errno.
def exec_tmp():
    with open(sys.executable, "rb") as src, open("/tmp/probe-exe", "wb") as dst:
        dst.write(src.read())
    os.chmod("/tmp/probe-exe", 0o755)
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/tmp/probe-exe", ["probe-exe", "-c", "pass"])
        except OSError as e:
            os._exit(e.errno)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise OSError(code, os.strerror(code))


report["exec_tmp"] = attempt(exec_tmp)
report["mknod"] = attempt(lambda: os.mknod("/tmp/probe-null", 0o600 | 0o020000, os.makedev(1, 3)))
report["setuid_root"] = attempt(lambda: os.setuid(0))
report["chroot"] = attempt(lambda: os.chroot("/tmp"))

# A fork bomb: fork until the kernel refuses, then count.
children = []
forks_refused = None
for _ in range(10000):
    try:
        pid = os.fork()
    except OSError as e:
        forks_refused = errno.errorcode.get(e.errno, str(e.errno))
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
report["forks"] = len(children)
report["forks_refused"] = forks_refused
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)

# What the image holds, for the operator's inventory (`terrarium doctor --json`):
# every distribution with metadata, and every top-level package in the site
# directories that has none (an image may strip it), by its `__version__`.
report["python"] = sys.version.split()[0]
packages = {}
try:
    import importlib.metadata as metadata

    for d in metadata.distributions():
        if d.metadata["Name"]:
            packages[d.metadata["Name"]] = d.version
except Exception as e:  # an image without package metadata still reports its walls
    packages["<metadata unreadable>"] = repr(e)
known = {name.lower().replace("-", "_") for name in packages}
for site in [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]:
    try:
        entries = sorted(os.listdir(site))[:200]
    except OSError:
        continue
    for entry in entries:
        name = entry[:-3] if entry.endswith(".py") else entry
        if not name.isidentifier() or name.startswith("_") or name.lower() in known:
            continue
        try:
            module = __import__(name)
            packages[name] = str(getattr(module, "__version__", "unknown"))
        except Exception:  # noqa: BLE001 - a broken package is listed, not fatal
            packages[name] = "not importable"
        known.add(name.lower())
report["packages"] = packages

print(json.dumps(report, sort_keys=True), flush=True)
