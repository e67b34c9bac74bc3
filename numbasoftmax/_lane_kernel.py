"""The lane kernel: rows side by side, one row per vector lane, with the row kernel's
arithmetic.

A lane tuple ``(arr, base, step, k)`` and a tile count ``nt`` describe a band of nt * W
rows: element j of row r of tile t is ``arr[base + t*W + j*step + r]`` (r < k <= W, or all
W rows when k is the marker ``_simd.ALL``; a band with a partial tile has nt = 1). A vector
load reads element j of the W rows of a tile. Bands serve rows of a strided axis read in
place (softmax over axis 0 of a C-ordered matrix: ``step`` is the row pitch, and a band
spans nt * W neighbouring columns, so each visit to a memory row reads nt * W contiguous
elements) and short rows gathered into a tile (``step`` = W, nt = 1).

The row kernel's lane l of a block becomes, per tile, the vector ``T[l]`` of a W x W
scratch tile: element j of a block is added to ``T[j mod W]``, in order, starting from +0;
the block sum is the same halving tree over T[0..W-1] (``_tree``), widened to float64 per
lane. The phases and formulas are ``_row_kernel``'s, lane by lane, so the results are
bitwise the row kernel's (tests hold them to it).

Scratch, per band: ``S`` (float64) holds per tile the chunks' maxima and sums and the
rows' (m, t) as vectors; ``T`` (compute type, nt * W * W) the block lanes; ``V`` (compute
type, 2 * nt * W) per-tile vectors of the current phase.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import types
from numba.extending import overload

from ._disk_cache import njit
from ._markers import (
    CALLEE,
    INLINE,
    Marker,
    MarkerType,
    dispatch,
    dispatch_all,
    invoke,
    kernel_fn,
    pick,
    same,
)
from ._row_kernel import (
    BLOCK,
    CHUNK,
    INTERNAL,
    LOG_SOFTMAX,
    LOGSUMEXP_SIGN,
    NAN,
    NEG_INF,
    SOFTMAX,
    SOFTMAX_BACKWARD,
    keep,
    logsumexp_grad_lanes,
    reduces,
)
from ._simd import (
    ALL,
    W,
    exact_store,
    imax,
    imin,
    vabs,
    vadd,
    vall,
    vbelow,
    vdiv,
    veq,
    visfinite,
    vlt,
    vmax,
    vmax_num,
    vmul,
    vnarrow,
    vnonzero,
    vone_nan,
    vselect,
    vsplat,
    vsub,
    vwiden,
)
from ._vmath import vexp, vexp_nonpos, vexp_nonpos_weighted, vexp_weighted, vlog
from ._vmem import (
    TILE_TRANSPOSE_MAX,
    vand,
    vload,
    vload_mask,
    vprefetch,
    vstore,
    vstream,
)

# A band read in place along a strided axis visits each memory row for its nt * W elements
# only, too short a run for the hardware prefetchers (which follow runs within a page), so
# each row's lines would be waited for. The passes over a band fetch the lines of the row
# PREFETCH_ROWS ahead into the L2 cache (``vprefetch``; a hint: no effect on any result).
# (8192, 2048) float32 along axis 0, 2 threads: log_softmax 31-37 ms without, 18-20 ms
# with 4 rows into L1. 8 rows into L2 against that, time ratio: 0.61-0.82 on one CPU, 0.75-1.07
# on another (gradients gain most); 8 rows into L1, 4 or 12-24 into L2 gained less.
# Only where the band's rows lie back to back in memory, or leave less than a tile between
# them (the band is its inner row but for a partial tile), do the hardware prefetchers see
# one run; fetching ahead there only costs the hints (a (1000, 100) float32 array along
# axis 0, in the cache: 3-13 % longer). Rows 256 or 512 elements apart are no exception:
# along axis 0 of (65536, 256) and (32768, 512) float32, 2 threads, fetching ahead took
# 0.42-0.70x the time.
PREFETCH_ROWS = 8
# A band of fewer than PREFETCH_TILES tiles fetches twice as many rows ahead for each halving
# of its tiles, so that as many of its lines are on their way: log_softmax_backward's
# 4-tile bands (``_cpu_kernels.NARROW_BAND_TILES``), bench/bench_axes.py, 2 threads, AMD
# EPYC, % of the last-axis speed with 8 / 16 rows ahead: (8192, 2048) along axis 0 54-65 /
# 59-68 %, (16384, 1024) 48-58 / 61-65 %. (Comparisons, not a division by the run-time
# tile count: the rule is evaluated at each row.)
PREFETCH_TILES = 8


@njit(inline="always", **INTERNAL)
def rows_ahead(nt):
    """How many rows ahead ``prefetch`` fetches for a band of nt tiles."""
    rows = PREFETCH_ROWS
    if nt < PREFETCH_TILES:
        rows *= 2
    if nt < PREFETCH_TILES // 2:
        rows *= 2
    if nt < PREFETCH_TILES // 4:
        rows *= 2
    return rows


@njit(inline="always", **INTERNAL)
def fetches_ahead(step, nt):
    """Whether ``prefetch`` fetches ahead the rows of a band of nt tiles ``step`` elements
    apart: where they leave a tile's width or more between them."""
    return step - nt * W >= W


def prefetch(lanes, nt, j, hi):
    """Fetch ahead row min(j + rows_ahead(nt), hi - 1) of the nt tiles of lane tuple
    ``lanes`` where ``fetches_ahead``; nothing for None."""


@overload(prefetch, jit_options=INLINE)
def _prefetch_impl(lanes, nt, j, hi):
    if isinstance(lanes, types.NoneType):
        return lambda lanes, nt, j, hi: None

    if lanes[0].dtype == types.uint8:  # a mask's bytes: four tiles to a line
        def bytes_(lanes, nt, j, hi):
            arr, base, step, _ = lanes
            if fetches_ahead(step, nt):
                at = base + imin(j + rows_ahead(nt), hi - 1) * step
                for i in range(0, nt * W, 64):  # a line apart, and the last byte
                    vprefetch(arr, at + i)
                vprefetch(arr, at + nt * W - 1)
        return bytes_

    def impl(lanes, nt, j, hi):
        arr, base, step, _ = lanes
        if fetches_ahead(step, nt):
            at = base + imin(j + rows_ahead(nt), hi - 1) * step
            for t in range(nt):  # the first and last element: a tile's lines
                vprefetch(arr, at + t * W)
                vprefetch(arr, at + t * W + W - 1)
    return impl


def prefetch_out(lanes, nt, j, hi, stream):
    """``prefetch`` for the write passes' ``out``: nothing where ``stream`` is set (whole
    tiles stored past the caches, which a line fetched first only delays: the lane
    kernel's write passes along axis 0 of (8192, 2048) and (4096, 4096) and axis 1 of
    (16, 1024, 1024), float32, 2 threads, took 0.75-0.92x the time without it)."""


@overload(prefetch_out, jit_options=INLINE)
def _prefetch_out_impl(lanes, nt, j, hi, stream):
    if isinstance(stream, types.NoneType):
        return lambda lanes, nt, j, hi, stream: prefetch(lanes, nt, j, hi)

    def impl(lanes, nt, j, hi, stream):
        if not stream:
            prefetch(lanes, nt, j, hi)
    return impl


def prefetch_rows(nt, j, hi, stream, a, b, w, out):
    """``prefetch`` of lane tuples ``a``, ``b`` and ``w`` and ``prefetch_out`` of ``out``
    (each None where a pass has none): the lines a pass reads and writes, ahead of row j."""


@overload(prefetch_rows, jit_options=INLINE)
def _prefetch_rows_impl(nt, j, hi, stream, a, b, w, out):
    def impl(nt, j, hi, stream, a, b, w, out):
        prefetch(a, nt, j, hi)
        prefetch(b, nt, j, hi)
        prefetch(w, nt, j, hi)
        prefetch_out(out, nt, j, hi, stream)
    return impl


def lane_store(arr, index, k, value, stream):
    """Store a tile's lanes < k at ``index``: ``vstore``, or, where ``stream`` is set and
    the tile is whole (k the ``ALL`` marker, or a run-time k of W), a non-temporal store:
    the driver has then placed the element on a line boundary. ``stream`` None: never
    (that code is then not compiled)."""


@overload(lane_store, jit_options=INLINE)
def _lane_store_impl(arr, index, k, value, stream):
    if isinstance(stream, types.NoneType):
        return lambda arr, index, k, value, stream: vstore(arr, index, k, value)
    if isinstance(k, MarkerType):
        def whole_tile(arr, index, k, value, stream):
            if stream:
                vstream(arr, index, value)
            else:
                vstore(arr, index, k, value)
        return whole_tile

    def any_tile(arr, index, k, value, stream):
        if stream and k == W:
            vstream(arr, index, value)
        else:
            vstore(arr, index, k, value)
    return any_tile


@njit(**INTERNAL)
def _tree(T, at, nvalid):
    """The halving tree over the W vectors T[at + i*W], i < W: T[i] + T[i+8], then
    + T[i+4], ... Vectors from ``nvalid`` on hold +0 and are skipped (the same bits)."""
    h = W // 2
    while h >= 1:
        for i in range(imin(h, imax(nvalid - h, 0))):
            lo, hi = at + i * W, at + (i + h) * W
            vstore(T, lo, W, vadd(vload(T, lo, W, 0.0), vload(T, hi, W, 0.0)))
        nvalid = imin(nvalid, h)
        h //= 2
    return vload(T, at, W, 0.0)


@njit(**INTERNAL)
def _band_sum(lanes, a, b, c, w, nt, lo, hi, T, S, s0):
    """S[s0 + t*W] = per row of tile t, the package's sum (float64) of
    ``invoke(lanes, a, b, c, j, t)`` over the elements lo .. hi-1 of one chunk; +0 in
    the lanes that mask ``w`` (a lane tuple, or None) excludes, as the row kernel's
    masked terms."""
    for t in range(nt):
        vstore(S, s0 + t * W, W, vsplat(0.0, S))
    zero = vsplat(0.0, T)
    for blo in range(lo, hi, BLOCK):
        bhi = imin(blo + BLOCK, hi)
        for t in range(nt):  # the lanes this block uses; the tree reads no others
            for lane in range(imin(W, bhi - blo)):
                vstore(T, (t * W + lane) * W, W, zero)
        for j in range(blo, bhi):
            prefetch_rows(nt, j, hi, None, a, b, w, None)
            lane = (j - blo) % W
            for t in range(nt):
                at = (t * W + lane) * W
                term = keep(included(w, j, t), invoke(lanes, a, b, c, j, t), 0.0)
                vstore(T, at, W, vadd(vload(T, at, W, 0.0), term))
        for t in range(nt):
            s = s0 + t * W
            vstore(S, s, W, vadd(vload(S, s, W, 0.0), vwiden(_tree(T, t * W * W, bhi - blo))))


def weights_valid(b, j, t):
    """Lanes of element j of tile t whose weight (lane tuple ``b``) is not 0; None when
    ``b`` is None (no weights: all lanes)."""


@overload(weights_valid, jit_options=INLINE)
def _weights_valid_impl(b, j, t):
    if isinstance(b, types.NoneType):
        return lambda b, j, t: None
    return lambda b, j, t: vnonzero(vload(b[0], b[1] + j * b[2] + t * W, b[3], 0.0))


# as a mask lane tuple's lane count: one byte for every lane of a band's element j, at
# arr[base + j * step] (a mask constant along the inner positions)
EVERY_LANE = Marker("one byte for every lane")


def included(w, j, t):
    """Lanes of element j of tile t that mask ``w`` (a lane tuple of bytes, ``where=``;
    its count EVERY_LANE: one byte for all of them) includes; None when ``w`` is None (all
    lanes)."""


@overload(included, jit_options=INLINE)
def _included_impl(w, j, t):
    if isinstance(w, types.NoneType):
        return lambda w, j, t: None
    if isinstance(w[3], MarkerType) and w[3].key_ == EVERY_LANE.key:
        return lambda w, j, t: vbelow(W if w[0][w[1] + j * w[2]] else 0)
    return lambda w, j, t: vload_mask(w[0], w[1] + j * w[2] + t * W, w[3])


def excluded(op, w, j, t, v):
    """``v``, but in the lanes of element j of tile t that mask ``w`` excludes the value
    of an excluded element (-inf for log_softmax, else 0) whatever the row's statistics,
    as the row kernel's masked rows; ``v`` when ``w`` is None."""


@overload(excluded, jit_options=INLINE)
def _excluded_impl(op, w, j, t, v):
    if isinstance(w, types.NoneType):
        return lambda op, w, j, t, v: v
    fill = NEG_INF if op.key_ == "log_softmax" else 0.0
    return lambda op, w, j, t, v: keep(included(w, j, t), v, fill)


def weigh(v, b, j, t):
    """``v`` times the weights of element j of tile t (lane tuple ``b``), or ``v``."""


@overload(weigh, jit_options=INLINE)
def _weigh_impl(v, b, j, t):
    if isinstance(b, types.NoneType):
        return lambda v, b, j, t: v
    return lambda v, b, j, t: vmul(v, vload(b[0], b[1] + j * b[2] + t * W, b[3], 0.0))


def _lane_weighed(exp, weighted):
    def weighed(t, b, j, t_):
        """exp(t) times the weights of element j of tile t_ (lane tuple ``b``), a large
        weight lifting a term below the normal range as the row kernel's
        (``_vmath._LIFT``); exp(t) when ``b`` is None."""

    @overload(weighed, jit_options=INLINE)
    def _impl(t, b, j, t_):
        if isinstance(b, types.NoneType):
            return lambda t, b, j, t_: exp(t)
        return lambda t, b, j, t_: weighted(t, vload(b[0], b[1] + j * b[2] + t_ * W, b[3],
                                                     0.0))

    return weighed


weighed_exp = _lane_weighed(vexp, vexp_weighted)
weighed_exp_nonpos = _lane_weighed(vexp_nonpos, vexp_nonpos_weighted)


@njit(**INTERNAL)
def _band_max(a, b, w, nt, lo, hi, V):
    """V[t*W] = per row of tile t, the maximum of the elements lo .. hi-1 (those whose
    weight in lane tuple ``b`` is not 0 and that mask ``w`` includes; all when they are
    None)."""
    arr, base, step, k = a
    for t in range(nt):
        vstore(V, t * W, W, vsplat(NEG_INF, V))
    for j in range(lo, hi):
        prefetch_rows(nt, j, hi, None, a, b, w, None)
        at = base + j * step
        for t in range(nt):
            x = keep(weights_valid(b, j, t), vload(arr, at + t * W, k, NEG_INF), NEG_INF)
            x = keep(included(w, j, t), x, NEG_INF)
            vstore(V, t * W, W, vmax(vload(V, t * W, W, 0.0), x))


# kernel functions: (marker, a, b, c, j, t) -> the vector of element j of tile t's rows

@kernel_fn
def _exp_lanes(f, a, b, c, i, k):
    """exp(x - shift) for x in lane tuple ``a``, the shift of tile k in c[k*W]; kept in
    lane tuple ``b`` unless it is None."""
    arr, base, step, rows = a
    e = vexp_nonpos(vsub(vload(arr, base + i * step + k * W, rows, NEG_INF),
                         vload(c, k * W, W, 0.0)))
    if b is not None:
        vstore(b[0], b[1] + i * b[2] + k * W, rows, e)
    return e


@kernel_fn
def _lse_lanes(f, a, b, c, i, k):
    """weight * exp(x - shift) where the weight (lane tuple ``b``, or None) is not 0, else
    +0; in lanes whose shift (the chunk max, c[k*W]) is +inf, weight * inf at the +inf
    elements: the row kernel's terms (``_exp_lanes``, ``_inf_lanes``)."""
    arr, base, step, rows = a
    return _lse_term(vload(arr, base + i * step + k * W, rows, NEG_INF),
                     vload(c, k * W, W, 0.0), b, i, k)


@njit(inline="always", **INTERNAL)
def _lse_term(x, shift, b, j, t):
    """``_lse_lanes``' term of the vector x, element j of tile t, shifted by ``shift``."""
    e = weighed_exp_nonpos(vsub(x, shift), b, j, t)
    e_inf = vselect(veq(x, math.inf), weigh(vsplat(math.inf, x), b, j, t), 0.0)
    return keep(weights_valid(b, j, t), vselect(veq(shift, math.inf), e_inf, e), 0.0)


@kernel_fn
def _product_lanes(f, a, b, c, i, k):
    return vmul(vload(a[0], a[1] + i * a[2] + k * W, a[3], 0.0),
                vload(b[0], b[1] + i * b[2] + k * W, b[3], 0.0))


@kernel_fn
def _value_lanes(f, a, b, c, i, k):
    return vload(a[0], a[1] + i * a[2] + k * W, a[3], 0.0)


# ---------------------------------------------------------------------------------------
# phases, as the row kernel's, for a band. S layout (vectors of W float64): chunk c's
# maxima of tile t at (c*nt + t)*W, its sums at ((nc + c)*nt + t)*W, the rows' m at
# (2*nc*nt + t)*W and t at ((2*nc + 1)*nt + t)*W.

def stats(op, a, b, w, out, nt, lo, hi, T, V, S, smax, ssum):
    """One chunk: maxima at S[smax + t*W], sums at S[ssum + t*W]; ``w``: the lane tuple
    of a ``where=`` mask, or None."""


def finish(op, S, nt, nc):
    """The rows' (m, t) from the chunks' statistics."""


def write(op, a, b, w, out, nt, lo, hi, S, c, nc, V, stream):
    """One chunk: the outputs (whole tiles streamed where ``stream`` is set); where mask
    ``w`` excludes an element, ``excluded``'s value."""


def _exp_stats(op, a, b, w, out, nt, lo, hi, T, V, S, smax, ssum):
    _band_max(a, None, w, nt, lo, hi, V)
    for t in range(nt):
        cm = vload(V, t * W, W, 0.0)
        vstore(S, smax + t * W, W, vwiden(cm))
        vstore(V, t * W, W, vselect(veq(cm, NEG_INF), 0.0, cm))  # -inf chunk: e = 0
    es = pick(op, SOFTMAX, exact_store(out), None)
    _band_sum(_exp_lanes, a, es, V, w, nt, lo, hi, T, S, ssum)


def _lse_stats(op, a, b, w, out, nt, lo, hi, T, V, S, smax, ssum):
    """As ``_exp_stats`` with the weights ``b`` (lane tuple or None); a lane whose chunk
    max is +inf keeps +inf as its shift (``_lse_lanes``)."""
    _band_max(a, b, w, nt, lo, hi, V)
    for t in range(nt):
        cm = vload(V, t * W, W, 0.0)
        vstore(S, smax + t * W, W, vwiden(cm))
        vstore(V, t * W, W, vselect(veq(cm, NEG_INF), 0.0, cm))
    _band_sum(_lse_lanes, a, b, V, w, nt, lo, hi, T, S, ssum)


def _softmax_grad_stats(op, a, b, w, out, nt, lo, hi, T, V, S, smax, ssum):
    _band_sum(_product_lanes, a, b, None, w, nt, lo, hi, T, S, ssum)


def _log_softmax_grad_stats(op, a, b, w, out, nt, lo, hi, T, V, S, smax, ssum):
    _band_sum(_value_lanes, b, None, None, w, nt, lo, hi, T, S, ssum)


def _max_and_total(op, S, nt, nc):
    for t in range(nt):
        m = vload(S, t * W, W, 0.0)
        for c in range(1, nc):
            m = vmax(m, vload(S, (c * nt + t) * W, W, 0.0))
        if nc == 1:
            total = vload(S, (nt + t) * W, W, 0.0)
        else:
            total = vsplat(0.0, S)
            for c in range(nc):
                cmax = vload(S, (c * nt + t) * W, W, 0.0)
                csum = vload(S, ((nc + c) * nt + t) * W, W, 0.0)
                if not reduces(op):
                    term = vmul(csum, vexp_nonpos(vsub(cmax, m)))
                else:
                    # a row's chunk whose max is the row's infinite max (-inf: no included
                    # term; +inf) counts with scale 1, not exp(NaN); the other chunks of a
                    # +inf row are left out, whatever their weights (the row kernel's
                    # ``_max_and_total``; the band's maxima keep NaN). Only logsumexp needs
                    # it (a softmax row with an infinite max is NaN anyway); the softmax
                    # operations keep the shorter code, which compiles to a faster kernel.
                    # (a chunk's sum lifting its scale below the normal range, as
                    # logsumexp's weights lift their terms: ``_vmath._LIFT``)
                    term = vexp_nonpos_weighted(vsub(cmax, m), csum)
                    term = vselect(veq(cmax, m), csum, vselect(veq(m, math.inf), 0.0, term))
                total = vadd(total, term)
        if same(op, LOG_SOFTMAX):
            total = vlog(total)
        vstore(S, (2 * nc * nt + t) * W, W, m)
        vstore(S, ((2 * nc + 1) * nt + t) * W, W, total)


def _sum_finish(op, S, nt, nc):
    for t in range(nt):
        total = vsplat(0.0, S)
        for c in range(nc):
            total = vadd(total, vload(S, ((nc + c) * nt + t) * W, W, 0.0))
        vstore(S, ((2 * nc + 1) * nt + t) * W, W, total)


def _softmax_write(op, a, b, w, out, nt, lo, hi, S, c, nc, V, stream):
    arr, base, step, k = a
    oarr, obase, ostep, _ = out
    for t in range(nt):
        cmax = vload(S, (c * nt + t) * W, W, 0.0)
        m = vload(S, (2 * nc * nt + t) * W, W, 0.0)
        total = vload(S, ((2 * nc + 1) * nt + t) * W, W, 0.0)
        # as the row kernel: 1 where the chunk holds the row's max (exp(0) is exactly 1)
        at_max = veq(cmax, m)
        if vall(at_max):
            factor = vdiv(1.0, total)
        else:
            factor = vdiv(vselect(at_max, 1.0, vexp_nonpos(vsub(cmax, m))), total)
        vstore(V, t * W, W, vnarrow(vselect(veq(cmax, NEG_INF), 0.0, cmax), arr))
        vstore(V, (nt + t) * W, W, vnarrow(factor, arr))
    # the exps softmax kept in out (not softmax_split: its write computes them again)
    kept = pick(op, SOFTMAX, exact_store(oarr), None) is not None
    for j in range(lo, hi):
        prefetch_rows(nt, j, hi, stream, a, None, w, out)
        for t in range(nt):
            if kept:
                e = vload(oarr, obase + j * ostep + t * W, k, 0.0)
            else:
                x = vload(arr, base + j * step + t * W, k, NEG_INF)
                e = vexp_nonpos(vsub(x, vload(V, t * W, W, 0.0)))
            ok = visfinite(vload(S, (2 * nc * nt + t) * W, W, 0.0))
            value = vselect(ok, vmul(e, vload(V, (nt + t) * W, W, 0.0)), NAN)
            lane_store(oarr, obase + j * ostep + t * W, k, excluded(op, w, j, t, value),
                       stream)


@njit(inline="always", **INTERNAL)
def _rows_m_t(S, nt, nc, V, like):
    """The rows' (m, t) of each tile from S into V[t*W] and V[(nt + t)*W], in the compute
    type of array ``like``."""
    for t in range(nt):
        vstore(V, t * W, W, vnarrow(vload(S, (2 * nc * nt + t) * W, W, 0.0), like))
        vstore(V, (nt + t) * W, W, vnarrow(vload(S, ((2 * nc + 1) * nt + t) * W, W, 0.0), like))


def _log_softmax_write(op, a, b, w, out, nt, lo, hi, S, c, nc, V, stream):
    arr, base, step, k = a
    oarr, obase, ostep, _ = out
    _rows_m_t(S, nt, nc, V, arr)
    for j in range(lo, hi):
        prefetch_rows(nt, j, hi, stream, a, None, w, out)
        for t in range(nt):
            x = vload(arr, base + j * step + t * W, k, 0.0)
            v = vsub(vsub(x, vload(V, t * W, W, 0.0)), vload(V, (nt + t) * W, W, 0.0))
            ok = visfinite(vload(S, (2 * nc * nt + t) * W, W, 0.0))
            lane_store(oarr, obase + j * ostep + t * W, k,
                       excluded(op, w, j, t, vselect(ok, v, NAN)), stream)


def _lse_write(op, a, b, w, out, nt, lo, hi, S, c, nc, V, stream):
    """The rows' values m + log|t| (NaN for t < 0 without the sign) from the first chunk,
    at out[base + t*W] per tile; with the sign, the signs at out[base + step + t*W]."""
    if c != 0:
        return
    oarr, obase, ostep, k = out
    for t in range(nt):
        _lse_store(op, vload(S, (2 * nc * nt + t) * W, W, 0.0),
                   vload(S, ((2 * nc + 1) * nt + t) * W, W, 0.0), oarr, obase, ostep, k, t)


@njit(inline="always", **INTERNAL)
def _lse_store(op, m, total, oarr, obase, ostep, k, t):
    """Tile t's values m + log|total| at oarr[obase + t*W] (NaN for total < 0 without the
    sign) and, with the sign, its signs at oarr[obase + ostep + t*W]: m and total (float64)
    the rows' (m, t)."""
    total = vselect(veq(m, m), total, NAN)
    value = vadd(m, vlog(vabs(total)))
    value = vselect(veq(value, value), value, NAN)  # one NaN pattern, as the row kernel
    if same(op, LOGSUMEXP_SIGN):
        sign = vselect(vlt(0.0, total), 1.0, vselect(vlt(total, 0.0), -1.0,
                                                    vselect(veq(total, 0.0), vsplat(0.0, total),
                                                            NAN)))
        vstore(oarr, obase + ostep + t * W, k, vnarrow(sign, oarr))
    else:
        value = vselect(vlt(total, 0.0), NAN, value)
    vstore(oarr, obase + t * W, k, vnarrow(value, oarr))


def _grad_write(op, a, b, w, out, nt, lo, hi, S, c, nc, V, stream):
    oarr, obase, ostep, k = out
    for t in range(nt):
        vstore(V, t * W, W, vnarrow(vload(S, ((2 * nc + 1) * nt + t) * W, W, 0.0), a[0]))
    for j in range(lo, hi):
        prefetch_rows(nt, j, hi, stream, a, b, w, out)
        for t in range(nt):
            u = vload(a[0], a[1] + j * a[2] + t * W, k, 0.0)
            v = vload(b[0], b[1] + j * b[2] + t * W, k, 0.0)
            s = vload(V, t * W, W, 0.0)
            if same(op, SOFTMAX_BACKWARD):
                g = _product_grad(u, v, s)
            else:
                g = _exp_grad_value(u, v, s)
            lane_store(oarr, obase + j * ostep + t * W, k, excluded(op, w, j, t, g), stream)


def _no_stats(op, a, b, w, out, nt, lo, hi, T, V, S, smax, ssum):
    pass


def _given_finish(op, S, nt, nc):
    pass  # the rows' given values are in place of their (m, t) (``given_values``)


def _lse_grad_write(op, a, b, w, out, nt, lo, hi, S, c, nc, V, stream):
    """logsumexp's gradient, element-wise as the row kernel's (``logsumexp_grad_lanes``),
    each lane given its row's values in place of its (m, t): (weight *) exp(x - lse) * g
    where the weight (lane tuple ``b``, or None) is not 0, else 0."""
    arr, base, step, k = a
    oarr, obase, ostep, _ = out
    _rows_m_t(S, nt, nc, V, arr)
    for j in range(lo, hi):
        prefetch_rows(nt, j, hi, stream, a, b, w, out)
        for t in range(nt):
            x = vload(arr, base + j * step + t * W, k, 0.0)
            e = weighed_exp(vsub(x, vload(V, t * W, W, 0.0)), b, j, t)
            g = keep(weights_valid(b, j, t), vone_nan(vmul(e, vload(V, (nt + t) * W, W, 0.0))),
                     0.0)
            lane_store(oarr, obase + j * ostep + t * W, k, excluded(op, w, j, t, g), stream)


def given_values(S, side, nt, n, at, k):
    """The given values of a band's rows (``side``'s first and second value arrays, as
    ``_cpu_kernels`` passes them; the rows' lanes at first[at + t*W], k of them per tile)
    into S where ``band``'s finish leaves the rows' (m, t); nothing without them."""


@overload(given_values, jit_options=INLINE)
def _given_values_impl(S, side, nt, n, at, k):
    if isinstance(side, types.NoneType) or isinstance(side[2], types.NoneType):
        return lambda S, side, nt, n, at, k: None

    def put(S, side, nt, n, at, k):
        nc = (n + CHUNK - 1) // CHUNK
        for t in range(nt):
            vstore(S, (2 * nc * nt + t) * W, W, vwiden(vload(side[2], at + t * W, k, 0.0)))
            vstore(S, ((2 * nc + 1) * nt + t) * W, W,
                   vwiden(vload(side[3], at + t * W, k, 0.0)))
    return put


class LanePhases(NamedTuple):
    """An operation's functions for the lane kernel's phase stubs (``stats`` ...
    ``write``)."""

    stats: object
    finish: object
    write: object


# the forward operations and the gradients each share their phases but for the ones named
_EXP = LanePhases(_exp_stats, _max_and_total, _softmax_write)
_GRAD = LanePhases(_softmax_grad_stats, _sum_finish, _grad_write)
_LSE = LanePhases(_lse_stats, _max_and_total, _lse_write)
_PHASES = {
    "softmax": _EXP,
    "log_softmax": _EXP._replace(write=_log_softmax_write),
    "softmax_split": _EXP,
    "softmax_backward": _GRAD,
    "log_softmax_backward": _GRAD._replace(stats=_log_softmax_grad_stats),
    "logsumexp": _LSE,
    "logsumexp_sign": _LSE,
    "logsumexp_backward": LanePhases(_no_stats, _given_finish, _lse_grad_write),
}
dispatch_all(LanePhases(stats, finish, write), _PHASES)


# ``band`` and its two phases are inlined as numba IR (``inline="always"``), not compiled
# as functions of their own: numba optimizes and emits each compiled function's code, its
# callees' inlined, once for itself and again within each caller, and these three only
# call others. Compiled, they made a first call along a strided axis (two band forms:
# whole tiles and the last one) compile 0.5-1.1 s longer (4.5-6.5 s).
@njit(inline="always", **INTERNAL)
def _stats_phase(op, a, b, w, out, nt, n, S, T, V):
    """Every chunk's statistics into S (chunk c's maxima at S[c * nt * W ..], its sums at
    S[(chunks + c) * nt * W ..])."""
    nc = (n + CHUNK - 1) // CHUNK
    for c in range(nc):
        lo, hi = c * CHUNK, imin(n, (c + 1) * CHUNK)
        stats(op, a, b, w, out, nt, lo, hi, T, V, S, c * nt * W, (nc + c) * nt * W)


@njit(inline="always", **INTERNAL)
def _write_phase(op, a, b, w, out, nt, n, S, V, stream):
    """Every chunk's outputs from the statistics and the rows' (m, t) in S."""
    nc = (n + CHUNK - 1) // CHUNK
    for c in range(nc):
        lo, hi = c * CHUNK, imin(n, (c + 1) * CHUNK)
        write(op, a, b, w, out, nt, lo, hi, S, c, nc, V, stream)


@njit(inline="always", **INTERNAL)
def band(op, a, b, w, out, nt, n, S, T, V, stream):
    """nt * W rows of n elements (lane tuples ``a``, ``b``, ``out``; ``w``: the lane tuple
    of a ``where=`` mask's bytes, or None). Scratch: ``S``
    float64 of (2 * chunks + 2) * nt * W, ``T`` of nt * W * W and ``V`` of 2 * nt * W in
    the compute type. ``stream``: see ``lane_store`` (the caller fences)."""
    _stats_phase(op, a, b, w, out, nt, n, S, T, V)
    finish(op, S, nt, (n + CHUNK - 1) // CHUNK)
    _write_phase(op, a, b, w, out, nt, n, S, V, stream)


# ---------------------------------------------------------------------------------------
# The phases of ``band`` apart, for rows whose segments are in different places (the blocks
# of a dask array along the softmax axis): the chunks' statistics go out to, and the
# statistics and the rows' (m, t) come in from, per-row arrays in the layout of
# ``_cpu_kernels.segment_stats``: st[r, 0, c] and st[r, 1, c] (chunk c's max and sum of
# row r), fin[r] = (m, t). Row r0 + i is lane i % W of tile i // W; ``rows`` of the band's
# nt * W lanes are real (the others of a partial tile are computed and never stored).


@njit(**INTERNAL)
def band_stats(op, a, b, w, nt, n, S, T, V, st, r0, rows):
    """The statistics of each chunk of the band's rows into st[r0 .. r0+rows-1] (``w`` as
    for ``band``)."""
    nc = (n + CHUNK - 1) // CHUNK
    for t in range(nc * nt):  # the gradients have no maxima: 0, as the row kernel's
        vstore(S, t * W, W, vsplat(0.0, S))
    _stats_phase(op, a, b, w, a, nt, n, S, T, V)
    for c in range(nc):
        for i in range(rows):
            t, lane = i // W, i % W
            st[r0 + i, 0, c] = S[(c * nt + t) * W + lane]
            st[r0 + i, 1, c] = S[((nc + c) * nt + t) * W + lane]


@njit(**INTERNAL)
def band_write(op, a, b, w, out, nt, n, S, V, st, fin, r0, rows, stream):
    """The outputs of the band's rows from st and fin of rows r0 .. r0+rows-1; ``w`` and
    ``stream`` as for ``band``."""
    nc = (n + CHUNK - 1) // CHUNK
    for i in range(nt * W):
        t, lane = i // W, i % W
        r = r0 + imin(i, rows - 1)  # the lanes past the rows repeat the last one
        for c in range(nc):
            S[(c * nt + t) * W + lane] = st[r, 0, c]
            S[((nc + c) * nt + t) * W + lane] = st[r, 1, c]
        S[(2 * nc * nt + t) * W + lane] = fin[r, 0]
        S[((2 * nc + 1) * nt + t) * W + lane] = fin[r, 1]
    _write_phase(op, a, b, w, out, nt, n, S, V, stream)


# ---------------------------------------------------------------------------------------
# A whole tile of short rows. For rows of at most 2W elements (one chunk, one block whose
# lane l holds elements l and l + W) ``band`` spends most of its time on its scratch:
# zeroing the block lanes T, adding into them in memory, the tree's loops with their
# run-time bounds, the statistics S and V, each store waited for by the next load. ``tile``
# runs the same operations on the same values in the same order straight from the tile's
# vectors: in registers, a variable per element, for rows of at most REGISTER_ROW_MAX
# elements; with loops over the tile for the forward operations' and logsumexp's rows of
# at most TILE_ROW_MAX; logsumexp's gradient, element-wise, a vector at a time for rows of
# at most REGISTER_ROW_MAX (each lane given its row's values). Its results are ``band``'s bit for
# bit (tests hold them to it). Its sum leaves out ``band``'s 0 + of each block lane and
# adds +0 for the lanes past n, which changes only a -0 (to +0; logsumexp's weighted terms
# can be -0); so does the 0 + of the widened tree, which the result is in every case.
#
# The tiles take no other rows: ``band`` would double the compile time of a first
# short-row call (the gradients' rows of 9 or more run faster in the row kernel's groups
# anyway).

REGISTER_ROW_MAX = 8
TILE_ROW_MAX = TILE_TRANSPOSE_MAX  # 2W: the rows the tiles' moves transpose whole


def tile_row_max(op):
    """The longest row ``tile`` takes for operation ``op`` (a name)."""
    if op in ("softmax_backward", "log_softmax_backward", "logsumexp_backward"):
        return REGISTER_ROW_MAX
    return TILE_ROW_MAX


def tile(op, ta, tb, to, n, S, T, V):
    """``band`` on the whole tile (ta, 0, W, ALL) of n elements per row (tb: the second
    operand's tile, or None; to: the output tile, of max(n, 2) vectors: a reduction's
    values and signs in its first two; S, T, V: ``band``'s scratch). Rows of at most
    ``tile_row_max`` elements, else a ValueError."""


def lane_tuple(arr, base, step, k):
    """The lane tuple (arr, base, step, k), or None for an absent array (a tile or band
    without weights)."""


# with reference counts: it returns an array inside a tuple
@overload(lane_tuple, jit_options=CALLEE)
def _lane_tuple_impl(arr, base, step, k):
    if isinstance(arr, types.NoneType):
        return lambda arr, base, step, k: None
    return lambda arr, base, step, k: (arr, base, step, k)


@njit(**INTERNAL)
def _sum8(u0, u1, u2, u3, u4, u5, u6, u7):
    """0 + the widened ``_tree`` of a block whose lanes i and i + 8 add up to u_i: the
    tree's first step done."""
    return vadd(0.0, vwiden(vadd(vadd(vadd(u0, u4), vadd(u2, u6)),
                                 vadd(vadd(u1, u5), vadd(u3, u7)))))


@njit(**INTERNAL)
def _lane(t, lane, n):
    """Block lane ``lane`` of a tile's rows of n <= TILE_ROW_MAX terms in t: its terms
    (lane, lane + W, ...) added in order, +0 past n."""
    if lane >= n:
        return vsplat(0.0, t)
    acc = vload(t, lane * W, W, 0.0)
    for j in range(lane + W, n, W):
        acc = vadd(acc, vload(t, j * W, W, 0.0))
    return acc


@njit(**INTERNAL)
def _pair(t, i, n):
    return vadd(_lane(t, i, n), _lane(t, i + 8, n))


@njit(**INTERNAL)
def _tile_sum(t, n):
    """``_band_sum`` of rows of n <= TILE_ROW_MAX terms in tile t (one block)."""
    i = np.int64(0)  # an int64, not literals: see ``_vectors``
    return _sum8(_pair(t, i, n), _pair(t, i + 1, n), _pair(t, i + 2, n), _pair(t, i + 3, n),
                 _pair(t, i + 4, n), _pair(t, i + 5, n), _pair(t, i + 6, n),
                 _pair(t, i + 7, n))


@njit(**INTERNAL)
def _tile_max(t, n):
    """The maximum of a tile's n vectors, NaN left out (``vmax_num``; ``_forward_tile``
    tells a NaN by its row's sum), in two chains (the maximum is exact and order-free, as
    in ``_band_max``: one chain would wait on each step)."""
    m0 = vsplat(NEG_INF, t)
    m1 = m0
    for j in range(0, n - 1, 2):
        m0 = vmax_num(m0, vload(t, j * W, W, 0.0))
        m1 = vmax_num(m1, vload(t, (j + 1) * W, W, 0.0))
    if n % 2:
        m0 = vmax_num(m0, vload(t, (n - 1) * W, W, 0.0))
    return vmax_num(m0, m1)


@njit(**INTERNAL)
def _vector(t, j, n, fill):
    """Vector j of a tile of n (element j of its W rows), or ``fill`` in every lane."""
    if j < n:
        return vload(t, j * W, W, 0.0)
    return vsplat(fill, t)


@njit(**INTERNAL)
def _vectors(t, n, fill):
    """The first REGISTER_ROW_MAX vectors of a tile of n, ``fill`` past n."""
    # The indices as an int64 variable plus constants: numba compiles a function once per
    # value of a literal integer argument (eight ``_vector``s for 0 .. 7, and so for each
    # helper called so: ~0.8 s of a first short-row call); LLVM folds the constants in the
    # one inlined function alike.
    j = np.int64(0)
    return (_vector(t, j, n, fill), _vector(t, j + 1, n, fill), _vector(t, j + 2, n, fill),
            _vector(t, j + 3, n, fill), _vector(t, j + 4, n, fill),
            _vector(t, j + 5, n, fill), _vector(t, j + 6, n, fill),
            _vector(t, j + 7, n, fill))


@njit(**INTERNAL)
def _store_first(t, n, v0, v1, v2, v3, v4, v5, v6, v7):
    """The first n of the vectors into tile t."""
    for j, v in enumerate((v0, v1, v2, v3, v4, v5, v6, v7)):
        if j < n:
            vstore(t, j * W, W, v)


@njit(**INTERNAL)
def _max_if(a, b, both):
    if both:
        return vmax_num(a, b)
    return a


@njit(**INTERNAL)
def _exp_below(x, shift, j, n):
    """exp(x - shift) (``_exp_lanes``) for a vector j < n, else +0 (the sum's padding)."""
    if j < n:
        return vexp_nonpos(vsub(x, shift))
    return vsplat(0.0, x)


@njit(**INTERNAL)
def _registers_stats(ta, to, n):
    """(cm, total) of a tile of n <= REGISTER_ROW_MAX vectors held in registers, its exps
    into ``to``."""
    x0, x1, x2, x3, x4, x5, x6, x7 = _vectors(ta, n, NEG_INF)
    # a tree over the n vectors, none taken with the padding (see _tile_max)
    cm = _max_if(_max_if(_max_if(x0, x1, n > 1), _max_if(x2, x3, n > 3), n > 2),
                 _max_if(_max_if(x4, x5, n > 5), _max_if(x6, x7, n > 7), n > 6), n > 4)
    shift = vselect(veq(cm, NEG_INF), 0.0, cm)
    j = np.int64(0)  # see ``_vectors``
    e0, e1, e2, e3 = (_exp_below(x0, shift, j, n), _exp_below(x1, shift, j + 1, n),
                      _exp_below(x2, shift, j + 2, n), _exp_below(x3, shift, j + 3, n))
    e4, e5, e6, e7 = (_exp_below(x4, shift, j + 4, n), _exp_below(x5, shift, j + 5, n),
                      _exp_below(x6, shift, j + 6, n), _exp_below(x7, shift, j + 7, n))
    _store_first(to, n, e0, e1, e2, e3, e4, e5, e6, e7)
    return cm, _sum8(e0, e1, e2, e3, e4, e5, e6, e7)


@njit(**INTERNAL)
def _loops_stats(ta, to, n):
    """(cm, total) of a tile of n <= TILE_ROW_MAX vectors by loops over it, its exps into
    ``to``."""
    cm = _tile_max(ta, n)
    shift = vselect(veq(cm, NEG_INF), 0.0, cm)
    for j in range(n):
        vstore(to, j * W, W, vexp_nonpos(vsub(vload(ta, j * W, W, 0.0), shift)))
    return cm, _tile_sum(to, n)


def _forward_tile(op, ta, tb, to, n, S, T, V):
    if n == 1:  # x - max is +0 where x is finite: exp 1, total 1, factor 1, log +0
        value = vsplat(0.0 if same(op, LOG_SOFTMAX) else 1.0, ta)
        vstore(to, 0, W, vselect(visfinite(vload(ta, 0, W, 0.0)), value, NAN))
        return
    if n <= REGISTER_ROW_MAX:
        cm, total = _registers_stats(ta, to, n)
    elif n <= TILE_ROW_MAX:
        cm, total = _loops_stats(ta, to, n)
    else:
        raise ValueError("the softmax functions' tiles take rows of at most "
                         "TILE_ROW_MAX elements")
    # visfinite(m) of the write phases (m is cm widened), and a sum that is not NaN: the
    # max leaves a NaN out, whose exp is NaN (``_row_kernel.told_max``)
    ok = vand(visfinite(cm), veq(total, total))
    if same(op, LOG_SOFTMAX):
        lt = vnarrow(vlog(total), ta)  # the shift of the write phase, narrow(m), is cm
        for j in range(n):
            x = vload(ta, j * W, W, 0.0)
            vstore(to, j * W, W, vselect(ok, vsub(vsub(x, cm), lt), NAN))
    else:
        # softmax's factor: 1 / total wherever the row is finite (its one chunk holds its
        # max; ``_softmax_write``); elsewhere the output is NaN whatever the factor
        f = vnarrow(vdiv(1.0, total), ta)
        for j in range(n):
            vstore(to, j * W, W, vselect(ok, vmul(vload(to, j * W, W, 0.0), f), NAN))


@njit(**INTERNAL)
def _grad_sum(total, like):
    """The gradients' row sum as ``_grad_write`` reads it: ``_sum_finish``'s 0 + the sum,
    narrowed to the compute type of ``like``."""
    return vnarrow(vadd(0.0, total), like)


# The gradients' element-wise formulas of the bands (``_grad_write``) and the tiles, as the
# row kernel's: the same operations in the same order, every NaN numpy's (``vone_nan``)

@njit(**INTERNAL)
def _product_grad(y, dy, s):
    """softmax's y * (dy - s)."""
    return vone_nan(vmul(y, vsub(dy, s)))


@njit(**INTERNAL)
def _exp_grad_value(z, dz, s):
    """log_softmax's dz - exp(z) * s."""
    return vone_nan(vsub(dz, vmul(vexp(z), s)))


@njit(**INTERNAL)
def _exp_grad(z, dz, s, j, n):
    """``_exp_grad_value`` for a vector j < n of a tile, else dz (never stored)."""
    if j < n:
        return _exp_grad_value(z, dz, s)
    return dz


@njit(**INTERNAL)
def _grad_registers(op, ta, tb, to, n):
    y0, y1, y2, y3, y4, y5, y6, y7 = _vectors(ta, n, 0.0)
    d0, d1, d2, d3, d4, d5, d6, d7 = _vectors(tb, n, 0.0)
    if same(op, SOFTMAX_BACKWARD):
        s = _grad_sum(_sum8(vmul(y0, d0), vmul(y1, d1), vmul(y2, d2), vmul(y3, d3),
                            vmul(y4, d4), vmul(y5, d5), vmul(y6, d6), vmul(y7, d7)), ta)
        _store_first(to, n, _product_grad(y0, d0, s), _product_grad(y1, d1, s),
                     _product_grad(y2, d2, s), _product_grad(y3, d3, s),
                     _product_grad(y4, d4, s), _product_grad(y5, d5, s),
                     _product_grad(y6, d6, s), _product_grad(y7, d7, s))
    else:
        s = _grad_sum(_sum8(d0, d1, d2, d3, d4, d5, d6, d7), ta)
        j = np.int64(0)  # see ``_vectors``
        _store_first(to, n, _exp_grad(y0, d0, s, j, n), _exp_grad(y1, d1, s, j + 1, n),
                     _exp_grad(y2, d2, s, j + 2, n), _exp_grad(y3, d3, s, j + 3, n),
                     _exp_grad(y4, d4, s, j + 4, n), _exp_grad(y5, d5, s, j + 5, n),
                     _exp_grad(y6, d6, s, j + 6, n), _exp_grad(y7, d7, s, j + 7, n))


def _grad_tile(op, ta, tb, to, n, S, T, V):
    if n > REGISTER_ROW_MAX:
        raise ValueError("the gradients' tiles take rows of at most REGISTER_ROW_MAX "
                         "elements")
    _grad_registers(op, ta, tb, to, n)


def _lse_tile(op, ta, tb, to, n, S, T, V):
    """logsumexp's tile: ``band``'s max (``_band_max``, in its order), terms
    (``_lse_lanes``: in registers up to REGISTER_ROW_MAX elements, else kept in ``to``),
    sum and values straight from the tile's vectors; the values (and signs) then in
    to[:W] (and to[W:2W])."""
    if n > TILE_ROW_MAX:
        raise ValueError("logsumexp's tiles take rows of at most TILE_ROW_MAX elements")
    b = lane_tuple(tb, 0, W, ALL)
    cm = vsplat(NEG_INF, ta)
    for j in range(n):
        cm = vmax(cm, keep(weights_valid(b, j, 0), vload(ta, j * W, W, 0.0), NEG_INF))
    shift = vselect(veq(cm, NEG_INF), 0.0, cm)
    if n <= REGISTER_ROW_MAX:
        x0, x1, x2, x3, x4, x5, x6, x7 = _vectors(ta, n, NEG_INF)
        j = np.int64(0)  # see ``_vectors``
        total = _sum8(_lse_below(x0, shift, b, j, n), _lse_below(x1, shift, b, j + 1, n),
                      _lse_below(x2, shift, b, j + 2, n), _lse_below(x3, shift, b, j + 3, n),
                      _lse_below(x4, shift, b, j + 4, n), _lse_below(x5, shift, b, j + 5, n),
                      _lse_below(x6, shift, b, j + 6, n), _lse_below(x7, shift, b, j + 7, n))
    else:
        for j in range(n):
            vstore(to, j * W, W, _lse_term(vload(ta, j * W, W, 0.0), shift, b, j, 0))
        total = _tile_sum(to, n)
    _lse_store(op, vwiden(cm), total, to, 0, W, ALL, 0)


@njit(**INTERNAL)
def _lse_below(x, shift, b, j, n):
    """``_lse_term`` for a vector j < n, else +0 (the sum's padding)."""
    if j < n:
        return _lse_term(x, shift, b, j, 0)
    return vsplat(0.0, x)


def _lse_grad_tile(op, ta, tb, to, n, S, T, V):
    """logsumexp's gradient, element-wise as the row kernel's (``logsumexp_grad_lanes``),
    each lane given its row's values: lse in S[:W], the gradient factor in S[W:2W]
    (``_cpu_kernels._tile_values``)."""
    if n > REGISTER_ROW_MAX:
        raise ValueError("logsumexp_backward's tiles take rows of at most REGISTER_ROW_MAX "
                         "elements")
    given = (vnarrow(vload(S, 0, W, 0.0), ta), vnarrow(vload(S, W, W, 0.0), ta), None)
    for j in range(n):
        vstore(to, j * W, W, invoke(logsumexp_grad_lanes, ta, tb, given, j * W, ALL))


dispatch(tile, {"softmax": _forward_tile, "log_softmax": _forward_tile,
                "softmax_backward": _grad_tile, "log_softmax_backward": _grad_tile,
                "logsumexp": _lse_tile, "logsumexp_sign": _lse_tile,
                "logsumexp_backward": _lse_grad_tile})
