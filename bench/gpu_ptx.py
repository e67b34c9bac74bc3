#!/usr/bin/env python3
"""Compile every GPU kernel specialization to PTX without a GPU and inspect the code.

For sessions without a GPU: NVVM (from pip) is enough to compile numba.cuda kernels to PTX
for sm_90. Checks, per specialization: it compiles; no local memory (the row stays in
registers, no spills to .local); vector specializations use ld.global.v4 / st.global.v4.

    pip install --target /tmp/nvvm "cuda-toolkit[nvvm,nvrtc,cudart,cccl]==13.*" \\
        "nvidia-nvjitlink>=13,<14"
    PYTHONPATH=/tmp/nvvm LD_LIBRARY_PATH=/tmp/nvvm/nvidia/cu13/lib \\
        python bench/gpu_ptx.py [SUBSTRING] [--out DIR]

Do not set NUMBA_ENABLE_CUDASIM. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("filter", nargs="?", default="", help="only specs whose repr contains it")
    ap.add_argument("--out", help="write each PTX file into this folder")
    ap.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    a = ap.parse_args()
    cc = tuple(int(v) for v in a.cc.split("."))

    import numba.cuda.dispatcher as dispatcher

    class _Device:  # device functions ask the current device for its CC: there is none
        compute_capability = cc

    dispatcher.get_current_device = lambda: _Device()
    from numba import cuda

    from numbasoftmax._cuda import kernels as K
    from numbasoftmax._cuda import launch as L

    specs = []
    for op in K.FORWARD + K.BACKWARD:
        for kind in ("f4", "f8", "f2", "bf16"):
            W = 16 // L.STORAGE[kind].itemsize
            for V in (1, W):
                u = max(1, (8 if kind == "f8" else 16) // V)
                specs.append(K.Spec("rows", op, kind, V, 8, 1, 128, 2))
                specs.append(K.Spec("rows", op, kind, V, 32, max(1, 8 // V), 128, 1))
                specs.append(K.Spec("smem", op, kind, V, 1, 1, 512, u))
                if kind in ("f2", "bf16"):
                    specs.append(K.Spec("smem", op, kind, V, 1, 1, 1024, u, "s"))
                for s in ("long", "split_stats", "split_write"):
                    specs.append(K.Spec(s, op, kind, V, 1, 1, 512, u))
    bad = 0
    for sp in specs:
        if a.filter not in repr(sp):
            continue
        t0 = time.perf_counter()
        try:
            ptx, _ = cuda.compile_ptx(K.build(sp, L.primitives(sp.kind)), L._signature(sp),
                                      cc=cc)
        except Exception as err:  # noqa: BLE001
            bad += 1
            print(f"FAIL {sp}: {type(err).__name__}: {str(err)[:500]}", flush=True)
            continue
        name = "_".join(map(str, sp))
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, name + ".ptx"), "w") as f:
                f.write(ptx)
        local = re.findall(r"\.local \.align \d+ \.b8 \S+\[(\d+)\]", ptx)
        vld = len(re.findall(r"ld\.global\.v[24]\.", ptx))
        vst = len(re.findall(r"st\.global\.v[24]\.", ptx))
        problems = []
        if local:
            problems.append(f"local memory {local}")
        if sp.V > 1 and not (vld and (vst or sp.strategy == "split_stats")):
            problems.append("no vector load/store")
        bad += bool(problems)
        print(f"{'BAD ' if problems else 'ok  '}{name:58s} v4 ld/st {vld}/{vst} "
              f"{time.perf_counter() - t0:4.1f} s {'; '.join(problems)}", flush=True)
    print(f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
