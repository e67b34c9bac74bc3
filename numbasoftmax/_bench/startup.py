"""Start-up: what a script that runs once waits for before its first results.

Each measurement is a fresh Python process that imports numbasoftmax and makes a first
8x128 call, then a first 1000x1000 call (float32, the last axis), timed from the start of
the import to the end of the second call. "cold": numba's disk cache is empty (every kernel
compiles); "warm": a second process with the cache the first one left.

Where the time goes: "import" is numpy + numba + numbasoftmax; "numba set-up" (cold only)
is numba's one-time registration of its implementations before its first compile (it
imports most of numba, and scipy.linalg when scipy is installed), which a warm process
skips: loading machine code from the cache needs none of it; the rest of a cold call is
compiling the drivers it runs, split into LLVM's optimization and code generation and
numba's own typing and lowering (from numba's compile timers). Python writes and reuses its
bytecode files as a user's installation does, whatever ``PYTHONDONTWRITEBYTECODE`` says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
c0 = time.process_time()
import numpy as np
import numbasoftmax
t1 = time.perf_counter()
if sys.argv[2] == "cold":  # what its first compile would do anyway
    from numba.core.registry import cpu_target
    cpu_target.target_context.refresh()
t1b = time.perf_counter()
f = getattr(numbasoftmax, sys.argv[1])
def args(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if sys.argv[1] == "logsumexp_backward":  # x, then a value per row twice
        return (x, x[:, 0].copy(), x[:, 1].copy())
    return (x, x) if sys.argv[1].endswith("backward") else (x,)
small, large = args((8, 128)), args((1000, 1000))
t2 = time.perf_counter()
f(*small)
t3 = time.perf_counter()
f(*large)
t4 = time.perf_counter()
from numba.core.dispatcher import Dispatcher
from numbasoftmax import _cpu_kernels
compiled, llvm = {}, 0.0
drivers = [(name, getattr(_cpu_kernels, name)) for name in _cpu_kernels.__all__]
drivers += [("tasks loop", _cpu_kernels._tasks)]
for name, d in drivers:
    if not isinstance(d, Dispatcher):
        continue
    for cres in d.overloads.values():
        timers = (cres.metadata or {}).get("timers", {})
        if timers:  # compiled in this process (a cache load has no timers)
            compiled[name] = compiled.get(name, 0.0) + timers.get("compiler_lock", 0.0)
            llvm += timers.get("llvm_lock", 0.0)
print(json.dumps({"import": t1 - t0, "setup": t1b - t1, "small": t3 - t2, "large": t4 - t3,
                  "total": (t1b - t0) + (t3 - t2) + (t4 - t3), "compiled": compiled,
                  "llvm": llvm, "cpu": time.process_time() - c0}))
"""


def _once(op, cache_dir, kind):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, op, kind], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"start-up measurement of {op} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(ops):
    """{op: {"cold": {...}, "warm": {...}}} in seconds, each op with its own empty cache."""
    out = {}
    for op in ops:
        with tempfile.TemporaryDirectory(prefix="numbasoftmax-startup-") as cache:
            cold = _once(op, cache, "cold")
            warm = _once(op, cache, "warm")
        out[op] = {"cold": cold, "warm": warm}
    return out


def table(startup):
    """(title, header, rows) for the report."""
    header = ["op", "cold: import", "numba set-up", "first 8x128", "first 1000x1000",
              "cold total", "cold CPU time", "of which LLVM", "drivers compiled (s)", "warm total",
              "warm: import"]
    rows = []
    for op, r in startup.items():
        c, w = r["cold"], r["warm"]
        drivers = ", ".join(f"{k} {v:.1f}" for k, v in c.get("compiled", {}).items())
        rows.append([op, f"{c['import']:.2f} s", f"{c.get('setup', 0):.2f} s",
                     f"{c['small']:.2f} s", f"{c['large']:.2f} s", f"{c['total']:.2f} s",
                     f"{c.get('cpu', 0):.2f} s", f"{c.get('llvm', 0):.2f} s", drivers or "–",
                     f"{w['total']:.2f} s", f"{w['import']:.2f} s"])
    title = ("Start-up, CPU (a fresh process: import + first 8x128 + first 1000x1000 call, "
             "float32; cold = empty numba cache, warm = the cache the cold run left; wall-clock "
             "times except the CPU time, which other processes do not inflate)")
    return title, header, rows
