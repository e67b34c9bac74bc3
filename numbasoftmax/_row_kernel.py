"""The row kernel: one row at a time, the W lanes of the summation order along the row.

The summation order (the package's, for every kernel): a row is cut into chunks of CHUNK
elements and a chunk into blocks of BLOCK elements. In a block, element j goes to lane
j mod W (W = 16); each lane adds its elements in order, starting from +0 in the compute
type C (float32 for float16/float32 storage, float64 for float64). A block's sum is the
halving tree of its lanes (``_simd.vsum``), widened to float64; a chunk's sum is 0.0 + its
block sums in order; a row's sum is 0.0 + its chunk sums in order (softmax: each first
scaled by exp(chunk max - row max)). Maxima need no order: IEEE maximum is associative and
commutative. A max pass may leave a NaN out (``_simd.vmax_num``, one instruction instead of
~5): the exps of the sum's pass give NaN for it, and a chunk whose sum is NaN takes NaN for
its max (``told_max``), as IEEE maximum would have given.

Padding is free: a lane starts at +0, so it never holds -0, and adding +0 to anything but
-0 returns it unchanged. Lanes past the end of a row (masked loads give them +0 terms) and
tree levels over lanes that received nothing may be added or skipped, with the same bits.

Each operation has three phases: ``stats`` per chunk (a max and a sum), ``finish`` per row
(the chunks combined), ``write`` per chunk (the outputs). The row function runs them in
turn; the chunk-parallel driver runs them as separate tasks; the lane kernel
(``_lane_kernel``) mirrors them with a lane per row. They all give the same bits.

Optional operands, fixed when compiling (None, or an array): a mask ``w`` (``where=``,
bytes) and, for logsumexp, weights in ``b``. An element is *valid* where the mask is set
and the weight is not 0; the others take no part in a max or a sum (the loops select +0
for their terms and -inf for their maxima, so an all-valid row has the bits of the
unmasked row) and get the op's value for excluded elements.

Reductions (logsumexp) write one value per row (and its sign: two) from the first chunk's
write phase; ``out_row`` and ``out_chunk`` give each chunk its part of the output.

Memory traffic per element (ideal, one pass = one read or write of the row):
softmax reads x twice (max, then exp + sum, keeping exp in out) and out twice, writes out
twice; the second and later passes of a row of up to ROW_TASK_MAX elements come from cache,
so memory sees one read of x and one write of out. log_softmax: x read three times
(max, sum, write), out written once. Gradients: y/z and dy/dz read twice (sum, write), out
written once. logsumexp: x (and the weights) read twice (max, sum), one value per row
written; its gradient reads x once and writes once. A mask adds one byte per element per
pass that reads it. A plain store to a line not in the cache reads the line first; where
the output is large (``_cpu.streams``, ``_config.STREAM_MIN_BYTES``) the write phase
stores whole cache lines past the caches instead (``seg_map``), so memory sees the write
once: every operation but softmax, whose first passes have put ``out``'s lines in the
cache already (the kept exps), and logsumexp's gradient, measured slower streamed (the
launcher's rule leaves out more, by row length). For softmax, computing the exps again,
or keeping them in a scratch row copied out afterwards, measured slower.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload

from ._config import CACHE
from ._disk_cache import njit
from ._markers import (
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
from ._simd import (
    W,
    holds_exact,
    imax,
    imin,
    to_compute,
    vadd,
    vall,
    vbelow,
    veq,
    vmax,
    vmax_all,
    vmax_num,
    vmul,
    vnonzero,
    vone_nan,
    vselect,
    vsplat,
    vsub,
    vsum,
    vwith_lane,
)
from ._vmath import vexp, vexp_nonpos, vexp_nonpos_weighted, vexp_weighted, vlog
from ._vmem import (
    emit_view,
    fetch_read,
    seg,
    stream_head,
    vand,
    vload,
    vload_mask,
    vstore,
    vstream,
)

BLOCK = 1024
CHUNK = 8192

NEG_INF = -math.inf
NAN = math.nan

OPTIONS = {"cache": CACHE, "nogil": True, "error_model": "numpy", "boundscheck": False}
# For functions called only from compiled code that allocate nothing: no Python wrapper to
# build, and ``INLINE``'s options.
INTERNAL = dict(OPTIONS, no_cpython_wrapper=True, **INLINE)

SOFTMAX = Marker("softmax")
LOG_SOFTMAX = Marker("log_softmax")
SOFTMAX_BACKWARD = Marker("softmax_backward")
LOG_SOFTMAX_BACKWARD = Marker("log_softmax_backward")
# softmax in separate passes (a row's segments in different tasks or processes): the stats
# phase keeps no exps, the write phase computes them again (the same expression: the same
# bits as SOFTMAX)
SOFTMAX_SPLIT = Marker("softmax_split")
# one value per row: log of the sum of (weight *) exp(x); NaN where that sum is negative
LOGSUMEXP = Marker("logsumexp")
# two values per row: log of the absolute value of that sum, and the sum's sign
LOGSUMEXP_SIGN = Marker("logsumexp_sign")
# (weight *) exp(x - lse) * g per element, from each row's (lse, g)
LOGSUMEXP_BACKWARD = Marker("logsumexp_backward")
OPS = {m.key: m for m in (SOFTMAX, LOG_SOFTMAX, SOFTMAX_BACKWARD, LOG_SOFTMAX_BACKWARD,
                          SOFTMAX_SPLIT, LOGSUMEXP, LOGSUMEXP_SIGN, LOGSUMEXP_BACKWARD)}


# ---------------------------------------------------------------------------------------
# optional operands: None or an array, chosen when compiling

def valid(b, w, i, k):
    """Lanes i .. i+k-1 that take part: mask ``w`` set and weight ``b`` not 0 (each when
    given; lanes from k on never); None when neither is given (all lanes)."""


@overload(valid, jit_options=INLINE)
def _valid_impl(b, w, i, k):
    nob, now = isinstance(b, types.NoneType), isinstance(w, types.NoneType)
    if nob and now:
        return lambda b, w, i, k: None
    if nob:
        return lambda b, w, i, k: vload_mask(w, i, k)
    if now:
        return lambda b, w, i, k: vnonzero(vload(b, i, k, 0.0))
    return lambda b, w, i, k: vand(vload_mask(w, i, k), vnonzero(vload(b, i, k, 0.0)))


def keep(m, v, other):
    """``v`` in the lanes of mask ``m`` (all when ``m`` is None), ``other`` elsewhere."""


@overload(keep, jit_options=INLINE)
def _keep_impl(m, v, other):
    if isinstance(m, types.NoneType):
        return lambda m, v, other: v
    return lambda m, v, other: vselect(m, v, other)


def weigh(v, b, i, k):
    """``v`` times the weights ``b`` of lanes i .., or ``v`` when ``b`` is None."""


@overload(weigh, jit_options=INLINE)
def _weigh_impl(v, b, i, k):
    if isinstance(b, types.NoneType):
        return lambda v, b, i, k: v
    return lambda v, b, i, k: vmul(v, vload(b, i, k, 0.0))


def _weighed_exp(exp, weighted):
    def weighed(t, b, i, k):
        """exp(t) times the weights ``b`` of lanes i .. (a large weight lifting a term
        whose exp is below the normal range: ``_vmath._LIFT``), or exp(t) when ``b`` is
        None."""

    @overload(weighed, jit_options=INLINE)
    def _impl(t, b, i, k):
        if isinstance(b, types.NoneType):
            return lambda t, b, i, k: exp(t)
        return lambda t, b, i, k: weighted(t, vload(b, i, k, 0.0))

    return weighed


weighed_exp = _weighed_exp(vexp, vexp_weighted)
weighed_exp_nonpos = _weighed_exp(vexp_nonpos, vexp_nonpos_weighted)


# how many values per row an operation writes when it reduces the row: 0 for the
# element-wise ones
REDUCED = {"logsumexp": 1, "logsumexp_sign": 2}


@njit(inline="always", **INTERNAL)
def reduces(op):
    """Whether ``op`` writes one value (or value and sign) per row: a compile-time constant."""
    return same(op, LOGSUMEXP) or same(op, LOGSUMEXP_SIGN)


@intrinsic
def out_row(typingctx, op, out, start, n):
    """Row output: ``out[start:start + n]``, or a reduction's 1 or 2 values."""
    if not isinstance(op, MarkerType):
        return None
    width = REDUCED.get(op.key_, 0)

    def codegen(context, builder, sig, args):
        start_ = context.cast(builder, args[2], sig.args[2], types.intp)
        size = (ir.Constant(start_.type, width) if width
                else context.cast(builder, args[3], sig.args[3], types.intp))
        return emit_view(context, builder, out, args[1], start_, builder.add(start_, size))

    return out(op, out, start, n), codegen


@intrinsic
def out_chunk(typingctx, op, out, lo, hi):
    """A chunk's part of a row output: ``out[lo:hi]``; for a reduction its values in the
    first chunk (lo == 0), nothing in the others."""
    if not isinstance(op, MarkerType):
        return None
    reduced = op.key_ in REDUCED

    def codegen(context, builder, sig, args):
        lo_, hi_ = (context.cast(builder, v, t, types.intp)
                    for v, t in zip(args[2:], sig.args[2:], strict=True))
        if reduced:
            size = context.make_array(out)(context, builder, args[1]).shape
            (size,) = cgutils.unpack_tuple(builder, size, 1)
            zero = ir.Constant(lo_.type, 0)
            first = builder.icmp_signed("==", lo_, zero)
            lo_, hi_ = zero, builder.select(first, size, zero)
        return emit_view(context, builder, out, args[1], lo_, hi_)

    return out(op, out, lo, hi), codegen


# ---------------------------------------------------------------------------------------
# generic loops over a segment (a 1-D contiguous slice)

TOTAL = Marker("total")  # ``seg_total`` gives ``seg_sum``
LANES = Marker("lanes")  # ``seg_total`` gives the sum with its last tree left undone


@njit(**INTERNAL)
def seg_sum(lanes, a, b, c):
    """The package's sum of ``invoke(lanes, a, b, c, i, k)`` (the vector of elements
    i .. i+k-1) over a segment of at most CHUNK elements, in float64."""
    return seg_total(TOTAL, lanes, a, b, c)


def seg_total(red, lanes, a, b, c):
    """``seg_sum`` (``red`` TOTAL), or, for LANES, the sum with its last tree left undone:
    (0.0 + the sums of the segment's blocks but the last, in order, in float64; the last
    block's lanes). ``seg_sum`` is head + float64(vsum(lanes)); a caller may take that
    tree together with other rows' (``_simd.vsum_rows``)."""


def _seg_total(red, lanes, a, b, c):
    head, last = seg_total(LANES, lanes, a, b, c)
    return head + np.float64(vsum(last))


def _seg_lanes(red, lanes, a, b, c):
    n = a.shape[0]
    last = (n - 1) // BLOCK * BLOCK if n else 0
    head = 0.0
    for lo in range(0, last, BLOCK):  # no iteration for a row of one block
        head += np.float64(vsum(block_lanes(lanes, a, b, c, lo, lo + BLOCK)))
    return head, block_lanes(lanes, a, b, c, last, n)


dispatch(seg_total, {TOTAL.key: _seg_total, LANES.key: _seg_lanes})


@njit(**INTERNAL)
def block_lanes(lanes, a, b, c, lo, hi):
    """The lanes of elements lo .. hi-1 (at most BLOCK): lane l adds the elements
    lo + l, lo + l + W, ... in order, from +0."""
    full = lo + (hi - lo) // W * W
    acc = vsplat(0.0, a)
    for i in range(lo, full, W):
        acc = vadd(acc, invoke(lanes, a, b, c, i, W))
    if full < hi:
        acc = vadd(acc, invoke(lanes, a, b, c, full, hi - full))
    return acc


@njit(**INTERNAL)
def seg_max(lanes, a, b, c):
    """The maximum of ``invoke(lanes, a, b, c, i, k)`` over a segment (padding lanes:
    -inf), NaN left out (``vmax_num``; -inf for a segment of NaN). Any order gives the same
    maximum."""
    return vmax_all(seg_max_lanes(lanes, a, b, c))


@njit(**INTERNAL)
def seg_max_lanes(lanes, a, b, c):
    """``seg_max`` before its last step: lanes whose maximum is the segment's."""
    n = a.shape[0]
    full = n // W * W
    acc = vsplat(NEG_INF, a)
    acc2 = acc  # two chains: a maximum does not depend on the order
    for i in range(0, full - W, 2 * W):
        acc = vmax_num(acc, invoke(lanes, a, b, c, i, W))
        acc2 = vmax_num(acc2, invoke(lanes, a, b, c, i + W, W))
    if (full // W) % 2:
        acc = vmax_num(acc, invoke(lanes, a, b, c, full - W, W))
    if full < n:
        acc2 = vmax_num(acc2, invoke(lanes, a, b, c, full, n - full))
    return vmax_num(acc, acc2)


@njit(**INTERNAL)
def seg_map(f, out, a, b, c, stream):
    """out = ``invoke(f, a, b, c, i, k)``, element-wise; ``stream``: the whole cache lines
    of ``out`` with non-temporal stores (see ``_vmem``; the caller fences), or None: never
    (that code is then not compiled at all). The values do not depend on which lanes a
    vector holds, so the stores may start at any element."""
    n = out.shape[0]
    if stream is not None:
        h = stream_head(out) if stream else -1
        if h >= 0:
            # one loop: the partial vectors up to the first line boundary (a line holds up
            # to two vectors: float16), then whole vectors streamed, then the last part
            i = 0
            while i < n:
                k = imin(W, imin(n - i, h - i)) if i < h else imin(W, n - i)
                v = invoke(f, a, b, c, i, k)
                if k == W and i >= h:
                    vstream(out, i, v)
                else:
                    vstore(out, i, k, v)
                i += k
            return
    full = n // W * W
    for i in range(0, full, W):
        vstore(out, i, W, invoke(f, a, b, c, i, W))
    if full < n:
        vstore(out, full, n - full, invoke(f, a, b, c, full, n - full))


# kernel functions: (marker, a, b, c, i, k) -> the vector for elements i .. i+k-1. In sums,
# the padding lanes (k .. W-1) give exactly +0; in maxima, -inf. ``w`` is a mask or None,
# ``wts`` weights or None (see ``valid``).

@kernel_fn
def _max_lanes(f, a, b, c, i, k):
    """x = a where valid (b: weights, c: mask), else -inf."""
    return keep(valid(b, c, i, k), vload(a, i, k, NEG_INF), NEG_INF)


@kernel_fn
def _exp_lanes(f, a, b, c, i, k):
    """(weight *) exp(x - shift) where valid, else +0, for x = a and c = (shift, w, wts);
    kept in ``b`` unless it is None."""
    shift, w, wts = c
    e = keep(valid(wts, w, i, k), weighed_exp_nonpos(vsub(vload(a, i, k, NEG_INF), shift),
                                                     wts, i, k), 0.0)
    if b is not None:
        vstore(b, i, k, e)
    return e


@kernel_fn
def _inf_lanes(f, a, b, c, i, k):
    """(weight *) inf at the valid +inf elements of x = a, NaN at its NaN (which the max
    pass may have left out), else +0, for a chunk whose max is +inf; c = (w, wts). Finite
    elements add nothing to such a sum."""
    w, wts = c
    x = vload(a, i, k, 0.0)
    e = vselect(veq(x, math.inf), weigh(vsplat(math.inf, a), wts, i, k), 0.0)
    return keep(valid(wts, w, i, k), vselect(veq(x, x), e, x), 0.0)


@kernel_fn
def _nan_lanes(f, a, b, c, i, k):
    """1 at the valid NaN elements of x = a (weights b, mask c), else +0."""
    x = vload(a, i, k, 0.0)
    return keep(valid(b, c, i, k), vselect(veq(x, x), vsplat(0.0, a), 1.0), 0.0)


@kernel_fn
def _count_lanes(f, a, b, c, i, k):
    """1 where mask c is set (NaN where x = a is NaN there: the max pass may have left it
    out), else 0 (zeros kept in ``b`` unless it is None)."""
    if b is not None:
        vstore(b, i, k, vsplat(0.0, b))
    x = vload(a, i, k, 0.0)
    return keep(valid(None, c, i, k), vselect(veq(x, x), 1.0, x), 0.0)


@kernel_fn
def _product_lanes(f, a, b, c, i, k):
    return keep(valid(None, c, i, k), vmul(vload(a, i, k, 0.0), vload(b, i, k, 0.0)), 0.0)


@kernel_fn
def _value_lanes(f, a, b, c, i, k):
    return keep(valid(None, c, i, k), vload(a, i, k, 0.0), 0.0)


@njit(**INTERNAL)
def stream_copy(out, src):
    """out = src (one storage type; values pass the compute type exactly) through the write
    phase's streamed loop (``seg_map``; the caller fences): the benchmark's copy line."""
    seg_map(_value_lanes, out, src, None, None, True)


@kernel_fn
def _softmax_lanes(f, a, b, c, i, k):
    """e * factor where valid, else 0, for c = (shift, factor, w): e as kept in ``b`` (0
    where not valid: the mask is not read again), or, when ``b`` is None (a float16
    output written directly: the chunk tasks, dask's segments; the row drivers stage
    float16 rows in float32), exp(a - shift) computed again by the same expression."""
    if b is None:
        e = vexp_nonpos(vsub(vload(a, i, k, NEG_INF), c[0]))
        return keep(valid(None, c[2], i, k), vmul(e, c[1]), 0.0)
    return vmul(vload(b, i, k, 0.0), c[1])  # factor is finite: 0 * factor = 0


@kernel_fn
def _log_softmax_lanes(f, a, b, c, i, k):
    """(x - m) - lse where valid, else -inf, for c = (m, lse, w). A run's row with a NaN
    max takes m = lse = NaN (``run_values``): its NaNs are one NaN (``vone_nan``), as the
    special rows' fill gives elsewhere, whichever NaN x held."""
    v = vsub(vsub(vload(a, i, k, 0.0), c[0]), c[1])
    return keep(valid(None, c[2], i, k), vone_nan(v), NEG_INF)


@kernel_fn
def _softmax_grad_lanes(f, a, b, c, i, k):
    """y * (dy - s) where valid, else 0, for c = (s, w). The gradients' NaNs are one NaN
    (``vone_nan``), in every kernel: inputs with NaNs of either sign gave outputs whose NaN
    signs depended on the driver."""
    g = vmul(vload(a, i, k, 0.0), vsub(vload(b, i, k, 0.0), c[0]))
    return keep(valid(None, c[1], i, k), vone_nan(g), 0.0)


@kernel_fn
def _log_softmax_grad_lanes(f, a, b, c, i, k):
    """dz - exp(z) * s where valid, else 0, for z = a, dz = b, c = (s, w)."""
    g = vsub(vload(b, i, k, 0.0), vmul(vexp(vload(a, i, k, 0.0)), c[0]))
    return keep(valid(None, c[1], i, k), vone_nan(g), 0.0)


@kernel_fn
def logsumexp_grad_lanes(f, a, b, c, i, k):
    """(weight *) exp(x - lse) * g where valid, else 0, for x = a, weights b,
    c = (lse, g, w)."""
    e = weighed_exp(vsub(vload(a, i, k, 0.0), c[0]), b, i, k)
    return keep(valid(b, c[2], i, k), vone_nan(vmul(e, c[1])), 0.0)


# ---------------------------------------------------------------------------------------
# the phases of each operation. a: x, y or z; b: dy or dz (a again for softmax and
# log_softmax; the weights or None for logsumexp); w: the mask or None; r: the row's given
# values or None (logsumexp_backward: (lse, g)).

# A chunk's statistics run in two parts: ``maxes``, the lanes of its max pass (or None for
# the operations without one), and ``sums``, the rest given that max. ``stats`` runs both
# for one chunk; ``_cpu_kernels.grouped_rows`` runs each part over a group of rows and takes
# the rows' last trees together (``_simd.vmax_rows``, ``vsum_rows``): the same bits.

def maxes(op, a, b, w, out):
    """One chunk's max pass: lanes whose maximum is the chunk's (``seg_max_lanes``), or
    None for an operation whose statistics take no max (the gradients)."""


def sums(op, a, b, w, out, cm, red):
    """One chunk's statistics given the maximum ``cm`` of its ``maxes`` lanes (compute type;
    None without): (max in float64, sum), the sum as ``red`` says (``seg_total``)."""


@njit(**INTERNAL)
def stats(op, a, b, w, out, stream):
    """One chunk: (max, sum) in float64; ``stream``: the write phase's (the output is large)."""
    return sums(op, a, b, w, out, lanes_max(maxes(op, a, b, w, out)), TOTAL)


def lanes_max(v):
    """The maximum of lanes ``v`` (compute type), or None for None."""


@overload(lanes_max, jit_options=INLINE)
def _lanes_max_impl(v):
    if isinstance(v, types.NoneType):
        return lambda v: None
    return lambda v: vmax_all(v)


def finish(op, cmax, csum, r):
    """One row: (m, t) from the chunks' statistics."""


def finish_one(op, cmax, csum, r):
    """``finish`` for a row of one chunk, its statistics given as two numbers: the same
    (m, t), without the loop over chunks (compiled for nothing where no row has two:
    0.14-0.19 s of a first grouped softmax call)."""


def write(op, a, b, w, out, cmax, m, t, stream):
    """One chunk: the outputs; ``stream``: with non-temporal stores where the statistics
    kept nothing in ``out`` (``seg_map``, ``may_stream``; rows of NaN, 0 or -inf, the
    rare rows, store plainly). A mask is read again (``_exp_sums``)."""


def _exp_maxes(op, a, b, w, out):
    return seg_max_lanes(_max_lanes, a, None, w)


def _exp_sums(op, a, b, w, out, cm, red):
    """(chunk max, sum of exp(x - chunk max)) over the valid elements; softmax keeps the
    exps where ``kept_exps`` says. A chunk of -inf is shifted by 0
    instead: e = exp(-inf) = 0, and it adds 0 to the row; with a mask its sum counts the
    valid elements instead (a row whose max is -inf then tells "no valid element", sum 0,
    from "valid elements all -inf", sum > 0).

    With a mask, every pass reads x and the mask (the later ones from the cache), as the
    unmasked passes read x: the excluded elements take the identity of each pass, and their
    outputs the value of excluded elements. Keeping the masked row (-inf where excluded)
    in ``out`` for the later passes instead measured slower for softmax and, for rows of
    1024 elements or more, for log_softmax: float32, 2-core Zen 4, 2^24 elements, 2
    threads, masked ÷ unmasked time at N = 32 / 1024: softmax 1.05 / 1.04-1.11x against
    1.17-1.19 / 1.13-1.24x; log_softmax re-reading ÷ keeping, median of 15 alternating
    rounds, 0.75-0.86 at N = 1024, 0.87 / 0.91 at 4096 / 16384 (also streamed: ``out`` is
    not in the cache), 1.00-1.06 at 32-256. Same bits either way: an excluded element adds
    +0."""
    es = kept_exps(op, b, out)
    if w is not None and cm == NEG_INF:
        return told_max(cm, seg_total(red, _count_lanes, a, es, w))
    shift = cm if cm != NEG_INF else to_compute(0.0, a)
    return told_max(cm, seg_total(red, _exp_lanes, a, es, (shift, w, None)))


def told_max(cm, s):
    """(chunk max in float64, ``s``): a chunk's statistics from its max pass's ``cm`` and
    its sum ``s`` (``seg_total``'s, either form). A NaN sum takes NaN for the max: the
    sum's terms are NaN at the NaN elements the max pass may have left out (``vmax_num``),
    and a +inf max gives NaN exps or terms too, whose row is NaN all the same (logsumexp's
    +inf chunks give NaN only where there is a NaN, ``_inf_lanes``)."""


@overload(told_max, jit_options=INLINE)
def _told_max_impl(cm, s):
    if isinstance(s, types.BaseTuple):  # (head, the last block's lanes)
        def lanes(cm, s):
            nan = s[0] != s[0] or not vall(veq(s[1], s[1]))
            return (NAN if nan else np.float64(cm)), s
        return lanes
    return lambda cm, s: ((NAN if s != s else np.float64(cm)), s)


def _lse_maxes(op, a, b, w, out):
    return seg_max_lanes(_max_lanes, a, b, w)


def _lse_sums(op, a, b, w, out, cm, red):
    """As ``_exp_sums`` with the weights ``b`` (or None) and no count: (chunk max, sum of
    weight * exp(x - chunk max)) over the valid elements. A chunk whose max is +inf sums
    weight * inf over its +inf elements: +-inf, or NaN where the weights there differ in
    sign (or one is NaN). With weights a NaN sum may come from a weight alone (NaN, or
    inf times an exp that underflowed): the chunk's max is NaN only where one of its valid
    elements is, so that a row whose max is +inf in another chunk can leave this chunk
    out (``_max_and_total``), as it leaves out its own finite elements."""
    if cm == math.inf:
        s = seg_total(red, _inf_lanes, a, None, (w, b))
    else:
        shift = cm if cm != NEG_INF else to_compute(0.0, a)
        s = seg_total(red, _exp_lanes, a, None, (shift, w, b))
    cmax, s = told_max(cm, s)
    if b is None or cmax == cmax or seg_sum(_nan_lanes, a, b, w) > 0.0:
        return cmax, s
    return np.float64(cm), s  # the rare path: a NaN sum, read again


def _max_and_total(op, cmax, csum, r):
    """Row max and sum of exp(x - row max) from the chunks' statistics, in chunk order;
    log_softmax takes the log of the sum (``unlogged``). A chunk whose max is the row's is
    scaled by 1 (exp(0) is exactly 1; also for a max of +-inf, where exp(m - m) would be
    NaN). In a row whose max is +inf the other chunks are left out: logsumexp sums the
    +inf elements alone there (``_inf_lanes``), whatever the weights of the finite ones
    (a softmax row of +inf max is NaN anyway). A chunk's sum is a weight to its scale: a
    large one lifts a scale below the normal range (``_vmath._LIFT``; a softmax row's
    total, at least 1, is the same either way)."""
    m = cmax[0]
    for c in range(1, cmax.shape[0]):
        m = vmax(m, cmax[c])
    if cmax.shape[0] == 1:
        total = csum[0]  # 0.0 + csum[0] * 1 == csum[0]
    else:
        total = 0.0
        for c in range(cmax.shape[0]):
            if cmax[c] == m:
                total += csum[c]
            elif m != math.inf:
                total += vexp_nonpos_weighted(cmax[c] - m, csum[c])
    return finish_one(op, m, total, r)  # log_softmax's log


def _max_and_total_one(op, cmax, csum, r):
    if same(op, LOG_SOFTMAX):
        return cmax, vlog(csum)
    return cmax, csum


@njit(inline="always", **INTERNAL)
def unlogged(op):
    """The marker whose ``finish`` gives what ``op``'s gives, but a log_softmax row's sum
    instead of its log (softmax's): ``log_sums`` then takes the logs of a group's rows."""
    return pick(op, LOG_SOFTMAX, SOFTMAX, op)


def log_sums(op, t, k):
    """log_softmax: t[:k] = log(t[:k]), the ``unlogged`` sums of a group's rows, as lanes of
    one vector. A log alone is a ~60-cycle chain (a division among ~25 dependent steps);
    one per row cost a third of a 32-element row's time. A lane's log is the scalar's bits
    (``_vmath``). Other operations: nothing."""


@overload(log_sums, jit_options=INLINE)
def _log_sums_impl(op, t, k):
    if op.key_ != LOG_SOFTMAX.key:
        return lambda op, t, k: None

    def logs(op, t, k):
        for i in range(0, k, W):
            j = imin(W, k - i)
            vstore(t, i, j, vlog(vload(t, i, j, 1.0)))
    return logs


@njit(inline="always", **INTERNAL)
def _nan_row(op, m, t, w):
    """Whether a row's valid elements give NaN: a max of NaN or +inf, or valid elements
    that are all -inf (without a mask, a max of -inf; with one, a count t > 0, given as
    ``op``'s sums are: log_softmax's logged, -inf for a count of 0)."""
    if NEG_INF < m < math.inf:
        return False
    return not (m == NEG_INF and w is not None and t == pick(op, LOG_SOFTMAX, NEG_INF, 0.0))


@njit(**INTERNAL)
def special_fill(op, m, t, w, out):
    """A softmax or log_softmax row whose max ``m`` over its valid elements is not finite
    (``t``: the row's sum, or its log): NaN at its valid elements where ``_nan_row`` says
    so, else the value of excluded elements (0; log_softmax: -inf); that value at the
    excluded ones."""
    other = pick(op, LOG_SOFTMAX, NEG_INF, 0.0)
    v = vsplat(NAN if _nan_row(op, m, t, w) else other, out)
    # a loop of its own, not ``seg_map``: a seg_map specialization of its own took ~0.1 s of
    # every first softmax or log_softmax call's compile, for rows that are rarely there
    n = out.shape[0]
    for i in range(0, n, W):
        k = imin(W, n - i)
        vstore(out, i, k, keep(valid(None, w, i, k), v, other))


def may_stream(stream, es):
    """softmax's ``stream`` where it keeps no exps (``es`` None: they are computed again),
    else None: exps kept in ``out`` put its lines in the cache, owned, already, and
    streaming them gains nothing. Where the exps are kept elsewhere (float16's staging
    rows) plain stores measured faster too: float16, 2^24 elements, N = 1024, 2 threads,
    1.25x the time streamed."""


@overload(may_stream, jit_options=INLINE)
def _may_stream_impl(stream, es):
    if isinstance(es, types.NoneType):
        return lambda stream, es: stream
    return lambda stream, es: None


def _kept_choice(op, b, out):
    """``kept_exps``'s choice from numba types: 1 (``b``), 2 (``out``) or None."""
    if op.key_ == SOFTMAX.key:
        if holds_exact(out):
            return 2
        if holds_exact(b):
            return 1
    return None


@intrinsic
def kept_exps(typingctx, op, b, out):
    """Where softmax keeps its exps from the sum's pass for the write pass: ``out`` where it
    stores the compute type; for a float16 ``out``, ``b`` where it is a compute-type row
    (the row drivers' staging: ``b`` is otherwise x itself for softmax); else None (the
    write pass computes them again). Other operations: None. Chosen when compiling."""
    if not isinstance(op, MarkerType):
        return None
    chosen = _kept_choice(op, b, out)
    if chosen is None:
        return types.none(op, b, out), lambda context, builder, sig, args: (
            context.get_dummy_value())

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, sig.return_type, args[chosen])

    return (b, out)[chosen - 1](op, b, out), codegen


def _softmax_write(op, a, b, w, out, cmax, m, t, stream):
    """exp(x - chunk max) * (exp(chunk max - m) / t) at valid elements, 0 elsewhere. A row
    whose max is NaN or +inf, or whose valid elements are all -inf, is NaN (at its valid
    elements); a row without valid elements is 0."""
    if not NEG_INF < m < math.inf:
        special_fill(op, m, t, w, out)
    else:
        # exp(0) is exactly 1: the chunk holding the max (every one-chunk row) skips it
        scale = 1.0 if cmax == m else vexp_nonpos(cmax - m)
        factor = to_compute(scale / t, a)
        shift = to_compute(cmax if cmax != NEG_INF else 0.0, a)  # as ``_exp_sums``
        es = kept_exps(op, b, out)
        seg_map(_softmax_lanes, out, a, es, (shift, factor, w), may_stream(stream, es))


def _log_softmax_write(op, a, b, w, out, cmax, m, t, stream):
    """(x - m) - lse at valid elements, -inf elsewhere, lse = t; NaN rows as softmax, a
    row without valid elements -inf."""
    if not NEG_INF < m < math.inf:
        special_fill(op, m, t, w, out)
    else:
        seg_map(_log_softmax_lanes, out, a, None, (to_compute(m, a), to_compute(t, a), w),
                stream)


def _logsumexp_write(op, a, b, w, out, cmax, m, t, stream):
    """The row's value m + log|t| (and the sign of t) from the first chunk: NaN for t < 0
    without the sign, -inf for t = 0 (no valid element, or terms that cancel). A NaN value
    is ``NAN`` itself, whichever NaN the input held (the special rows' pattern)."""
    if out.shape[0]:
        if m != m:  # a NaN max (``told_max``): the row NaN
            t = NAN
        value = m + vlog(abs(t))
        if value != value:
            value = NAN
        if same(op, LOGSUMEXP_SIGN):
            sign = 1.0 if t > 0 else (-1.0 if t < 0 else (0.0 if t == 0 else NAN))
            vstore(out, 0, 2, vwith_lane(vsplat(value, out), 1, sign))
        else:
            vstore(out, 0, 1, vsplat(NAN if t < 0 else value, out))


def _no_maxes(op, a, b, w, out):
    return None


def _softmax_grad_sums(op, a, b, w, out, cm, red):
    return 0.0, seg_total(red, _product_lanes, a, b, w)


def _log_softmax_grad_sums(op, a, b, w, out, cm, red):
    return 0.0, seg_total(red, _value_lanes, b, None, w)


def _no_sums(op, a, b, w, out, cm, red):
    return 0.0, seg_total(red, _value_lanes, seg(a, 0, 0), None, None)  # 0.0


def _sum_finish(op, cmax, csum, r):
    total = 0.0
    for c in range(csum.shape[0]):
        total += csum[c]
    return 0.0, total


def _sum_finish_one(op, cmax, csum, r):
    return 0.0, 0.0 + csum  # as ``_sum_finish``: 0.0 + -0.0 is +0.0


def _given_finish(op, cmax, csum, r):
    return r[0], r[1]


def grad_lanes(op):
    """The element-wise kernel function of gradient ``op``, given its row's sum."""


@overload(grad_lanes, jit_options=INLINE)
def _grad_lanes_impl(op):
    return lambda op: pick(op, SOFTMAX_BACKWARD, _softmax_grad_lanes, _log_softmax_grad_lanes)


def _grad_write(op, a, b, w, out, cmax, m, t, stream):
    lanes = grad_lanes(op)
    seg_map(lanes, out, a, b, (to_compute(t, a), w), stream)


@njit(**INTERNAL)
def stream_rows(op, a, b, w, out, n, st, ahead):
    """Gradient rows of n elements (W <= n <= CHUNK) laid end to end in ``a``, ``b`` and
    ``out``, out's elements at addresses a multiple of their size, and their mask ``w``
    (``run_masks``): each row's sum as ``row`` takes it (``st`` as there), the outputs
    written as one run (``run_row``; the caller fences). The inputs' rows are fetched
    ``ahead`` rows ahead (0: not)."""
    done = stream_head(out)
    p_last = run_values(op, a, 0.0, 0.0)
    size = out.shape[0]
    for r0 in range(0, size, n):
        r1 = r0 + n
        if ahead > 0 and r0 + ahead * n < size:
            fetch_read(a, r0 + ahead * n, r1 + ahead * n)
            fetch_read(b, r0 + ahead * n, r1 + ahead * n)
        st[0, 0], st[1, 0] = stats(op, seg(a, r0, r1), seg(b, r0, r1), run_masks(w, r0, n)[0],
                                   seg(out, r0, r1), True)
        m, t = finish(op, st[0], st[1], None)
        p = run_values(op, a, m, t)
        done = run_row(op, a, b, w, out, r0, n, p, p_last, done)
        p_last = p
    run_end(op, a, b, w, out, n, p_last, done)


def run_values(op, a, m, t):
    """A run row's two values for its lanes, in x's compute type, from its ``finish``
    (m, t): a gradient's sum (twice), log_softmax's max and log-sum. A log_softmax row
    whose max is not finite takes NaN for both: NaN at its valid elements (``_nan_row``;
    a row without valid elements has only excluded ones, -inf)."""


@overload(run_values, jit_options=INLINE)
def _run_values_impl(op, a, m, t):
    if op.key_ == LOG_SOFTMAX.key:
        def logged(op, a, m, t):
            if not NEG_INF < m < math.inf:
                return to_compute(NAN, a), to_compute(NAN, a)
            return to_compute(m, a), to_compute(t, a)
        return logged
    return lambda op, a, m, t: (to_compute(t, a), to_compute(t, a))


def run_lanes(op, p, w):
    """A run row's element-wise kernel function and its ``c``, from the row's values ``p``
    (``run_values``: scalars, or vectors across two rows) and mask ``w``."""


@overload(run_lanes, jit_options=INLINE)
def _run_lanes_impl(op, p, w):
    if op.key_ == LOG_SOFTMAX.key:
        return lambda op, p, w: (_log_softmax_lanes, (p[0], p[1], w))
    return lambda op, p, w: (grad_lanes(op), (p[0], w))


def run_masks(w, r0, n):
    """A run's masks for row r0: (the row's, indexed from r0; rows r0-n and r0's, indexed
    from r0-n, r0 > 0), for ``w``: None (no mask), the rows' mask laid out as they are, or
    (one row's mask for every row, that row twice)."""


@overload(run_masks, jit_options=INLINE)
def _run_masks_impl(w, r0, n):
    if isinstance(w, types.NoneType):
        return lambda w, r0, n: (None, None)
    if isinstance(w, types.BaseTuple):
        return lambda w, r0, n: w
    return lambda w, r0, n: (seg(w, r0, r0 + n), seg(w, imax(r0 - n, 0), r0 + n))


@njit(**INTERNAL)
def run_row(op, a, b, w, out, r0, n, p, p_last, done):
    """The outputs of row r0 .. r0+n-1 (n >= W; its values ``p``, the row before's
    ``p_last``: ``run_values``) of rows laid end to end in ``a``, ``b`` and ``out`` (their
    mask ``w`` as ``run_masks`` takes it), written as one run: whole aligned vectors with
    non-temporal stores from the first aligned output on (``done`` for row 0:
    ``stream_head``), the outputs before it plainly; returns where the outputs written end
    (``run_end`` writes the last ones). A vector across two rows takes each lane's value
    with its own row's values and mask: the values of a row at a time. Rows streamed one
    at a time (``write``) store their first and last partial vectors plainly, and a line
    two rows share is written twice: streamed that way, rows under 4 KiB measured slower
    than with plain stores."""
    own, pair = run_masks(w, r0, n)
    ra, rb = seg(a, r0, r0 + n), seg(b, r0, r0 + n)
    f, c = run_lanes(op, p, own)
    if r0 == 0:  # the outputs before the first aligned one (float16: up to 2 vectors)
        for i in range(0, done, W):
            k = imin(W, done - i)
            vstore(out, i, k, invoke(f, ra, rb, c, i, k))
    elif done < r0:  # the vector holding the last row's last elements and this row's first
        below = vbelow(r0 - done)
        across = (vselect(below, vsplat(p_last[0], a), p[0]),
                  vselect(below, vsplat(p_last[1], a), p[1]))
        at = r0 - n
        fa, ca = run_lanes(op, across, pair)
        vstream(out, done, invoke(fa, seg(a, at, r0 + n), seg(b, at, r0 + n), ca, done - at,
                                  W))
        done += W
    end = done + (r0 + n - done) // W * W
    for i in range(done, end, W):
        vstream(out, i, invoke(f, ra, rb, c, i - r0, W))
    return end


@njit(**INTERNAL)
def run_end(op, a, b, w, out, n, p_last, done):
    """The outputs of a run (``run_row``) from ``done`` on: the last row's (values
    ``p_last``), fewer than a vector, plainly."""
    total = out.shape[0]
    if done < total:
        r0 = total - n
        f, c = run_lanes(op, p_last, run_masks(w, r0, n)[0])
        vstore(out, done, total - done, invoke(f, seg(a, r0, total), seg(b, r0, total), c,
                                                done - r0, total - done))


def _logsumexp_grad_write(op, a, b, w, out, cmax, m, t, stream):
    # plain stores: streamed, this gradient ran 0.55-1.25x as fast (mostly below 1; float32,
    # 2^24 elements, N = 512-16384, 2 threads), where the others gained
    seg_map(logsumexp_grad_lanes, out, a, b, (to_compute(m, a), to_compute(t, a), w),
            None)


class RowPhases(NamedTuple):
    """An operation's functions for the row kernel's phase stubs (``maxes`` ... ``write``)."""

    maxes: object
    sums: object
    finish: object
    finish_one: object
    write: object


# the forward operations, logsumexp and the gradients each share their phases but for the
# ones named
_EXP = RowPhases(_exp_maxes, _exp_sums, _max_and_total, _max_and_total_one, _softmax_write)
_LSE = _EXP._replace(maxes=_lse_maxes, sums=_lse_sums, write=_logsumexp_write)
_GRAD = RowPhases(_no_maxes, _softmax_grad_sums, _sum_finish, _sum_finish_one, _grad_write)
_PHASES = {
    "softmax": _EXP,
    "log_softmax": _EXP._replace(write=_log_softmax_write),
    "softmax_split": _EXP,
    "logsumexp": _LSE,
    "logsumexp_sign": _LSE,
    "softmax_backward": _GRAD,
    "log_softmax_backward": _GRAD._replace(sums=_log_softmax_grad_sums),
    "logsumexp_backward": RowPhases(_no_maxes, _no_sums, _given_finish, _given_finish,
                                    _logsumexp_grad_write),
}
# the operations whose statistics take a max pass
MAX_OPS = frozenset(key for key, row in _PHASES.items() if row.maxes is not _no_maxes)
dispatch_all(RowPhases(maxes, sums, finish, finish_one, write), _PHASES)


@njit(inline="always", **INTERNAL)
def row(op, a, b, w, out, st, r, stream):
    """One row: ``a`` (x, y or z), ``b`` (dy or dz; ``a`` again for softmax and
    log_softmax, or for float16 softmax a float32 row to keep its exps in, ``kept_exps``;
    weights or None for logsumexp), ``w`` (mask or None), ``out`` (the row's
    output, ``out_row``), ``st``, a (2, number of chunks) float64 scratch, ``r``
    (the row's given values or None) and ``stream`` (see ``write``)."""
    n = a.shape[0]
    nc = st.shape[1]
    for c in range(nc):
        lo, hi = c * CHUNK, imin(n, (c + 1) * CHUNK)
        st[0, c], st[1, c] = stats(op, seg(a, lo, hi), seg(b, lo, hi), seg(w, lo, hi),
                                   out_chunk(op, out, lo, hi), stream)
    m, t = finish(op, st[0], st[1], r)
    for c in range(nc):
        lo, hi = c * CHUNK, imin(n, (c + 1) * CHUNK)
        write(op, seg(a, lo, hi), seg(b, lo, hi), seg(w, lo, hi), out_chunk(op, out, lo, hi),
              st[0, c], m, t, stream)
