"""numbasoftmax on dask arrays vs the same softmax written in dask.array operations.

    python bench/bench_dask.py [--log2-elements 27] [--repeat 5] [--workers N]

A float32 array of 2**27 elements (512 MB) in 16+ chunks, threaded scheduler. Each result
is written into a preallocated numpy array with ``dask.array.store`` (the same for both, and
no 512 MB concatenation in the timing). The input is an in-memory numpy array wrapped with
``da.from_array``, so the timing is the softmax, not the data generation. Median of
``--repeat`` runs after one warm-up run (which compiles or loads numba's kernels). Prints a
Markdown table with the machine facts.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import sys
import time

import dask
import dask.array as da
import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numbasoftmax as ns  # noqa: E402
from numbasoftmax._bench.environment import cpu_model  # noqa: E402


def dask_ops_softmax(x, axis):
    e = da.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def dask_ops_log_softmax(x, axis):
    s = x - x.max(axis, keepdims=True)
    return s - da.log(da.exp(s).sum(axis, keepdims=True))


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(makers, out, repeat, workers, check=None):
    """(wall, cpu) seconds of ``repeat`` runs of store(make(), out) for each maker, after
    one warm-up run each; the makers take turns so that noise on a shared machine hits all
    of them alike."""
    walls = [[] for _ in makers]
    cpus = [[] for _ in makers]
    for i in range(repeat + 1):
        for make, wall, cpu in zip(makers, walls, cpus, strict=True):
            c0, t0 = cpu_seconds(), time.perf_counter()
            da.store(make(), out, lock=False, scheduler="threads", num_workers=workers)
            t1, c1 = time.perf_counter(), cpu_seconds()
            if i:
                wall.append(t1 - t0)
                cpu.append(c1 - c0)
            if check is not None and i == 0:
                check()
    return walls, cpus


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log2-elements", type=int, default=27)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--workers", type=int, default=None,
                   help="threads of the threaded scheduler (default: dask's, the core count)")
    args = p.parse_args()

    n_elements = 1 << args.log2_elements
    cols = 1 << 14
    rows = n_elements // cols
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    out = np.zeros_like(x)
    expected = ns.softmax(x[:4])

    # (label, chunks, axis, functions): row blocks (no rechunk needed) of 32 and 8 MiB;
    # 8x2 blocks, split along the axis as well (the rechunk merges them into 8 row blocks);
    # 16 column blocks with axis 0 (rows of the softmax are strided in memory)
    sm, lsm = ("softmax", ns.softmax, dask_ops_softmax), ("log_softmax", ns.log_softmax,
                                                          dask_ops_log_softmax)
    cases = [
        ("16 row chunks, axis -1", (rows // 16, cols), -1, [sm, lsm]),
        ("64 row chunks, axis -1", (rows // 64, cols), -1, [sm, lsm]),
        ("8x2 chunks (split along the axis), axis -1", (rows // 8, cols // 2), -1, [sm]),
        ("16 column chunks, axis 0", (rows, cols // 16), 0, [sm]),
    ]

    rows_out = []
    for label, chunks, axis, funcs in cases:
        dx = da.from_array(x, chunks=chunks)
        for name, ours, theirs in funcs:
            check = None
            if name == "softmax" and axis == -1:
                def check():
                    np.testing.assert_allclose(out[:4], expected, rtol=1e-5, atol=1e-12)
            (all_ours, all_theirs), (cpu_ours, cpu_theirs) = timed(
                [lambda f=ours, d=dx, a=axis: f(d, axis=a),
                 lambda f=theirs, d=dx, a=axis: f(d, a)],
                out, args.repeat, args.workers, check)
            med = statistics.median
            ratio = med(t / o for o, t in zip(all_ours, all_theirs, strict=True))
            chunk_mib = math.prod(chunks) * x.itemsize / 2**20
            rows_out.append((f"{label}, {chunk_mib:g} MiB chunks", name, dx.npartitions,
                             med(all_ours), med(cpu_ours), med(all_theirs), med(cpu_theirs),
                             ratio))
            print(f"  {label} {name}: numbasoftmax {[f'{t:.3f}' for t in all_ours]} "
                  f"dask ops {[f'{t:.3f}' for t in all_theirs]}", file=sys.stderr)

    # reference: numbasoftmax on the whole in-memory numpy array (numba's own threads)
    ns.softmax(x, out=out)
    t_np = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ns.softmax(x, out=out)
        t_np.append(time.perf_counter() - t0)

    workers = args.workers or dask.system.CPU_COUNT
    print(f"**Dask benchmark** ({n_elements:,} float32 = {x.nbytes / 2**20:.0f} MiB; "
          f"threaded scheduler, {workers} worker threads; median of {args.repeat} runs after "
          "a warm-up; result written with `da.store` into a preallocated numpy array)\n")
    print(f"- CPU: {cpu_model()}; {os.cpu_count()} logical cores "
          f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} "
          f"usable); numba {numba.__version__} ({numba.threading_layer()} layer, "
          f"{numba.config.NUMBA_NUM_THREADS} threads), dask {dask.__version__}, "
          f"numpy {np.__version__}, Python {platform.python_version()}")
    print(f"- in-memory reference, `numbasoftmax.softmax(x)` on the numpy array: "
          f"{statistics.median(t_np):.3f} s ({2 * x.nbytes / 1e9 / statistics.median(t_np):.1f}"
          " GB/s)\n")
    print(f"{rows}x{cols} float32 array:\n")
    print("| chunks, axis | function | blocks in | numbasoftmax on dask: wall s (CPU s) "
          "| dask.array ops: wall s (CPU s) | speed-up (wall) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, name, nb, t_ours, c_ours, t_theirs, c_theirs, ratio in rows_out:
        print(f"| {label} | {name} | {nb} | {t_ours:.3f} ({c_ours:.2f}) "
              f"| {t_theirs:.3f} ({c_theirs:.2f}) | {ratio:.1f}x |")
    print("\nwall: median of the runs; CPU: user + system time of the process; speed-up: "
          "median of the ratios of back-to-back runs.")


if __name__ == "__main__":
    main()
