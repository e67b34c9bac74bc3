"""The row kernel: one row at a time, the W lanes of the summation order along the row.

The summation order (the package's, for every kernel): a row is cut into chunks of CHUNK
elements and a chunk into blocks of BLOCK elements. In a block, element j goes to lane
j mod W (W = 16); each lane adds its elements in order, starting from +0 in the compute
type C (float32 for float16/float32 storage, float64 for float64). A block's sum is the
halving tree of its lanes (``_simd.vsum``), widened to float64; a chunk's sum is 0.0 + its
block sums in order; a row's sum is 0.0 + its chunk sums in order (softmax: each first
scaled by exp(chunk max - row max)). Maxima need no order: IEEE maximum is associative and
commutative.

Padding is free: a lane starts at +0, so it never holds -0, and adding +0 to anything but
-0 returns it unchanged. Lanes past the end of a row (masked loads give them +0 terms) and
tree levels over lanes that received nothing may be added or skipped, with the same bits.

Each operation has three phases: ``stats`` per chunk (a max and a sum), ``finish`` per row
(the chunks combined), ``write`` per chunk (the outputs). The row function runs them in
turn; the chunk-parallel driver runs them as separate tasks; the lane kernel
(``_lane_kernel``) mirrors them with a lane per row. They all give the same bits.

Memory traffic per element (ideal, one pass = one read or write of the row):
softmax reads x twice (max, then exp + sum, keeping exp in out) and out twice, writes out
twice; the second and later passes of a row of up to ROW_TASK_MAX elements come from cache,
so memory sees one read of x and one write of out. log_softmax: x read three times
(max, sum, write), out written once. Gradients: y/z and dy/dz read twice (sum, write), out
written once.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._config import CACHE
from ._markers import Marker, dispatch, invoke, kernel_fn, pick, same
from ._simd import (
    W,
    exact_store,
    to_compute,
    vadd,
    vload,
    vmax,
    vmax_all,
    vmul,
    vsplat,
    vstore,
    vsub,
    vsum,
)
from ._vmath import vexp, vexp_nonpos, vlog

BLOCK = 1024
CHUNK = 8192

NEG_INF = -math.inf
NAN = math.nan

OPTIONS = {"cache": CACHE, "nogil": True, "error_model": "numpy", "boundscheck": False}
# For functions called only from compiled code that allocate nothing: no Python wrapper to
# build, and no reference counting (numba counts an array's references with atomic
# operations at every slice and call, ~0.2 us per short row here; the callers keep the
# arrays alive).
INTERNAL = dict(OPTIONS, no_cpython_wrapper=True, no_cfunc_wrapper=True, _nrt=False)

SOFTMAX = Marker("softmax")
LOG_SOFTMAX = Marker("log_softmax")
SOFTMAX_BACKWARD = Marker("softmax_backward")
LOG_SOFTMAX_BACKWARD = Marker("log_softmax_backward")
# softmax in separate passes (a row's segments in different tasks or processes): the stats
# phase keeps no exps, the write phase computes them again (the same expression: the same
# bits as SOFTMAX)
SOFTMAX_SPLIT = Marker("softmax_split")
OPS = {m.key: m for m in (SOFTMAX, LOG_SOFTMAX, SOFTMAX_BACKWARD, LOG_SOFTMAX_BACKWARD,
                          SOFTMAX_SPLIT)}


# ---------------------------------------------------------------------------------------
# generic loops over a segment (a 1-D contiguous slice)

@njit(**INTERNAL)
def seg_sum(lanes, a, b, c):
    """The package's sum of ``invoke(lanes, a, b, c, i, k)`` (the vector of elements
    i .. i+k-1) over a segment of at most CHUNK elements, in float64."""
    n = a.shape[0]
    total = 0.0
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        full = lo + (hi - lo) // W * W
        acc = vsplat(0.0, a)
        for i in range(lo, full, W):
            acc = vadd(acc, invoke(lanes, a, b, c, i, W))
        if full < hi:
            acc = vadd(acc, invoke(lanes, a, b, c, full, hi - full))
        total += np.float64(vsum(acc))
    return total


@njit(**INTERNAL)
def seg_max(x):
    n = x.shape[0]
    full = n // W * W
    acc = vsplat(NEG_INF, x)
    acc2 = acc  # two chains: a maximum does not depend on the order
    for i in range(0, full - W, 2 * W):
        acc = vmax(acc, vload(x, i, W, NEG_INF))
        acc2 = vmax(acc2, vload(x, i + W, W, NEG_INF))
    if (full // W) % 2:
        acc = vmax(acc, vload(x, full - W, W, NEG_INF))
    if full < n:
        acc2 = vmax(acc2, vload(x, full, n - full, NEG_INF))
    return vmax_all(vmax(acc, acc2))


@njit(**INTERNAL)
def seg_map(f, out, a, b, c):
    """out = ``invoke(f, a, b, c, i, k)``, element-wise."""
    n = out.shape[0]
    full = n // W * W
    for i in range(0, full, W):
        vstore(out, i, W, invoke(f, a, b, c, i, W))
    if full < n:
        vstore(out, full, n - full, invoke(f, a, b, c, full, n - full))


# kernel functions: (marker, a, b, c, i, k) -> the vector for elements i .. i+k-1. In sums,
# the padding lanes (k .. W-1) give exactly +0.

@kernel_fn
def _exp_lanes(f, a, b, c, i, k):
    """exp(x - shift) for x = a, shift = c; kept in ``b`` unless it is None."""
    e = vexp_nonpos(vsub(vload(a, i, k, NEG_INF), c))
    if b is not None:
        vstore(b, i, k, e)
    return e


@kernel_fn
def _product_lanes(f, a, b, c, i, k):
    return vmul(vload(a, i, k, 0.0), vload(b, i, k, 0.0))


@kernel_fn
def _value_lanes(f, a, b, c, i, k):
    return vload(a, i, k, 0.0)


@kernel_fn
def _constant_lanes(f, a, b, c, i, k):
    """The scalar c in the compute type of array ``a``."""
    return vsplat(c, a)


@kernel_fn
def _softmax_lanes(f, a, b, c, i, k):
    """e * factor for c = (shift, factor): e as kept in ``b``, or, when ``b`` is None
    (float16 output), exp(a - shift) computed again by the same expression."""
    if b is None:
        e = vexp_nonpos(vsub(vload(a, i, k, NEG_INF), c[0]))
    else:
        e = vload(b, i, k, 0.0)
    return vmul(e, c[1])


@kernel_fn
def _log_softmax_lanes(f, a, b, c, i, k):
    """(x - m) - lse for c = (m, lse)."""
    return vsub(vsub(vload(a, i, k, 0.0), c[0]), c[1])


@kernel_fn
def _softmax_grad_lanes(f, a, b, c, i, k):
    """y * (dy - s)."""
    return vmul(vload(a, i, k, 0.0), vsub(vload(b, i, k, 0.0), c))


@kernel_fn
def _log_softmax_grad_lanes(f, a, b, c, i, k):
    """dz - exp(z) * s for z = a, dz = b."""
    return vsub(vload(b, i, k, 0.0), vmul(vexp(vload(a, i, k, 0.0)), c))


# ---------------------------------------------------------------------------------------
# the phases of each operation. a: x, y or z; b: dy or dz (a again for the forward ops).

def stats(op, a, b, out):
    """One chunk: (max, sum) in float64."""


def finish(op, cmax, csum):
    """One row: (m, t) from the chunks' statistics."""


def write(op, a, b, out, cmax, m, t):
    """One chunk: the outputs."""


def _exp_stats(op, a, b, out):
    """(chunk max, sum of exp(x - chunk max)); softmax keeps the exps in ``out`` when it
    stores the compute type. A chunk of -inf is shifted by 0 instead: e = exp(-inf) = 0,
    and it adds 0 to the row."""
    cm = seg_max(a)
    shift = cm if cm != NEG_INF else to_compute(0.0, a)
    es = pick(op, SOFTMAX, exact_store(out), None)
    return np.float64(cm), seg_sum(_exp_lanes, a, es, shift)


def _max_and_total(op, cmax, csum):
    """Row max and sum of exp(x - row max) from the chunks' statistics, in chunk order;
    log_softmax takes the log of the sum."""
    m = cmax[0]
    for c in range(1, cmax.shape[0]):
        m = vmax(m, cmax[c])
    if cmax.shape[0] == 1:
        total = csum[0]  # 0.0 + csum[0] * exp(0) == csum[0]: exp(0) is exactly 1
    else:
        total = 0.0
        for c in range(cmax.shape[0]):
            total += csum[c] * vexp_nonpos(cmax[c] - m)
    if same(op, LOG_SOFTMAX):
        return m, vlog(total)
    return m, total


def _softmax_write(op, a, b, out, cmax, m, t):
    """exp(x - chunk max) * (exp(chunk max - m) / t). A row whose max is NaN or +inf, or
    that holds only -inf, is NaN."""
    if not NEG_INF < m < math.inf:
        seg_map(_constant_lanes, out, out, None, NAN)
    else:
        # exp(0) is exactly 1: the chunk holding the max (every one-chunk row) skips it
        scale = 1.0 if cmax == m else vexp_nonpos(cmax - m)
        factor = to_compute(scale / t, a)
        shift = to_compute(cmax if cmax != NEG_INF else 0.0, a)  # as ``_exp_stats``
        es = pick(op, SOFTMAX, exact_store(out), None)
        seg_map(_softmax_lanes, out, a, es, (shift, factor))


def _log_softmax_write(op, a, b, out, cmax, m, t):
    """(x - m) - lse, lse = t; NaN rows as softmax."""
    if not NEG_INF < m < math.inf:
        seg_map(_constant_lanes, out, out, None, NAN)
    else:
        seg_map(_log_softmax_lanes, out, a, None, (to_compute(m, a), to_compute(t, a)))


def _softmax_grad_stats(op, a, b, out):
    return 0.0, seg_sum(_product_lanes, a, b, None)


def _log_softmax_grad_stats(op, a, b, out):
    return 0.0, seg_sum(_value_lanes, b, None, None)


def _sum_finish(op, cmax, csum):
    total = 0.0
    for c in range(csum.shape[0]):
        total += csum[c]
    return 0.0, total


def _grad_write(op, a, b, out, cmax, m, t):
    lanes = pick(op, SOFTMAX_BACKWARD, _softmax_grad_lanes, _log_softmax_grad_lanes)
    seg_map(lanes, out, a, b, to_compute(t, a))


dispatch(stats, {"softmax": _exp_stats, "log_softmax": _exp_stats, "softmax_split": _exp_stats,
                 "softmax_backward": _softmax_grad_stats,
                 "log_softmax_backward": _log_softmax_grad_stats})
dispatch(finish, {"softmax": _max_and_total, "log_softmax": _max_and_total,
                  "softmax_split": _max_and_total,
                  "softmax_backward": _sum_finish, "log_softmax_backward": _sum_finish})
dispatch(write, {"softmax": _softmax_write, "log_softmax": _log_softmax_write,
                 "softmax_split": _softmax_write,
                 "softmax_backward": _grad_write, "log_softmax_backward": _grad_write})


@njit(inline="always", **INTERNAL)
def row(op, a, b, out, st):
    """One row: ``a`` (x, y or z), ``b`` (dy or dz; ``a`` again for the forward
    operations), ``out``, and ``st``, a (2, number of chunks) float64 scratch."""
    n = a.shape[0]
    nc = st.shape[1]
    for c in range(nc):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        st[0, c], st[1, c] = stats(op, a[lo:hi], b[lo:hi], out[lo:hi])
    m, t = finish(op, st[0], st[1])
    for c in range(nc):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        write(op, a[lo:hi], b[lo:hi], out[lo:hi], st[0, c], m, t)
