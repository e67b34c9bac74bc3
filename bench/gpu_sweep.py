#!/usr/bin/env python3
"""The launch tunables against each other on a GPU, to choose the planner's thresholds.

For each function and row length, the default plan and alternatives set through
``launch.config.override`` (a strategy forced, the longest row kept in a warp's registers,
the values a thread holds of a row spread over several warps, the block size), timed with
CUDA events, in GB/s and % of the same-run device-to-device copy; M*N = 2^26. A
configuration whose plan cannot be made is reported and skipped. Run on a machine with a
GPU and cupy (bench/GPU.md):

    python3 bench/gpu_sweep.py [--funcs softmax,softmax_backward] [--sizes 2048,4096]
        [--dtype float32] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ELEMENTS = 1 << 26
CONFIGS = {  # name: tunables (None: the planner's own choice)
    "default": {},
    "rows": {"force": "rows", "reg_max": 1 << 30},  # a warp per row, however long
    # rows longer than a warp's in several warps: values of each input a thread
    "values4": {"force": "rows", "row_values": 4},
    "values8": {"force": "rows", "row_values": 8},
    "values32": {"force": "rows", "row_values": 32},
    "smem32": {"force": "smem", "block": 32},
    "smem64": {"force": "smem", "block": 64},
    "smem128": {"force": "smem", "block": 128},
    "smem256": {"force": "smem", "block": 256},
    "smem512": {"force": "smem", "block": 512},
    "smem1024": {"force": "smem", "block": 1024},
    "long256": {"force": "long", "block": 256},
    "long512": {"force": "long", "block": 512},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--funcs", default="softmax,softmax_backward")
    ap.add_argument("--sizes", default="2048,4096,8192,16384,32768")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--rows-max", type=int, default=4096,
                    help="longest row tried with the whole row in registers")
    ap.add_argument("--budget", type=float, default=120.0)
    a = ap.parse_args()
    import cupy as cp

    import numbasoftmax as ns
    from numbasoftmax._bench.timing import GpuDevice
    from numbasoftmax._cuda import launch

    t0 = time.perf_counter()
    device = GpuDevice()
    item = np.dtype(a.dtype).itemsize
    copy = device.copy_bandwidth(ELEMENTS * item, 5, a.dtype)["gbps"]
    kind = {"float32": "f4", "float16": "f2", "float64": "f8"}[a.dtype]
    print(f"{device.describe()}: device-to-device copy {copy:.0f} GB/s ({a.dtype})", flush=True)
    rng = cp.random.default_rng(0)
    for func in a.funcs.split(","):
        bwd = func.endswith("backward")
        print(f"-- {func} {a.dtype}: GB/s (% copy) per configuration", flush=True)
        for n in map(int, a.sizes.split(",")):
            m = ELEMENTS // n
            x = rng.standard_normal((m, n), dtype=cp.float32).astype(a.dtype)
            args = (ns.softmax(x), x) if bwd else (x,)
            out = cp.empty_like(x)
            fn = getattr(ns, func)
            cells = []
            for name in a.configs.split(","):
                if time.perf_counter() - t0 > a.budget:
                    cells.append(f"{name}: (budget)")
                    continue
                tun = CONFIGS[name]
                if name == "rows" and n > a.rows_max:
                    continue
                try:
                    with launch.config.override(**tun):
                        s = launch.plan(func, kind, m, n, True, x.device.id).steps[0].spec
                        fn(*args, out=out)  # compiles
                        sec = device.per_call(lambda f=fn, a=args, o=out: f(*a, out=o))
                except Exception as err:  # noqa: BLE001
                    cells.append(f"{name}: {type(err).__name__}")
                    continue
                gbs = (3 if bwd else 2) * m * n * item / sec / 1e9
                cells.append(f"{name} [{s.strategy[:5]} G{s.G} K{s.K} B{s.B} U{s.U}]: "
                             f"{gbs:.0f} ({100 * gbs / copy:.0f}%)")
            print(f"  N={n}: " + "; ".join(cells), flush=True)
            x = args = out = None
            cp.get_default_memory_pool().free_all_blocks()
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
