#!/usr/bin/env python3
"""compute-sanitizer memcheck and racecheck over every GPU strategy and dtype.

    python3 bench/gpu_sanitize.py            # both tools, summary at the end
    python3 bench/gpu_sanitize.py --tool memcheck

Each tool runs this file again as a child (``--child TOOL``) under
``compute-sanitizer --tool TOOL``; the child drives every kernel strategy (rows, smem,
long, split, and the strided gather/scatter copy) for float32, float16, float64 (cupy, or
numba device arrays without cupy) and bfloat16 (torch), on the 16-byte vector path and the
scalar path, on small shapes, and checks each result against the float64 reference.
cupy's memory pool is switched off so that every array is its own allocation, and
memcheck pads allocations, so an access past an array's end is reported.
Exit status 0 only when both tools report 0 errors and every child check passed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))


def find_sanitizer():
    exe = shutil.which("compute-sanitizer")
    if exe:
        return exe
    for pattern in ("/usr/local/cuda/bin/compute-sanitizer",
                    "/usr/local/cuda*/bin/compute-sanitizer",
                    "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                    "/opt/nvidia/*/compute-sanitizer/compute-sanitizer"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


# ---------------------------------------------------------------------------------------
# child: the workload

def workload(tool):
    import gpu_helpers as H

    import numbasoftmax as ns
    from numbasoftmax import reference
    from numbasoftmax._cuda import launch

    try:
        import cupy as cp

        cp.cuda.set_allocator(None)  # one cudaMalloc per array: overruns are visible
    except ImportError:
        cp = None
    try:
        import torch

        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    from numba import cuda

    rng = np.random.default_rng(0)
    failures = []
    launches = 0

    def dev(a):
        if cp is not None:
            return cp.asarray(a)
        return H.view_of(a)[0]  # a __cuda_array_interface__ view of a numba device array

    def host(a):
        return a.get() if cp is not None and isinstance(a, cp.ndarray) else a.copy_to_host()

    def inputs(func, m, n, dtype):
        x = rng.standard_normal((m, n)) * 3
        x[0, 0] = -np.inf
        if func in ("softmax", "log_softmax"):
            return [x.astype(dtype)]
        a = reference.softmax(x) if func == "softmax_backward" else reference.log_softmax(x)
        return [a.astype(dtype), rng.standard_normal((m, n)).astype(dtype)]

    def run(func, dtype, m, n, force, vec, layout=None):
        nonlocal launches
        name = f"{func} {dtype} {m}x{n} {force or 'auto'} {'vec' if vec else 'scalar'}"
        try:
            if dtype == "bfloat16":
                hs = inputs(func, m, n, np.float32)
                bits = [H.bf16_bits(h) for h in hs]
                args = [torch.from_numpy(b.view(np.int16)).cuda().view(torch.bfloat16)
                        for b in bits]
                with launch.config.override(force=force, vector=vec):
                    r = getattr(ns, func)(*args)
                torch.cuda.synchronize()
                got = H.bf16_values(r.view(torch.int16).cpu().numpy().view(np.uint16))
                H.assert_close(func, got.astype(np.float64),
                               [H.bf16_values(b).astype(np.float64) for b in bits], -1,
                               "bfloat16")
            else:
                hs = inputs(func, m, n, np.dtype(dtype))
                args = [dev(h) for h in hs]
                axis = -1
                if layout == "transposed":  # gather (copy kernel) in, scatter out
                    args = [a.T for a in args]
                    hs = [h.T for h in hs]
                    axis = 0
                with launch.config.override(force=force, vector=vec):
                    r = getattr(ns, func)(*args, axis=axis)
                    results = [r]
                    if layout == "transposed" and cp is not None:
                        big = dev(np.zeros((hs[0].shape[0], 2 * hs[0].shape[1]), hs[0].dtype))
                        out = big[:, ::2]  # strided out: written through the scatter kernel
                        assert getattr(ns, func)(*args, axis=axis, out=out) is out
                        results.append(out)
                for res in results:
                    H.assert_close(func, host(res).astype(np.float64),
                                   [h.astype(np.float64) for h in hs], axis, dtype)
            launches += 1
        except Exception as err:  # noqa: BLE001
            failures.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")

    # rows of 5000: several warps a row, which exchange their results in shared memory
    cases = [("rows", 3, 40), ("rows", 3, 1000), ("rows", 2, 5000), ("smem", 3, 3000),
             ("long", 2, 20000), (None, 2, 100000)]  # the last: split (few rows)
    funcs_all = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
    funcs_two = ("softmax", "softmax_backward")
    dtypes = ["float32", "float16", "float64"] + (["bfloat16"] if torch is not None else [])
    if tool == "racecheck":  # shared memory: the block strategies and rows of several warps
        cases = [c for c in cases if c[0] != "rows" or c[2] > 2048] + [("rows", 2, 64)]
    if launch.SIM:  # a self-test of this script under the simulator: tiny rows
        cases = [(f, m, min(n, 72)) for f, m, n in cases][:3]
        dtypes = dtypes[:2]
    for force, m, n in cases:
        for dtype in dtypes:
            for vec in (True, False):
                funcs = funcs_all if (dtype == "float32" and tool == "memcheck") else funcs_two
                if not vec and (tool == "racecheck" or dtype not in ("float32", "float16")):
                    continue  # the scalar path's shared-memory use is the vector path's
                for func in funcs:
                    run(func, dtype, m, n if vec else n + 1, force, vec)
        print(f"  child: {force or 'split'} {m}x{n} done", flush=True)
    if not launch.SIM:
        for func in funcs_two:
            run(func, "float32", 5, 37, None, True, layout="transposed")

    def run_lse(m, n, force, vec):
        """logsumexp (weights, mask, sign) and its gradient, float32."""
        nonlocal launches
        try:
            xh = rng.standard_normal((m, n)).astype(np.float32)
            bh = (rng.random((m, n)) + 0.1).astype(np.float32)
            wh = rng.random((m, n)) > 0.3
            x, b, w = dev(xh), dev(bh), dev(wh)
            with launch.config.override(force=force, vector=vec):
                v, sign = ns.logsumexp(x, b=b, where=w, return_sign=True)
                g = ns.logsumexp_backward(x, v, sign, b=b, where=w)
            rv = reference.logsumexp(xh, b=bh, where=wh)
            assert np.allclose(host(v), rv, rtol=1e-5, atol=1e-5)
            ref = reference.logsumexp_backward(xh, rv, np.ones(m), b=bh, where=wh)
            assert np.allclose(host(g), ref, rtol=1e-4, atol=1e-6)
            launches += 2
        except Exception as err:  # noqa: BLE001
            failures.append(f"logsumexp {m}x{n} {force or 'auto'}: {type(err).__name__}: "
                            f"{str(err)[:300]}")

    if tool == "memcheck":
        for force, m, n in [("rows", 3, 40), ("long", 2, 20000), (None, 2, 100000)]:
            for vec in (True, False):
                run_lse(m, min(n, 72) if launch.SIM else n + (0 if vec else 1), force, vec)
    cuda.synchronize()
    print(f"child checks: {launches} passed, {len(failures)} failed", flush=True)
    for f in failures:
        print(f"  FAIL {f}", flush=True)
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------
# parent: run the tools

SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) error")
RACE = re.compile(r"RACECHECK SUMMARY: (\d+) hazard")


def run_tool(exe, tool, timeout):
    base = [exe, "--tool", tool, "--error-exitcode", "97", "--print-limit", "20"]
    extra = ["--padding", "512"] if tool == "memcheck" else ["--racecheck-report", "all"]
    child = [sys.executable, os.path.abspath(__file__), "--child", tool]
    t0 = time.perf_counter()
    for opts in (extra, []):
        try:
            p = subprocess.run(base + opts + child, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired as err:
            out = (err.stdout or b"")
            out = out.decode() if isinstance(out, bytes) else out
            return None, out + f"\n[timed out after {timeout} s]", time.perf_counter() - t0
        out = p.stdout + p.stderr
        if opts and ("Unknown option" in out or "unrecognised option" in out.lower()
                     or "unrecognized option" in out.lower()):
            continue  # an older compute-sanitizer: run without the extra options
        break
    # memcheck: "ERROR SUMMARY: N errors"; racecheck: "RACECHECK SUMMARY: N hazards
    # displayed (E errors, W warnings)" (every hazard counts here, warnings included)
    counts = [int(x.group(1)) for x in (SUMMARY.search(out), RACE.search(out)) if x]
    errors = max(counts) if counts else None
    child_ok = "child checks:" in out and ", 0 failed" in out
    return (errors, child_ok, p.returncode), out, time.perf_counter() - t0


REPORT = re.compile(r"^========= (Invalid __\w+__ (?:read|write) of size \d+ bytes|Program hit "
                    r"\w+|Malloc/Free error|Race reported|Error: .*|Leaked \d+ bytes)"
                    r"(?:.* on CUDA API call to (\w+))?")
# cuda-bindings asks the driver for every entry point it knows, and the driver answers
# CUDA_ERROR_INVALID_VALUE for those it lacks: reported, but no error of this program's
PROBES = ("cuGetProcAddress",)


def error_kinds(out):
    """What the tool reported, by kind (CUDA API errors with the call that returned one)."""
    return collections.Counter(m.group(1) + (f" on {m.group(2)}" if m.group(2) else "")
                               for m in map(REPORT.match, out.splitlines()) if m)


def probes(kinds):
    """How many of the reports are cuda-bindings' probes of the driver's entry points."""
    return sum(c for k, c in kinds.items() if k.rsplit(" on ", 1)[-1].startswith(PROBES))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tool", choices=["memcheck", "racecheck"], action="append")
    ap.add_argument("--child", choices=["memcheck", "racecheck"])
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per tool")
    ap.add_argument("--log-dir", help="write each tool's whole output there")
    ap.add_argument("--verbose", action="store_true", help="print the children's output")
    a = ap.parse_args()
    if a.child:
        return workload(a.child)
    exe = find_sanitizer()
    if exe is None:
        print("compute-sanitizer not found (PATH, /usr/local/cuda*/bin)")
        return 2
    print(f"compute-sanitizer: {exe}", flush=True)
    status = 0
    results = []
    for tool in a.tool or ["memcheck", "racecheck"]:
        res, out, secs = run_tool(exe, tool, a.timeout)
        if a.log_dir:
            os.makedirs(a.log_dir, exist_ok=True)
            with open(os.path.join(a.log_dir, f"sanitize-{tool}.log"), "w") as f:
                f.write(out)
        kinds = error_kinds(out)
        if res is not None and res[0]:
            res = (res[0] - probes(kinds), *res[1:])
        if kinds:
            print(f"---- {tool}: reports by kind")
            for what, count in kinds.most_common():
                print(f"  {count:5d}  {what}")
        tail = "\n".join(out.strip().splitlines()[-25:])
        if a.verbose or res is None or not res[1] or res[0] != 0:
            print(f"---- {tool} output (last lines)\n{tail}", flush=True)
        if res is None:
            results.append(f"{tool}: timed out after {secs:.0f} s")
            status = 1
            continue
        errors, child_ok, rc = res
        checks = [ln for ln in out.splitlines() if ln.startswith("child checks:")]
        results.append(f"{tool}: {errors if errors is not None else '?'} errors "
                       f"({probes(kinds)} driver entry-point probes not counted), "
                       f"{checks[0] if checks else 'child did not finish'} "
                       f"(exit {rc}, {secs:.0f} s)")
        if errors != 0 or not child_ok:
            status = 1
    print("== compute-sanitizer summary")
    for line in results:
        print(f"  {line}")
    print("OK: 0 errors" if status == 0 else "NOT CLEAN")
    return status


if __name__ == "__main__":
    sys.exit(main())
