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
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._math import FASTMATH, compute_cast, compute_zero, exp, load, maximum, store

BLOCK = 1024
CHUNK = 8192
# softmax rows up to this length keep exp(x - max) in the output (or a float32 scratch row
# for float16) and rescale it in cache: one exp per element. Longer rows compute exp twice
# (statistics pass, write pass) and read x twice from memory instead of writing twice.
SOFTMAX_CACHED_ROW = 32768
# rows per parallel task: enough elements that task overhead and scratch allocation vanish
TASK_ELEMENTS = 16384

_opts = {"fastmath": FASTMATH, "cache": True, "nogil": True, "error_model": "numpy"}


# ---------------------------------------------------------------------------------------
# per-chunk statistics

@njit(**_opts)
def _chunk_max(x, lo, hi):
    m = load(x[lo])
    for i in range(lo + 1, hi):
        m = maximum(m, load(x[i]))
    return m


@njit(**_opts)
def _chunk_sum_exp(x, lo, hi, m):
    total = 0.0
    for b in range(lo, hi, BLOCK):
        part = compute_zero(x)
        for i in range(b, min(b + BLOCK, hi)):
            part += exp(load(x[i]) - m)
        total += part
    return total


@njit(**_opts)
def _chunk_max_sum_exp(x, lo, hi):
    """(max, sum of exp(x - max)) of x[lo:hi]. An all -inf chunk contributes nothing."""
    m = _chunk_max(x, lo, hi)
    if m == -math.inf:
        return m, 0.0
    return m, _chunk_sum_exp(x, lo, hi, m)


@njit(**_opts)
def _chunk_dot(a, b, lo, hi):
    total = 0.0
    for blk in range(lo, hi, BLOCK):
        part = compute_zero(a)
        for i in range(blk, min(blk + BLOCK, hi)):
            part += load(a[i]) * load(b[i])
        total += part
    return total


@njit(**_opts)
def _chunk_sum(a, lo, hi):
    total = 0.0
    for blk in range(lo, hi, BLOCK):
        part = compute_zero(a)
        for i in range(blk, min(blk + BLOCK, hi)):
            part += load(a[i])
        total += part
    return total


@njit(**_opts)
def _combine_max_sum(maxes, sums):
    """Row max and sum of exp(x - max) from per-chunk statistics, in chunk order.

    An all -inf row gives exp(-inf - -inf) = NaN, so the row becomes NaN as documented."""
    m = maxes[0]
    for c in range(1, maxes.shape[0]):
        m = maximum(m, maxes[c])
    total = 0.0
    for c in range(maxes.shape[0]):
        total += sums[c] * math.exp(np.float64(maxes[c]) - np.float64(m))
    return m, total


@njit(cache=True)
def _n_chunks(n):
    return (n + CHUNK - 1) // CHUNK


# ---------------------------------------------------------------------------------------
# per-chunk writers

@njit(**_opts)
def _write_softmax(x, out, lo, hi, m, inv):
    for i in range(lo, hi):
        out[i] = store(exp(load(x[i]) - m) * inv, out)


@njit(**_opts)
def _write_log_softmax(x, out, lo, hi, m, lse):
    for i in range(lo, hi):
        out[i] = store((load(x[i]) - m) - lse, out)


@njit(**_opts)
def _write_softmax_backward(y, dy, out, lo, hi, s):
    for i in range(lo, hi):
        out[i] = store(load(y[i]) * (load(dy[i]) - s), out)


@njit(**_opts)
def _write_log_softmax_backward(z, dz, out, lo, hi, s):
    for i in range(lo, hi):
        out[i] = store(load(dz[i]) - exp(load(z[i])) * s, out)


# ---------------------------------------------------------------------------------------
# row functions (serial): the public ``numbasoftmax.jit`` API wraps these

@njit(**_opts)
def _softmax_cached_row(x, out, buf):
    """softmax of a row short enough to stay in cache; ``buf`` holds exp(x - max): the
    output row itself for float32/float64, a float32 scratch row for float16."""
    n = x.shape[0]
    m, total = _chunk_max(x, 0, n), 0.0
    for b in range(0, n, BLOCK):
        part = compute_zero(x)
        for i in range(b, min(b + BLOCK, n)):
            e = exp(load(x[i]) - m)  # an all -inf row: -inf - -inf = NaN, as documented
            buf[i] = e
            part += e
        total += part
    inv = compute_cast(1.0 / total, x)
    for i in range(n):
        out[i] = store(buf[i] * inv, out)


@njit(**_opts)
def _softmax_chunked_row(x, out):
    n = x.shape[0]
    nc = _n_chunks(n)
    maxes = np.empty(nc, dtype=np.float64)
    sums = np.empty(nc, dtype=np.float64)
    for c in range(nc):
        maxes[c], sums[c] = _chunk_max_sum_exp(x, c * CHUNK, min(n, (c + 1) * CHUNK))
    m, total = _combine_max_sum(maxes, sums)
    mc, inv = compute_cast(m, x), compute_cast(1.0 / total, x)
    _write_softmax(x, out, 0, n, mc, inv)


@njit(**_opts)
def softmax_row_buf(x, out, buf):
    if x.shape[0] <= SOFTMAX_CACHED_ROW:
        _softmax_cached_row(x, out, buf)
    else:
        _softmax_chunked_row(x, out)


@njit(**_opts)
def _max_lse_row(x):
    n = x.shape[0]
    nc = _n_chunks(n)
    if nc == 1:
        m, total = _chunk_max_sum_exp(x, 0, n)
    else:
        maxes = np.empty(nc, dtype=np.float64)
        sums = np.empty(nc, dtype=np.float64)
        for c in range(nc):
            maxes[c], sums[c] = _chunk_max_sum_exp(x, c * CHUNK, min(n, (c + 1) * CHUNK))
        m, total = _combine_max_sum(maxes, sums)
    return compute_cast(m, x), compute_cast(math.log(total), x)


@njit(**_opts)
def log_softmax_row(x, out):
    m, lse = _max_lse_row(x)
    _write_log_softmax(x, out, 0, x.shape[0], m, lse)


@njit(**_opts)
def _dot_row(y, dy):
    n = y.shape[0]
    s = 0.0
    for c in range(_n_chunks(n)):
        s += _chunk_dot(y, dy, c * CHUNK, min(n, (c + 1) * CHUNK))
    return s


@njit(**_opts)
def _sum_row(dz):
    n = dz.shape[0]
    s = 0.0
    for c in range(_n_chunks(n)):
        s += _chunk_sum(dz, c * CHUNK, min(n, (c + 1) * CHUNK))
    return s


@njit(**_opts)
def softmax_backward_row(y, dy, out):
    s = compute_cast(_dot_row(y, dy), y)
    _write_softmax_backward(y, dy, out, 0, y.shape[0], s)


@njit(**_opts)
def log_softmax_backward_row(z, dz, out):
    s = compute_cast(_sum_row(dz), z)
    _write_log_softmax_backward(z, dz, out, 0, z.shape[0], s)


# ---------------------------------------------------------------------------------------
# batch drivers over M rows of length N stored in flat 1-D buffers: row i of x is
# x[i*sx : i*sx + N]. A flat C-contiguous buffer (instead of a strided 2-D array) lets
# numba know that rows are contiguous, which the vectorizer needs.

def _scratch(out, n):
    """float32 scratch row for float16 (uint16) output; float32/float64 rows hold exp(x - max)
    in the output itself, so they get an empty array."""


def _exp_buffer(out_row, scratch):
    """Where a cached softmax row keeps exp(x - max): the scratch row or the output row."""


@overload(_scratch)
def _scratch_impl(out, n):
    if out.dtype == types.uint16:
        return lambda out, n: np.empty(n, dtype=np.float32)
    return lambda out, n: np.empty(0, dtype=out.dtype)


@overload(_exp_buffer)
def _exp_buffer_impl(out_row, scratch):
    if out_row.dtype == types.uint16:
        return lambda out_row, scratch: scratch
    return lambda out_row, scratch: out_row


@njit(**_opts)
def _softmax_cached_rows(x, sx, out, so, lo, hi, n):
    scratch = _scratch(out, n)
    for i in range(lo, hi):
        row = out[i * so:i * so + n]
        _softmax_cached_row(x[i * sx:i * sx + n], row, _exp_buffer(row, scratch))


@njit(**_opts)
def softmax_rows_serial(x, sx, out, so, m, n):
    if n <= SOFTMAX_CACHED_ROW:
        _softmax_cached_rows(x, sx, out, so, 0, m, n)
    else:
        for i in range(m):
            _softmax_chunked_row(x[i * sx:i * sx + n], out[i * so:i * so + n])


@njit(**_opts)
def log_softmax_rows_serial(x, sx, out, so, m, n):
    for i in range(m):
        log_softmax_row(x[i * sx:i * sx + n], out[i * so:i * so + n])


@njit(**_opts)
def softmax_backward_rows_serial(y, sy, dy, sdy, out, so, m, n):
    for i in range(m):
        softmax_backward_row(y[i * sy:i * sy + n], dy[i * sdy:i * sdy + n], out[i * so:i * so + n])


@njit(**_opts)
def log_softmax_backward_rows_serial(z, sz, dz, sdz, out, so, m, n):
    for i in range(m):
        log_softmax_backward_row(z[i * sz:i * sz + n], dz[i * sdz:i * sdz + n],
                                 out[i * so:i * so + n])


_par = dict(_opts, parallel=True)


@njit(**_par)
def softmax_rows_parallel(x, sx, out, so, m, n):
    if n <= SOFTMAX_CACHED_ROW:
        per_task = max(1, TASK_ELEMENTS // n)
        for t in prange((m + per_task - 1) // per_task):
            _softmax_cached_rows(x, sx, out, so, t * per_task, min(m, (t + 1) * per_task), n)
        return
    nc = _n_chunks(n)
    maxes = np.empty((m, nc), dtype=np.float64)
    sums = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        maxes[i, c], sums[i, c] = _chunk_max_sum_exp(x[i * sx:i * sx + n], c * CHUNK,
                                                     min(n, (c + 1) * CHUNK))
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        row_max, total = _combine_max_sum(maxes[i], sums[i])
        _write_softmax(x[i * sx:i * sx + n], out[i * so:i * so + n], c * CHUNK,
                       min(n, (c + 1) * CHUNK), compute_cast(row_max, x),
                       compute_cast(1.0 / total, x))


@njit(**_par)
def log_softmax_rows_parallel(x, sx, out, so, m, n):
    nc = _n_chunks(n)
    if nc == 1:
        per_task = max(1, TASK_ELEMENTS // n)
        for t in prange((m + per_task - 1) // per_task):
            for i in range(t * per_task, min(m, (t + 1) * per_task)):
                log_softmax_row(x[i * sx:i * sx + n], out[i * so:i * so + n])
        return
    maxes = np.empty((m, nc), dtype=np.float64)
    sums = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        maxes[i, c], sums[i, c] = _chunk_max_sum_exp(x[i * sx:i * sx + n], c * CHUNK,
                                                     min(n, (c + 1) * CHUNK))
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        row_max, total = _combine_max_sum(maxes[i], sums[i])
        _write_log_softmax(x[i * sx:i * sx + n], out[i * so:i * so + n], c * CHUNK,
                           min(n, (c + 1) * CHUNK), compute_cast(row_max, x),
                           compute_cast(math.log(total), x))


@njit(**_par)
def softmax_backward_rows_parallel(y, sy, dy, sdy, out, so, m, n):
    nc = _n_chunks(n)
    if nc == 1:
        per_task = max(1, TASK_ELEMENTS // n)
        for t in prange((m + per_task - 1) // per_task):
            for i in range(t * per_task, min(m, (t + 1) * per_task)):
                softmax_backward_row(y[i * sy:i * sy + n], dy[i * sdy:i * sdy + n],
                                     out[i * so:i * so + n])
        return
    dots = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        dots[i, c] = _chunk_dot(y[i * sy:i * sy + n], dy[i * sdy:i * sdy + n], c * CHUNK,
                                min(n, (c + 1) * CHUNK))
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        s = 0.0
        for k in range(nc):
            s += dots[i, k]
        _write_softmax_backward(y[i * sy:i * sy + n], dy[i * sdy:i * sdy + n],
                                out[i * so:i * so + n], c * CHUNK, min(n, (c + 1) * CHUNK),
                                compute_cast(s, y))


@njit(**_par)
def log_softmax_backward_rows_parallel(z, sz, dz, sdz, out, so, m, n):
    nc = _n_chunks(n)
    if nc == 1:
        per_task = max(1, TASK_ELEMENTS // n)
        for t in prange((m + per_task - 1) // per_task):
            for i in range(t * per_task, min(m, (t + 1) * per_task)):
                log_softmax_backward_row(z[i * sz:i * sz + n], dz[i * sdz:i * sdz + n],
                                         out[i * so:i * so + n])
        return
    sums = np.empty((m, nc), dtype=np.float64)
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        sums[i, c] = _chunk_sum(dz[i * sdz:i * sdz + n], c * CHUNK, min(n, (c + 1) * CHUNK))
    for t in prange(m * nc):
        i, c = t // nc, t % nc
        s = 0.0
        for k in range(nc):
            s += sums[i, k]
        _write_log_softmax_backward(z[i * sz:i * sz + n], dz[i * sdz:i * sdz + n],
                                    out[i * so:i * so + n], c * CHUNK,
                                    min(n, (c + 1) * CHUNK), compute_cast(s, z))
