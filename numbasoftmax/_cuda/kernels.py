"""numba.cuda kernels of the six ops, as factories: ``build(spec, primitives)`` returns the
Python function of one specialization, which ``launch.py`` compiles when first needed.

A call is M rows of N elements; row r of input x is x[r*sx : r*sx + N] of a flat buffer.
Strategies (chosen in ``launch.plan``), with the global-memory traffic of a row (forward:
read X, write Y; gradients: read Y and dY, write dX):

``rows``   short and medium rows: G threads per row (a power of two up to 1024) hold it
           in registers (K packs each), U = 2 rows per group and step when a row is at most
           8 values a thread of a warp or less; butterfly-shuffle reductions in each warp,
           then the warps' results through shared memory. Each input read once.
``smem``   longer rows: a block per row, cached in shared memory in the compute type;
           each input read once.
``long``   long rows: a block per row, online max and rescaled sum (Milakov & Gimelshein
           2018), then a pass that writes: forward reads X twice.
``split``  long rows, too few to fill the GPU: C chunks per row, a block each; one kernel
           writes each chunk's statistics, a second combines them in chunk order and
           writes its chunk. Traffic as ``long``.

One body per strategy serves every op (formulas in ``_op_math``). logsumexp (``rows``,
``long``, ``split``; X and its weights read once) writes a value (and sign) per row instead
of the write pass; its gradient (``rows``, ``long``) is the write pass alone, from each
row's (lse, dlse, sign) in the workspace: X (and the weights) read once, dX written. Packs
are V = 16 bytes / itemsize elements (``ld.global.v4``) where every row start is 16-byte
aligned and N a multiple of V, else single elements. Arithmetic is float32 (float64 for
float64 data), long/split sums float64; non-finite rules are the CPU path's. Every
reduction has a fixed order (butterfly, warps in order, chunks in order), so results are
deterministic for a shape, dtype and strategy. The simulator runs the same source with
``sim.py``'s primitives.
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple

from numba import cuda, types

from .._ops import FORWARD, OPS
from .._vmath import lift_constants

NEG_INF, INF, NAN = -math.inf, math.inf, math.nan
F64 = types.float64

# One specialization. kind: storage ("f4", "f8", "f2", "bf16"); V: pack width; G, K:
# threads per row and packs per thread (rows); B: block size; U: rows per group and step
# (rows), packs loaded per step (smem, long, split); src: the inputs' storage kind when it
# is not ``kind`` (``dtype=``: read as if cast to ``kind``, single elements), else None;
# mask: a ``where=`` mask is read; weights: logsumexp (or its gradient) reads weights
# (``b=``) as its second input; signed: logsumexp writes each row's sign after its value,
# its gradient reads it.
Spec = namedtuple("Spec", "strategy op kind V G K B U src mask weights signed",
                  defaults=(None, False, False, False))

# The device functions the kernels are made of (intrinsics.py on a GPU, sim.py under the
# simulator). ld/st(arr, i[, v]): one element, converted; ldv/stv(arr, i, buf, off): a
# 16-byte pack of V elements; begin():
# per-thread set-up; shfl_xor (GPU) or group_reduce(v, width, xch, op) (simulator);
# at(arr, i) / put(arr, i, v): arr[i] read / written with an index that is never negative
# (no wraparound code).
Primitives = namedtuple("Primitives", "sim ctype ld st ldv stv exp log begin shfl_xor "
                                      "group_reduce at put")

# fwd: a forward op; lse: logsumexp (a value per row is written); given: its gradient (row
# statistics read from the workspace); load_b: the second input is read (the gradients'
# upstream gradient, logsumexp's weights); drop: zero weights are excluded; nv: float64
# values per row in the workspace
Flags = namedtuple("Flags", "fwd lse given load_b drop nv")


def _flags(spec):
    fwd, lse = spec.op in FORWARD, spec.op == "logsumexp"
    load_b = spec.weights if OPS[spec.op].forward == "logsumexp" else not fwd
    return Flags(fwd, lse, spec.op == "logsumexp_backward", load_b, lse and spec.weights,
                 3 if spec.signed else 2)


def _device(sim):
    return (lambda f: f) if sim else cuda.jit(device=True, forceinline=True)


# ---------------------------------------------------------------------------------------
# building blocks of every strategy, made once per primitives (storage kind) and op, so
# that numba compiles each device function once per process, not once per kernel

Reductions = namedtuple("Reductions", "fmax group_max group_sum block_max block_sum")
OpMath = namedtuple("OpMath", "term factor value weighted")
Packs = namedtuple("Packs", "load store elem")
Masking = namedtuple("Masking", "row_base hide reveal pad drop_zero_weights")


@functools.cache
def _reductions(P):
    """Reductions: fmax, and group_*(v, width, xch): over aligned groups of ``width``
    threads, every thread gets the result: a butterfly over each warp's lanes (of the
    group, up to 32), then for groups of several warps their results in warp order (through
    ``xch``, a shared array of a value per warp, between two barriers: every thread of the
    block must run it); block_*(v, identity, red, xch): over the block (blockDim.x a
    multiple of 32), each warp, then the warps' results in warp order."""
    dev = _device(P.sim)
    shfl_xor = P.shfl_xor

    @dev
    def fmax(a, b):
        if a > b or a != a:  # NaN-propagating maximum (fmaxf would drop NaN)
            return a
        return b

    @dev
    def add(a, b):
        return a + b

    def group(combine):
        if P.sim:  # the simulator's exchange: the same order, 2 barriers per reduction
            return lambda v, width, xch: P.group_reduce(v, width, xch, combine)

        @dev
        def reduce(v, width, xch):
            off = min(width, 32) // 2
            while off > 0:
                v = combine(v, shfl_xor(v, off))
                off //= 2
            if width > 32:
                t = cuda.threadIdx.x
                cuda.syncthreads()  # the group's last reduction has read xch
                if t % 32 == 0:
                    xch[t >> 5] = v
                cuda.syncthreads()
                first = t // width * (width >> 5)
                v = xch[first]
                for k in range(1, width >> 5):
                    v = combine(v, xch[first + k])
            return v
        return reduce

    def block_reduction(group):
        @dev
        def block(v, identity, red, xch):
            v = group(v, 32, xch)
            t = cuda.threadIdx.x
            lane = t & 31
            if lane == 0:
                red[t >> 5] = v
            cuda.syncthreads()
            r = identity
            if lane < (cuda.blockDim.x >> 5):
                r = red[lane]
            r = group(r, 32, xch)
            cuda.syncthreads()
            return r
        return block

    group_max, group_sum = group(fmax), group(add)
    return Reductions(fmax, group_max, group_sum, block_reduction(group_max),
                      block_reduction(group_sum))


@functools.cache
def _op_math(P, op, weights=False):
    """OpMath: the per-element formulas of one op (and ``weighted(d, exp(d), w)``, the CPU's
    w * exp(d) with a large weight lifting a term below the normal range). A row's sum is of
    ``term(a, b, mx)``; the sum (compute type, or float64 in long rows) gives the row's
    ``factor``; the output element is ``value(a, b, mx, factor)``. Forward: a = b = x, mx =
    the row's max; gradients: a = y (or z), b = dy (or dz), mx unused. logsumexp: a = x, b
    = its weight; its gradient: mx = the row's lse, factor = its dlse (times its sign)."""
    dev = _device(P.sim)
    ctype, exp, log = P.ctype, P.exp, P.log
    FWD = op in FORWARD
    LOG = OPS[op].forward == "log_softmax"
    LSE = OPS[op].forward == "logsumexp"
    W = weights
    # the CPU's lift of weighted terms below the normal range (``_vmath._LIFT``)
    LO, HI_PART, LO_PART, SCALE, TINY = (ctype(c) for c in lift_constants(ctype))

    @dev
    def weighted(d, t, b):
        """b * exp(d), t = exp(d): below the range, lifted (an infinite weight on a finite
        element gives that infinity)."""
        if d < LO:
            if d != ctype(NEG_INF) and (b == ctype(INF) or b == ctype(NEG_INF)):
                return b
            lifted = (b * SCALE) * exp((d + HI_PART) + LO_PART)
            if abs(lifted) >= TINY:
                return lifted
        return b * t

    @dev
    def term(a, b, mx):
        if LSE:
            # a row whose max is +inf sums its +inf terms (so that weights of both signs
            # give NaN); a row of -inf (or nothing) sums exp(-inf) = 0 from a shift of 0
            # (its finite elements add 0, whatever their weight)
            if mx == ctype(INF):
                if a != ctype(INF):
                    return ctype(0.0)
                t = ctype(INF)
                if W:
                    return b * t
                return t
            d = a - (mx if mx != ctype(NEG_INF) else ctype(0.0))
            if W:
                return weighted(d, exp(d), b)
            return exp(d)
        if FWD:
            return exp(a - mx)
        if LOG:
            return b
        return a * b

    @dev
    def factor(s):
        if FWD:
            if LOG:
                return ctype(log(s))
            return ctype(ctype(1.0) / s)
        return ctype(s)

    @dev
    def value(a, b, mx, f):
        if LSE:  # the gradient; a zero weight excludes the element
            if W:
                if b == ctype(0.0):
                    return ctype(0.0)
                return weighted(a - mx, exp(a - mx), b) * f
            return exp(a - mx) * f
        if FWD:
            if LOG:
                return (a - mx) - f
            return exp(a - mx) * f
        if LOG:
            return b - exp(a) * f
        return a * (b - f)

    return OpMath(term, factor, value, weighted)


@functools.cache
def _lse_store(P, signed):
    """``put(out, i, mx, s)``: logsumexp's result for a row of max mx and sum s at out[i]:
    mx + log|s| (NaN for a negative sum), or with ``signed`` that value and the sign of s
    (1, -1, 0 or NaN) at out[i + 1]."""
    dev = _device(P.sim)
    ctype, log, st = P.ctype, P.log, P.st

    @dev
    def put(out, i, mx, s):
        v = ctype(mx + log(abs(s)))
        if s > 0:
            sign = ctype(1.0)
        elif s < 0:
            sign = ctype(-1.0)
            if not signed:
                v = ctype(NAN)
        elif s == 0:
            sign = ctype(0.0)
        else:
            sign = ctype(NAN)
        st(out, i, v)
        if signed:
            st(out, i + 1, sign)

    return put


@functools.cache
def _packs(P, V):
    """Packs: ``load(arr, i, buf, o)`` converts the pack arr[i:i+V] into a per-thread
    buffer's buf[o:o+V], ``store`` the reverse; ``elem(arr, i)`` is arr[i] as it is."""
    dev = _device(P.sim)
    ld, st, at = P.ld, P.st, P.at

    if V > 1:  # 16-byte packs: the vector primitives themselves
        return Packs(P.ldv, P.stv, at)

    @dev
    def load(arr, i, buf, o):
        buf[o] = ld(arr, i)

    @dev
    def store(arr, i, buf, o):
        st(arr, i, buf[o])

    return Packs(load, store, at)


NO_MASK = (1, 0, 1, 0, 1, 0)  # the mask dims of unmasked kernels: every row at offset 0


@functools.cache
def _masking(P, op, V, second=False):
    """Masking of excluded elements: ``where=``
    masks (uint8, 0 = excluded), padding, zero weights. ``row_base(row, wd)``: the byte
    offset of a row's mask, wd holding three (size, byte stride) pairs as
    ``_layout.MaskRows.dims`` (padded with (1, 0)); column c at base + c * wn (wn 0: one
    value per row). ``hide(w, wb, wn, col, bufa, bufb, o)``: a pack's excluded elements
    become the first reduction's identity (forward: -inf, so that exp adds +0; gradients:
    0), and 0 in the second input where it is read (``second``); ``pad``: a whole pack
    (past a row's end); ``drop_zero_weights`` (logsumexp); ``reveal(w, wb, wn, col, buf,
    o)``: their output becomes 0 (log_softmax: -inf), whatever the row's statistics."""
    dev = _device(P.sim)
    ctype = P.ctype
    PAD = NEG_INF if op in FORWARD else 0.0
    OUT = NEG_INF if op == "log_softmax" else 0.0

    @dev
    def row_base(row, wd):
        q = row
        off = 0
        for k in range(3):
            size, st = wd[2 * k], wd[2 * k + 1]
            if size == 0:  # the rows' outermost axis: no modulo
                off += q * st
                q = 0
            else:
                off += (q % size) * st
                q //= size
        return off

    @dev
    def exclude(bufa, bufb, i):
        bufa[i] = ctype(PAD)
        if second:
            bufb[i] = ctype(0.0)

    @dev
    def hide(w, wb, wn, col, bufa, bufb, o):
        for v in range(V):
            if w[wb + (col + v) * wn] == 0:
                exclude(bufa, bufb, o + v)

    @dev
    def pad(bufa, bufb, o):
        for v in range(V):
            exclude(bufa, bufb, o + v)

    @dev
    def drop_zero_weights(bufa, bufb, o):
        for v in range(V):
            if bufb[o + v] == ctype(0.0):
                bufa[o + v] = ctype(NEG_INF)

    @dev
    def reveal(w, wb, wn, col, buf, o):
        for v in range(V):
            if w[wb + (col + v) * wn] == 0:
                buf[o + v] = ctype(OUT)

    return Masking(row_base, hide, reveal, pad, drop_zero_weights)


def _parts(P, spec):
    """The building blocks of a strategy's kernel: reductions, op math, packs, masking."""
    return (_reductions(P), _op_math(P, spec.op, spec.weights), _packs(P, spec.V),
            _masking(P, spec.op, spec.V, _flags(spec).load_b))


# ---------------------------------------------------------------------------------------
# Each strategy returns (body, items, dtype): the kernel body (a, sa, b, sb, out, so, ws,
# m, n, C, L, w, wn, wd, ba, bb), its per-thread buffers ba, bb: ``items`` of ``dtype``.
# short and medium rows: a group of G threads per row, the row in registers

def _rows(P, spec):
    ((fmax, group_max, group_sum, _, _), (term, factor, value, _), (load, store, _),
     (row_base, hide, reveal, pad, drop_zero_weights)) = _parts(P, spec)
    FWD, LSE, GIVEN, LOAD_B, DROP, NV = _flags(spec)
    MASK, V, G, K, B, U = spec.mask, spec.V, spec.G, spec.K, spec.B, spec.U
    ctype, put = P.ctype, _lse_store(P, spec.signed)
    KEEP_E = spec.op == "softmax"  # exp(x - max) stays in the buffer for the last pass
    KV = K * V
    GPB = B // G  # groups per block
    RPB = GPB * U  # rows per block and step
    XCH = B if P.sim else B // 32 if G > 32 else 1

    def body(a, sa, b, sb, out, so, ws, m, n, C, L, w, wn, wd, ba, bb):
        xch = cuda.shared.array(XCH, ctype)
        tid = cuda.threadIdx.x
        lane = tid % G
        base = cuda.blockIdx.x * RPB
        while base < m:  # uniform over the block: every thread runs every shuffle
            # all loads of the step first (U rows x K packs in flight per thread)
            for r in range(U):
                row = base + r * GPB + tid // G
                wb = row_base(row, wd) if MASK else 0
                for k in range(K):
                    col = (k * G + lane) * V
                    o = r * KV + k * V
                    if row < m and col < n:
                        load(a, row * sa + col, ba, o)
                        if LOAD_B:
                            load(b, row * sb + col, bb, o)
                        if MASK and not GIVEN:
                            hide(w, wb, wn, col, ba, bb, o)
                        if DROP:
                            drop_zero_weights(ba, bb, o)
                    else:
                        pad(ba, bb, o)
            for r in range(U):
                row = base + r * GPB + tid // G
                o = r * KV
                mx = ctype(NEG_INF)
                f = ctype(0.0)
                if GIVEN:  # the gradient of logsumexp: the row's lse and dlse (x sign)
                    if row < m:
                        mx = ctype(ws[NV * row])
                        f = ctype(ws[NV * row + 1] * (ws[NV * row + 2] if NV == 3 else 1.0))
                else:
                    if FWD:
                        for j in range(KV):
                            mx = fmax(mx, ba[o + j])
                        mx = group_max(mx, G, xch)
                    s = ctype(0.0)
                    for j in range(KV):
                        t = term(ba[o + j], bb[o + j], mx)  # padding: exp(-inf - mx) = 0
                        if KEEP_E:
                            ba[o + j] = t
                        s += t
                    s = group_sum(s, G, xch)
                    if LSE:
                        if lane == 0 and row < m:
                            put(out, row * so, mx, s)
                    else:
                        f = factor(s)
                if not LSE:
                    for j in range(KV):
                        if KEEP_E:
                            ba[o + j] = ba[o + j] * f
                        else:
                            ba[o + j] = value(ba[o + j], bb[o + j], mx, f)
                    # recomputed, not kept from the loads: registers are what these
                    # kernels run short of
                    wb = row_base(row, wd) if MASK else 0
                    for k in range(K):
                        col = (k * G + lane) * V
                        if row < m and col < n:
                            if MASK:
                                reveal(w, wb, wn, col, ba, o + k * V)
                            store(out, row * so + col, ba, o + k * V)
            base += cuda.gridDim.x * RPB

    return body, U * KV, ctype


# ---------------------------------------------------------------------------------------
# longer rows: one block per row, the row cached in shared memory.
# Layout: pack p = j*B + t of thread t, element v, lives at cache[(j*V + v)*B + t], so
# that consecutive threads touch consecutive words (no bank conflicts) and every thread
# reads back only what it wrote itself (no barrier between the passes). The gradients
# cache b's packs after a's, at offset ``half``.

def _smem(P, spec):
    ((fmax, _, _, block_max, block_sum), (term, factor, value, _), (load, store, elem),
     (row_base, hide, reveal, _, _)) = _parts(P, spec)
    FWD, MASK, V, B, UL = spec.op in FORWARD, spec.mask, spec.V, spec.B, spec.U
    ctype = P.ctype
    KEEP_E = spec.op == "softmax"
    put = P.put
    XCH = B if P.sim else 1

    def body(a, sa, b, sb, out, so, ws, m, n, C, L, w, wn, wd, ta, tb):
        cache = cuda.shared.array(0, ctype)
        red = cuda.shared.array(32, ctype)
        xch = cuda.shared.array(XCH, ctype)
        res = cuda.local.array(V, ctype)
        tid = cuda.threadIdx.x
        npk = n // V
        J = (npk + B - 1) // B  # packs per thread
        half = J * V * B
        row = cuda.blockIdx.x
        while row < m:
            wb = row_base(row, wd) if MASK else 0
            # the first reduction (forward: max; gradients: the sum) while caching the row
            mx = ctype(NEG_INF)
            acc = ctype(NEG_INF) if FWD else ctype(0.0)
            for j0 in range(0, J, UL):
                # UL packs in flight per thread, then into shared memory
                for u in range(UL):
                    p = (j0 + u) * B + tid
                    if p < npk:
                        load(a, row * sa + p * V, ta, u * V)
                        if not FWD:
                            load(b, row * sb + p * V, tb, u * V)
                        if MASK:
                            hide(w, wb, wn, p * V, ta, tb, u * V)
                for u in range(UL):
                    p = (j0 + u) * B + tid
                    if p < npk:
                        c = (j0 + u) * V * B + tid
                        for v in range(V):
                            i = u * V + v
                            put(cache, c + v * B, ta[i])
                            av = elem(ta, i)
                            if FWD:
                                acc = fmax(acc, av)
                            else:
                                put(cache, half + c + v * B, tb[i])
                                acc += term(av, elem(tb, i), mx)
            # The second pass walks packs as the write pass does, so that an element costs
            # its exp and the cache's load and store (an element index's pack, k // V, took
            # seven 64-bit operations with Python's floor division)
            if FWD:
                mx = block_max(acc, ctype(NEG_INF), red, xch)
                acc = ctype(0.0)
                for j in range(J):  # this thread's packs, in order (as the write pass)
                    if j * B + tid < npk:
                        c = j * V * B + tid
                        for v in range(V):
                            av = elem(cache, c + v * B)
                            e = term(av, av, mx)
                            if KEEP_E:
                                put(cache, c + v * B, e)
                            acc += e
            f = factor(block_sum(acc, ctype(0.0), red, xch))
            for j in range(J):
                p = j * B + tid
                if p < npk:
                    c = j * V * B + tid
                    for v in range(V):
                        av = elem(cache, c + v * B)
                        if KEEP_E:
                            res[v] = av * f
                        elif FWD:
                            res[v] = value(av, av, mx, f)
                        else:
                            res[v] = value(av, elem(cache, half + c + v * B), mx, f)
                    if MASK:
                        reveal(w, wb, wn, p * V, res, 0)
                    store(out, row * so + p * V, res, 0)
            row += cuda.gridDim.x

    return body, UL * V, ctype


# ---------------------------------------------------------------------------------------
# long rows, and their split: packs [plo, phi) of a row, U packs per thread per step.
# Forward: online max / rescaled sum; gradients: the sum of term(y, dy). Sums in float64.

def _long(P, spec):
    """``long``: a block per row. ``split_stats`` / ``split_write``: a block per (row,
    chunk) = divmod(i, C), chunks of L packs; ws (float64) holds per chunk (max, sum) for
    the forward, the partial sum for the gradients. The long kernel is the chunk loop with
    one chunk of the whole row (C = 1). logsumexp writes a value per row (thread 0 of the
    row's first chunk); its gradient reads each row's statistics from ws (``GIVEN``)."""
    dev = _device(P.sim)
    ((fmax, _, _, block_max, block_sum), (term, factor, value, weighted), (load, store, _),
     (row_base, hide, reveal, pad, drop_zero_weights)) = _parts(P, spec)
    FWD, LSE, GIVEN, LOAD_B, DROP, NV = _flags(spec)
    MASK, V, B, U = spec.mask, spec.V, spec.B, spec.U
    ctype, exp, put = P.ctype, P.exp, _lse_store(P, spec.signed)
    LOAD_A = spec.op != "log_softmax_backward"  # its sum needs dz only
    STATS = spec.strategy != "split_write" and not GIVEN  # the chunk's statistics
    WRITE = spec.strategy != "split_stats"  # the chunk's output
    SPLIT = spec.strategy != "long"
    UV = U * V
    XCH = B if P.sim else 1

    @dev
    def carry(acc, mt, mx):
        """``acc``, a sum at max mt, as a sum at max mx >= mt: times exp(mt - mx). logsumexp:
        unchanged where the maxima are equal, +inf too (it sums that row's infinite terms;
        the softmax functions' +inf rows are NaN either way), and nothing below a max of
        +inf, where every other element adds 0 whatever its weight, as in ``term`` (a NaN or
        infinite weight would make acc * 0 NaN). The softmax functions: a part that saw
        only -inf summed nothing (exp(-inf - -inf) would be NaN)."""
        if LSE:
            if mt == mx:
                return acc
            if mx == ctype(INF):
                return F64(0.0)
            return weighted(mt - mx, exp(mt - mx), acc)  # a large sum lifts a tiny scale
        elif mt == ctype(NEG_INF):
            return F64(0.0)
        return acc * exp(mt - mx)

    @dev
    def partial(a, ab, b, bb, w, wb, wn, plo, phi, bufa, bufb):
        """This thread's (max, float64 sum) over packs plo..phi-1 of the row at a[ab:] (and
        b[bb:]; its mask at w[wb:]). Forward: the sum of exp(x - max), (-inf, 0) where it
        saw only -inf (or nothing); gradients: (-inf, the sum of term)."""
        mt = ctype(NEG_INF)
        acc = F64(0.0)
        p0 = plo + cuda.threadIdx.x
        while p0 < phi:
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if LOAD_A:
                        load(a, ab + p * V, bufa, u * V)
                    if LOAD_B:
                        load(b, bb + p * V, bufb, u * V)
                    if MASK:
                        hide(w, wb, wn, p * V, bufa, bufb, u * V)
                    if DROP:
                        drop_zero_weights(bufa, bufb, u * V)
                else:
                    pad(bufa, bufb, u * V)
            part = ctype(0.0)
            if FWD:
                bm = ctype(NEG_INF)
                for j in range(UV):
                    bm = fmax(bm, bufa[j])
                mn = fmax(mt, bm)
                # logsumexp sums rows of -inf too: a NaN or infinite weight there is NaN
                if LSE or mn != ctype(NEG_INF):
                    for j in range(UV):
                        part += term(bufa[j], bufb[j], mn)
                    acc = carry(acc, mt, mn) + part
                mt = mn
            else:
                for j in range(UV):
                    part += term(bufa[j], bufb[j], mt)
                acc += part
            p0 += U * B
        return mt, acc

    @dev
    def reduce(mt, acc, red, redd, xch, xchd):
        # block-wide (max, sum) of every thread's (forward: each sum rescaled to the max)
        if FWD:
            mrow = block_max(mt, ctype(NEG_INF), red, xch)
            return mrow, block_sum(carry(acc, mt, mrow), F64(0.0), redd, xchd)
        return mt, block_sum(acc, F64(0.0), redd, xchd)

    @dev
    def write(a, ab, b, bb, out, ob, w, wb, wn, plo, phi, mx, f, bufa, bufb):
        p0 = plo + cuda.threadIdx.x
        while p0 < phi:
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    load(a, ab + p * V, bufa, u * V)
                    if LOAD_B:
                        load(b, bb + p * V, bufb, u * V)
            for j in range(UV):
                bufa[j] = value(bufa[j], bufb[j], mx, f)
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if MASK:
                        reveal(w, wb, wn, p * V, bufa, u * V)
                    store(out, ob + p * V, bufa, u * V)
            p0 += U * B

    def body(a, sa, b, sb, out, so, ws, m, n, C, L, w, wn, wd, bufa, bufb):
        if not SPLIT:  # constants, so that the chunk arithmetic folds away
            C, L = 1, n
        if STATS:  # block reductions
            red = cuda.shared.array(32, ctype)
            redd = cuda.shared.array(32, F64)
            xch = cuda.shared.array(XCH, ctype)
            xchd = cuda.shared.array(XCH, F64)
        npk = n // V
        i = cuda.blockIdx.x
        while i < m * C:
            row = i // C
            plo = (i - row * C) * L
            phi = min(npk, plo + L)
            wb = row_base(row, wd) if MASK else 0
            f = ctype(0.0)
            if GIVEN:  # the gradient of logsumexp: the row's lse and dlse (x sign)
                mx = ctype(ws[NV * row])
                f = ctype(ws[NV * row + 1] * (ws[NV * row + 2] if NV == 3 else 1.0))
            elif STATS:
                mt, acc = partial(a, row * sa, b, row * sb, w, wb, wn, plo, phi, bufa, bufb)
                mx, total = reduce(mt, acc, red, redd, xch, xchd)
                if not WRITE and cuda.threadIdx.x == 0:
                    if FWD:
                        ws[2 * i] = mx
                        ws[2 * i + 1] = total
                    else:
                        ws[i] = total
            else:
                # every thread combines the row's chunk statistics, in chunk order
                mx = ctype(NEG_INF)
                total = F64(0.0)
                if FWD:
                    for k in range(C):
                        mx = fmax(mx, ctype(ws[2 * (row * C + k)]))
                    for k in range(C):
                        total += carry(ws[2 * (row * C + k) + 1], ctype(ws[2 * (row * C + k)]),
                                       mx)
                else:
                    for k in range(C):
                        total += ws[row * C + k]
            if WRITE and LSE:
                if cuda.threadIdx.x == 0 and i == row * C:
                    put(out, row * so, mx, total)
            elif WRITE:
                if not GIVEN:
                    f = factor(total)
                write(a, row * sa, b, row * sb, out, row * so, w, wb, wn, plo, phi, mx, f,
                      bufa, bufb)
            i += cuda.gridDim.x

    return body, UV, ctype


# ---------------------------------------------------------------------------------------

def make_copy(ndim, sim, cast=None, P=None):
    """Strided copy (gathers, scatters, converts integer/bool input to float64 and one float
    kind to another): copy(src, soff, sstrides, dst, doff, dstrides, shape, total) moves
    element i (C order over ``shape``) from src[soff + i . sstrides] to dst[doff + i .
    dstrides] (element strides, possibly negative). ``cast`` (a numba type) converts the
    value; ``P`` (primitives of the destination's kind, reading the source's) converts a
    float kind, rounding once, or with ``cast`` (its compute type) stores the value."""
    dev = _device(sim)

    @dev
    def read(arr, i):
        if cast is None:
            return arr[i]
        return cast(arr[i])

    @dev
    def write(arr, i, v):
        arr[i] = v

    ld = P.ld if P is not None and cast is None else read
    st = write if P is None else P.st

    def kernel(src, soff, sstr, dst, doff, dstr, shape, total):
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.x * cuda.blockDim.x
        while i < total:
            rem = i
            s = soff
            d = doff
            for k in range(ndim):
                ax = ndim - 1 - k
                q = rem // shape[ax]
                r = rem - q * shape[ax]
                s += r * sstr[ax]
                d += r * dstr[ax]
                rem = q
            st(dst, d, ld(src, s))
            i += step

    return kernel


_BODIES = {"rows": _rows, "smem": _smem, "long": _long, "split_stats": _long,
           "split_write": _long}


def build(spec, primitives):
    """The Python function of the kernel for ``spec`` (not yet compiled). Every kernel takes
    (a, sa, b, sb, out, so, ws, m, n, C, L): flat inputs and out with their row strides
    (forward ops: b is a; logsumexp: its weights, else a), the split's float64 workspace
    (logsumexp's gradient: each row's lse, dlse and sign) and chunks (C of L packs per row;
    else a placeholder workspace, C = 1, L = n); each strategy reads what it uses.
    logsumexp writes a row's value (and sign) at out[row * so] (and the next element).
    Masked kernels also take the mask (w, wn, wd), see ``_masking``."""
    P = primitives
    fn, items, dtype = _BODIES[spec.strategy](P, spec)
    dev, begin, second = _device(P.sim), P.begin, _flags(spec).load_b
    inner = dev(fn)

    @dev
    def run(a, sa, b, sb, out, so, ws, m, n, C, L, w, wn, wd):
        begin()
        ba = cuda.local.array(items, dtype)  # the packs in flight: one buffer per input
        bb = cuda.local.array(items, dtype) if second else ba
        inner(a, sa, b, sb, out, so, ws, m, n, C, L, w, wn, wd, ba, bb)

    if spec.mask:
        def kernel(a, sa, b, sb, out, so, ws, m, n, C, L, w, wn, wd):
            run(a, sa, b, sb, out, so, ws, m, n, C, L, w, wn, wd)
    else:  # the mask arguments unused (a stands in for the mask array)
        def kernel(a, sa, b, sb, out, so, ws, m, n, C, L):
            run(a, sa, b, sb, out, so, ws, m, n, C, L, a, 0, NO_MASK)

    return kernel
