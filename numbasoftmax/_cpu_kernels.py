"""CPU drivers: which rows go to which kernel, and the parallel tasks.

Every driver takes the same arguments: the operation marker, then for each array (a, b,
out) a flat 1-D buffer with its outer and axis strides, then the sizes: M outer positions,
n elements along the softmax axis, C inner positions. Element j of row (o, i) of ``a`` is
``a[o*ao + j*an + i]``. Rows read in place have an = 1 and C = 1; a strided axis read in
place has C > 1, and the lane kernel runs W inner positions at a time. For softmax and
log_softmax ``b`` is ``a``; for logsumexp it is the weights or None. The serial drivers
take a range of tasks (lo, hi) instead of M; their parallel forms (``*_parallel``) run
them on tasks of TASK_ELEMENTS elements or more, calling their compiled code by address
(``_serial_call``).

The row drivers (``rows``, ``grouped_rows``, ``short_rows``, ``masked_short_rows``,
``run_rows``, their parallel forms and ``chunks_parallel``) take ``ahead`` in C's place: 0,
or how many rows ahead of their work they fetch into the cache (``fetch_rows``;
``chunks_parallel``, whose rows are long, does not use it). They take two more arguments.
``side``: None, ``(w, wd, None)`` with the mask ``w`` (bytes or None) and its row offsets
``wd`` (see ``mask_offset``), or ``(w, wd, first, second)`` with the rows' given values:
two 1-D arrays of a value per row, both float32 or both float64 (logsumexp's gradient:
lse and the gradient's factor; two arrays, not a pair nested in ``side``, which numba's
parallel loops do not take as an argument). Masks and given values run on
these drivers only (``short_rows``: given values without a mask; ``masked_short_rows``:
masks, with or without given values, and also ``(w, None, ...)``: one mask for every
row). ``stream``: the output
is large: written with non-temporal stores where the kernel may
(``_row_kernel.may_stream``), each serial driver fencing them before it returns; masked
rows are read as ``_row_kernel._exp_sums`` says. A reduction's (logsumexp's)
``out`` holds its values per row at stride ``oo``. ``columns`` and its parallel form take
``lead``: -1 for plain stores, else whole tiles of ``out`` stored past the caches, the first
``lead`` inner positions a partial tile of their own so that the whole ones start cache
lines (``column_lead``); and a ``side`` of given values only (logsumexp's gradient along a
strided axis).

The kernels give the same bits for a row whichever driver runs it (``_row_kernel``), so the
choice of driver, task size and thread count changes no result.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload

from ._config import CACHE
from ._disk_cache import njit
from ._lane_kernel import (
    EVERY_LANE,
    band,
    band_stats,
    band_write,
    given_values,
    lane_tuple,
    tile,
    tile_row_max,
)
from ._markers import CALLEE, INLINE, Marker, pick, same
from ._row_kernel import (
    CHUNK,
    INTERNAL,
    LANES,
    LOG_SOFTMAX,
    LOGSUMEXP_SIGN,
    MAX_OPS,
    OPS,
    OPTIONS,
    REDUCED,
    _count_lanes,
    _max_lanes,
    _value_lanes,
    finish,
    finish_one,
    log_sums,
    maxes,
    out_chunk,
    out_row,
    reduces,
    row,
    run_end,
    run_row,
    run_values,
    seg_map,
    seg_max,
    seg_sum,
    special_fill,
    stats,
    stream_rows,
    sums,
    unlogged,
    write,
)
from ._serial_call import (
    ParallelDriver,
    call_address,
    chunk_size_back,
    handed_out_one_at_a_time,
)
from ._simd import (
    ALL,
    TREE_ROWS,
    W,
    compute_type,
    imax,
    imin,
    vall,
    veq,
    visfinite,
    vmax_all,
    vmax_rows,
    vsplat,
    vsum,
    vsum_rows,
)
from ._vmath import vlog
from ._vmem import (
    STREAM_ALIGN,
    emit_view,
    empty,
    fetch_read,
    fetch_write,
    seg,
    stack_empty,
    stream_head,
    vfence,
    vgather,
    vgather_rows,
    vgather_rows_where,
    vload,
    vscatter,
    vscatter_rows,
    vscatter_rows_where,
    vstore,
)

# elements per parallel task: enough that task overhead vanishes
TASK_ELEMENTS = 16384
# tiles of W inner positions per band of the lane kernel on a strided axis: each visit to
# a memory row then reads BAND_TILES * W neighbouring elements, not one tile's W (a lone
# tile reads one cache line per row visited: 7.4 vs 0.7 ns per element for a 8192 x 2048
# float32 matrix along axis 0, single thread)
BAND_TILES = 8
# ... and a band of up to WIDE_BAND_TILES tiles (a whole inner row where it has no more) when
# the rows of one outer position span at most SLAB_BYTES (the L2 cache's share of a pass):
# each visit then reads its memory row whole and in order, the slab of rows in sequence,
# and the passes after the first read it from the cache. Time against 8 tiles for every
# slab, float32, ``out=``, 2 threads, 21-31 alternating rounds, two or three processes
# (2-core Intel Xeon): (64, 512, 512) along axis 1 (1 MiB slabs) softmax 0.95-0.99,
# log_softmax 0.98-1.05, softmax_backward 0.89-0.94, log_softmax_backward 0.71-0.83;
# (128, 256, 1024) along axis 1 (1 MiB) 0.93-1.03. Larger slabs keep 8 tiles: 32 tiles for
# every slab measured 0.87-1.08 on (8192, 2048) and (4096, 4096) along axis 0 here, and
# 16 tiles were slower on a Zen 4 machine. (32 tiles as a constant for every slab ran the
# forward functions 4-7 % faster on the 1 MiB slabs than this rule, for reasons not found.)
# Same bits: a lane's row is computed alone.
WIDE_BAND_TILES = 32
SLAB_BYTES = 1 << 20
# ... except log_softmax_backward's bands over larger slabs, which take NARROW_BAND_TILES
# while such a band holds at most NARROW_BAND_BYTES along the axis: its first pass reads dz
# alone and its second reads that dz again beside z, and a narrower band finds more of it
# still in the cache (its rows fetched as far ahead in bytes, ``_lane_kernel.rows_ahead``).
# bench/bench_axes.py, fresh arrays, float32, 2 threads, 2-core AMD EPYC (Zen 4), % of the
# last-axis speed, 8 -> 4 tiles, two to four runs: along axis 0 of (2048, 8192) 80-82 ->
# 89-90 %, (4096, 4096) 70-73 -> 78-81 %, (8192, 2048) 49-53 -> 60-71 %, (16384, 1024)
# 46-51 -> 45-68 %; but (43690, 384), 10.7 MiB bands, 42-45 -> 32-34 %. The other
# operations ran slower with 4, (8192, 2048): softmax 70 -> 59 %, softmax_backward 64 ->
# 52 %, log_softmax 57 -> 59 % and on (16384, 1024) 54 -> 49 %. Same bits, whatever the
# band.
NARROW_BAND_TILES = 4
NARROW_BAND_BYTES = 4 << 20
NARROW_BAND_OPS = frozenset({"log_softmax_backward"})


def narrow_bands(op):
    """Whether operation ``op`` (a marker) takes narrower bands over larger slabs."""
    return op.key in NARROW_BAND_OPS


@overload(narrow_bands, jit_options=INLINE)
def _narrow_bands_impl(op):
    narrow = op.key_ in NARROW_BAND_OPS
    return lambda op: narrow

_PARALLEL = dict(OPTIONS, parallel=True)
# a function called, not inlined: code that rarely runs, compiled once
CALLED = dict(OPTIONS, no_cpython_wrapper=True, _nrt=False, **CALLEE)


@njit(inline="always", **INTERNAL)
def _fetch(arr, stride, r0, r1, n):
    if stride == n:  # contiguous rows: one span
        fetch_read(arr, r0 * n, r1 * n)
    else:
        for r in range(r0, r1):
            fetch_read(arr, r * stride, r * stride + n)


def fetch_rows(op, a, ao, b, bo, out, oo, r0, r1, n):
    """Rows r0..r1-1 (of n elements, outer strides ao, bo, oo; r1 past r0) fetched into the
    L1 cache: the inputs' (a gradient's ``b`` too) for reading, ``out``'s for writing. Hints
    only: no effect on any result, and lines past an array's end are never read. Called
    by the row drivers ``ahead`` rows before they reach them (``_cpu.ahead``). Nothing for
    the other operations (whose ``out`` or ``b`` is not shaped as ``a``)."""


@overload(fetch_rows, jit_options=INLINE)
def _fetch_rows_impl(op, a, ao, b, bo, out, oo, r0, r1, n):
    if op.key_ not in _FETCHED:
        return lambda op, a, ao, b, bo, out, oo, r0, r1, n: None
    two = _FETCHED[op.key_]

    def impl(op, a, ao, b, bo, out, oo, r0, r1, n):
        _fetch(a, ao, r0, r1, n)
        if two:
            _fetch(b, bo, r0, r1, n)
        if oo == n:
            fetch_write(out, r0 * n, r1 * n)
        else:
            for r in range(r0, r1):
                fetch_write(out, r * oo, r * oo + n)
    return impl


# the operations ``fetch_rows`` fetches for: whether their ``b`` is an input of its own
_FETCHED = {"softmax": False, "log_softmax": False, "softmax_backward": True,
            "log_softmax_backward": True}


@njit(inline="always", **INTERNAL)
def fetch_ahead(op, a, ao, b, bo, out, oo, r0, k, ahead, hi, n):
    """A driver about to work on rows r0..r0+k-1 (a row, a group, a tile) of those below
    hi fetches the k rows ``ahead`` rows on, or k rows on if that is further (the next
    group or tile at least); ``ahead`` 0: nothing (``fetch_rows``)."""
    if ahead > 0:
        at = r0 + imax(ahead, k)
        if at < hi:
            fetch_rows(op, a, ao, b, bo, out, oo, at, imin(at + k, hi), n)


__all__ = ["OPS", "W", "rows", "run_rows", "grouped_rows", "short_rows", "masked_short_rows",
           "columns", "column_tasks", "column_lead",
           "rows_parallel", "run_rows_parallel", "grouped_rows_parallel", "short_rows_parallel",
           "masked_short_rows_parallel", "columns_parallel",
           "chunks_parallel", "segment_stats", "segment_finish", "segment_values", "segment_write",
           "segment_columns_stats", "segment_columns_write", "copy2d"]


def _no_mask(side):
    """Whether numba type ``side`` carries no mask (None, or no mask in it)."""
    return isinstance(side, types.NoneType) or isinstance(side[0], types.NoneType)


def _shared_mask(side):
    """Whether numba type ``side`` carries one mask for every row (no row offsets)."""
    return not _no_mask(side) and isinstance(side[1], types.NoneType)


@intrinsic
def side_mask(typingctx, side):
    """The mask in ``side`` (an array), or None."""
    if _no_mask(side):
        return types.none(side), lambda c, b, s, a: c.get_dummy_value()

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, side[0], builder.extract_value(args[0], 0))

    return side[0](side), codegen


def mask_offset(side, i):
    """Where row i's mask starts in ``side``'s mask (0 without one). ``wd`` holds (size,
    stride) per outer axis of the rows, innermost first: sum((i // inner) % size * stride),
    no modulo for a size of 0 (the last)."""


@overload(mask_offset, jit_options=INLINE)
def _mask_offset_impl(side, i):
    if _no_mask(side) or _shared_mask(side):
        return lambda side, i: 0

    def impl(side, i):
        wd = side[1]
        off = 0
        r = i
        for d in range(wd.shape[0]):
            size = wd[d, 0]
            if size == 0:  # the outermost axis of the rows: no wrap
                return off + r * wd[d, 1]
            off += (r % size) * wd[d, 1]
            r //= size
        return off
    return impl


def row_values(side, i):
    """Row i's given values in ``side`` (as float64), or None."""


@overload(row_values, jit_options=INLINE)
def _row_values_impl(side, i):
    if isinstance(side, types.NoneType) or isinstance(side[2], types.NoneType):
        return lambda side, i: None
    return lambda side, i: (np.float64(side[2][i]), np.float64(side[3][i]))


def _tile_values(side, r0, k, S):
    """Rows r0 .. r0+k-1's given values (``side``'s) as a tile takes them: the first in
    S[:W], the second in S[W:2W] (lanes from k on left as they are: their rows are never
    stored). Nothing without given values."""


@overload(_tile_values, jit_options=INLINE)
def _tile_values_impl(side, r0, k, S):
    if isinstance(side, types.NoneType) or isinstance(side[2], types.NoneType):
        return lambda side, r0, k, S: None

    def put(side, r0, k, S):
        first, second = side[2], side[3]
        for i in range(k):
            S[i] = first[r0 + i]
            S[W + i] = second[r0 + i]
    return put


def _compute_empty(like, size):
    """An uninitialized 1-D array of the compute type of array ``like``."""


@overload(_compute_empty, jit_options=CALLEE)
def _compute_empty_impl(like, size):
    dtype = np.float64 if compute_type(like.dtype) == types.float64 else np.float32
    return lambda like, size: empty(size, dtype)


# float16 softmax keeps its exps as the other dtypes do: in a float32 row (a group's rows
# in ``grouped_rows``), passed to the row kernel as its second input, which softmax does
# not otherwise read (``kept_exps``); its write pass reads them there and stores the
# outputs converted. Without it the row kernel computes each exp twice (a float16 output
# cannot hold it exactly). The same values: the kept exp is the one computed again.

def _staging(op, out, size):
    """A compute-type row of ``size`` elements where ``op`` is softmax and ``out`` stores
    float16 (``exact_store`` None), else None."""


# with reference counts: it allocates
@overload(_staging, jit_options=CALLEE)
def _staging_impl(op, out, size):
    if op.key_ != "softmax" or out.dtype != types.uint16:
        return lambda op, out, size: None
    return lambda op, out, size: _compute_empty(out, size)


@intrinsic
def _staged(typingctx, sc, lo, b):
    """The row kernel's second input: elements lo .. lo + len(b) of staging row ``sc``, or
    the row ``b`` itself without one (an intrinsic: no compiled function of its own)."""
    if isinstance(sc, types.NoneType):
        return b(sc, lo, b), lambda context, builder, sig, args: impl_ret_borrowed(
            context, builder, b, args[2])

    def codegen(context, builder, sig, args):
        lo_ = context.cast(builder, args[1], sig.args[1], types.intp)
        (n,) = cgutils.unpack_tuple(builder, context.make_array(b)(context, builder,
                                                                   args[2]).shape, 1)
        return emit_view(context, builder, sc, args[0], lo_, builder.add(lo_, n))

    return sc(sc, lo, b), codegen


# the operations whose rows ``run_rows`` takes (``_cpu.RUN_ITEMSIZES``), and its shortest
# row (a vector then holds elements of two rows at most)
RUN_OPS = ("log_softmax", "softmax_backward", "log_softmax_backward")
RUN_ROW_MIN = W


@njit(**OPTIONS)
def rows(op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, ahead, side, stream):
    """Rows lo..hi-1, one at a time (the row kernel); an = on = 1."""
    st = empty((2, (n + CHUNK - 1) // CHUNK), np.float64)
    w = side_mask(side)
    sc = _staging(op, out, n)
    for i in range(lo, hi):
        fetch_ahead(op, a, ao, b, bo, out, oo, i, 1, ahead, hi, n)
        off = mask_offset(side, i)
        row(op, seg(a, i * ao, i * ao + n), _staged(sc, 0, seg(b, i * bo, i * bo + n)),
            seg(w, off, off + n), out_row(op, out, i * oo, n), st, row_values(side, i),
            stream)
    if stream:
        vfence()


@njit(**OPTIONS)
def run_rows(op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, ahead, side, stream):
    """Rows lo..hi-1 of RUN_OPS streamed as one run (``_row_kernel.run_row``): rows of
    RUN_ROW_MIN to CHUNK elements contiguous in all three arrays (ao = bo = oo = n), and
    in the mask where there is one (``mask_takes_tiles`` n), or one mask for every row
    (0), given twice over (``run_side``: 2n bytes); an = on = 1, C = 1. A driver of its
    own: only large outputs run it, and a first small call compiles none of it (in
    ``rows`` it made a gradient's first call ~0.7 s longer)."""
    st = empty((2, 1), np.float64)
    _stream_task(op, a, b, out, lo, hi, n, side, st, ahead)
    vfence()


def run_side(side, n):
    """``side`` as ``run_rows`` takes one mask for every row: that row's n bytes twice over,
    made once per call. The vector across two rows reads both (``_row_kernel.run_masks``);
    a copy made in each task instead (an allocation and 2n bytes for a few rows) made
    float32 log_softmax with such a mask 1.2-2.2x the unmasked call's time at rows of
    1024-8192 (2^24 elements), where the same mask at x's shape took 1.04-1.17x. Read-only,
    as the masks the launcher passes: one compiled specialization for both."""
    row = side[0][:n]
    twice = np.concatenate((row, row))
    twice.flags.writeable = False
    return (twice, *side[1:])


def _stream_task(op, a, b, out, lo, hi, n, side, st, ahead):
    """``run_rows``' rows lo..hi-1 as one run (``_run``): their mask, if any, laid out as
    the rows, or one mask for every row (given twice over: ``run_side``); the inputs'
    rows fetched ``ahead`` rows ahead (0: not)."""


# compiled on its own, as ``_run`` and ``_forward_run``: inlined into ``run_rows`` as numba
# IR through the overloads that pick them, they made a first large log_softmax call
# compile ~7 s instead of ~3 s
@overload(_stream_task)
def _stream_task_impl(op, a, b, out, lo, hi, n, side, st, ahead):
    if _no_mask(side):
        return lambda op, a, b, out, lo, hi, n, side, st, ahead: _run(
            op, a, b, out, lo, hi, n, st, side, None, ahead)

    def masked(op, a, b, out, lo, hi, n, side, st, ahead):
        w = side_mask(side)
        off = mask_offset(side, lo)
        if hi - lo > 1 and mask_offset(side, lo + 1) == off:  # one mask for every row
            _run(op, a, b, out, lo, hi, n, st, side,
                 (seg(w, off, off + n), seg(w, off, off + 2 * n)), ahead)
        else:
            _run(op, a, b, out, lo, hi, n, st, side, seg(w, off, off + (hi - lo) * n), ahead)
    return masked


def _run(op, a, b, out, lo, hi, n, st, side, rw, ahead):
    """Rows lo..hi-1 as one run, their mask ``rw`` as ``_row_kernel.run_masks`` takes it:
    a gradient's sums a row at a time (``_row_kernel.stream_rows``), log_softmax's
    statistics in groups (``_forward_run``)."""


@overload(_run)
def _run_impl(op, a, b, out, lo, hi, n, st, side, rw, ahead):
    if op.key_ == LOG_SOFTMAX.key:
        return lambda op, a, b, out, lo, hi, n, st, side, rw, ahead: _forward_run(
            op, a, out, lo, hi, n, side, rw, ahead)

    def gradient(op, a, b, out, lo, hi, n, st, side, rw, ahead):
        stream_rows(op, seg(a, lo * n, hi * n), seg(b, lo * n, hi * n), rw,
                    seg(out, lo * n, hi * n), n, st, ahead)
    return gradient


@njit(**OPTIONS)
def _forward_run(op, a, out, lo, hi, n, side, rw, ahead):
    """log_softmax rows lo..hi-1 as one run (their mask ``rw`` as
    ``_row_kernel.run_masks`` takes it): their statistics in groups, as ``grouped_rows``
    takes them, then each row's outputs (``_row_kernel.run_row``)."""
    size = group_size(n)
    st = empty((4, size), np.float64)
    m, t = st[2], st[3]
    offs = empty(size, np.int64)
    scratch = stack_empty(a, _GROUP_SCRATCH)
    scratch[:] = 0.0
    lanes, trees = seg(scratch, 0, GROUP * W), seg(scratch, GROUP * W, (GROUP + 1) * W)
    w = side_mask(side)
    rows_a, rows_out = seg(a, lo * n, hi * n), seg(out, lo * n, hi * n)
    done = stream_head(rows_out)
    p_last = run_values(op, a, 0.0, 0.0)
    ahead = imax(ahead, size) if ahead > 0 else 0  # as ``grouped_rows``
    for g in range(lo, hi, size):
        k = imin(size, hi - g)
        if ahead > 0 and g + ahead < hi:  # x only: the outputs stream
            fetch_read(a, (g + ahead) * n, imin(g + ahead + k, hi) * n)
        for r in range(k):
            offs[r] = mask_offset(side, g + r)
        _group_stats(op, a, n, a, n, w, offs, out, n, None, n, g, k, lanes, trees, st)
        _finish_group(op, side, st, g, k)
        for r in range(k):
            p = run_values(op, a, m[r], t[r])
            done = run_row(op, rows_a, rows_a, rw, rows_out, (g + r - lo) * n, n, p, p_last,
                           done)
            p_last = p
    run_end(op, rows_a, rows_a, rw, rows_out, n, p_last, done)


# Rows of one chunk run in groups through each phase: the statistics of the group's rows,
# then their finish, then their writes. A short row's phases are one chain of dependent
# steps (the max tree, the exps, the sum tree, a division or a log: ~140 cycles for 32
# float32 elements on one core); the chains of a group's rows in one loop are independent
# and fill each other's waits. Short rows also take their max trees and their sum trees
# together (``_group_stats``). A group holds up to GROUP rows and GROUP_ELEMENTS elements
# (at least one row), so that its rows stay in the L1 cache between the phases. The same
# phases and trees: the same bits.
GROUP = TREE_ROWS
GROUP_ELEMENTS = 2048
# The rows whose trees run together (``_group_stats``), by the bytes of a row's input. With
# the trees together, time ÷ a row at a time (float32, 2-core Zen 4, one process timing
# both alternately): 2^24 elements and 2 threads, softmax and log_softmax at 32 elements
# 0.80-0.84, at 64 0.79-0.89, but at 128-256 1.04-1.07 (float64 1.03-1.07): there the
# group's max passes read memory back to back and its sum passes compute with the memory
# idle, where a row at a time overlaps the two (a prefetch of the next group did not
# help). In the L1 cache, one thread: 0.73 at 32, 0.82 at 128. float16 (compute-bound by
# its conversions) 0.84-0.95 at 128-256 elements.
TREE_ROW_BYTES = 256
_GROUP_SCRATCH = (GROUP + 1) * W


@njit(inline="always", **INTERNAL)
def group_size(n):
    return imax(1, imin(GROUP, GROUP_ELEMENTS // imax(n, 1)))


@njit(inline="always", **INTERNAL)
def _group_row(op, a, ao, b, bo, w, off, out, oo, sc, n, i, r):
    """The row kernel's arguments for row i, the group's r-th: (a, b, mask, out) rows."""
    return (seg(a, i * ao, i * ao + n), _staged(sc, r * n, seg(b, i * bo, i * bo + n)),
            seg(w, off, off + n), out_row(op, out, i * oo, n))


# A group's phases are called from the drivers themselves (the mask offsets, then
# ``_group_stats``, then ``_finish_group``), not from one function around them: numba
# compiles each function called from compiled code on its own and optimizes and emits
# its code, callees inlined, once for itself and once more within each caller, so every
# level between a driver and the row kernel's passes compiles their code once more (one
# such level made a first 8 x 128 softmax compile 0.25-0.45 s longer, ~15 %).
@njit(**INTERNAL)
def _finish_group(op, side, st, g, k):
    """(m, t) of rows g .. g+k-1 into ``st[2]`` and ``st[3]`` from their statistics in
    ``st[0]`` and ``st[1]``: each row's ``finish``, log_softmax's logs of the group's sums
    taken together (``log_sums``)."""
    cmax, csum, m, t = st[0], st[1], st[2], st[3]
    for r in range(k):
        m[r], t[r] = finish_one(unlogged(op), cmax[r], csum[r], row_values(side, g + r))
    log_sums(op, t, k)


def _group_stats(op, a, ao, b, bo, w, offs, out, oo, sc, n, g, k, lanes, trees, st):
    """st[0, r], st[1, r] = the statistics (max, sum) of row g + r, r < k (one chunk each),
    the rows' mask offsets in ``offs`` (``mask_offset``). Operations
    with a max pass, on rows of up to TREE_ROW_BYTES, run it over the group's rows, take
    their max trees together, then the sum passes, and take their last sum trees together
    (``seg_total``): ``lanes`` holds a vector per row, ``trees`` the trees' results.
    Longer rows run both passes a row at a time, the second from the L1 cache. The
    gradients, whose one pass is a sum, run ``stats`` a row at a time: taking their
    trees together measured no faster."""


@overload(_group_stats, jit_options=INLINE)
def _group_stats_impl(op, a, ao, b, bo, w, offs, out, oo, sc, n, g, k, lanes, trees, st):
    if op.key_ not in MAX_OPS:
        def each_row(op, a, ao, b, bo, w, offs, out, oo, sc, n, g, k, lanes, trees, st):
            cmax, csum = st[0], st[1]
            for r in range(k):
                cmax[r], csum[r] = stats(op, *_group_row(op, a, ao, b, bo, w, offs[r], out,
                                                         oo, sc, n, g + r, r), False)
        return each_row

    def with_trees(op, a, ao, b, bo, w, offs, out, oo, sc, n, g, k, lanes, trees, st):
        cmax, csum = st[0], st[1]
        # Both forms share one call of ``maxes`` and one of ``sums`` (each inlines a row's
        # loops; a second copy of them made a first call compile ~0.25 s longer): the
        # whole group in one step, or a row per step with its own trees.
        whole = n * a.itemsize <= TREE_ROW_BYTES
        step = k if whole else 1
        for s in range(0, k, step):
            e = imin(k, s + step)
            cm = trees[0]  # typed as the compute type; set below before any use
            for r in range(s, e):
                v = maxes(op, *_group_row(op, a, ao, b, bo, w, offs[r], out, oo, sc, n, g + r,
                                          r))
                if whole:
                    vstore(lanes, r * W, ALL, v)
                else:
                    cm = vmax_all(v)
            if whole:
                vstore(trees, 0, ALL, vmax_rows(lanes))
            for r in range(s, e):
                if whole:
                    cm = trees[r]
                cmax[r], sm = sums(op, *_group_row(op, a, ao, b, bo, w, offs[r], out, oo, sc,
                                                   n, g + r, r), cm, LANES)
                if whole:
                    csum[r] = sm[0]
                    vstore(lanes, r * W, ALL, sm[1])
                else:
                    csum[r] = sm[0] + np.float64(vsum(sm[1]))  # as ``seg_sum``
            if whole:
                vstore(trees, 0, ALL, vsum_rows(lanes))
                for r in range(s, e):
                    csum[r] += np.float64(trees[r])  # head + the last tree, as ``seg_sum``
    return with_trees


@njit(inline="always", **INTERNAL)
def _write_order(q, k, n):
    """The group's q-th row to write of k: in order, but rows shorter than a vector (whose
    loads and stores reach into the next row) the even rows first, then the odd ones. In
    order, the loads of a row followed the store of the row before it, their addresses
    overlapping in their low 12 bits where ``out`` and the inputs lie at one offset from a
    4 KiB page (as large allocations do), and the core took the loads to depend on that
    store (4K aliasing)."""
    if n >= W:
        return q
    half = (k + 1) // 2
    return 2 * q if q < half else 2 * (q - half) + 1


@njit(**OPTIONS)
def grouped_rows(op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, ahead, side, stream):
    """Rows lo..hi-1 of at most CHUNK elements, in groups through each phase of the row
    kernel; an = on = 1."""
    size = group_size(n)
    st = empty((4, size), np.float64)  # one allocation, not four (a short call pays each)
    cmax, m, t = st[0], st[2], st[3]
    offs = empty(size, np.int64)  # the rows' mask offsets, for both passes over them
    # the group's rows' lanes (rows past a short group's: +0), then their trees' results
    scratch = stack_empty(a, _GROUP_SCRATCH)
    scratch[:] = 0.0
    lanes, trees = seg(scratch, 0, GROUP * W), seg(scratch, GROUP * W, (GROUP + 1) * W)
    w = side_mask(side)
    sc = _staging(op, out, size * n)
    for g in range(lo, hi, size):
        k = imin(size, hi - g)
        fetch_ahead(op, a, ao, b, bo, out, oo, g, k, ahead, hi, n)
        for r in range(k):
            offs[r] = mask_offset(side, g + r)
        _group_stats(op, a, ao, b, bo, w, offs, out, oo, sc, n, g, k, lanes, trees, st)
        _finish_group(op, side, st, g, k)
        for q in range(k):
            r = _write_order(q, k, n)
            write(op, *_group_row(op, a, ao, b, bo, w, offs[r], out, oo, sc, n, g + r, r),
                  cmax[r], m[r], t[r], stream)
    if stream:
        vfence()


@njit(**INTERNAL)
def _gather(src, stride, r0, k, n, dst):
    """Rows r0 .. r0+k-1 (``k``: a count, or the ``ALL`` marker: W) into tile ``dst``;
    only the marker takes the shuffled form (a count compiles none of it)."""
    if vgather_rows(src, r0 * stride, stride, k, n, dst):
        return
    for j in range(n):
        vstore(dst, j * W, W, vgather(src, r0 * stride + j, stride, k, 0.0))


def _scratch(like, n, nt):
    """The lane kernel's scratch for bands of nt tiles: (S, T, V), see ``_lane_kernel``."""


@overload(_scratch, jit_options=CALLEE)
def _scratch_impl(like, n, nt):
    dtype = np.float64 if compute_type(like.dtype) == types.float64 else np.float32

    def make(like, n, nt):
        nc = (n + CHUNK - 1) // CHUNK
        return (empty((2 * nc + 2) * nt * W, np.float64), empty(nt * W * W, dtype),
                empty(2 * nt * W, dtype))
    return make


def _second_tile(op, b, n, ta):
    """The tile of the second operand: its own for a gradient's dy/dz and logsumexp's
    (and its gradient's) weights, ``ta`` for softmax and log_softmax (b is a), None
    without weights."""


@overload(_second_tile, jit_options=CALLEE)
def _second_tile_impl(op, b, n, ta):
    if isinstance(b, types.NoneType):
        return lambda op, b, n, ta: None
    if op.key_ in ("softmax", "log_softmax"):
        return lambda op, b, n, ta: ta
    return lambda op, b, n, ta: _compute_empty(b, n * W)


def _gather_second(op, b, bo, r0, k, n, tb):
    """Gather rows r0 .. of ``b`` into its tile when it has one of its own."""


@overload(_gather_second, jit_options=INLINE)
def _gather_second_impl(op, b, bo, r0, k, n, tb):
    if isinstance(b, types.NoneType) or op.key_ in ("softmax", "log_softmax"):
        return lambda op, b, bo, r0, k, n, tb: None
    return lambda op, b, bo, r0, k, n, tb: _gather(b, bo, r0, k, n, tb)


@njit(**INTERNAL)
def _scatter(src, dst, stride, r0, k, n):
    if vscatter_rows(dst, r0 * stride, stride, k, n, src):
        return
    for j in range(n):
        vscatter(dst, r0 * stride + j, stride, k, vload(src, j * W, W, 0.0))


@njit(**INTERNAL)
def _put(op, to, out, oo, r0, k, n):
    """A tile's results into rows r0 .. r0+k-1 of ``out``: a reduction's values (and signs),
    else the tile's rows."""
    if reduces(op):
        if oo == 1:  # values one after the other: one store instead of W
            vstore(out, r0, k, vload(to, 0, W, 0.0))
        else:
            vscatter(out, r0 * oo, oo, k, vload(to, 0, W, 0.0))
        if same(op, LOGSUMEXP_SIGN):
            vscatter(out, r0 * oo + 1, oo, k, vload(to, W, W, 0.0))
    else:
        _scatter(to, out, oo, r0, k, n)


# Masked short rows (``side`` with a mask) run through the same tiles when the rows lie
# one after the other (row strides n) and so do their masks, or one mask serves every
# row (``mask_takes_tiles``; other masked rows run on the row kernel). The excluded
# elements enter a tile as -inf (forward) or 0 (both gradient inputs): a whole tile of
# rows of at most ``TILE_TRANSPOSE_MAX`` elements selects them in its shuffled gather
# (``vgather_rows_where``: the mask's bytes load as the rows' vectors do); other masked
# rows pass through a scratch of W rows as contiguous vectors, which the gather takes (a
# scratch round trip cost the gradients' rows of 3-8 elements ~10 % of their time). An
# excluded element then adds +0 to the row's max-shifted sum (exp(-inf - m)) or to its
# gradient sum (0 * 0), as the row kernel's masked sums add +0 for it, and a forward row
# whose max is finite gives the row kernel's values everywhere: 0 (softmax) or -inf
# (log_softmax) at the excluded elements. The other forward rows (no valid element,
# valid elements all -inf, a max of NaN or +inf) come out of the tile as NaN rows (never
# NaN otherwise: a finite max gives finite sums) and are written again by the row
# kernel's rule for them (``_row_kernel.special_fill``). A gradient's outputs are 0
# where excluded: a whole tile's by its shuffled scatter (``vscatter_rows_where``), the
# others' on the way back through the scratch. logsumexp's rows enter as the forward
# functions' (its weights, if any, as a gradient's second input: 0 where excluded), so each
# excluded element adds the +0 term of an unmasked -inf element of weight 0, as the row
# kernel's masked sums add +0 for it: the tile's values are the row kernel's, a row without
# an included element's too (-inf, sign 0), and no row is written again. Rows that share
# one mask (``side`` without row offsets, a specialization of its own) skip the scratch:
# the tile is gathered as unmasked rows and its excluded columns set as the scratch would
# have them, and a gradient's excluded output columns set to 0. Both forms in one compiled
# loop made the gradients' tiles under masks of x's shape ~1.4x slower on rows of 3
# (float32, one thread, in L3).

def mask_takes_tiles(dims, n):
    """Whether a mask whose rows' offsets are ``dims`` (see ``mask_offset``) lies as the
    masked tiles take it: 0 for one mask for every row, n for masks one after the other,
    -1 otherwise. Also called from Python, with the dims of a ``side``."""
    if dims.shape[0] == 0:
        return 0
    if dims.shape[0] == 1 and dims[0, 0] == 0 and (dims[0, 1] == n or dims[0, 1] == 0):
        return dims[0, 1]
    return -1


def _mask_scratch(side, a, n):
    """A masked call's scratch: two scratches of W rows in the compute type of ``a``; None
    without a mask, or with one mask for every row (no scratch)."""


# with reference counts: it allocates
@overload(_mask_scratch, jit_options=CALLEE)
def _mask_scratch_impl(side, a, n):
    if _no_mask(side) or _shared_mask(side):
        return lambda side, a, n: None
    return lambda side, a, n: (_compute_empty(a, n * W), _compute_empty(a, n * W))


def _rows_in(op, a, b, w, n, k, ta, tb, ms):
    """k rows one after the other (``a``, ``b``: their k * n elements), ``w`` their mask's
    bytes, into the tiles: W rows short enough for the shuffled gather take the mask in it,
    other masked rows pass through a scratch of W rows as contiguous vectors
    (``_max_lanes``: -inf where excluded; ``_value_lanes``: 0; rows past k: 0), gathered a
    column at a time (a lane count, not the marker: the shuffled form is the masked one's,
    compiled once). log_softmax_backward's z takes -inf: exp(z) is then 0 there;
    logsumexp's x -inf and its weights (``b``, or None) 0."""


@overload(_rows_in, jit_options=INLINE)
def _rows_in_impl(op, a, b, w, n, k, ta, tb, ms):
    if op.key_ in ("softmax", "log_softmax") or isinstance(b, types.NoneType):
        def forward(op, a, b, w, n, k, ta, tb, ms):
            if k == W and vgather_rows_where(a, 0, n, ALL, n, ta, w, -np.inf):
                return
            seg_map(_max_lanes, seg(ms[0], 0, k * n), a, None, w, None)
            ms[0][k * n:] = 0.0
            _gather(ms[0], n, 0, W, n, ta)
        return forward

    first = _value_lanes if op.key_ == "softmax_backward" else _max_lanes
    fill = 0.0 if op.key_ == "softmax_backward" else -np.inf

    def gradient(op, a, b, w, n, k, ta, tb, ms):
        if k == W and vgather_rows_where(a, 0, n, ALL, n, ta, w, fill) and \
                vgather_rows_where(b, 0, n, ALL, n, tb, w, 0.0):
            return
        seg_map(first, seg(ms[0], 0, k * n), a, None, w, None)
        seg_map(_value_lanes, seg(ms[1], 0, k * n), b, None, w, None)
        ms[0][k * n:] = 0.0
        ms[1][k * n:] = 0.0
        _gather(ms[0], n, 0, W, n, ta)
        _gather(ms[1], n, 0, W, n, tb)
    return gradient


def _rows_out(op, to, out, w, n, k, ms):
    """The output tile's first k rows into k rows one after the other (``out``: their k * n
    elements), ``w`` their mask's bytes: a partial tile's, and a gradient's, pass through
    a scratch of W rows (a gradient's then 0 where excluded) but for a gradient's whole
    tile of short rows, 0 there in its shuffled scatter. log_softmax_backward's
    excluded outputs are already +0 - exp(-inf) * s = +0 where each row's sum s is finite,
    and then every row's first output is finite (where s is not, it is not: 0 * s or a
    valid element's exp(z) * s); then its whole tiles go straight to ``out``."""


@overload(_rows_out, jit_options=INLINE)
def _rows_out_impl(op, to, out, w, n, k, ms):
    if op.key_ in ("softmax", "log_softmax"):
        def forward(op, to, out, w, n, k, ms):
            if k == W:
                _scatter(to, out, n, 0, ALL, n)
            else:
                _scatter(to, ms[1], n, 0, W, n)
                seg_map(_value_lanes, out, ms[1], None, None, None)
        return forward

    direct = op.key_ == "log_softmax_backward"

    def gradient(op, to, out, w, n, k, ms):
        if direct and k == W:
            first = vload(to, 0, W, 0.0)
            if vall(visfinite(first)):
                _scatter(to, out, n, 0, ALL, n)
                return
        if k == W and vscatter_rows_where(out, 0, n, ALL, n, to, w):
            return
        _scatter(to, ms[0], n, 0, W, n)
        seg_map(_value_lanes, out, ms[0], None, w, None)
    return gradient


@njit(**CALLED)
def _nan_rows(op, a, ao, out, oo, side, r0, k, n, to):
    """The rows r0 .. r0+k-1 of a masked forward tile whose output is NaN, written again
    by the row kernel's rule for a max that is not finite (``_row_kernel.special_fill``:
    no valid element, valid elements all -inf, NaN or +inf among them)."""
    w = side_mask(side)
    for r in range(k):
        if to[r] != to[r]:
            i = r0 + r
            off = mask_offset(side, i)
            xs, ws = seg(a, i * ao, i * ao + n), seg(w, off, off + n)
            m = seg_max(_max_lanes, xs, None, ws)
            t = seg_sum(_count_lanes, xs, None, ws)  # NaN where the max left a NaN out
            if t != t:
                m = np.nan
            # the valid elements' count, as log_softmax's sums are: logged
            special_fill(op, m, pick(op, LOG_SOFTMAX, vlog(t), t), ws,
                         out_row(op, out, i * oo, n))


def _masked_rows(op, side, a, ao, b, bo, out, oo, r0, k, n, ta, tb, to, ms, S, T, V):
    """Masked rows r0 .. r0+k-1 (k at most W) through one tile (see above; the rows and
    their masks as ``mask_takes_tiles`` takes them). One call site for whole and partial
    tiles: its code is in ``masked_short_rows`` once (a called function measured ~1.8x
    slower on rows of 3, where LLVM did not inline it)."""


@overload(_masked_rows, jit_options=INLINE)
def _masked_rows_impl(op, side, a, ao, b, bo, out, oo, r0, k, n, ta, tb, to, ms, S, T, V):
    if _shared_mask(side):  # no scratch
        def shared(op, side, a, ao, b, bo, out, oo, r0, k, n, ta, tb, to, ms, S, T, V):
            if k == W:
                _gather(a, ao, r0, ALL, n, ta)
                _gather_second(op, b, bo, r0, ALL, n, tb)
            else:
                _gather(a, ao, r0, k, n, ta)
                _gather_second(op, b, bo, r0, k, n, tb)
            _exclude_inputs(op, side_mask(side), n, ta, tb)
            _tile_values(side, r0, k, S)
            tile(op, ta, tb, to, n, S, T, V)
            _masked_out(op, side, a, ao, out, oo, r0, k, n, to, None, ms)
        return shared

    def rows(op, side, a, ao, b, bo, out, oo, r0, k, n, ta, tb, to, ms, S, T, V):
        base = mask_offset(side, r0)
        w = seg(side_mask(side), base, base + k * n)
        _rows_in(op, seg(a, r0 * ao, r0 * ao + k * n), seg(b, r0 * bo, r0 * bo + k * n), w,
                 n, k, ta, tb, ms)
        _tile_values(side, r0, k, S)
        tile(op, ta, tb, to, n, S, T, V)
        _masked_out(op, side, a, ao, out, oo, r0, k, n, to, w, ms)
    return rows


def _masked_out(op, side, a, ao, out, oo, r0, k, n, to, w, ms):
    """The output tile of masked rows r0 .. r0+k-1 into ``out``: a reduction's values (and
    signs) as ``short_rows`` stores them (its excluded elements need nothing more: see
    above); else rows sharing one mask (``w`` None) with a gradient's excluded columns
    set to 0, or rows with their own masks' bytes ``w`` through ``_rows_out``; a forward
    tile's NaN rows then written again."""


@overload(_masked_out, jit_options=INLINE)
def _masked_out_impl(op, side, a, ao, out, oo, r0, k, n, to, w, ms):
    if op.key_ in REDUCED:
        def values(op, side, a, ao, out, oo, r0, k, n, to, w, ms):
            if k == W:
                _put(op, to, out, oo, r0, ALL, n)
            else:
                _put(op, to, out, oo, r0, k, n)
        return values
    forward = op.key_ in ("softmax", "log_softmax")
    if isinstance(w, types.NoneType):
        def shared(op, side, a, ao, out, oo, r0, k, n, to, w, ms):
            _exclude_outputs(op, side_mask(side), n, to)
            if k == W:
                _scatter(to, out, oo, r0, ALL, n)
            else:
                _scatter(to, out, oo, r0, k, n)
            if forward:
                _check_nan_rows(op, a, ao, out, oo, side, r0, k, n, to)
        return shared

    def rows(op, side, a, ao, out, oo, r0, k, n, to, w, ms):
        _rows_out(op, to, out_row(op, out, r0 * oo, k * n), w, n, k, ms)
        if forward:
            _check_nan_rows(op, a, ao, out, oo, side, r0, k, n, to)
    return rows


def _exclude_inputs(op, w, n, ta, tb):
    """The columns (element j of every row) of a tile whose rows share mask ``w`` (n bytes)
    that it excludes, set as ``_rows_in`` sets excluded elements: -inf (the forward
    functions' and logsumexp's x, log_softmax_backward's z) or 0 (softmax_backward's y; and
    ``tb``, where it is a tile of its own: dy, dz, logsumexp's weights)."""


@overload(_exclude_inputs, jit_options=INLINE)
def _exclude_inputs_impl(op, w, n, ta, tb):
    first = 0.0 if op.key_ == "softmax_backward" else -np.inf
    if isinstance(tb, types.NoneType) or op.key_ in ("softmax", "log_softmax"):
        def one(op, w, n, ta, tb):
            for j in range(n):
                if w[j] == 0:
                    vstore(ta, j * W, W, vsplat(first, ta))
        return one

    def both(op, w, n, ta, tb):
        for j in range(n):
            if w[j] == 0:
                vstore(ta, j * W, W, vsplat(first, ta))
                vstore(tb, j * W, W, vsplat(0.0, tb))
    return both


def _exclude_outputs(op, w, n, to):
    """A gradient's output tile (rows sharing mask ``w``) 0 at the excluded columns, as
    ``_rows_out`` gives (the tile gives -0, or NaN where a row's sum is not finite); a
    forward output tile already holds 0 or -inf there."""


@overload(_exclude_outputs, jit_options=INLINE)
def _exclude_outputs_impl(op, w, n, to):
    if op.key_ in ("softmax", "log_softmax"):
        return lambda op, w, n, to: None

    def zero(op, w, n, to):
        for j in range(n):
            if w[j] == 0:
                vstore(to, j * W, W, vsplat(0.0, to))
    return zero


@njit(**INTERNAL)
def _check_nan_rows(op, a, ao, out, oo, side, r0, k, n, to):
    first = vload(to, 0, W, 0.0)
    if not vall(veq(first, first)):  # a row's first output is NaN
        _nan_rows(op, a, ao, out, oo, side, r0, k, n, to)


@njit(**OPTIONS)
def short_rows(op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, ahead, side, stream):
    """Rows lo..hi-1, W at a time (the lane kernel's ``tile`` on rows gathered into
    tiles; the rows it takes: ``_cpu.SHORT_ROW_MAX``). A reduction's tile holds the W
    values (and the W signs after them). ``side``: None, or logsumexp_backward's given row
    values without a mask (masked rows: ``masked_short_rows``). ``stream`` is not used: a
    tile's rows are stored plainly."""
    S, T, V = _scratch(a, n, 1)
    ta = _compute_empty(a, n * W)
    to = _compute_empty(out, imax(n, 2) * W)
    tb = _second_tile(op, b, n, ta)
    # all W lanes computed (the gather fills missing rows with 0): the tiles are whole, so
    # their loads and stores need no masks
    full = lo + (hi - lo) // W * W
    for r0 in range(lo, full, W):  # whole tiles: the lane count a constant, no masks
        fetch_ahead(op, a, ao, b, bo, out, oo, r0, W, ahead, hi, n)
        _gather(a, ao, r0, ALL, n, ta)
        _gather_second(op, b, bo, r0, ALL, n, tb)
        _tile_values(side, r0, W, S)
        tile(op, ta, tb, to, n, S, T, V)
        _put(op, to, out, oo, r0, ALL, n)
    if full < hi:
        _gather(a, ao, full, hi - full, n, ta)
        _gather_second(op, b, bo, full, hi - full, n, tb)
        _tile_values(side, full, hi - full, S)
        tile(op, ta, tb, to, n, S, T, V)
        _put(op, to, out, oo, full, hi - full, n)


# A driver of its own for masked short rows: numba resolves ``if side is None`` when
# compiling only where ``side`` is None, so one driver for both compiled its unmasked loop
# into every masked specialization too (0.3-0.5 s more of a first masked call).
@njit(**OPTIONS)
def masked_short_rows(op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, ahead, side,
                      stream):
    """``short_rows`` for masked rows: ``side`` a mask as for the row drivers (the softmax
    functions, logsumexp and its gradient, laid out as ``mask_takes_tiles`` takes it;
    with logsumexp_backward's given values), or ``(w, None, ...)``: one mask ``w`` of n
    bytes for every row."""
    S, T, V = _scratch(a, n, 1)
    ta = _compute_empty(a, n * W)
    to = _compute_empty(out, imax(n, 2) * W)  # a reduction's values and signs
    tb = _second_tile(op, b, n, ta)
    ms = _mask_scratch(side, a, n)
    for r0 in range(lo, hi, W):
        fetch_ahead(op, a, ao, b, bo, out, oo, r0, W, ahead, hi, n)
        _masked_rows(op, side, a, ao, b, bo, out, oo, r0, imin(W, hi - r0), n, ta, tb, to,
                     ms, S, T, V)


@njit(inline="always", **INTERNAL)
def band_tiles(op, n, C, itemsize):
    """The tiles of ``columns``' bands of operation ``op`` (a marker) over n x C elements of
    ``itemsize`` bytes per outer position."""
    if n * C * itemsize <= SLAB_BYTES:
        return WIDE_BAND_TILES
    if narrow_bands(op) and n * NARROW_BAND_TILES * W * itemsize <= NARROW_BAND_BYTES:
        return NARROW_BAND_TILES
    return BAND_TILES


def column_tasks(M, C, lead, tiles):
    """The number of tasks (outer position, band of ``tiles`` tiles) of ``columns`` for M x C
    positions, the first ``lead`` inner positions a band of their own: ``band_tiles`` for
    ``columns``, BAND_TILES for the segment drivers."""
    return M * ((lead > 0) + (C - lead + tiles * W - 1) // (tiles * W))


def columns_tasks(op, M, n, C, lead, itemsize):
    """(tasks, tiles per band) of ``columns`` for operation ``op`` (a marker) over M outer
    positions of n x C elements of ``itemsize`` bytes: its bands as ``band_tiles`` sizes
    them."""
    tiles = band_tiles.py_func(op, n, C, itemsize)
    return column_tasks(M, C, lead, tiles), tiles


def column_lead(out, so, io):
    """The inner positions before the first whose outputs start a cache line in every run
    of ``out`` (flat buffer, outer and axis strides), so that ``columns`` can store whole
    tiles past the caches (a float16 tile, half a line, starts one of its halves); -1 where
    the runs lie differently against the lines."""
    item = out.itemsize
    align = min(STREAM_ALIGN, W * item)
    addr = out.__array_interface__["data"][0]
    if addr % item or (so * item) % align or (io * item) % align:
        return -1
    return (-addr % align) // item


@njit(inline="always", **INTERNAL)
def _band_task(task, C, lead, tiles):
    """(outer position o, first inner position c0, whole tiles, c1, k1) of a task of
    ``columns``: the whole tiles of the band of inner positions c0 .. c0 + tiles * W - 1 at
    o, then a partial tile of k1 positions from c1 (k1 = 0: none). Bands start ``lead``
    positions in (so that the driver can place whole tiles on line boundaries); positions
    0 .. lead-1 are a task of their own, a partial tile (all C of them when C <= lead <
    W)."""
    bands = (lead > 0) + (C - lead + tiles * W - 1) // (tiles * W)
    o, band = task // bands, task % bands - (lead > 0)
    if band < 0:
        return o, 0, 0, 0, imin(lead, C)
    c0 = lead + band * tiles * W
    full = imin(tiles, (C - c0) // W)
    c1 = c0 + full * W
    return o, c0, full, c1, (C - c1 if full < tiles else 0)


def _mask_lanes(side, o, c0, k):
    """The lane tuple of ``columns``' mask for the band at outer position o and inner
    position c0 (``k`` lanes), or None without a mask."""


# with reference counts: it returns an array inside a tuple
@overload(_mask_lanes, jit_options=CALLEE)
def _mask_lanes_impl(side, o, c0, k):
    if _no_mask(side):
        return lambda side, o, c0, k: None
    if isinstance(side[1], types.Array):  # its own outer and axis strides
        return lambda side, o, c0, k: (side[0], o * side[1][0] + c0, side[1][1], k)
    return lambda side, o, c0, k: (side[0], o * side[1], 1, EVERY_LANE)


@njit(**OPTIONS)
def columns(op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, C, lead, side):
    """Tasks lo..hi-1 of (outer position, band of ``band_tiles`` * W inner positions): the
    lane kernel in place. A partial last tile runs as a band of its own, and so do the
    first ``lead`` positions. ``lead`` -1: no lead, and every store plain; else whole tiles
    of ``out`` stored past the caches (the caller sets ``lead`` so that each starts a
    cache line), fenced at the end. A reduction's (logsumexp's) ``b`` may be None, and its
    ``out`` takes the values of position (o, c) at o * oo + c, their signs ``on`` further.
    ``side``: None, or a ``where=`` mask's bytes and logsumexp_backward's given values,
    ``(mask, layout, first, second)`` (each may be None), position (o, c)'s at o * C + c.
    The mask's layout: an array of (outer stride, axis stride) (a tuple in a tuple cannot
    pass into the parallel loop), the byte of position (o, c) and element j at o * outer
    stride + c + j * axis stride; or an integer n (the mask constant along the inner
    positions): one byte per outer position o and element j, at o * n + j."""
    stream = lead >= 0
    lead = imax(lead, 0)
    tiles = band_tiles(op, n, C, a.itemsize)
    S, T, V = _scratch(a, n, tiles)
    for task in range(lo, hi):
        o, c0, full, c1, k1 = _band_task(task, C, lead, tiles)
        if full:  # the lane count a constant: no masked loads and stores
            given_values(S, side, full, n, o * C + c0, ALL)
            band(op, (a, o * ao + c0, an, ALL), lane_tuple(b, o * bo + c0, bn, ALL),
                 _mask_lanes(side, o, c0, ALL), (out, o * oo + c0, on, ALL),
                 full, n, S, T, V, stream)
        if k1:
            given_values(S, side, 1, n, o * C + c1, k1)
            band(op, (a, o * ao + c1, an, k1), lane_tuple(b, o * bo + c1, bn, k1),
                 _mask_lanes(side, o, c1, k1), (out, o * oo + c1, on, k1), 1,
                 n, S, T, V, stream)
    if stream:
        vfence()


# The parallel forms of the serial drivers: tasks of TASK_ELEMENTS elements or more, each a
# call of the serial driver's own compiled code by address (``_serial_call``). One loop for
# the drivers of 16 arguments, one for ``short_rows``, given the number of tasks and the
# tasks per call (counted here in Python: in the loops, the arithmetic's typing and
# inlining made their first compile 0.2-0.3 s longer). M comes along unused.

def _row_tasks(args):
    return args[10], max(1, TASK_ELEMENTS // args[11])


def _group_tasks(args):
    n = args[11]
    size = group_size.py_func(n)
    return args[10], (max(1, TASK_ELEMENTS // n) + size - 1) // size * size  # whole groups


def _tile_tasks(args):
    # the parallel loop does not see a task's error: rows the tiles do not take are
    # refused here, before it runs (the serial driver raises for them itself)
    rows_max = tile_row_max(args[0].key)
    if args[11] > rows_max:
        raise ValueError(f"short_rows takes rows of at most {rows_max} elements for "
                         f"{args[0].key}; got {args[11]}")
    return args[10], (max(1, TASK_ELEMENTS // args[11]) + W - 1) // W * W  # whole tiles


def _band_tasks(args):
    M, n, C, lead = args[10:14]
    total, tiles = columns_tasks(args[0], M, n, C, max(lead, 0), args[1].itemsize)
    return total, max(1, TASK_ELEMENTS // (n * tiles * W))


# The loops do not take the operation: the address has chosen its code, and a marker
# carries no data (every marker is the same null pointer to compiled code), so ANY_OP
# stands in for it and one loop serves every operation of a dtype.
ANY_OP = Marker("any operation")


@njit(**_PARALLEL)
def _tasks(serial, total, per, a, ao, an, b, bo, bn, out, oo, on, M, n, C, x, y):
    previous = handed_out_one_at_a_time()
    for t in prange((total + per - 1) // per):
        lo, hi = np.int64(t * per), np.int64(imin(total, (t + 1) * per))
        call_address(serial, (ANY_OP, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, C, x, y))
    chunk_size_back(previous)


rows_parallel = ParallelDriver(rows, _tasks, _row_tasks)
run_rows_parallel = ParallelDriver(run_rows, _tasks, _row_tasks)
grouped_rows_parallel = ParallelDriver(grouped_rows, _tasks, _group_tasks)
short_rows_parallel = ParallelDriver(short_rows, _tasks, _tile_tasks)
masked_short_rows_parallel = ParallelDriver(masked_short_rows, _tasks, _tile_tasks)
columns_parallel = ParallelDriver(columns, _tasks, _band_tasks)


@njit(**INTERNAL)
def _chunk_phase(op, a, ao, b, bo, out, oo, n, side, i, c, st, fin, writing, stream):
    """Chunk c of row i: its statistics into st[i, :, c], or its outputs (``writing``)."""
    lo, hi = c * CHUNK, imin(n, (c + 1) * CHUNK)
    off = mask_offset(side, i)
    args = (seg(a, i * ao + lo, i * ao + hi), seg(b, i * bo + lo, i * bo + hi),
            seg(side_mask(side), off + lo, off + hi),
            out_chunk(op, out_row(op, out, i * oo, n), lo, hi))
    if writing:
        write(op, *args, st[i, 0, c], fin[i, 0], fin[i, 1], stream)
        if stream:
            vfence()
    else:
        st[i, 0, c], st[i, 1, c] = stats(op, *args, stream)


@njit(**_PARALLEL)
def chunks_parallel(op, a, ao, an, b, bo, bn, out, oo, on, M, n, C, side, stream):
    """Few long rows: (row, chunk) tasks run the row kernel's phases; C = 1."""
    nc = ((n + CHUNK - 1) // CHUNK)
    st = empty((M, 2, nc), np.float64)
    fin = empty((M, 2), np.float64)
    previous = handed_out_one_at_a_time()
    for t in prange(M * nc):
        _chunk_phase(op, a, ao, b, bo, out, oo, n, side, t // nc, t % nc, st, fin, False,
                     stream)
    for i in range(M):
        fin[i, 0], fin[i, 1] = finish(op, st[i, 0], st[i, 1], row_values(side, i))
    for t in prange(M * nc):
        _chunk_phase(op, a, ao, b, bo, out, oo, n, side, t // nc, t % nc, st, fin, True,
                     stream)
    chunk_size_back(previous)


# ---------------------------------------------------------------------------------------
# The phases one at a time, for rows whose segments live in different places (the blocks of
# a dask array along the softmax axis). Rows: a[i*ao : i*ao + n]. Statistics per chunk of
# CHUNK elements from each segment's start: combined in order by ``segment_finish``, they
# give the bits of the in-memory call when every segment but the last is a whole number of
# chunks. Forward softmax runs as ``softmax_split`` (no exps kept between the phases).

@njit(**OPTIONS)
def segment_stats(op, a, ao, b, bo, w, wo, M, n, st):
    """st[i, 0, c], st[i, 1, c] = the (max, sum) statistics of chunk c of row i; ``w``: a
    ``where=`` mask's bytes (row i's at i * wo), or None."""
    for i in range(M):
        for c in range((n + CHUNK - 1) // CHUNK):
            lo, hi = c * CHUNK, imin(n, (c + 1) * CHUNK)
            seg_a = seg(a, i * ao + lo, i * ao + hi)
            st[i, 0, c], st[i, 1, c] = stats(op, seg_a, seg(b, i * bo + lo, i * bo + hi),
                                             seg(w, i * wo + lo, i * wo + hi), seg_a, False)


@njit(**OPTIONS)
def segment_finish(op, st, fin):
    """fin[i] = the (m, t) of row i from all its chunks' statistics st[i], in order."""
    for i in range(st.shape[0]):
        fin[i, 0], fin[i, 1] = finish(op, st[i, 0], st[i, 1], None)


@njit(**OPTIONS)
def segment_write(op, a, ao, b, bo, w, wo, out, oo, M, n, st, fin, stream):
    """The outputs of a segment from its chunks' statistics st and its rows' fin (``w`` as
    for ``segment_stats``); ``stream`` as for ``rows``."""
    for i in range(M):
        for c in range((n + CHUNK - 1) // CHUNK):
            lo, hi = c * CHUNK, imin(n, (c + 1) * CHUNK)
            write(op, seg(a, i * ao + lo, i * ao + hi), seg(b, i * bo + lo, i * bo + hi),
                  seg(w, i * wo + lo, i * wo + hi), seg(out, i * oo + lo, i * oo + hi),
                  st[i, 0, c], fin[i, 0], fin[i, 1], stream)
    if stream:
        vfence()


@njit(**OPTIONS)
def segment_values(op, fin, out, width):
    """A reduction's rows from their fin (``segment_finish``): row i's value (and sign) in
    out[i * width : (i + 1) * width], as the in-memory call writes them."""
    for i in range(fin.shape[0]):
        row = seg(out, i * width, (i + 1) * width)
        write(op, row, None, None, row, 0.0, fin[i, 0], fin[i, 1], False)


# The same two phases for segments of a strided axis read in place (as ``columns``): the
# rows are (outer position o, inner position i), row o * C + i of st and fin. A chunk's
# statistics are the row kernel's bits (the lane kernel), so a row's segments may be read
# either way. Whole tiles pass their lane count W as a run-time value, as the partial tile
# does (``_band_part``): one compiled variant of the lane phases instead of two (half the
# compile time of these drivers), at the same speed as a constant W (a 1024 x 8192 float32
# block: ~10 ms statistics, ~14 ms write either way, one thread). Their bands keep
# BAND_TILES tiles (a dask block's slab is rarely as small as ``band_tiles`` asks).

@njit(inline="always", **INTERNAL)
def _band_part(t, C, lead):
    """Part t % 2 of task t // 2 of ``columns``: (outer position, first inner position,
    tiles, lanes per tile) of its whole tiles (part 0) or of its partial tile (part 1); no
    tiles when the part is empty. The lane count is a run-time value for both."""
    o, c0, full, c1, k1 = _band_task(t // 2, C, lead, BAND_TILES)
    if t % 2 == 0:
        return o, c0, full, imin(W, C - c0)
    return o, c1, int(k1 > 0), k1


@njit(**OPTIONS)
def segment_columns_stats(op, a, ao, an, b, bo, bn, w, wo, wn, lo, hi, n, C, st):
    """Tasks lo..hi-1 of ``columns``: st[o * C + i, :, c] = the (max, sum) statistics of
    chunk c of row (o, i); a reduction's ``b`` may be None, as there; ``w``: a ``where=``
    mask's bytes at their own outer and axis strides (wo, wn; inner positions contiguous,
    as a's), or None."""
    S, T, V = _scratch(a, n, BAND_TILES)
    for t in range(2 * lo, 2 * hi):
        o, at, nt, k = _band_part(t, C, 0)
        if nt:
            band_stats(op, (a, o * ao + at, an, k), lane_tuple(b, o * bo + at, bn, k),
                       lane_tuple(w, o * wo + at, wn, k), nt, n, S, T, V, st, o * C + at,
                       nt * k)


@njit(**OPTIONS)
def segment_columns_write(op, a, ao, an, b, bo, bn, w, wo, wn, out, oo, on, lo, hi, n, C, st,
                          fin, lead, stream):
    """Tasks lo..hi-1 of ``columns`` (``lead`` as there): the outputs of the segments from
    their chunks' statistics st and their rows' fin; ``w`` as for ``segment_columns_stats``;
    ``stream`` as for ``columns``."""
    S, T, V = _scratch(a, n, BAND_TILES)
    for t in range(2 * lo, 2 * hi):
        o, at, nt, k = _band_part(t, C, lead)
        if nt:
            band_write(op, (a, o * ao + at, an, k), (b, o * bo + at, bn, k),
                       lane_tuple(w, o * wo + at, wn, k), (out, o * oo + at, on, k), nt, n,
                       S, V, st, fin, o * C + at, nt * k, stream)
    if stream:
        vfence()


# ---------------------------------------------------------------------------------------
# Strided 2-D copies for rows that cannot be read in place (the layout module gathers them
# into logical order first). numpy's strided copy of a transposed 8192x1024 float32 view
# took 74 ms; tiles of TILE x TILE keep both sides' cache lines in L1.

TILE = 64


@njit(cache=CACHE, nogil=True, parallel=True)
def copy2d(src, dst):
    m, n = src.shape
    previous = handed_out_one_at_a_time()
    for bi in prange((m + TILE - 1) // TILE):
        for bj in range(0, n, TILE):
            for i in range(bi * TILE, imin(m, (bi + 1) * TILE)):
                for j in range(bj, imin(n, bj + TILE)):
                    dst[i, j] = src[i, j]
    chunk_size_back(previous)
