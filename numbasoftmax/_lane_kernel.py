"""The lane kernel: W rows side by side, one row per lane, with the row kernel's arithmetic.

A lane tuple ``(arr, base, step, k)`` holds element j of row r (r < k <= W, or all W rows
when k is the marker ``_simd.ALL``) at ``arr[base + j*step + r]``: a vector load reads
element j of all W rows. It serves rows of a strided axis read in place (softmax over axis 0
of a C-ordered array: ``step`` is the row pitch) and short rows gathered into a tile
(``step`` = W).

The row kernel's lane l of a block becomes the vector ``T[l]`` of a W x W scratch tile (a
lane per row): element j of a block is added to ``T[j mod W]``, in order, starting from
+0; the block sum is the same halving tree over T[0..W-1] (``_tree``), widened to float64
per lane. Per-row statistics are vectors; the phases and formulas are ``_row_kernel``'s,
lane by lane, so the results are bitwise the row kernel's (tests hold them to it).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._markers import dispatch, invoke, kernel_fn, pick, same
from ._row_kernel import (
    BLOCK,
    CHUNK,
    INTERNAL,
    LOG_SOFTMAX,
    NAN,
    NEG_INF,
    SOFTMAX,
    SOFTMAX_BACKWARD,
)
from ._simd import (
    W,
    exact_store,
    vadd,
    vall,
    vdiv,
    veq,
    vexp,
    vexp_nonpos,
    visfinite,
    vload,
    vlog,
    vmax,
    vmul,
    vnarrow,
    vselect,
    vsplat,
    vstore,
    vsub,
    vwiden,
)


@njit(**INTERNAL)
def _tree(T, nvalid):
    """The halving tree over the W vectors T[0..W-1]: T[i] + T[i+8], then + T[i+4], ...
    Vectors from ``nvalid`` on hold +0 and are skipped (the same bits)."""
    h = W // 2
    while h >= 1:
        for i in range(min(h, max(nvalid - h, 0))):
            vstore(T, i * W, W, vadd(vload(T, i * W, W, 0.0), vload(T, (i + h) * W, W, 0.0)))
        nvalid = min(nvalid, h)
        h //= 2
    return vload(T, 0, W, 0.0)


@njit(**INTERNAL)
def _tile_sum(lanes, a, b, c, lo, hi, T):
    """Per row, the package's sum of ``invoke(lanes, a, b, c, j, 0)`` over the elements
    lo .. hi-1 of one chunk, in float64."""
    total = vsplat(0.0, np.float64(0.0))
    for blo in range(lo, hi, BLOCK):
        bhi = min(blo + BLOCK, hi)
        zero = vsplat(0.0, T)
        for t in range(W):
            vstore(T, t * W, W, zero)
        for j in range(blo, bhi):
            at = (j - blo) % W * W
            vstore(T, at, W, vadd(vload(T, at, W, 0.0), invoke(lanes, a, b, c, j, 0)))
        total = vadd(total, vwiden(_tree(T, bhi - blo)))
    return total


@njit(**INTERNAL)
def _tile_max(a, lo, hi):
    arr, base, step, k = a
    acc = vsplat(NEG_INF, arr)
    for j in range(lo, hi):
        acc = vmax(acc, vload(arr, base + j * step, k, NEG_INF))
    return acc


# kernel functions: (marker, a, b, c, i, unused) -> the vector of element i of the rows
# (lane tuples a and b; the number of rows comes with the tuples)

@kernel_fn
def _exp_lanes(f, a, b, c, i, k):
    """exp(x - shift) for x in lane tuple ``a``, shift = c; kept in lane tuple ``b``
    unless it is None."""
    arr, base, step, rows = a
    e = vexp_nonpos(vsub(vload(arr, base + i * step, rows, NEG_INF), c))
    if b is not None:
        vstore(b[0], b[1] + i * b[2], rows, e)
    return e


@kernel_fn
def _product_lanes(f, a, b, c, i, k):
    return vmul(vload(a[0], a[1] + i * a[2], a[3], 0.0), vload(b[0], b[1] + i * b[2], b[3], 0.0))


@kernel_fn
def _value_lanes(f, a, b, c, i, k):
    return vload(a[0], a[1] + i * a[2], a[3], 0.0)


# ---------------------------------------------------------------------------------------
# phases, as the row kernel's. ``st`` holds the chunks' statistics, a vector per chunk:
# maxima at st[c*W], sums at st[(nc + c)*W].

def stats(op, a, b, out, lo, hi, T):
    """One chunk: (max, sum) vectors."""


def finish(op, st, nc):
    """(m, t) vectors from the chunks' statistics."""


def write(op, a, b, out, lo, hi, cmax, m, t):
    """One chunk: the outputs."""


def _exp_stats(op, a, b, out, lo, hi, T):
    cm = _tile_max(a, lo, hi)
    shift = vselect(veq(cm, NEG_INF), 0.0, cm)  # a chunk of -inf: e = exp(-inf) = 0
    es = pick(op, SOFTMAX, exact_store(out), None)
    return vwiden(cm), _tile_sum(_exp_lanes, a, es, shift, lo, hi, T)


def _softmax_grad_stats(op, a, b, out, lo, hi, T):
    return vsplat(0.0, np.float64(0.0)), _tile_sum(_product_lanes, a, b, None, lo, hi, T)


def _log_softmax_grad_stats(op, a, b, out, lo, hi, T):
    return vsplat(0.0, np.float64(0.0)), _tile_sum(_value_lanes, b, None, None, lo, hi, T)


def _max_and_total(op, st, nc):
    m = vload(st, 0, W, 0.0)
    for c in range(1, nc):
        m = vmax(m, vload(st, c * W, W, 0.0))
    if nc == 1:
        total = vload(st, nc * W, W, 0.0)
    else:
        total = vsplat(0.0, st)
        for c in range(nc):
            term = vmul(vload(st, (nc + c) * W, W, 0.0),
                        vexp_nonpos(vsub(vload(st, c * W, W, 0.0), m)))
            total = vadd(total, term)
    if same(op, LOG_SOFTMAX):
        return m, vlog(total)
    return m, total


def _sum_finish(op, st, nc):
    total = vsplat(0.0, st)
    for c in range(nc):
        total = vadd(total, vload(st, (nc + c) * W, W, 0.0))
    return total, total


def _softmax_write(op, a, b, out, lo, hi, cmax, m, t):
    arr, base, step, k = a
    oarr, obase, ostep, _ = out
    # as the row kernel: 1 where the chunk holds the row's max (exp(0) is exactly 1)
    at_max = veq(cmax, m)
    if vall(at_max):
        factor = vnarrow(vdiv(1.0, t), arr)
    else:
        factor = vnarrow(vdiv(vselect(at_max, 1.0, vexp_nonpos(vsub(cmax, m))), t), arr)
    ok = visfinite(m)
    shift = vnarrow(vselect(veq(cmax, NEG_INF), 0.0, cmax), arr)
    kept = exact_store(oarr) is not None
    for j in range(lo, hi):
        if kept:
            e = vload(oarr, obase + j * ostep, k, 0.0)
        else:
            e = vexp_nonpos(vsub(vload(arr, base + j * step, k, NEG_INF), shift))
        vstore(oarr, obase + j * ostep, k, vselect(ok, vmul(e, factor), NAN))


def _log_softmax_write(op, a, b, out, lo, hi, cmax, m, t):
    arr, base, step, k = a
    oarr, obase, ostep, _ = out
    ok = visfinite(m)
    mc, lse = vnarrow(m, arr), vnarrow(t, arr)
    for j in range(lo, hi):
        v = vsub(vsub(vload(arr, base + j * step, k, 0.0), mc), lse)
        vstore(oarr, obase + j * ostep, k, vselect(ok, v, NAN))


def _grad_write(op, a, b, out, lo, hi, cmax, m, t):
    oarr, obase, ostep, k = out
    s = vnarrow(t, a[0])
    for j in range(lo, hi):
        u = vload(a[0], a[1] + j * a[2], k, 0.0)
        v = vload(b[0], b[1] + j * b[2], k, 0.0)
        if same(op, SOFTMAX_BACKWARD):
            g = vmul(u, vsub(v, s))
        else:
            g = vsub(v, vmul(vexp(u), s))
        vstore(oarr, obase + j * ostep, k, g)


dispatch(stats, {"softmax": _exp_stats, "log_softmax": _exp_stats,
                 "softmax_backward": _softmax_grad_stats,
                 "log_softmax_backward": _log_softmax_grad_stats})
dispatch(finish, {"softmax": _max_and_total, "log_softmax": _max_and_total,
                  "softmax_backward": _sum_finish, "log_softmax_backward": _sum_finish})
dispatch(write, {"softmax": _softmax_write, "log_softmax": _log_softmax_write,
                 "softmax_backward": _grad_write, "log_softmax_backward": _grad_write})


@njit(**INTERNAL)
def tile(op, a, b, out, n, st, T):
    """W rows of n elements (lane tuples ``a``, ``b``, ``out``). ``st``: float64 scratch of
    2 * (number of chunks) * W; ``T``: compute-type scratch of W * W."""
    nc = max(1, (n + CHUNK - 1) // CHUNK)
    for c in range(nc):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        cm, s = stats(op, a, b, out, lo, hi, T)
        vstore(st, c * W, W, cm)
        vstore(st, (nc + c) * W, W, s)
    m, t = finish(op, st, nc)
    for c in range(nc):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        write(op, a, b, out, lo, hi, vload(st, c * W, W, 0.0), m, t)
