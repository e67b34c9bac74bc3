"""CPU kernels: bare loops over one row, writing into ``out``.

Storage types: float32, float64, and float16 viewed as uint16 (numba has no float16);
arithmetic is float32 for float16/float32 storage and float64 for float64.

Every row is cut into chunks of ``CHUNK`` elements. A pass over a chunk is followed at once
by a second pass over the same chunk, which then reads from L1/L2, not from memory. Each
chunk yields its statistics (max and sum of exp, or a dot product) in float64; the chunks'
statistics are combined in chunk order. The serial row functions and the parallel batch
drivers do exactly the same arithmetic in the same order, so a result is bitwise the same
whatever the thread count, the number of rows, or which driver ran it.

Sums run in float32 lanes over blocks of ``BLOCK`` elements and are added to a float64
total: lane sums stay short (error ~1e-7) and the total does not drift over 2^24 elements.
Only the lane sums may be reordered by fast-math; block totals, chunk combinations and the
per-element formulas use ``strict_*`` operations, which LLVM may not reorder, so the bits do
not depend on where LLVM inlines or vectorizes the code (our drivers, users' njit code).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._config import CACHE
from ._math import (
    FASTMATH,
    compute_cast,
    compute_zero,
    exp,
    exp_nonpos,
    load,
    maximum,
    store,
    strict_add,
    strict_div,
    strict_mul,
    strict_sub,
)

BLOCK = 1024
CHUNK = 8192
# Rows up to this length always run whole inside one parallel task, so a second pass over
# the row reads from L2. Longer rows do too when there are at least ROW_TASK_MIN_ROWS of them
# (the second pass then reads from L3); fewer, longer rows are split into chunk tasks.
ROW_TASK_MAX = 32768
ROW_TASK_MIN_ROWS = 16
# rows per parallel task: enough elements that task overhead and scratch allocation vanish
TASK_ELEMENTS = 16384

_opts = {"fastmath": FASTMATH, "cache": CACHE, "nogil": True, "error_model": "numpy"}
_inl = dict(_opts, inline="always")


# ---------------------------------------------------------------------------------------
# per-chunk work. Each function takes already-sliced segments and loops from 0: with
# ``range(lo, hi)`` numba cannot prove the index non-negative, keeps its wraparound check
# and the loop does not vectorize (max over 8192 float32: 0.79 vs 0.15 ns/element).

@njit(**_inl)
def _seg_max(s):
    m = compute_cast(-math.inf, s)
    for i in range(s.shape[0]):  # from 0: a multiple of the vector width for short rows
        m = maximum(m, load(s[i]))
    return m


@njit(**_inl)
def _seg_sum_exp(s, m):
    if s.shape[0] <= BLOCK:  # the loop below with one block, without its overhead
        return strict_add(0.0, _block_sum_exp(s, m))
    total = 0.0
    for b in range(0, s.shape[0], BLOCK):
        total = strict_add(total, _block_sum_exp(s[b:b + BLOCK], m))
    return total


@njit(**_inl)
def _block_sum_exp(blk, m):
    part = compute_zero(blk)
    for i in range(blk.shape[0]):
        part += exp_nonpos(load(blk[i]) - m)
    return part


@njit(**_inl)
def _seg_max_sum_exp(s):
    """(max, sum of exp(s - max)); an all -inf segment contributes (-inf, 0), one with a
    NaN or +inf (max NaN or +inf) (max, NaN), which turns its whole row to NaN."""
    m = _seg_max(s)
    if m == -math.inf:
        return m, 0.0
    if not m < math.inf:
        return m, math.nan
    return m, _seg_sum_exp(s, m)


@njit(**_inl)
def _seg_softmax_stats(xs, bs):
    """(max, sum of e) with e = exp(xs - max) kept in ``bs``; all -inf: e = 0, (-inf, 0).

    ``bs`` must not be ``xs`` itself: LLVM vectorizes this fused loop only after a runtime
    check that the two do not overlap, and its scalar fallback sums in another order (the
    callers give in-place rows a scratch buffer)."""
    m = _seg_max(xs)
    if not -math.inf < m < math.inf:
        return m, _non_finite_stats(m, bs)
    if xs.shape[0] <= BLOCK:  # the loop below with one block, without its overhead
        return m, strict_add(0.0, _block_exp_sum(xs, bs, m))
    total = 0.0
    for b in range(0, xs.shape[0], BLOCK):
        total = strict_add(total, _block_exp_sum(xs[b:b + BLOCK], bs[b:b + BLOCK], m))
    return m, total


@njit(**_inl)
def _non_finite_stats(m, bs):
    """Sum of e for a segment whose max ``m`` is not finite, with e written to ``bs``: all
    -inf: e = 0, sum 0; NaN or +inf: NaN, which turns the row's factor, and with it every
    output of the row, to NaN."""
    e = 0.0 if m == -math.inf else math.nan
    for i in range(bs.shape[0]):
        bs[i] = store(e, bs)
    return e


@njit(**_inl)
def _block_exp_sum(xb, bb, m):
    part = compute_zero(xb)
    for i in range(xb.shape[0]):
        e = exp_nonpos(load(xb[i]) - m)
        bb[i] = store(e, bb)
        part += e
    return part


@njit(**_inl)
def _seg_softmax_stats_any(xs, bs):
    """``_seg_softmax_stats`` for long rows, where ``bs`` may be ``xs`` (in place): the sum
    runs in a loop of its own over ``bs``, whose order does not depend on aliasing (a
    separate pass costs ~20 % on short rows, so they use the fused loop)."""
    m = _seg_max(xs)
    if not -math.inf < m < math.inf:
        return m, _non_finite_stats(m, bs)
    total = 0.0
    for b in range(0, xs.shape[0], BLOCK):
        xb = xs[b:b + BLOCK]
        bb = bs[b:b + BLOCK]
        for i in range(xb.shape[0]):
            bb[i] = store(exp_nonpos(load(xb[i]) - m), bb)
        part = compute_zero(xs)
        for i in range(bb.shape[0]):
            part += load(bb[i])
        total = strict_add(total, part)
    return m, total


@njit(**_inl)
def _seg_dot(a, b):
    total = 0.0
    for k in range(0, a.shape[0], BLOCK):
        total = strict_add(total, _block_dot(a[k:k + BLOCK], b[k:k + BLOCK]))
    return total


@njit(**_inl)
def _block_dot(a, b):
    part = compute_zero(a)
    for i in range(a.shape[0]):
        part += load(a[i]) * load(b[i])
    return part


@njit(**_inl)
def _seg_sum(a):
    total = 0.0
    for k in range(0, a.shape[0], BLOCK):
        total = strict_add(total, _block_sum(a[k:k + BLOCK]))
    return total


@njit(**_inl)
def _block_sum(a):
    part = compute_zero(a)
    for i in range(a.shape[0]):
        part += load(a[i])
    return part


@njit(**_inl)
def _row_max(maxes):
    m = maxes[0]
    for c in range(1, maxes.shape[0]):
        m = maximum(m, maxes[c])
    return m


@njit(**_inl)
def _row_total(maxes, sums, m):
    """Sum of exp over the row from per-chunk statistics, in chunk order. An all -inf row
    gives 0 * exp(-inf - -inf) = NaN, so the row becomes NaN as documented."""
    total = 0.0
    for c in range(maxes.shape[0]):
        total = strict_add(total, strict_mul(sums[c], math.exp(strict_sub(maxes[c], m))))
    return total


@njit(**_inl)
def _chunk_factor(chunk_max, row_max, total, x):
    """exp(chunk max - row max) / total in the compute type of ``x``, without fast-math
    rewrites, so that the serial and the parallel drivers (and users' code) agree."""
    return compute_cast(strict_div(math.exp(strict_sub(chunk_max, row_max)), total), x)


@njit(**_inl)
def _n_chunks(n):
    return (n + CHUNK - 1) // CHUNK


@njit(**_inl)
def _seg_scale(bs, out, f):
    if _same_start(bs, out):  # the usual case; else LLVM's overlap check sends it scalar
        for i in range(out.shape[0]):
            out[i] = store(strict_mul(load(out[i]), f), out)
    else:
        for i in range(out.shape[0]):
            out[i] = store(strict_mul(load(bs[i]), f), out)


@njit(**_inl)
def _same_start(a, b):
    return a.ctypes.data == b.ctypes.data


@njit(**_inl)
def _seg_write_log_softmax(xs, out, m, lse):
    for i in range(out.shape[0]):
        out[i] = store(strict_sub(load(xs[i]) - m, lse), out)


@njit(**_inl)
def _seg_write_softmax_backward(ys, dys, out, s):
    for i in range(out.shape[0]):
        out[i] = store(strict_mul(load(ys[i]), strict_sub(load(dys[i]), s)), out)


@njit(**_inl)
def _seg_write_log_softmax_backward(zs, dzs, out, s):
    for i in range(out.shape[0]):
        out[i] = store(strict_sub(load(dzs[i]), strict_mul(exp(load(zs[i])), s)), out)


# ---------------------------------------------------------------------------------------
# row functions (serial): the public ``numbasoftmax.jit`` API wraps these

@njit(**_inl)
def softmax_row_buf(x, out, buf):
    """softmax of one row. exp(x - chunk max) is kept in ``buf`` (the output row itself, or a
    float32 scratch row for float16, or a scratch row when in place) and rescaled per chunk
    by exp(chunk max - row max) / total: one exp per element."""
    if x.shape[0] <= CHUNK:
        _softmax_short_row(x, out, buf)
    else:
        _softmax_long_row(x, out, buf)


@njit(**_inl)
def _softmax_short_row(x, out, buf):
    # the general formula with one chunk; an all -inf row gives 0 * (1 / 0) = NaN
    m, total = _seg_softmax_stats(x, buf)
    _seg_scale(buf, out, compute_cast(strict_div(1.0, total), x))


# Long rows are compiled out of line (``_opts``, not ``_inl``): numba inlining copies code
# into every caller, and a call per long row costs nothing.

@njit(**_opts)
def _softmax_long_row(x, out, buf):
    n = x.shape[0]
    nc = _n_chunks(n)
    maxes = np.empty(nc, dtype=np.float64)
    sums = np.empty(nc, dtype=np.float64)
    for c in range(nc):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        maxes[c], sums[c] = _seg_softmax_stats_any(x[lo:hi], buf[lo:hi])
    m = _row_max(maxes)
    total = _row_total(maxes, sums, m)
    for c in range(nc):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _seg_scale(buf[lo:hi], out[lo:hi], _chunk_factor(maxes[c], m, total, x))


@njit(**_inl)
def _max_lse_row(x):
    if x.shape[0] <= CHUNK:
        m, total = _seg_max_sum_exp(x)  # all -inf: (x - m) - log(0) = NaN - -inf = NaN
        return compute_cast(m, x), compute_cast(math.log(total), x)
    return _max_lse_long_row(x)


@njit(**_opts)
def _max_lse_long_row(x):
    nc = _n_chunks(x.shape[0])
    maxes = np.empty(nc, dtype=np.float64)
    sums = np.empty(nc, dtype=np.float64)
    for c in range(nc):
        maxes[c], sums[c] = _seg_max_sum_exp(x[c * CHUNK:(c + 1) * CHUNK])
    m = _row_max(maxes)
    return compute_cast(m, x), compute_cast(math.log(_row_total(maxes, sums, m)), x)


@njit(**_inl)
def log_softmax_row(x, out):
    m, lse = _max_lse_row(x)
    _seg_write_log_softmax(x, out, m, lse)


@njit(**_inl)
def _dot_row(y, dy):
    s = 0.0
    for lo in range(0, y.shape[0], CHUNK):
        s = strict_add(s, _seg_dot(y[lo:lo + CHUNK], dy[lo:lo + CHUNK]))
    return s


@njit(**_inl)
def _sum_row(dz):
    s = 0.0
    for lo in range(0, dz.shape[0], CHUNK):
        s = strict_add(s, _seg_sum(dz[lo:lo + CHUNK]))
    return s


@njit(**_inl)
def softmax_backward_row(y, dy, out):
    _seg_write_softmax_backward(y, dy, out, compute_cast(_dot_row(y, dy), y))


@njit(**_inl)
def log_softmax_backward_row(z, dz, out):
    _seg_write_log_softmax_backward(z, dz, out, compute_cast(_sum_row(dz), z))


# ---------------------------------------------------------------------------------------
# batch drivers over M rows of length N stored in flat 1-D buffers: row i of x is
# x[i*sx : i*sx + N]. A flat C-contiguous buffer (instead of a strided 2-D array) lets
# numba know that rows are contiguous, which the vectorizer needs.

def _scratch(out, n, in_place):
    """The row that holds exp(x - max) when the output row cannot: float32 for float16
    (uint16) output, and a row of the output's dtype when the call is in place; otherwise
    an unused empty array."""


def _exp_buffer(out_row, scratch, in_place):
    """Where softmax_row_buf keeps exp(x - max): ``scratch`` or the output row."""


@overload(_scratch, inline="always")
def _scratch_impl(out, n, in_place):
    if out.dtype == types.uint16:
        return lambda out, n, in_place: np.empty(n, dtype=np.float32)
    return lambda out, n, in_place: np.empty(n if in_place else 0, dtype=out.dtype)


@overload(_exp_buffer, inline="always")
def _exp_buffer_impl(out_row, scratch, in_place):
    if out_row.dtype == types.uint16:
        return lambda out_row, scratch, in_place: scratch
    return lambda out_row, scratch, in_place: scratch if in_place else out_row


@njit(**_opts)
def softmax_row(x, out):
    in_place = _same_start(x, out)
    softmax_row_buf(x, out, _exp_buffer(out, _scratch(out, x.shape[0], in_place), in_place))


@njit(**_opts)
def _softmax_rows(x, sx, out, so, lo, hi, n):
    # the API copies an input that overlaps ``out`` other than exactly (in place)
    in_place = _same_start(x, out)
    scratch = _scratch(out, n, in_place)  # one per task, not one per row
    # branches hoisted out of the row loops: per-row dispatch cost ~25 ns on 32-element rows
    if n > CHUNK:
        for i in range(lo, hi):
            row = out[i * so:i * so + n]
            _softmax_long_row(x[i * sx:i * sx + n], row, _exp_buffer(row, scratch, in_place))
    elif in_place or out.itemsize == 2:
        for i in range(lo, hi):
            _softmax_short_row(x[i * sx:i * sx + n], out[i * so:i * so + n], scratch)
    else:
        for i in range(lo, hi):
            row = out[i * so:i * so + n]
            _softmax_short_row(x[i * sx:i * sx + n], row, row)


@njit(**_opts)
def _log_softmax_rows(x, sx, out, so, lo, hi, n):
    if n > CHUNK:
        for i in range(lo, hi):
            log_softmax_row(x[i * sx:i * sx + n], out[i * so:i * so + n])
    else:  # the short-row branch of log_softmax_row, hoisted out of the loop
        for i in range(lo, hi):
            xr = x[i * sx:i * sx + n]
            m, total = _seg_max_sum_exp(xr)
            _seg_write_log_softmax(xr, out[i * so:i * so + n], compute_cast(m, xr),
                                   compute_cast(math.log(total), xr))


# Rows of at most one block skip the chunk and block loops of _dot_row / _sum_row: the same
# sum (0.0 + 0.0 + block sum, exactly), without the loops' setup. The test sits outside the
# row loop: inside it, LLVM compiled the whole loop slower (32-element float32 rows,
# softmax backward: 0.78 ns per element with the nested loops, 1.38 with the test inside,
# 0.40-0.46 with it outside).

@njit(**_opts)
def _softmax_backward_rows(y, sy, dy, sdy, out, so, lo, hi, n):
    if n <= BLOCK:
        for i in range(lo, hi):
            yr, dyr = y[i * sy:i * sy + n], dy[i * sdy:i * sdy + n]
            s = strict_add(0.0, _block_dot(yr, dyr))
            _seg_write_softmax_backward(yr, dyr, out[i * so:i * so + n], compute_cast(s, yr))
    else:
        for i in range(lo, hi):
            softmax_backward_row(y[i * sy:i * sy + n], dy[i * sdy:i * sdy + n],
                                 out[i * so:i * so + n])


@njit(**_opts)
def _log_softmax_backward_rows(z, sz, dz, sdz, out, so, lo, hi, n):
    if n <= BLOCK:
        for i in range(lo, hi):
            zr, dzr = z[i * sz:i * sz + n], dz[i * sdz:i * sdz + n]
            s = strict_add(0.0, _block_sum(dzr))
            _seg_write_log_softmax_backward(zr, dzr, out[i * so:i * so + n],
                                            compute_cast(s, zr))
    else:
        for i in range(lo, hi):
            log_softmax_backward_row(z[i * sz:i * sz + n], dz[i * sdz:i * sdz + n],
                                     out[i * so:i * so + n])


@njit(**_opts)
def softmax_rows_serial(x, sx, out, so, m, n):
    _softmax_rows(x, sx, out, so, 0, m, n)


@njit(**_opts)
def log_softmax_rows_serial(x, sx, out, so, m, n):
    _log_softmax_rows(x, sx, out, so, 0, m, n)


@njit(**_opts)
def softmax_backward_rows_serial(y, sy, dy, sdy, out, so, m, n):
    _softmax_backward_rows(y, sy, dy, sdy, out, so, 0, m, n)


@njit(**_opts)
def log_softmax_backward_rows_serial(z, sz, dz, sdz, out, so, m, n):
    _log_softmax_backward_rows(z, sz, dz, sdz, out, so, 0, m, n)


# Parallel drivers. ``*_rows_parallel``: rows up to ROW_TASK_MAX run whole inside one task
# (groups of rows per task), so a row's second pass reads from cache. ``*_chunks_parallel``:
# longer rows are split into (row, chunk) tasks in phases: chunk statistics, per-row
# combination, then a writing pass. The arithmetic is the row functions' own. They are
# separate functions so that a program compiles only the ones its shapes need.

_par = dict(_opts, parallel=True)


@njit(**_opts)
def _rows_per_task(n):
    return max(1, TASK_ELEMENTS // n)


@njit(**_par)
def softmax_rows_parallel(x, sx, out, so, m, n):
    g = _rows_per_task(n)
    for t in prange((m + g - 1) // g):
        _softmax_rows(x, sx, out, so, t * g, min(m, (t + 1) * g), n)


@njit(**_par)
def softmax_chunks_parallel(x, sx, out, so, m, n):
    nc = _n_chunks(n)
    maxes = np.empty((m, nc), dtype=np.float64)
    sums = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        oseg = out[i * so + lo:i * so + hi]
        # float16: exp goes to a float32 scratch chunk and is recomputed when writing (the
        # same expression, so the same bits as the row functions' float32 scratch row)
        buf = _exp_buffer(oseg, _scratch(out, hi - lo, False), False)
        maxes[i, c], sums[i, c] = _seg_softmax_stats_any(x[i * sx + lo:i * sx + hi], buf)
    row_max = np.empty(m, dtype=np.float64)
    row_total = np.empty(m, dtype=np.float64)
    for i in prange(m):
        row_max[i] = _row_max(maxes[i])
        row_total[i] = _row_total(maxes[i], sums[i], row_max[i])
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _rescale_chunk(x[i * sx + lo:i * sx + hi], out[i * so + lo:i * so + hi],
                       compute_cast(maxes[i, c], x),
                       _chunk_factor(maxes[i, c], row_max[i], row_total[i], x))


def _rescale_chunk(xs, out, chunk_max, f):
    """Last pass of a chunked softmax row: out = exp(xs - chunk max) * f."""


@overload(_rescale_chunk, inline="always")
def _rescale_chunk_impl(xs, out, chunk_max, f):
    if out.dtype == types.uint16:
        def recompute(xs, out, chunk_max, f):
            if chunk_max == -math.inf:  # as _seg_softmax_stats_any: e = 0
                for i in range(out.shape[0]):
                    out[i] = store(strict_mul(compute_zero(xs), f), out)
            else:
                for i in range(out.shape[0]):
                    # a NaN or +inf chunk max makes f NaN: the exp's value does not matter
                    out[i] = store(strict_mul(exp_nonpos(load(xs[i]) - chunk_max), f), out)
        return recompute
    return lambda xs, out, chunk_max, f: _seg_scale(out, out, f)


@njit(**_par)
def log_softmax_rows_parallel(x, sx, out, so, m, n):
    g = _rows_per_task(n)
    for t in prange((m + g - 1) // g):
        _log_softmax_rows(x, sx, out, so, t * g, min(m, (t + 1) * g), n)


@njit(**_par)
def log_softmax_chunks_parallel(x, sx, out, so, m, n):
    nc = _n_chunks(n)
    maxes = np.empty((m, nc), dtype=np.float64)
    sums = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        maxes[i, c], sums[i, c] = _seg_max_sum_exp(x[i * sx + lo:i * sx + hi])
    row_max = np.empty(m, dtype=np.float64)
    row_lse = np.empty(m, dtype=np.float64)
    for i in prange(m):
        row_max[i] = _row_max(maxes[i])
        row_lse[i] = math.log(_row_total(maxes[i], sums[i], row_max[i]))
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _seg_write_log_softmax(x[i * sx + lo:i * sx + hi], out[i * so + lo:i * so + hi],
                               compute_cast(row_max[i], x), compute_cast(row_lse[i], x))


@njit(**_par)
def softmax_backward_rows_parallel(y, sy, dy, sdy, out, so, m, n):
    g = _rows_per_task(n)
    for t in prange((m + g - 1) // g):
        _softmax_backward_rows(y, sy, dy, sdy, out, so, t * g, min(m, (t + 1) * g), n)


@njit(**_par)
def softmax_backward_chunks_parallel(y, sy, dy, sdy, out, so, m, n):
    nc = _n_chunks(n)
    dots = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        dots[i, c] = _seg_dot(y[i * sy + lo:i * sy + hi], dy[i * sdy + lo:i * sdy + hi])
    row_dot = np.empty(m, dtype=np.float64)
    for i in prange(m):
        s = 0.0
        for c in range(nc):
            s = strict_add(s, dots[i, c])
        row_dot[i] = s
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _seg_write_softmax_backward(y[i * sy + lo:i * sy + hi], dy[i * sdy + lo:i * sdy + hi],
                                    out[i * so + lo:i * so + hi], compute_cast(row_dot[i], y))


@njit(**_par)
def log_softmax_backward_rows_parallel(z, sz, dz, sdz, out, so, m, n):
    g = _rows_per_task(n)
    for t in prange((m + g - 1) // g):
        _log_softmax_backward_rows(z, sz, dz, sdz, out, so, t * g, min(m, (t + 1) * g), n)


@njit(**_par)
def log_softmax_backward_chunks_parallel(z, sz, dz, sdz, out, so, m, n):
    nc = _n_chunks(n)
    sums = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        sums[i, c] = _seg_sum(dz[i * sdz + lo:i * sdz + hi])
    row_sum = np.empty(m, dtype=np.float64)
    for i in prange(m):
        s = 0.0
        for c in range(nc):
            s = strict_add(s, sums[i, c])
        row_sum[i] = s
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _seg_write_log_softmax_backward(z[i * sz + lo:i * sz + hi],
                                        dz[i * sdz + lo:i * sdz + hi],
                                        out[i * so + lo:i * so + hi], compute_cast(row_sum[i], z))


# ---------------------------------------------------------------------------------------
# Strided 2-D copies for rows that are not contiguous in memory (e.g. softmax over axis 0
# of a C-ordered array). numpy's strided copy of a transposed 8192x1024 float32 view took
# 74 ms; tiles of TILE x TILE keep both sides' cache lines in L1.

TILE = 64


@njit(cache=CACHE, nogil=True, parallel=True)
def copy2d(src, dst):
    m, n = src.shape
    for bi in prange((m + TILE - 1) // TILE):
        for bj in range(0, n, TILE):
            for i in range(bi * TILE, min(m, (bi + 1) * TILE)):
                for j in range(bj, min(n, bj + TILE)):
                    dst[i, j] = src[i, j]
