#!/usr/bin/env python3
"""Plain calls in a loop, result pool off against on, per result size.

    python bench/bench_pool.py [--threads N] [--rounds 5]

float32 rows of 1024; results of 4 to 256 MiB. Each call's result is dropped before the
next call (a training step, a benchmark loop). Pool off (the default) and on
(``numbasoftmax.set_result_pool_limit(1 GiB)``) take turns, round after round; printed: the
median per-call time over the rounds and the minor page faults per call (Linux).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numbasoftmax  # noqa: E402

SIZES_MIB = (4, 16, 32, 64, 256)
ROW = 1024


def _faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _loop(f, args, reps):
    """(median seconds per call, page faults per call) of ``reps`` calls."""
    times = []
    f0 = _faults()
    for _ in range(reps):
        t0 = time.perf_counter()
        r = f(*args)
        times.append(time.perf_counter() - t0)
        del r
    return float(np.median(times)), (_faults() - f0) / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if a.threads:
        numba.set_num_threads(a.threads)
    print(f"numba {numba.get_num_threads()} threads; median per call over {a.rounds} rounds")
    print("| result | op | pool off ms | pool on ms | faults/call off | on |")
    print("|---|---|---|---|---|---|")
    previous = numbasoftmax.set_result_pool_limit(0)
    try:
        for mib in SIZES_MIB:
            x = np.random.default_rng(0).standard_normal((mib * (1 << 20) // 4 // ROW, ROW),
                                                         dtype=np.float32)
            y = numbasoftmax.softmax(x)
            for op, args in (("softmax", (x,)), ("softmax_backward", (y, np.ones_like(x)))):
                f = getattr(numbasoftmax, op)
                reps = max(5, int(2e9 // (3 * x.nbytes)))
                got = {0: [], 1 << 30: []}
                for _ in range(a.rounds):
                    for limit, rows in got.items():
                        numbasoftmax.set_result_pool_limit(limit)
                        del_ = f(*args)  # warm: the pool holds a buffer of this size
                        del del_
                        rows.append(_loop(f, args, reps))
                numbasoftmax.set_result_pool_limit(0)
                (off, foff), (on, fon) = (np.median(np.array(v), axis=0) for v in got.values())
                print(f"| {mib} MiB | {op} | {off * 1e3:.2f} | {on * 1e3:.2f} | {foff:.0f} | "
                      f"{fon:.0f} |", flush=True)
    finally:
        numbasoftmax.set_result_pool_limit(previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
