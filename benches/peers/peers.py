"""Measures Terrarium against its peers on the same snippets, in one run.

Each cell is the round trip of one request with fresh state, as a caller sees it:
- terrarium isolated: `terrarium bench` (a confined single-use child of a warm
  zygote; the pool is refilled, untimed, between requests)
- terrarium embedded: `terrarium bench --embedded` (warm interpreter in-process,
  fresh globals; for trusted code)
- terrarium wasm (warm): `terrarium bench --wasm` (CPython 3.12 on WASI under
  wasmtime; a single-use instance started ahead of the request, waiting on stdin)
- terrarium wasm (cold): `terrarium bench --wasm-cold` (a fresh instance per request,
  so CPython's start-up is in every figure)
- terrarium docker (warm): `terrarium bench --docker` (CPython in a hardened
  container of a local Docker engine, started ahead of the request)
- terrarium docker (cold): `terrarium bench --docker-cold` (create, start, run and
  remove a container per request)
- terrarium python package: `terrarium.Sandbox().run(code)` from this Python process
  (the wheel scripts/build-python builds: the same isolated mode, its zygote the
  shipped binary), when the wheel is installed here: back to back (each request may
  wait for the pool's next fork), and paced (5 ms untimed between requests, so the
  pool refills, as `terrarium bench` waits for its refill)
- terrarium run -c: the command, one process per request (its start-up, the
  zygote's and the audit log's included)
- cpython exec: exec(compile(code)) with fresh globals in this process (no sandbox)
- monty: a session checked out of a pydantic-monty worker pool per request

The four cells the goals compare (terrarium isolated and embedded, cpython exec,
monty) are measured in ROUNDS interleaved rounds of N/ROUNDS requests, the order
rotated each round, and report the median of the rounds' p50 and p99: this machine's
speed drifts within a minute, and measuring one engine after another would put the
drift into the ratios. The table ends with those ratios.
"""

import argparse
import json
import platform
import subprocess
import time

SNIPPETS = [
    ("1+1", "1+1"),
    ("sum(range(10000))", "sum(range(10000))"),
    ("10k-iteration loop", "t = 0\nfor i in range(10000):\n    t += i\nt"),
    ("json.dumps(list(range(100)))", "import json\njson.dumps(list(range(100)))"),
]


# Interleaved rounds of the compared cells (see the module doc).
ROUNDS = 5


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


def terrarium(binary, code, n, mode=None, policy=None):
    args = [binary, "bench", "-n", str(n), "-c", code]
    if mode:
        args.insert(2, mode)
    if policy:
        args[2:2] = ["--policy", policy]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
    r = json.loads(out.stdout)
    return (r["p50_us"], r["p99_us"]), None


def timed(fn, n, warm=20, pause=0.0):
    for _ in range(warm):
        fn()
    samples = []
    for _ in range(n):
        if pause:
            time.sleep(pause)
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return (pct(samples, 0.5), pct(samples, 0.99)), None


def cpython(code, n):
    def once():
        exec(compile(code, "<snippet>", "exec"), {})

    return timed(once, n)


def python_package_runner():
    try:
        import terrarium as package
    except ImportError as e:
        why = f"not installed ({e}); scripts/build-python builds it"
        return lambda code, n, pause=0.0: (None, why)
    sandbox = package.Sandbox(audit=False, pool_size=4)

    def run(code, n, pause=0.0):
        def once():
            out = sandbox.run(code)
            if not out.ok:
                raise RuntimeError(out.error)

        return timed(once, n, pause=pause)

    return run


def command(binary, code, n):
    def once():
        out = subprocess.run([binary, "run", "-c", code], capture_output=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-200:])

    return timed(once, n, warm=2)


def monty_runner():
    import pydantic_monty

    pool = pydantic_monty.Monty()
    pool.__enter__()

    def run(code, n):
        def once():
            with pool.checkout() as s:
                s.feed_run(code)

        try:
            once()
        except Exception as e:  # a snippet Monty does not support
            return None, f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
        return timed(once, n)

    return run, pool


def interleaved(cells, n):
    """Runs each (name, fn(n)) cell in ROUNDS rounds of n // ROUNDS requests, the
    order rotated each round; returns name -> ((median p50, median p99), err)."""
    per_round = max(1, n // ROUNDS)
    got = {name: [] for name, _ in cells}
    errors = {}
    for r in range(ROUNDS):
        for name, fn in cells[r % len(cells):] + cells[:r % len(cells)]:
            if name in errors:
                continue
            res, err = fn(per_round)
            if res is None:
                errors[name] = err
            else:
                got[name].append(res)
    out = {}
    for name, _ in cells:
        if name in errors:
            out[name] = (None, errors[name])
        else:
            rounds = got[name]
            out[name] = ((pct([x[0] for x in rounds], 0.5), pct([x[1] for x in rounds], 0.5)), None)
    return out


def goals(rows, monty_name):
    """The issue's goals as ratios of this run's figures."""
    lines = ["", "Goals, from the interleaved cells above:", ""]
    for name, cells in rows:
        iso, mon = cells["terrarium isolated"][0], cells[monty_name][0]
        if iso and mon:
            lines.append(f"- {name}: isolated p50 / Monty p50 = {iso[0] / mon[0]:.2f}x (goal <= 1), "
                         f"isolated p99 / p50 = {iso[1] / iso[0]:.2f}x (goal <= 3)")
    emb, cpy = rows[0][1]["terrarium embedded"][0], rows[0][1]["cpython exec (no sandbox)"][0]
    if emb and cpy:
        lines.append(f"- {rows[0][0]}: embedded p50 / CPython exec p50 = {emb[0] / cpy[0]:.2f}x (goal <= 2)")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--terrarium", required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--monty-version", default="?")
    ap.add_argument("--docker-policy", required=True, help="a policy whose image the local engine has")
    a = ap.parse_args()
    monty, pool = monty_runner()
    package = python_package_runner()
    rows = []
    for name, code in SNIPPETS:
        compared = interleaved([
            ("terrarium isolated", lambda n, code=code: terrarium(a.terrarium, code, n)),
            ("terrarium embedded", lambda n, code=code: terrarium(a.terrarium, code, n, "--embedded")),
            ("cpython exec (no sandbox)", lambda n, code=code: cpython(code, n)),
            (f"monty {a.monty_version}", lambda n, code=code: monty(code, n)),
        ], a.n)
        cells = {
            "terrarium isolated": compared["terrarium isolated"],
            "terrarium embedded": compared["terrarium embedded"],
            "terrarium python package": package(code, a.n),
            "terrarium python package (paced)": package(code, a.n, pause=0.005),
            # A process per request: its start-up and the zygote's, fewer samples.
            "terrarium run -c": command(a.terrarium, code, min(a.n, 20)),
            # Each request starts (or, warm, refills) a CPython: tens of ms, fewer samples.
            "terrarium wasm (warm)": terrarium(a.terrarium, code, min(a.n, 40), "--wasm"),
            "terrarium wasm (cold)": terrarium(a.terrarium, code, min(a.n, 40), "--wasm-cold"),
            # A container per request: ~100 ms of the engine's time each, fewer samples.
            "terrarium docker (warm)": terrarium(a.terrarium, code, min(a.n, 20), "--docker", a.docker_policy),
            "terrarium docker (cold)": terrarium(a.terrarium, code, min(a.n, 20), "--docker-cold", a.docker_policy),
            "cpython exec (no sandbox)": compared["cpython exec (no sandbox)"],
            f"monty {a.monty_version}": compared[f"monty {a.monty_version}"],
        }
        rows.append((name, cells))
    pool.__exit__(None, None, None)

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.system()} {platform.release()}, {cpu}, "
          f"{__import__('os').cpu_count()} cores, N={a.n} per cell, p50/p99 in µs")
    print()
    print("| snippet | engine | p50 µs | p99 µs | p50 vs terrarium isolated |")
    print("|---|---|---:|---:|---:|")
    for name, cells in rows:
        base = cells["terrarium isolated"][0]
        for engine, (r, err) in cells.items():
            if r is None:
                print(f"| {name} | {engine} | n/a | n/a | {err} |")
                continue
            ratio = f"{r[0] / base[0]:.2f}x" if base else "n/a"
            print(f"| {name} | {engine} | {r[0]:.0f} | {r[1]:.0f} | {ratio} |")
    print(goals(rows, f"monty {a.monty_version}"))


if __name__ == "__main__":
    main()
