#!/usr/bin/env python3
"""One-shot GPU check of numbasoftmax (H100/H200, well under 4 minutes).

1. Correctness against the float64 reference, every output poisoned first:
   * every strategy (rows / smem / long / split) x dtype (float32, float64, float16,
     bfloat16) x path (16-byte vector, scalar) x function, on generic
     __cuda_array_interface__ views with guard bands (nothing outside ``out`` written,
     every element inside written, inputs unmodified);
   * the cupy fast path at each benchmark N, strided/transposed cupy views, dtype= (as
     if the input had been cast), where= masks, logsumexp and its gradient, torch tensors
     (float32, float16, bfloat16), a non-default cupy stream;
   * the direct launch path against numba's own launch path (bitwise).
2. Performance, M*N = 2^26, N in {32, ..., 262144}: numbasoftmax / torch GB/s with both
   writing into out= (like-for-like), then numbasoftmax / torch / cupyx plain calls, and %
   of the same-run device-to-device copy bandwidth (CUDA events), for softmax, softmax
   backward, log_softmax (float32) and softmax forward/backward in float16, and float16
   input into a float32 result (dtype=, N = 128, 4096, 65536), logsumexp (float32, N = 32,
   128, 4096, 65536; against torch.logsumexp and cupyx's). Every timed configuration
   of the main tables is first run once into a poisoned output and sampled rows are
   checked.
3. Host time per call for an 8x128 float32 input (cupy and torch inputs; torch, cupyx).

Run from the repository root on a machine with cupy and torch (see bench/GPU.md):
    python3 bench/gpu_check.py [--quick] [--skip-peers] [--budget SECONDS]
Exit status 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))

SIZES = [32, 128, 512, 1000, 1024, 2048, 4096, 8192, 12288, 16384, 32768, 65536, 262144]
ELEMENTS = 1 << 26
T0 = time.perf_counter()
FAILURES = []


def elapsed():
    return time.perf_counter() - T0


def log(msg=""):
    print(msg, flush=True)


def check(name, fn):
    """Run one correctness check; record and print a failure instead of stopping."""
    try:
        fn()
        return True
    except Exception as err:  # noqa: BLE001
        FAILURES.append(name)
        log(f"  FAIL {name}: {type(err).__name__}: {str(err)[:400]}")
        if os.environ.get("GPU_CHECK_TRACEBACK"):
            traceback.print_exc()
        return False


# ---------------------------------------------------------------------------------------
# 1. correctness

def correctness(quick, tiny=False):
    import gpu_helpers as H

    import numbasoftmax as ns
    from numbasoftmax import reference
    from numbasoftmax._cuda import launch

    log("== correctness (float64 reference, poisoned outputs, guard bands)")
    rng = np.random.default_rng(0)
    kinds = {"float32": "f4", "float64": "f8", "float16": "f2"}
    ncheck = 0

    def inputs(func, m, n, dtype):
        x = (rng.standard_normal((m, n)) * 3)
        x[0, min(1, n - 1)] = -np.inf
        if m > 2:
            x[2, :] = -np.inf            # all -inf row -> NaN
        if m > 3:
            x[3, n // 2] = np.nan        # NaN row -> NaN
        if func in ("softmax", "log_softmax"):
            return [x.astype(dtype)]
        xs = np.where(np.isfinite(x), x, -np.inf)
        a = reference.softmax(xs) if func == "softmax_backward" else reference.log_softmax(xs)
        return [a.astype(dtype), rng.standard_normal((m, n)).astype(dtype)]

    def guarded_case(func, dtype, m, n, strategy, vec):
        dt = np.dtype(dtype)
        W = 16 // dt.itemsize
        host = inputs(func, m, n, dt)
        views, bases = [], []
        for k, h in enumerate(host):
            st = H.layout_strides(h.shape, row_extra=W if vec else 3 + k)
            v, b = H.strided_view(h, st, pad=W if vec else W + 1, align=W if vec else 1)
            views.append(v)
            bases.append(b)
        out, ok = H.guarded((m, n), dt, H.layout_strides((m, n), row_extra=W if vec else 1),
                            pad=W if vec else W + 3, align=W if vec else 1)
        with launch.config.override(force=strategy, vector=vec):
            p = launch.plan(func, kinds[dt.name], m, n, True, 0)
            assert (strategy or "").startswith(p.steps[0].spec.strategy[:4] if strategy else "")
            assert (p.steps[0].spec.V > 1) == (vec and n % W == 0)
            r = getattr(ns, func)(*views, out=out)
        assert r is out
        ok()
        for v, b in zip(views, bases, strict=True):
            assert np.array_equal(v.base.copy_to_host(), b), "input modified"
        H.assert_close(func, out.copy_to_host().astype(np.float64),
                       [h.astype(np.float64) for h in host], -1, dt.name)

    # (func, dtype, m, n, force, vec). Chosen to cover every strategy, dtype and path while
    # sharing compiled specializations with the performance section (each costs ~1 s).
    cases = []
    for n in SIZES:
        for func in ("softmax", "softmax_backward", "log_softmax"):
            cases.append((func, "float32", 3, n, None, True))
        for func in ("softmax", "softmax_backward"):
            cases.append((func, "float16", 3, n, None, True))
    for n, force in ((128, None), (1000, None), (8192, None), (65536, "long"),
                     (262144, None)):
        cases.append(("log_softmax_backward", "float32", 3, n, force, True))
        cases.append(("log_softmax", "float16", 3, n, force, True))
        cases.append(("log_softmax_backward", "float16", 3, n, force, True))
    for n, force in ((64, None), (1000, None), (8192, None), (70000, "long"),
                     (131072, None)):
        for func in H.FUNCS:
            cases.append((func, "float64", 3, n, force, True))
    for n, force in ((33, None), (1001, None), (4097, None), (70001, "long"),
                     (100001, None)):
        for func in H.FUNCS:
            cases.append((func, "float32", 3, n, force, False))
    for n, force in ((32, "long"), (32, "split"), (3000, "rows"), (100, "smem")):
        cases.append(("softmax", "float32", 5, n, force, True))
    for func in H.FUNCS:  # float16 rows cached in shared memory (as float32)
        cases.append((func, "float16", 3, 4096, "smem", True))
        cases.append((func, "float16", 3, 4097, "smem", False))
    if quick:
        cases = [c for c in cases if c[3] <= 12288]
    if tiny:  # the simulator: same case kinds, small rows
        cases = [(f, d, 2, min(n, 70 + (n % 2)), s, v) for f, d, m, n, s, v in cases
                 if n <= 40 or n % 2 or s][:40]
    last = None
    for func, dtype, m, n, force, vec in cases:
        ncheck += 1
        check(f"guarded {func} {dtype} {m}x{n} {force or 'auto'} "
              f"{'vec' if vec else 'scalar'}",
              lambda f=func, d=dtype, mm=m, k=n, s=force, v=vec:
              guarded_case(f, d, mm, k, s, v))
        if (dtype, vec) != last:
            log(f"  {dtype} {'vector' if vec else 'scalar'} cases ({elapsed():.0f} s)")
            last = (dtype, vec)

    # bfloat16 through torch (the only GPU array library with bfloat16)
    try:
        import torch

        have_torch = torch.cuda.is_available()
    except ImportError:
        have_torch = False
    if have_torch:
        def bf16_case(func, m, n, strategy):
            host = inputs(func, m, n, np.float32)
            bits = [H.bf16_bits(h) for h in host]
            ts = [torch.from_numpy(b.view(np.int16)).cuda().view(torch.bfloat16)
                  for b in bits]
            with launch.config.override(force=strategy):
                r = getattr(ns, func)(*ts)
            assert isinstance(r, torch.Tensor) and r.dtype == torch.bfloat16
            got = H.bf16_values(r.view(torch.int16).cpu().numpy().view(np.uint16))
            H.assert_close(func, got.astype(np.float64),
                           [H.bf16_values(b).astype(np.float64) for b in bits], -1,
                           "bfloat16")

        for strategy, m, n in [("rows", 5, 64), ("rows", 3, 1001), ("rows", 3, 8192),
                               ("smem", 3, 8192), ("long", 2, 70000), ("split", 2, 131072)]:
            for func in ("softmax", "softmax_backward"):
                ncheck += 1
                check(f"torch bfloat16 {func} {strategy} {m}x{n}",
                      lambda f=func, s=strategy, mm=m, k=n: bf16_case(f, mm, k, s))

        def torch_kinds():
            for dt, name in ((torch.float32, "float32"), (torch.float16, "float16")):
                x = torch.randn(64, 1024, device="cuda", dtype=dt)
                s = torch.cuda.Stream()
                with torch.cuda.stream(s):
                    r = ns.log_softmax(x)
                    g = ns.softmax_backward(ns.softmax(x), x)
                s.synchronize()
                xh = x.float().cpu().numpy().astype(np.float64)
                H.assert_close("log_softmax", r.float().cpu().numpy(), [xh], -1, name)
                y = ns.softmax(x).float().cpu().numpy().astype(np.float64)
                H.assert_close("softmax_backward", g.float().cpu().numpy(), [y, xh], -1,
                               name)
                r = ns.softmax(x.t(), axis=0)
                H.assert_close("softmax", r.float().cpu().numpy(), [xh.T], 0, name)

        ncheck += 1
        check("torch float32/float16 kinds, stream, layouts", torch_kinds)
    else:
        log("  (torch with CUDA not available: bfloat16 and torch checks skipped)")

    try:
        import cupy as cp
    except ImportError:
        cp = None
    if cp is not None:
        def cupy_fast(n, dtype):
            m = 7
            x = cp.asarray((rng.standard_normal((m, n)) * 2).astype(dtype))
            for func in ("softmax", "log_softmax"):
                r = getattr(ns, func)(x)
                assert isinstance(r, cp.ndarray) and r.dtype == x.dtype
                H.assert_close(func, r.get().astype(np.float64),
                               [x.get().astype(np.float64)], -1, np.dtype(dtype).name)
            y = ns.softmax(x)
            g = ns.softmax_backward(y, x)
            H.assert_close("softmax_backward", g.get().astype(np.float64),
                           [y.get().astype(np.float64), x.get().astype(np.float64)], -1,
                           np.dtype(dtype).name)

        for n in SIZES:
            for dtype in ("float32", "float16"):
                ncheck += 1
                check(f"cupy fast path N={n} {dtype}", lambda k=n, d=dtype: cupy_fast(k, d))

        def cupy_layouts():
            xh = rng.standard_normal((96, 80)).astype(np.float32)
            x = cp.asarray(xh)
            for v, h in ((x.T, xh.T), (x[::2, ::3], xh[::2, ::3]), (x[::-1, :], xh[::-1, :]),
                         (x.reshape(8, 12, 80), xh.reshape(8, 12, 80))):
                for axis in (-1, 0, None, (0, -1)):
                    r = ns.softmax(v, axis=axis)
                    H.assert_close("softmax", r.get(), [np.asarray(h, np.float64)], axis,
                                   "float32")
            xi = cp.asarray((np.arange(60).reshape(6, 10) % 7).astype(np.int32))
            r = ns.softmax(xi)
            assert r.dtype == np.float64
            H.assert_close("softmax", r.get(), [xi.get().astype(np.float64)], -1, "float64")

        def cupy_stream():
            s = cp.cuda.Stream(non_blocking=True)
            xh = rng.standard_normal((4096, 1024)).astype(np.float32)
            with s:
                x = cp.asarray(xh)
                r = ns.softmax(x)
                r2 = ns.log_softmax(x, out=cp.empty_like(x))
            s.synchronize()
            H.assert_close("softmax", r.get(), [xh.astype(np.float64)], -1, "float32")
            H.assert_close("log_softmax", r2.get(), [xh.astype(np.float64)], -1, "float32")

        def launch_paths_agree():
            for n in (128, 4096, 70000):
                x = cp.asarray(rng.standard_normal((3, n)).astype(np.float32))
                a = ns.softmax(x).get()
                with launch.config.override(launch="numba"):
                    b = ns.softmax(x, out=cp.empty_like(x)).get()
                assert a.tobytes() == b.tobytes(), n
                c = ns.softmax(x).get()
                assert a.tobytes() == c.tobytes(), "not deterministic"

        def cupy_dtype():
            """dtype=: bitwise the cast input with scalar loads where both plan the same
            strategy (n <= 4096), within tolerance on long rows."""
            for src, dst in (("float16", "float32"), ("float32", "float16"),
                             ("float64", "float16"), ("float32", "float64")):
                for n in (100, 4096, 70000):
                    xh = (rng.standard_normal((3, n)) * 3).astype(src)
                    x = cp.asarray(xh)
                    for func in ("softmax", "log_softmax"):
                        r = getattr(ns, func)(x, dtype=dst)
                        assert isinstance(r, cp.ndarray) and r.dtype == dst, (src, dst)
                        if n <= 4096:
                            with launch.config.override(vector=False):
                                e = getattr(ns, func)(x.astype(dst))
                            assert r.get().tobytes() == e.get().tobytes(), (src, dst, n, func)
                        H.assert_close(func, r.get().astype(np.float64),
                                       [xh.astype(dst).astype(np.float64)], -1, dst)

        def cupy_where():
            """where=: (N,) masks read in place, masks of x's shape, a row without
            included elements; every strategy's row lengths."""
            for n in (100, 4096, 70000):
                xh = (rng.standard_normal((4, n)) * 3).astype(np.float32)
                full = rng.random((4, n)) > 0.3
                full[2] = False
                for wh in (rng.random(n) > 0.3, full):
                    for func in ("softmax", "log_softmax"):
                        r = getattr(ns, func)(cp.asarray(xh), where=cp.asarray(wh))
                        H.assert_close(func, r.get().astype(np.float64),
                                       [xh.astype(np.float64)], -1, "float32", where=wh)

        def cupy_logsumexp():
            """logsumexp (weights, masks, signs) and its gradient at every strategy's row
            lengths (rows, long, split), against the float64 reference."""
            from numbasoftmax import reference

            for m, n in ((1000, 100), (300, 5000), (2, 300000)):
                xh = (rng.standard_normal((m, n)) * 3).astype(np.float32)
                bh = (rng.random((m, n)) + 0.1).astype(np.float32)
                wh = rng.random((m, n)) > 0.3
                wh[1] = False
                x, b, w = cp.asarray(xh), cp.asarray(bh), cp.asarray(wh)
                v = ns.logsumexp(x, b=b, where=w)
                rv = reference.logsumexp(xh, b=bh, where=wh)
                assert np.allclose(v.get(), rv, rtol=1e-5, atol=1e-4), (m, n)
                g = ns.logsumexp_backward(x, v, cp.ones(m, np.float32), b=b, where=w)
                ref = reference.logsumexp_backward(xh, rv, np.ones(m), b=bh, where=wh)
                assert np.allclose(g.get(), ref, rtol=1e-4, atol=1e-6), (m, n)
                neg = -b  # a negative sum: NaN, or sign -1 with return_sign
                assert bool(cp.all(cp.isnan(ns.logsumexp(x, b=neg)[2:])))
                _, s = ns.logsumexp(x, b=neg, return_sign=True)
                assert bool(cp.all(s == -1)), (m, n)

        for name, fn in (("cupy layouts / axes / ints", cupy_layouts),
                         ("cupy dtype= (one pass, as if cast)", cupy_dtype),
                         ("cupy where= (masks)", cupy_where),
                         ("cupy logsumexp and its gradient", cupy_logsumexp),
                         ("cupy non-default stream", cupy_stream),
                         ("direct launch == numba launch, deterministic", launch_paths_agree)):
            ncheck += 1
            check(name, fn)
    log(f"  {ncheck - len(FAILURES)} of {ncheck} checks passed ({elapsed():.0f} s)")


# ---------------------------------------------------------------------------------------
# 2. performance

def performance(skip_peers, budget, sizes):
    import cupy as cp

    import numbasoftmax as ns
    from numbasoftmax import registry
    from numbasoftmax._bench.timing import GpuDevice
    from numbasoftmax._cuda import launch

    device = GpuDevice()  # CUDA events; times numbasoftmax, torch and cupyx alike

    def ms_per_call(fn):
        return device.per_call(fn) * 1e3

    try:
        import torch

        have_torch = torch.cuda.is_available() and not skip_peers
    except ImportError:
        have_torch = False
    try:
        import cupyx.scipy.special as cps

        have_cupyx = hasattr(cps, "softmax") and not skip_peers
    except ImportError:
        have_cupyx = False

    def copy_gbs(dtype):
        itemsize = np.dtype(dtype).itemsize
        return device.copy_bandwidth(ELEMENTS * itemsize, 5, dtype)["gbps"]

    sections = [("softmax", "float32"), ("softmax_backward", "float32"),
                ("log_softmax", "float32"), ("softmax", "float16"),
                ("softmax_backward", "float16")]
    copy = {d: copy_gbs(d) for d in ("float32", "float16")}
    log(f"== performance, M*N = 2^26 (device-to-device copy: float32 {copy['float32']:.0f} "
        f"GB/s, float16 {copy['float16']:.0f} GB/s, read + write)")
    rng = cp.random.default_rng(1)  # on the device: 2^26 host draws per table row are slow
    poison = {2: 0x7D5A, 4: 0x7F8A5A5A}
    for func, dtype in sections:
        if elapsed() > budget:
            log(f"  (time budget reached: {func} {dtype} skipped)")
            continue
        bwd = func.endswith("backward")
        passes = 3 if bwd else 2
        log(f"-- {func} {dtype} (first like-for-like, both writing into out=; then plain "
            "calls, allocation included)")
        log(f"  {'N':>7} {'plan':<26} {'ours out=':>10} {'%copy':>6} {'torch':>8} {'%copy':>6}"
            f" {'ours':>8} {'%copy':>6} {'torch':>8} {'%copy':>6} {'cupyx':>8} {'%copy':>6}"
            f" {'ok':>3}")
        for n in sizes:
            m = ELEMENTS // n
            x = rng.standard_normal((m, n), dtype=cp.float32).astype(dtype)
            if bwd:
                y = ns.softmax(x)
                args = (y, x)
            else:
                args = (x,)
            kind = {"float32": "f4", "float16": "f2"}[dtype]
            p = launch.plan(func, kind, m, n, True, x.device.id)
            s0 = p.steps[0].spec
            plan = f"{s0.strategy[:5]} V{s0.V} G{s0.G} K{s0.K} B{s0.B}"
            # poisoned output: every element written, sampled rows right
            item = np.dtype(dtype).itemsize
            out = cp.full((m, n), poison[item], dtype={2: np.uint16, 4: np.uint32}[item])
            out = out.view(dtype)
            ok = check(f"perf {func} {dtype} N={n}",
                       lambda f=func, a=args, o=out, d=dtype, p=poison[item]: _sample_check(
                           cp, ns, f, a, o, d, p))
            fn = getattr(ns, func)
            try:
                ours_out = ms_per_call(lambda f=fn, a=args, o=out: f(*a, out=o))
                ours = ms_per_call(lambda f=fn, a=args: f(*a))
            except Exception as err:  # noqa: BLE001 - recorded; the other sizes still run
                FAILURES.append(f"perf {func} {dtype} N={n}: {type(err).__name__}: {err}")
                log(f"  {n:>7} {plan:<26} FAILED: {type(err).__name__}: {err}")
                continue
            nbytes = passes * m * n * item
            none = f"{'-':>8} {'':>6}"
            torch_out = torch_plain = none
            if have_torch:
                ta = [torch.as_tensor(a, device="cuda") for a in args]
                (tf,) = registry.implementations(op=func, device="gpu", name="torch")
                tout = torch.empty_like(ta[0])
                torch_out = _gbs(nbytes, ms_per_call(
                    lambda f=tf.call_out, a=ta, o=tout: f(*a, axis=-1, out=o)), copy[dtype], 8)
                torch_plain = _gbs(nbytes, ms_per_call(lambda f=tf.call, a=ta: f(*a, -1)),
                                   copy[dtype], 8)
            row = [f"  {n:>7} {plan:<26}", _gbs(nbytes, ours_out, copy[dtype]), torch_out,
                   _gbs(nbytes, ours, copy[dtype], 8), torch_plain]
            if have_cupyx and not bwd:
                cf = getattr(cps, func)
                try:
                    cms = ms_per_call(lambda f=cf, a=args[0]: f(a, axis=-1))
                    row.append(_gbs(nbytes, cms, copy[dtype], 8))
                except Exception:  # noqa: BLE001
                    row.append(f"{'err':>8} {'':>6}")
            else:
                row.append(none)
            row.append(f"{'yes' if ok else 'NO':>3}")
            log(" ".join(row))
            x = args = out = None
            cp.get_default_memory_pool().free_all_blocks()
        log(f"  ({elapsed():.0f} s)")
    if elapsed() <= budget:
        check("dtype= performance", lambda: _dtype_performance(
            cp, ns, ms_per_call, copy["float32"], have_torch and torch,
            [n for n in sizes if n in DTYPE_SIZES]))
    if elapsed() <= budget:
        check("logsumexp performance", lambda: _lse_performance(
            cp, ns, ms_per_call, copy["float32"], have_torch and torch,
            have_cupyx and cps, [n for n in sizes if n in DTYPE_SIZES or n == 32]))


DTYPE_SIZES = (128, 4096, 65536)


def _dtype_performance(cp, ns, ms_per_call, copy, torch, sizes):
    """softmax of float16 input into a float32 result: ours (dtype=, one pass) and torch's
    softmax(dtype=torch.float32); GB/s of 2 + 4 bytes per element."""
    log("-- softmax float16 -> float32 (dtype=)")
    log(f"  {'N':>7} {'ours GB/s':>10} {'%copy':>6} {'torch':>8} {'%copy':>6}")
    rng = cp.random.default_rng(3)
    for n in sizes:
        m = ELEMENTS // n
        x = rng.standard_normal((m, n), dtype=cp.float32).astype(cp.float16)
        nbytes = m * n * (2 + 4)
        ours = ms_per_call(lambda a=x: ns.softmax(a, dtype=cp.float32))
        row = [f"  {n:>7}", _gbs(nbytes, ours, copy)]
        if torch:
            t = torch.as_tensor(x, device="cuda")
            tms = ms_per_call(lambda a=t: torch.softmax(a, -1, dtype=torch.float32))
            row.append(_gbs(nbytes, tms, copy, 8))
        log(" ".join(row))
        x = None
        cp.get_default_memory_pool().free_all_blocks()
    log(f"  ({elapsed():.0f} s)")


def _lse_performance(cp, ns, ms_per_call, copy, torch, cps, sizes):
    """logsumexp, float32: ours, torch.logsumexp and cupyx's; GB/s of the 4 bytes per
    element read (a value per row written)."""
    log("-- logsumexp float32 (read once)")
    log(f"  {'N':>7} {'ours GB/s':>10} {'%copy':>6} {'torch':>8} {'%copy':>6} {'cupyx':>8} "
        f"{'%copy':>6}")
    rng = cp.random.default_rng(4)
    for n in sizes:
        m = ELEMENTS // n
        x = rng.standard_normal((m, n), dtype=cp.float32)
        nbytes = m * n * 4
        row = [f"  {n:>7}", _gbs(nbytes, ms_per_call(lambda a=x: ns.logsumexp(a)), copy)]
        if torch:
            t = torch.as_tensor(x, device="cuda")
            row.append(_gbs(nbytes, ms_per_call(lambda a=t: torch.logsumexp(a, -1)), copy, 8))
        if cps and hasattr(cps, "logsumexp"):
            row.append(_gbs(nbytes, ms_per_call(lambda a=x: cps.logsumexp(a, axis=-1)), copy,
                            8))
        log(" ".join(row))
        x = None
        cp.get_default_memory_pool().free_all_blocks()
    log(f"  ({elapsed():.0f} s)")


def _gbs(nbytes, ms, copy, width=10):
    g = nbytes / ms / 1e6
    return f"{g:>{width}.0f} {100 * g / copy:>5.0f}%"


def _sample_check(cp, ns, func, args, out, dtype, poison):
    from numbasoftmax._bench.checks import check_result

    r = getattr(ns, func)(*args, out=out)
    assert r is out
    bits = out.view({2: cp.uint16, 4: cp.uint32}[out.dtype.itemsize])
    assert not bool(cp.any(bits == poison)), "output elements left unwritten"
    m = out.shape[0]
    rows = sorted({0, 1, m // 2, m - 2, m - 1})
    check_result(func, out[rows].get(), [a[rows].get() for a in args], dtype)


# ---------------------------------------------------------------------------------------
# 3. per-call host time

def per_call(skip_peers, calls=3000, profile=False):
    import cupy as cp

    import numbasoftmax as ns

    log("== host time per call, 8x128 float32 (mean over "
        f"{calls} calls, no synchronization inside the loop)")
    x = cp.asarray(np.random.default_rng(2).standard_normal((8, 128)).astype(np.float32))
    rows = [("numbasoftmax.softmax(cupy)", lambda: ns.softmax(x)),
            ("numbasoftmax.log_softmax(cupy)", lambda: ns.log_softmax(x)),
            ("numbasoftmax.softmax_backward(cupy)", lambda: ns.softmax_backward(x, x)),
            ("numbasoftmax.softmax(cupy, out=)", lambda: ns.softmax(x, out=out))]
    out = cp.empty_like(x)
    try:
        import torch

        if torch.cuda.is_available():
            t = torch.as_tensor(x, device="cuda")
            rows.append(("numbasoftmax.softmax(torch)", lambda: ns.softmax(t)))
            if not skip_peers:
                rows.append(("torch.softmax", lambda: torch.softmax(t, -1)))
    except ImportError:
        pass
    if not skip_peers:
        try:
            import cupyx.scipy.special as cps

            rows.append(("cupyx.scipy.special.softmax", lambda: cps.softmax(x, axis=-1)))
        except ImportError:
            pass
    for name, fn in rows:
        for _ in range(50):
            fn()
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = time.perf_counter() - t0
        cp.cuda.Device().synchronize()
        log(f"  {name:<40} {1e6 * dt / calls:7.1f} us")
    if profile:  # where the host time of our calls goes
        import cProfile
        import pstats

        for name, fn in rows[:4]:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                fn()
            prof.disable()
            cp.cuda.Device().synchronize()
            log(f"-- profile of {name} ({calls} calls)")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(14)


# ---------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer correctness shapes")
    ap.add_argument("--skip-peers", action="store_true", help="do not time torch/cupyx")
    ap.add_argument("--budget", type=float, default=200.0,
                    help="seconds after which remaining performance sections are skipped")
    ap.add_argument("--sizes", default=None, help="comma list of N (default: the 13 sizes)")
    ap.add_argument("--only", choices=["correctness", "performance", "per-call"])
    ap.add_argument("--profile", action="store_true",
                    help="per-call: also profile the host time of our calls (cProfile)")
    ap.add_argument("--tiny", action="store_true",
                    help="self-test of this script under the CUDA simulator: tiny shapes")
    a = ap.parse_args()
    if a.tiny:
        SIZES[:] = [8, 24, 40]
    import numba

    log(f"numpy {np.__version__}, numba {numba.__version__}")
    try:
        from importlib.metadata import version

        log(f"numba-cuda {version('numba-cuda')}, cuda-core {version('cuda-core')}")
    except Exception:  # noqa: BLE001
        pass
    from numba import cuda

    if not cuda.is_available():
        log("no GPU: nothing to check")
        return 2
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "?")
    log(f"device: {name.decode() if isinstance(name, bytes) else name}, "
        f"cc {getattr(dev, 'compute_capability', '?')}, "
        f"{getattr(dev, 'MULTIPROCESSOR_COUNT', '?')} SMs")
    try:
        import cupy
        import torch

        log(f"cupy {cupy.__version__}, torch {torch.__version__}")
    except ImportError as err:
        log(f"({err})")
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else list(SIZES)
    if a.only in (None, "correctness"):
        correctness(a.quick, a.tiny)
    if a.only in (None, "performance"):
        performance(a.skip_peers, a.budget, sizes)
    if a.only in (None, "per-call"):
        per_call(a.skip_peers, profile=a.profile)
    log(f"total {elapsed():.0f} s; {len(FAILURES)} failed check(s)")
    for f in FAILURES:
        log(f"  failed: {f}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
