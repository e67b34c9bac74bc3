"""Every kernel strategy x dtype x (vector | scalar) path, through the public functions,
with guard bands: inputs are strided row views inside poisoned buffers (and must come back
unmodified), ``out`` is a strided view inside a poisoned buffer (every element written,
nothing outside it touched)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_helpers import (
    BACKWARD,
    FUNCS,
    POISON,
    as_float64,
    assert_close,
    bf16_bits,
    bf16_values,
    guarded,
    layout_strides,
    strided_view,
)

import numbasoftmax as ns
from numbasoftmax import reference

pytestmark = pytest.mark.gpu

DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}


def _width(itemsize):
    return 16 // itemsize


# rows longer than a warp holds (``reg_max``) in several warps, ``row_values`` values a thread
_SEVERAL_WARPS = {"reg_max": 1}


def _cases(W):
    """(strategy, m, n, tunables) per vector width W; the scalar variants use n + 1."""
    return [
        ("rows", 5, 2 * W, {}),    # sub-warp groups, several rows per block
        ("rows", 2, 33 * W, {}),   # a warp per row, 2 packs per thread
        # two warps per row, two rows per block
        ("rows", 3, 40 * W, dict(_SEVERAL_WARPS, row_values=W, block=128)),
        ("rows", 2, 130 * W, dict(_SEVERAL_WARPS, row_values=2 * W)),  # four warps per row
        ("smem", 3, 5 * W, {}),
        ("smem", 2, 40 * W, {}),   # 2 packs per thread
        ("smem", 2, 70 * W, {}),   # 3 packs per thread: two batches of loads
        ("long", 2, 70 * W, {}),
        ("split", 2, 70 * W, {}),
    ]


def _inputs(func, m, n, rng, dtype):
    x = (rng.standard_normal((m, n)) * 3).astype(dtype)
    if n > 3:
        x[0, 1] = -np.inf  # -inf among finite values
    if func in ("softmax", "log_softmax"):
        return (x,)
    g = (rng.standard_normal((m, n))).astype(dtype)
    xs = x.astype(np.float64)
    a = reference.softmax(xs) if func == "softmax_backward" else reference.log_softmax(xs)
    return (a.astype(dtype), g)


def _run_case(func, strategy, m, n, dtype, vec, rng, tunables=None):
    dtype = np.dtype(dtype)
    W = _width(dtype.itemsize)
    align = W if vec else 1
    host_in = _inputs(func, m, n, rng, dtype)
    views, bases = [], []
    for k, h in enumerate(host_in):
        extra = W if vec else 3 + k
        st = layout_strides(h.shape, row_extra=extra)
        v, b = strided_view(h, st, pad=W + (0 if vec else 1), align=align)
        views.append(v)
        bases.append(b)
    ostrides = layout_strides((m, n), row_extra=W if vec else 1)
    out, check = guarded((m, n), dtype, ostrides, pad=W + (0 if vec else 3), align=align)
    from numbasoftmax._cuda import launch

    with launch.config.override(force=strategy, vector=vec, **(tunables or {})):
        p = launch.plan(func, {"float32": "f4", "float64": "f8", "float16": "f2"}[dtype.name],
                        m, n, True, 0)
        spec = p.steps[0].spec
        assert strategy.startswith(spec.strategy[:4])
        assert (spec.V > 1) == vec
        assert (spec.G > 32) == ("row_values" in (tunables or {}))  # several warps a row
        res = getattr(ns, func)(*views, out=out)
    assert res is out
    check()
    for v, b in zip(views, bases, strict=True):
        assert np.array_equal(v.base.copy_to_host(), b), "input modified"
    got = out.copy_to_host()
    assert_close(func, got.astype(np.float64), [h.astype(np.float64) for h in host_in], -1,
                 dtype.name)


@pytest.mark.parametrize("vec", [True, False], ids=["vector", "scalar"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", range(len(_cases(4))), ids=[c[0] + str(i) for i, c in
                                                            enumerate(_cases(4))])
def test_strategy(case, dtype, vec):
    rng = np.random.default_rng(case * 7 + len(dtype))
    W = _width(np.dtype(dtype).itemsize)
    strategy, m, n, tunables = _cases(W)[case]
    if not vec:
        n += 1
    for func in FUNCS:
        _run_case(func, strategy, m, n, dtype, vec, rng, tunables)


# ---------------------------------------------------------------------------------------
# bfloat16: torch is the only array library with bfloat16 on the GPU; under the
# simulator the same kernels are driven through the launcher with uint16 storage.

def _bf16_run(func, strategy, m, n, vec, rng):
    from numbasoftmax._cuda import launch

    W = 8
    xs = (rng.standard_normal((m, n)) * 3).astype(np.float32)
    xs[0, 2] = -np.inf
    if func in BACKWARD:
        a = (reference.softmax(xs) if func == "softmax_backward"
             else reference.log_softmax(xs))
        host = [bf16_bits(a), bf16_bits(rng.standard_normal((m, n)))]
    else:
        host = [bf16_bits(xs)]
    align = W if vec else 1
    bufs = []
    keep = []
    for h in host:
        v, _ = strided_view(h, [n + W, 1], pad=W, align=align)
        keep.append(v)
        bufs.append((launch.Buf(v.__cuda_array_interface__["data"][0], (m - 1) * (n + W) + n,
                                np.dtype(np.uint16)), n + W))
    out, check = guarded((m, n), np.uint16, [n + W, 1], pad=W, align=align)
    obuf = (launch.Buf(out.__cuda_array_interface__["data"][0], (m - 1) * (n + W) + n,
                       np.dtype(np.uint16)), n + W)
    with launch.config.override(force=strategy, vector=vec), launch.Scratch(0, 0) as scratch:
        launch.run_rows(func, "bf16", bufs, obuf, m, n, 0, 0, scratch)
    check()
    got = bf16_values(out.copy_to_host().view(np.uint16)).astype(np.float64)
    assert_close(func, got, [bf16_values(h).astype(np.float64) for h in host], -1,
                 "bfloat16")


@pytest.mark.parametrize("vec", [True, False], ids=["vector", "scalar"])
@pytest.mark.parametrize("strategy", ["rows", "smem", "long", "split"])
def test_bfloat16_kernels(strategy, vec):
    rng = np.random.default_rng(11)
    n = {"rows": 16, "smem": 40, "long": 72 * 8, "split": 72 * 8}[strategy]
    if not vec:
        n += 1
    for func in FUNCS:
        _bf16_run(func, strategy, 2, n, vec, rng)


def test_bfloat16_rounding():
    """The simulator's bfloat16 conversion matches round-to-nearest-even."""
    from numbasoftmax._cuda import sim

    vals = np.array([1.0, 1.00390625, 1.005859375, -3.0e38, 3.4e38, 1e-40, np.inf,
                     -np.inf, np.nan], dtype=np.float32)
    for v in vals:
        bits = sim.f32_to_bf16_bits(v)
        assert bits == bf16_bits(v), v
        back = sim.bf16_bits_to_f32(bits)
        if np.isnan(v):
            assert np.isnan(back)
        else:
            assert back == bf16_values(bf16_bits(v)), v


def test_poison_is_not_a_result():
    assert POISON[4].view(np.float32) != POISON[4].view(np.float32)  # a NaN pattern
    assert float(as_float64(np.array([0x3F80], np.uint16), "bfloat16")[0]) == 1.0
