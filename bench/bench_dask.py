"""numbasoftmax on dask arrays vs the same softmax written in dask.array operations.

    python bench/bench_dask.py [--part threads|cluster|all] [--log2-elements 27]
                               [--repeat 5] [--workers N] [--result-pool 0]
                               [--cluster-log2-elements 28] [--cluster-repeat 3]
                               [--memory-limit 768MiB]

Threaded scheduler (``--part threads``): a float32 array of 2**27 elements (512 MiB), an
in-memory numpy array wrapped with ``da.from_array`` (so the timing is the softmax, not the
data generation), in 16+ chunks: row chunks (one pass), chunks split along the softmax axis
for axis -1, 0 and None (two passes; also timed merged into one chunk first, the one-pass
alternative; logsumexp there too, against max, exp, sum and log in dask.array operations,
and a masked softmax, against the dask.array version on ``da.where(mask, x, -inf)``),
column chunks for axis 0 (one pass). Each result is written into a
preallocated numpy array with ``dask.array.store`` (the same for all, and no 512 MiB
concatenation in the timing). ``--result-pool 1GiB`` runs this part inside
``numbasoftmax.result_pool`` (numbasoftmax's blocks then reuse the memory of blocks dask
has dropped, without page faults; the dask.array version allocates as always).

LocalCluster (``--part cluster``): the issue's set-up (2 GiB, 2 workers of 1.5 GiB) halved
for a 24 GiB, 2-core machine: a float32 array of 2**28 elements (1 GiB, uniform in [0, 1)
as the issue's) generated on the workers by ``da.random`` in row chunks of 64 MiB (16 along
axis 0), 2 worker processes with one thread each and ``memory_limit`` 768 MiB, below one
merged softmax axis for axis 0 and axis None (the whole 1 GiB array).
Asked for: the first chunk's rows of the result and the sums of its rows (which needs every
block); for logsumexp over axis 0 and axis None (against max, exp, sum and log in dask.array
operations) its whole result. Merging the axis is refused by the scheduler there (its
MemoryError is printed). Also timed: the same generation and row sums without a softmax.

Median of ``--repeat`` runs after one warm-up run (which compiles or loads numba's
kernels); the implementations take turns so that noise on a shared machine hits them
alike. Prints Markdown tables with the machine facts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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
from numbasoftmax._bench.environment import CpuLoad, cpu_model  # noqa: E402

med = statistics.median


def dask_ops_softmax(x, axis):
    e = da.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def dask_ops_log_softmax(x, axis):
    s = x - x.max(axis, keepdims=True)
    return s - da.log(da.exp(s).sum(axis, keepdims=True))


def dask_ops_logsumexp(x, axis):
    m = x.max(axis, keepdims=True)
    return (da.log(da.exp(x - m).sum(axis, keepdims=True)) + m).squeeze(axis)


def merged(f):
    """The one-pass alternative: the softmax axes merged into one chunk first."""
    def run(x, axis):
        axes = range(x.ndim) if axis is None else [axis % x.ndim]
        return f(x.rechunk({ax: -1 for ax in axes}), axis=axis)
    return run


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def interleaved(runs, repeat, check=None):
    """(wall, cpu) seconds of ``repeat`` calls of each run, after one warm-up call each;
    the runs take turns."""
    walls = [[] for _ in runs]
    cpus = [[] for _ in runs]
    for i in range(repeat + 1):
        for run, wall, cpu in zip(runs, walls, cpus, strict=True):
            c0, t0 = cpu_seconds(), time.perf_counter()
            run()
            t1, c1 = time.perf_counter(), cpu_seconds()
            if i:
                wall.append(t1 - t0)
                cpu.append(c1 - c0)
            elif check is not None:
                check()
    return walls, cpus


def ratio(ours, theirs):
    """Median of the ratios of back-to-back runs."""
    return med(t / o for o, t in zip(ours, theirs, strict=True))


def threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel numba code ran in this process
        return "no"


def versions(layer=None):
    """Library versions; ``layer``: numba's threading layer where the kernels ran."""
    if layer is None:
        layer = threading_layer()
    return (f"numba {numba.__version__} ({layer} layer, "
            f"{numba.config.NUMBA_NUM_THREADS} threads), dask {dask.__version__}, "
            f"numpy {np.__version__}, Python {platform.python_version()}")


def machine():
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return f"{cpu_model()}; {os.cpu_count()} logical cores ({usable} usable)"


def load_line(load):
    s = load.summary()
    if "others_pct_of_machine" not in s:
        return f"load average at start {s['loadavg_start']}"
    return (f"other processes used {s['others_pct_of_machine']:.0f} % of the machine's "
            f"{s['cpus']} CPUs during this part (load average at start "
            f"{s['loadavg_start']})")


# ---------------------------------------------------------------------------------------
# threaded scheduler


def threads_part(args):
    pool = dask.utils.parse_bytes(args.result_pool)
    with ns.result_pool(pool) if pool else contextlib.nullcontext():
        _threads_part(args, pool)


def _threads_part(args, pool):
    load = CpuLoad()
    n_elements = 1 << args.log2_elements
    cols = 1 << 14
    rows = n_elements // cols
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    out = np.zeros_like(x)
    expected = {axis: ns.softmax(x, axis=axis) for axis in (-1, 0, None)}
    # logsumexp's results: a value per row, stored into arrays of their own
    lse_out = {axis: np.zeros(() if axis is None else np.delete(x.shape, axis), np.float32)
               for axis in (-1, 0, None)}

    sm = ("softmax", ns.softmax, dask_ops_softmax)
    lsm = ("log_softmax", ns.log_softmax, dask_ops_log_softmax)
    lse = ("logsumexp", ns.logsumexp, dask_ops_logsumexp)
    # a random mask of x's shape, 3 in 4 included; the dask.array version fills -inf first
    mask = rng.random(x.shape) < 0.75
    msm = ("softmax where=", functools.partial(ns.softmax, where=mask),
           lambda d, a: dask_ops_softmax(da.where(mask, d, -np.inf), a))
    split = (rows // 8, cols // 2)
    # (label, chunks, axis, functions)
    cases = [
        ("16 row chunks, axis -1", (rows // 16, cols), -1, [sm, lsm]),
        ("64 row chunks, axis -1", (rows // 64, cols), -1, [sm, lsm]),
        ("16 column chunks, axis 0", (rows, cols // 16), 0, [sm]),
        ("8x2 chunks, axis -1", split, -1, [sm, lsm, lse, msm]),
        ("8x2 chunks, axis 0", split, 0, [sm, lse, msm]),
        ("16 row chunks, axis None", (rows // 16, cols), None, [sm, lse]),
        ("8x2 chunks, axis None", split, None, [sm, lse]),
    ]

    def store(make, target):
        return lambda: da.store(make(), target, lock=False, scheduler="threads",
                                num_workers=args.workers)

    table = []
    for label, chunks, axis, funcs in cases:
        dx = da.from_array(x, chunks=chunks)
        axes = range(x.ndim) if axis is None else [axis % x.ndim]
        two = any(len(dx.chunks[ax]) > 1 for ax in axes)
        for name, ours, theirs in funcs:
            makers = [lambda f=ours, d=dx, a=axis: f(d, axis=a),
                      lambda f=theirs, d=dx, a=axis: f(d, a)]
            if two:
                makers.append(lambda f=merged(ours), d=dx, a=axis: f(d, a))
            check = None
            if name == "softmax":
                def check(a=axis):
                    np.testing.assert_allclose(out, expected[a], rtol=1e-5, atol=1e-30)
            target = lse_out[axis] if name == "logsumexp" else out
            if name == "logsumexp":
                def check(a=axis, t=target):
                    np.testing.assert_allclose(t, ns.logsumexp(x, axis=a), rtol=1e-5)
            if name == "softmax where=":
                def check(a=axis):
                    np.testing.assert_allclose(out, ns.softmax(x, axis=a, where=mask),
                                               rtol=1e-5, atol=1e-30)
            walls, cpus = interleaved([store(m, target) for m in makers], args.repeat, check)
            mib = math.prod(chunks) * x.itemsize / 2**20
            cells = [f"{med(w):.3f} ({med(c):.2f})" for w, c in zip(walls, cpus, strict=True)]
            if not two:
                cells.append("–")
            table.append((f"{label}, {mib:g} MiB chunks", name, "two" if two else "one",
                          dx.npartitions, *cells, f"{ratio(walls[0], walls[1]):.1f}x",
                          f"{ratio(walls[0], walls[2]):.1f}x" if two else "–"))
            print(f"  {label} {name}: " + "; ".join(
                f"{[f'{t:.3f}' for t in w]}" for w in walls), file=sys.stderr)

    ns.softmax(x, out=out)
    t_np = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ns.softmax(x, out=out)
        t_np.append(time.perf_counter() - t0)

    workers = args.workers or dask.system.CPU_COUNT
    print(f"**Threaded scheduler** ({n_elements:,} float32 = {x.nbytes / 2**20:.0f} MiB, "
          f"{rows}x{cols}; {workers} worker threads; median of {args.repeat} runs after a "
          "warm-up; result written with `da.store` into a preallocated numpy array)\n")
    print(f"- CPU: {machine()}; {versions()}")
    print(f"- in-memory reference, `numbasoftmax.softmax(x)` on the numpy array: "
          f"{med(t_np):.3f} s ({2 * x.nbytes / 1e9 / med(t_np):.1f} GB/s)")
    print(f"- numbasoftmax's result pool: "
          f"{f'on, limit {args.result_pool}' if pool else 'off (the default)'}")
    print(f"- load: {load_line(load)}\n")
    print("| chunks, axis | function | passes | blocks | numbasoftmax: wall s (CPU s) "
          "| dask.array ops: wall s (CPU s) | merged first, then numbasoftmax: wall s "
          "(CPU s) | × dask ops | × merged |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for row in table:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print("\nwall: median of the runs; CPU: user + system time of the process; ×: median "
          "of the ratios of back-to-back runs (their time / ours).\n")


# ---------------------------------------------------------------------------------------
# LocalCluster


def cluster_part(args):
    import distributed

    load = CpuLoad()
    n_elements = 1 << args.cluster_log2_elements
    cols = 8192
    rows = n_elements // cols
    chunk_rows = rows // 16
    limit = dask.utils.parse_bytes(args.memory_limit)
    nbytes = n_elements * 4

    def source():
        return da.random.default_rng(0).random((rows, cols), chunks=(chunk_rows, cols),
                                               dtype=np.float32)

    def job(make, axis):
        r = make(source(), axis)
        return lambda: dask.compute(r[:chunk_rows], r.sum(axis=1, dtype=np.float64))

    def reduction(make, axis):  # logsumexp: the whole (reduced) result
        r = make(source(), axis)
        return lambda: dask.compute(r)

    results = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit=limit, dashboard_address=None,
                                  silence_logs=50) as cluster, \
            distributed.Client(cluster) as client:
        # the workers compile or load the kernels once, outside the timing
        ns.softmax(source()[:, :64], axis=0).sum().compute()
        ns.softmax(source()[:2 * chunk_rows], axis=None).sum().compute()
        merge_error = None
        try:
            merged(ns.softmax)(source(), 0)[:chunk_rows].compute()
        except MemoryError as err:
            merge_error = str(err).split(". ")[0]
        t_gen, _ = interleaved([lambda: source().sum(axis=1, dtype=np.float64).compute()],
                               args.cluster_repeat)
        layers = set(client.run(threading_layer).values())
        for axis in (0, None):
            (ours, theirs), _ = interleaved(
                [job(lambda x, a: ns.softmax(x, axis=a), axis),
                 job(dask_ops_softmax, axis)], args.cluster_repeat)
            results.append((axis, ours, theirs))
            print(f"  cluster axis {axis}: {[f'{t:.2f}' for t in ours]} "
                  f"{[f'{t:.2f}' for t in theirs]}", file=sys.stderr)
        for axis in (0, None):
            (ours, theirs), _ = interleaved(
                [reduction(lambda x, a: ns.logsumexp(x, axis=a), axis),
                 reduction(dask_ops_logsumexp, axis)], args.cluster_repeat)
            results.append((f"{axis}, logsumexp", ours, theirs))
            print(f"  cluster logsumexp axis {axis}: {[f'{t:.2f}' for t in ours]} "
                  f"{[f'{t:.2f}' for t in theirs]}", file=sys.stderr)

    print(f"**LocalCluster** ({n_elements:,} float32 = {nbytes / 2**30:g} GiB, {rows}x{cols}, "
          f"generated on the workers by `da.random` in 16 row chunks of "
          f"{chunk_rows * cols * 4 / 2**20:g} MiB; 2 worker processes x 1 thread, "
          f"memory_limit {args.memory_limit} each (one merged axis: "
          f"{nbytes / 2**30:g} GiB); asked for: the first chunk of rows of the result and "
          f"the row sums (logsumexp: its whole result); median of {args.cluster_repeat} "
          "runs after a warm-up)\n")
    print(f"- CPU: {machine()}; {versions(', '.join(sorted(layers)))} in the workers, "
          f"distributed {distributed.__version__}")
    print(f"- load: {load_line(load)} (the workers count as other processes here)")
    print(f"- merging the softmax axis first (`x.rechunk({{0: -1}})`): "
          f"{'MemoryError: ' + merge_error if merge_error else 'computed (no error)'}")
    print(f"- generation and row sums alone (no softmax): {med(t_gen[0]):.2f} s\n")
    print("| axis | numbasoftmax (two passes): wall s | dask.array ops: wall s | × dask ops |")
    print("|---|---:|---:|---:|")
    for axis, ours, theirs in results:
        print(f"| {axis} | {med(ours):.2f} | {med(theirs):.2f} | {ratio(ours, theirs):.1f}x |")
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("threads", "cluster", "all"), default="all")
    p.add_argument("--log2-elements", type=int, default=27)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--workers", type=int, default=None,
                   help="threads of the threaded scheduler (default: dask's, the core count)")
    p.add_argument("--result-pool", default="0",
                   help="threaded part: numbasoftmax's result pool limit (e.g. 1GiB; 0: off)")
    p.add_argument("--cluster-log2-elements", type=int, default=28)
    p.add_argument("--cluster-repeat", type=int, default=3)
    p.add_argument("--memory-limit", default="768MiB",
                   help="memory_limit of each of the 2 LocalCluster workers")
    args = p.parse_args()
    if args.part in ("threads", "all"):
        threads_part(args)
    if args.part in ("cluster", "all"):
        cluster_part(args)


if __name__ == "__main__":
    main()
