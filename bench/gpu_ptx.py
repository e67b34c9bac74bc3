#!/usr/bin/env python3
"""Compile every kernel that ``launch.plan()`` can choose on an H100/H200 to sm_90 machine
code, without a GPU, and check that each one can launch and keeps its rows in registers.

The kernels are enumerated from the plan itself (132 SMs, 232,448 B of opt-in shared
memory): every (op, dtype, vector | scalar path, few | many rows) and every row length
where the plan's choice changes; each distinct kernel is compiled once, to PTX with NVVM
(exactly as ``launch.get_kernel`` compiles it) and to machine code with ``ptxas -v``.
Checks per kernel:

* it compiles;
* no local memory in the PTX (rows held in registers) and no spill stores/loads in ptxas;
* registers per thread (allocated in units of 8) x block size <= 65,536, so that a block
  of the planned size fits the register file (else CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
* 16-byte ``ld.global.v4`` / ``st.global.v4`` where the plan chose the vector path.

NVVM and ptxas from pip, no GPU or CUDA install needed (the ``ptx`` extra: numba-cuda and
cuda-toolkit's ptxas, NVVM and libdevice; or ``tox -e ptx``), in a virtual environment
(numba-cuda takes over ``numba.cuda`` through a ``.pth`` file, which a ``--target`` folder
on PYTHONPATH does not run):

    pip install -e ".[ptx]"
    SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    LD_LIBRARY_PATH=$SITE/nvidia/cu13/lib python bench/gpu_ptx.py

Options: ``--filter SUBSTRING`` (kernels whose name contains it), ``--jobs N`` (compile
processes; default: CPU count), ``--out DIR`` (keep the PTX), ``--list`` (only print what
would be compiled), ``--verbose`` (a line per kernel), ``--kinds
same|pairs|masked|lse|all`` (the softmax operations' kernels of inputs in the result's kind,
the default and CI's set; those of ``dtype=`` with inputs of another kind; those reading a
``where=`` mask; logsumexp's and its gradient's; all). Do not set
NUMBA_ENABLE_CUDASIM.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CC = (9, 0)
REGISTER_FILE = 65536  # 32-bit registers per SM (and per block) on sm_90
H100 = dict(sms=132, smem_optin=232448)
OPS = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
LSE_OPS = ("logsumexp", "logsumexp_backward")
# logsumexp's kernels without and with weights (b=) and sign (return_sign=)
LSE_FLAGS = ((False, False), (True, True))
KINDS = ("f4", "f8", "f2", "bf16")
MANY_ROWS = 1 << 20
N_MAX = 1 << 21  # above every threshold of the plan
# dtype=: (result kind, the inputs' kind) pairs; the result is never bfloat16 (numpy has none)
DTYPE_PAIRS = [(k, s) for k in ("f4", "f8", "f2") for s in KINDS if s != k]


def _stub_device():
    """NVVM compiles for the current device's compute capability: there is none here."""
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = CC

    dispatcher.get_current_device = lambda: _Device()


# ---------------------------------------------------------------------------------------
# what the plan can return

def _plan_specs(launch, op, kind, m, n, vec, src, mask, flags=(False, False)):
    weights, signed = flags
    return tuple(s.spec for s in launch.plan(op, kind, m, n, vec, _profile(launch),
                                             sim=False, src=src, mask=mask, weights=weights,
                                             signed=signed).steps)


def _profile(launch):
    return launch.DeviceProps(**H100)


def _changes(f, lo, hi, found):
    """Every distinct f(q) for q in [lo, hi], by bisection where f(lo) != f(hi); f never
    returns to an earlier value as q grows (thresholds only move forward)."""
    a, b = f(lo), f(hi)
    found.update((a, b))
    if a == b or hi - lo <= 1:
        return
    mid = (lo + hi) // 2
    _changes(f, lo, mid, found)
    _changes(f, mid, hi, found)


def enumerate_specs(kinds="same"):
    """{spec: (op, kind, m, n, vec_ok) of one call that plans it}. ``kinds``: "same" (the
    four softmax operations, inputs of the result's kind), "pairs" (``dtype=``:
    DTYPE_PAIRS), "masked" (``where=``, inputs of the result's kind), "lse" (logsumexp and
    its gradient, inputs of the result's kind, LSE_FLAGS) or "all"."""
    same = [(k, None, False, LSE_FLAGS[0]) for k in KINDS]
    variants = {"same": [(op, v) for op in OPS for v in same],
                "pairs": [(op, (k, s, False, LSE_FLAGS[0])) for op in OPS
                          for k, s in DTYPE_PAIRS],
                "masked": [(op, (k, None, True, LSE_FLAGS[0])) for op in OPS for k in KINDS],
                "lse": [(op, (k, None, False, f)) for op in LSE_OPS for k in KINDS
                        for f in LSE_FLAGS]}
    chosen = [v for name, vs in variants.items() if kinds in (name, "all") for v in vs]
    from numbasoftmax._cuda import launch

    specs = {}
    for op, (kind, src, mask, flags) in chosen:
        width = 16 // launch.STORAGE[kind].itemsize
        for m in (1, MANY_ROWS):
            # vector path: n = width * q; scalar path: any n with vec_ok False
            for vec, step in ((True, width), (False, 1)):
                example = {}

                def f(q, op=op, kind=kind, m=m, vec=vec, step=step, example=example,
                      src=src, mask=mask, flags=flags):
                    got = _plan_specs(launch, op, kind, m, q * step, vec, src, mask, flags)
                    example.setdefault(got, (op, kind, m, q * step, vec))
                    return got

                qmax = N_MAX // step
                grid = sorted({1, 2, 3} | {int(1.02 ** i) for i in range(800)
                                           if 1.02 ** i <= qmax} | {qmax})
                found = set()
                for lo, hi in zip(grid, grid[1:], strict=False):
                    _changes(f, lo, hi, found)
                for got in found:
                    for spec in got:
                        specs.setdefault(spec, example[got])
    return specs


def copy_kernels():
    """The strided copy kernels: gather/scatter up to 4 axes (uint8: where= masks),
    integer and bool casts, and float conversions (logsumexp's mixed weights and per-row
    values): (ndim, source dtype, destination dtype, cast, (destination kind, source
    kind) or None)."""
    import numpy as np

    f2, f4, f8 = (np.dtype(t) for t in ("uint16", "float32", "float64"))
    out = []
    for ndim in (1, 2, 3, 4):
        for dt in (np.float32, np.float64, np.uint16, np.uint8):
            out.append((ndim, np.dtype(dt), np.dtype(dt), False, None))
    out.append((2, np.dtype(np.int64), f8, True, None))  # per-row values into float64
    # integer and bool inputs, stored as the result's kind (dtype=float16 too)
    out += [(2, np.dtype(np.int64), f8, True, ("f8", "f8")),
            (2, np.dtype(np.int32), f2, True, ("f2", "f2")),
            (2, np.dtype(np.uint8), f4, True, ("f4", "f4"))]
    out += [(2, f2, f8, False, ("f8", "f2")), (2, f4, f8, False, ("f8", "f4")),
            (2, f2, f4, False, ("f4", "f2")), (2, f8, f2, False, ("f2", "f8"))]
    return out


def kernel_name(item):
    if isinstance(item, tuple) and item and isinstance(item[0], int):  # a copy kernel
        ndim, src, dst, cast, kinds = item
        return (f"copy_{ndim}d_{src.name}_{dst.name}{'_cast' if cast else ''}"
                + ("" if kinds is None else f"_{kinds[1]}_to_{kinds[0]}"))
    return "_".join(f if v is True else str(v) for f, v in zip(item._fields, item, strict=True)
                    if v is not None and v is not False)


# ---------------------------------------------------------------------------------------
# compiling and checking one kernel (in a worker process)

def _ptxas():
    for d in sys.path:
        hits = glob.glob(os.path.join(d or ".", "nvidia", "cu*", "bin", "ptxas"))
        if hits:
            return hits[0]
    return shutil.which("ptxas")


def check_kernel(item, ptxas, out_dir):
    """dict: name, block, vector (planned), registers, spill, stack, local, v4 ld/st, secs,
    problems."""
    from numba import cuda

    from numbasoftmax._cuda import launch

    t0 = time.perf_counter()
    name = kernel_name(item)
    if isinstance(item[0], int):
        src = launch.copy_source(*item)
        block, vector, strategy = launch.COPY_BLOCK, False, "copy"
    else:
        src = launch.kernel_source(item)
        block, vector, strategy = item.B, item.V > 1, item.strategy
    r = dict(name=name, block=block, vector=vector, problems=[])
    try:
        ptx, _ = cuda.compile_ptx(src.pyfunc, src.sig, cc=CC, **src.options)
    except Exception as err:  # noqa: BLE001 - report every failure, keep going
        r["problems"].append(f"does not compile: {type(err).__name__}: {str(err)[:300]}")
        return r
    if out_dir:
        with open(os.path.join(out_dir, name + ".ptx"), "w") as f:
            f.write(ptx)
    r["local"] = sum(int(v) for v in re.findall(r"\.local \.align \d+ \.b8 \S+\[(\d+)\]", ptx))
    r["v4ld"] = len(re.findall(r"ld\.global\.v[24]\.", ptx))
    r["v4st"] = len(re.findall(r"st\.global\.v[24]\.", ptx))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        p = subprocess.run([ptxas, f"-arch=sm_{CC[0]}{CC[1]}", "-v", path, "-o",
                            os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    info = p.stdout + p.stderr
    if p.returncode:
        r["problems"].append(f"ptxas failed: {info.strip()[-300:]}")
        return r
    regs = re.search(r"Used (\d+) registers", info)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                      r"loads", info)
    r["registers"] = int(regs.group(1)) if regs else 0
    r["stack"], st, ld = (int(v) for v in frame.groups()) if frame else (0, 0, 0)
    r["spill"] = st + ld
    if r["local"]:
        r["problems"].append(f"{r['local']} B of local memory in the PTX")
    if r["spill"]:
        r["problems"].append(f"spills ({st} B stored, {ld} B loaded)")
    need = -(-r["registers"] // 8) * 8 * block
    if need > REGISTER_FILE:
        r["problems"].append(f"{r['registers']} registers x {block} threads > "
                             f"{REGISTER_FILE}: cannot launch")
    # what writes rows stores packs: not the split's statistics, nor logsumexp's values
    writes_rows = strategy == "copy" or (strategy != "split_stats" and item.op != "logsumexp")
    if vector and not (r["v4ld"] and (r["v4st"] or not writes_rows)):
        r["problems"].append("vector path without ld/st.global.v4")
    r["secs"] = time.perf_counter() - t0
    return r


def _init_worker():
    _stub_device()


def _family(item):
    if isinstance(item[0], int):
        return ("copy", "-", "-", "-")
    kind = item.kind if item.src is None else f"{item.kind}<{item.src}"  # dtype=: from src
    kind += "+w" if item.mask else ""  # where=
    kind += "+b" if item.weights else ""  # logsumexp's b=
    return (item.strategy, item.op, kind, "vector" if item.V > 1 else "scalar")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", help="write each kernel's PTX into this folder")
    ap.add_argument("--list", action="store_true", help="print the kernels, compile nothing")
    ap.add_argument("--verbose", "-v", action="store_true", help="a line per kernel")
    ap.add_argument("--kinds", choices=("same", "pairs", "masked", "lse", "all"),
                    default="same", help="inputs of the result's kind (default), the dtype= "
                    "pairs, the where= kernels, logsumexp's, or all")
    a = ap.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        sys.exit("gpu_ptx.py compiles real kernels: unset NUMBA_ENABLE_CUDASIM")
    t0 = time.perf_counter()
    specs = enumerate_specs(a.kinds)
    items = [s for s in sorted(specs, key=kernel_name) if a.filter in kernel_name(s)]
    items += [c for c in copy_kernels() if a.filter in kernel_name(c)]
    print(f"{len(specs)} distinct kernels in the plans for {H100} "
          f"(enumerated in {time.perf_counter() - t0:.1f} s); checking {len(items)}",
          flush=True)
    if a.list:
        for it in items:
            ex = specs.get(it)
            print(f"{kernel_name(it):60s} e.g. op, kind, m, n, vec = {ex}")
        return 0
    ptxas = _ptxas()
    if ptxas is None:
        sys.exit("ptxas not found: pip install -e '.[ptx]' (see this script's docstring)")
    from numba.cuda.cuda_paths import get_cuda_paths

    paths = get_cuda_paths()
    print(f"NVVM {paths['nvvm'].info}\nlibdevice {paths['libdevice'].info}\nptxas {ptxas}",
          flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    results = []
    with ProcessPoolExecutor(max(1, a.jobs), mp_context=get_context("fork"),
                             initializer=_init_worker) as ex:
        futs = [(it, ex.submit(check_kernel, it, ptxas, a.out)) for it in items]
        for it, fut in futs:
            r = fut.result()
            results.append((it, r))
            if a.verbose or r["problems"]:
                print(f"{'BAD ' if r['problems'] else 'ok  '}{r['name']:60s} "
                      f"B={r['block']:4d} regs={r.get('registers', '-')!s:>3} "
                      f"spill={r.get('spill', '-')} v4 ld/st={r.get('v4ld', '-')}/"
                      f"{r.get('v4st', '-')} {'; '.join(r['problems'])}"
                      + (f"  e.g. {specs[it]}" if r["problems"] and it in specs else ""),
                      flush=True)
    fam = defaultdict(list)
    for it, r in results:
        fam[_family(it)].append(r)
    print("\nper family: kernels, block sizes, registers (min-max), spill bytes (max), "
          "problems")
    print(f"{'strategy':12s} {'op':21s} {'kind':4s} {'path':6s} {'n':>3s} {'blocks':10s} "
          f"{'regs':>7s} {'spill':>5s} bad")
    for k in sorted(fam):
        rs = fam[k]
        regs = [r["registers"] for r in rs if "registers" in r]
        blocks = "/".join(str(b) for b in sorted({r["block"] for r in rs}))
        print(f"{k[0]:12s} {k[1]:21s} {k[2]:4s} {k[3]:6s} {len(rs):3d} {blocks:10s} "
              f"{(f'{min(regs)}-{max(regs)}' if regs else '-'):>7s} "
              f"{max((r.get('spill', 0) for r in rs), default=0):5d} "
              f"{sum(bool(r['problems']) for r in rs)}")
    bad = sum(bool(r["problems"]) for _, r in results)
    print(f"\n{len(results)} kernels, {bad} with problems, "
          f"{time.perf_counter() - t0:.0f} s ({a.jobs} jobs)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
