"""numba.cuda kernels for softmax, log_softmax and their gradients, as kernel factories.

Every call is reduced to M rows of N elements (see ``api.py``): row ``r`` of an input ``x``
is ``x[r*sx : r*sx + N]`` of a flat 1-D buffer. Each factory returns the Python function of
one specialization; ``launch.py`` compiles it for one explicit signature the first time it
is needed and caches it. Nothing here compiles at import.

Strategies (thresholds in ``launch.plan``):

``rows``   short rows: a group of G threads (G = 1..32, a power of two, a sub-warp or a warp)
           per row, the row held in registers (K packs of V elements per thread), several
           rows per warp when G < 32 and U = 2 rows per group and step when a row is at
           most 8 values per thread (more loads in flight); butterfly-shuffle reductions.
``smem``   medium rows: one block per row, the row cached in shared memory (in the compute
           type, or as the 2-byte storage bits for float16/bfloat16 rows that fit only so),
           so X (and for the gradients Y and dY) is read from global memory once; rows
           above 48 KB raise the kernel's dynamic shared-memory limit (launch.py).
``long``   long rows: one block per row, online max / rescaled sum (Milakov & Gimelshein
           2018) in one pass, then a pass that writes: 2 reads + 1 write.
``split``  long rows when there are too few rows to fill the GPU: each row is cut into C
           chunks (one block each); a first kernel writes every chunk's statistics, a second
           combines them in chunk order and writes its chunk.

Packs: V = 16 bytes / itemsize elements loaded or stored at once (``ld.global.v4``) when
every row start is 16-byte aligned and N is a multiple of V; V = 1 (scalar) otherwise.

Arithmetic is float32 (float64 for float64 data). The long/split sums and dot products
accumulate in float64. Non-finite rules are the CPU path's: max propagates NaN, a row with
NaN or +inf gives NaN, an all -inf row gives NaN, -inf among finite values gives 0 (log:
-inf). Reductions have a fixed order (butterfly, then warps in order, then chunks in order),
so results are deterministic for a given shape, dtype and strategy.

Simulator: the same source runs under ``NUMBA_ENABLE_CUDASIM=1`` with the primitives of
``sim.py`` (shuffles through a shared exchange array between ``syncthreads``). Every thread
of a block runs every reduction, so the emulation is exact.
"""

from __future__ import annotations

import math
from collections import namedtuple

from numba import cuda, types

NEG_INF = -math.inf
F64 = types.float64

FORWARD = ("softmax", "log_softmax")
BACKWARD = ("softmax_backward", "log_softmax_backward")

# One specialization. op: one of FORWARD + BACKWARD; kind: storage ("f4","f8","f2","bf16");
# V: pack width; G, K: threads per row and packs per thread (rows); B: block size;
# U: rows per group and step (rows), packs loaded per step (smem, long, split);
# cache (smem): "c" caches rows in the compute type, "s" in the 2-byte storage type (twice
# the row length fits; exp is then evaluated twice per element).
Spec = namedtuple("Spec", "strategy op kind V G K B U cache", defaults=("c",))


def _dev(P):
    """Decorator for helper device functions in the current mode."""
    if P["sim"]:
        return lambda f: f
    return cuda.jit(device=True, forceinline=True)


def _helpers(P):
    dev = _dev(P)
    shfl_xor = P["shfl_xor"]
    ctype = P["ctype"]

    @dev
    def fmax(a, b):
        # NaN-propagating maximum (fmaxf would drop NaN)
        if a > b or a != a:
            return a
        return b

    if P["sim"]:
        # the simulator's exchange-based butterfly: same order, 2 barriers per reduction
        group_max, group_sum = P["group_max"], P["group_sum"]
    else:
        @dev
        def group_max(v, width, xch):
            """Max over aligned groups of ``width`` lanes (butterfly: every lane gets it)."""
            off = width // 2
            while off > 0:
                v = fmax(v, shfl_xor(v, off, xch))
                off //= 2
            return v

        @dev
        def group_sum(v, width, xch):
            off = width // 2
            while off > 0:
                v = v + shfl_xor(v, off, xch)
                off //= 2
            return v

    @dev
    def block_max(v, red, xch):
        """Max over the block (blockDim.x a multiple of 32); every thread gets it."""
        v = group_max(v, 32, xch)
        t = cuda.threadIdx.x
        lane = t & 31
        if lane == 0:
            red[t >> 5] = v
        cuda.syncthreads()
        r = ctype(NEG_INF)
        if lane < (cuda.blockDim.x >> 5):
            r = red[lane]
        r = group_max(r, 32, xch)
        cuda.syncthreads()
        return r

    @dev
    def block_sum(v, zero, red, xch):
        """Sum over the block; ``zero`` has v's type. Every thread gets the same sum."""
        v = group_sum(v, 32, xch)
        t = cuda.threadIdx.x
        lane = t & 31
        if lane == 0:
            red[t >> 5] = v
        cuda.syncthreads()
        r = zero
        if lane < (cuda.blockDim.x >> 5):
            r = red[lane]
        r = group_sum(r, 32, xch)
        cuda.syncthreads()
        return r

    return fmax, group_max, group_sum, block_max, block_sum


# ---------------------------------------------------------------------------------------
# short rows: a group of G threads per row, the row in registers

def _rows_forward(P, spec):
    fmax, group_max, group_sum, _, _ = _helpers(P)
    ld, st, ldv, stv, exp, log, begin = (P[k] for k in ("ld", "st", "ldv", "stv", "exp", "log",
                                                         "begin"))
    ctype = P["ctype"]
    LOG = spec.op == "log_softmax"
    V, G, K, B, R = spec.V, spec.G, spec.K, spec.B, spec.U
    KV = K * V
    RKV = R * KV
    GPB = B // G  # groups per block
    RPB = GPB * R  # rows per block and step
    XCH = B if P["sim"] else 1

    def kernel(x, sx, out, so, m, n):
        begin()
        buf = cuda.local.array(RKV, ctype)
        xch = cuda.shared.array(XCH, ctype)
        tid = cuda.threadIdx.x
        lane = tid % G
        base = cuda.blockIdx.x * RPB
        while base < m:  # uniform over the block: every thread runs every shuffle
            # all loads of the step first (R rows x K packs in flight per thread)
            for r in range(R):
                row = base + r * GPB + tid // G
                for k in range(K):
                    col = (k * G + lane) * V
                    o = r * KV + k * V
                    if row < m and col < n:
                        if V == 1:
                            buf[o] = ld(x, row * sx + col)
                        else:
                            ldv(x, row * sx + col, buf, o, 1)
                    else:
                        for v in range(V):
                            buf[o + v] = ctype(NEG_INF)
            for r in range(R):
                row = base + r * GPB + tid // G
                mx = ctype(NEG_INF)
                for j in range(KV):
                    mx = fmax(mx, buf[r * KV + j])
                mx = group_max(mx, G, xch)
                s = ctype(0.0)
                for j in range(KV):
                    e = exp(buf[r * KV + j] - mx)  # padding: exp(-inf - mx) = 0
                    if not LOG:
                        buf[r * KV + j] = e
                    s += e
                s = group_sum(s, G, xch)
                if LOG:
                    lse = log(s)
                    for j in range(KV):
                        buf[r * KV + j] = (buf[r * KV + j] - mx) - lse
                else:
                    inv = ctype(1.0) / s
                    for j in range(KV):
                        buf[r * KV + j] = buf[r * KV + j] * inv
                for k in range(K):
                    col = (k * G + lane) * V
                    if row < m and col < n:
                        if V == 1:
                            st(out, row * so + col, buf[r * KV + k])
                        else:
                            stv(out, row * so + col, buf, r * KV + k * V, 1)
            base += cuda.gridDim.x * RPB

    return kernel


def _rows_backward(P, spec):
    _, _, group_sum, _, _ = _helpers(P)
    ld, st, ldv, stv, exp, begin = (P[k] for k in ("ld", "st", "ldv", "stv", "exp", "begin"))
    ctype = P["ctype"]
    LOG = spec.op == "log_softmax_backward"
    V, G, K, B, R = spec.V, spec.G, spec.K, spec.B, spec.U
    KV = K * V
    RKV = R * KV
    GPB = B // G
    RPB = GPB * R
    XCH = B if P["sim"] else 1

    def kernel(a, sa, b, sb, out, so, m, n):
        # softmax_backward: a = y, b = dy, out = y * (dy - sum(y * dy))
        # log_softmax_backward: a = z, b = dz, out = dz - exp(z) * sum(dz)
        begin()
        ba = cuda.local.array(RKV, ctype)
        bb = cuda.local.array(RKV, ctype)
        xch = cuda.shared.array(XCH, ctype)
        tid = cuda.threadIdx.x
        lane = tid % G
        base = cuda.blockIdx.x * RPB
        while base < m:
            for r in range(R):
                row = base + r * GPB + tid // G
                for k in range(K):
                    col = (k * G + lane) * V
                    o = r * KV + k * V
                    if row < m and col < n:
                        if V == 1:
                            ba[o] = ld(a, row * sa + col)
                            bb[o] = ld(b, row * sb + col)
                        else:
                            ldv(a, row * sa + col, ba, o, 1)
                            ldv(b, row * sb + col, bb, o, 1)
                    else:
                        for v in range(V):
                            ba[o + v] = ctype(0.0)
                            bb[o + v] = ctype(0.0)
            for r in range(R):
                row = base + r * GPB + tid // G
                s = ctype(0.0)
                for j in range(KV):
                    if LOG:
                        s += bb[r * KV + j]
                    else:
                        s += ba[r * KV + j] * bb[r * KV + j]
                s = group_sum(s, G, xch)
                for j in range(KV):
                    if LOG:
                        ba[r * KV + j] = bb[r * KV + j] - exp(ba[r * KV + j]) * s
                    else:
                        ba[r * KV + j] = ba[r * KV + j] * (bb[r * KV + j] - s)
                for k in range(K):
                    col = (k * G + lane) * V
                    if row < m and col < n:
                        if V == 1:
                            st(out, row * so + col, ba[r * KV + k])
                        else:
                            stv(out, row * so + col, ba, r * KV + k * V, 1)
            base += cuda.gridDim.x * RPB

    return kernel


# ---------------------------------------------------------------------------------------
# medium rows: one block per row, the row cached in shared memory.
# Layout: pack p = j*B + t of thread t, element v, lives at cache[(j*V + v)*B + t], so
# that consecutive threads touch consecutive words (no bank conflicts) and every thread
# reads back only what it wrote itself (no barrier between the passes).

def _smem_forward(P, spec):
    fmax, _, _, block_max, block_sum = _helpers(P)
    ld, st, ldv, stv, exp, log, begin = (P[k] for k in ("ld", "st", "ldv", "stv", "exp", "log",
                                                         "begin"))
    ldv_raw = P["ldv_raw"]
    ctype = P["ctype"]
    LOG = spec.op == "log_softmax"
    V, B, UL = spec.V, spec.B, spec.U
    ULV = UL * V
    RAW = spec.cache == "s"  # cache the 2-byte storage bits, convert on every read
    cdt = types.uint16 if RAW else ctype
    XCH = B if P["sim"] else 1

    @_dev(P)
    def cached(cache, c):
        if RAW:
            return ld(cache, c)
        return cache[c]

    def kernel(x, sx, out, so, m, n):
        begin()
        cache = cuda.shared.array(0, cdt)
        red = cuda.shared.array(32, ctype)
        xch = cuda.shared.array(XCH, ctype)
        tmp = cuda.local.array(ULV, ctype)
        raw = cuda.local.array(ULV, cdt)
        tid = cuda.threadIdx.x
        npk = n // V
        J = (npk + B - 1) // B  # packs per thread
        row = cuda.blockIdx.x
        while row < m:
            mx = ctype(NEG_INF)
            for j0 in range(0, J, UL):
                # UL packs in flight per thread, then into shared memory
                for u in range(UL):
                    p = (j0 + u) * B + tid
                    if p < npk:
                        if RAW:
                            if V == 1:
                                raw[u] = x[row * sx + p]
                            else:
                                ldv_raw(x, row * sx + p * V, raw, u * V, 1)
                        elif V == 1:
                            tmp[u] = ld(x, row * sx + p)
                        else:
                            ldv(x, row * sx + p * V, tmp, u * V, 1)
                for u in range(UL):
                    p = (j0 + u) * B + tid
                    if p < npk:
                        c = (j0 + u) * V * B + tid
                        for v in range(V):
                            if RAW:
                                cache[c + v * B] = raw[u * V + v]
                                mx = fmax(mx, ld(raw, u * V + v))
                            else:
                                cache[c + v * B] = tmp[u * V + v]
                                mx = fmax(mx, tmp[u * V + v])
            mx = block_max(mx, red, xch)
            s = ctype(0.0)
            for j in range(J):
                p = j * B + tid
                if p < npk:
                    c = j * V * B + tid
                    for v in range(V):
                        e = exp(cached(cache, c + v * B) - mx)
                        if not LOG and not RAW:
                            cache[c + v * B] = e
                        s += e
            s = block_sum(s, ctype(0.0), red, xch)
            if LOG:
                f = log(s)
            else:
                f = ctype(1.0) / s
            for j in range(J):
                p = j * B + tid
                if p < npk:
                    c = j * V * B + tid
                    for v in range(V):
                        if LOG:
                            tmp[v] = (cached(cache, c + v * B) - mx) - f
                        elif RAW:
                            tmp[v] = exp(cached(cache, c + v * B) - mx) * f
                        else:
                            tmp[v] = cache[c + v * B] * f
                    if V == 1:
                        st(out, row * so + p, tmp[0])
                    else:
                        stv(out, row * so + p * V, tmp, 0, 1)
            row += cuda.gridDim.x

    return kernel


def _smem_backward(P, spec):
    _, _, _, _, block_sum = _helpers(P)
    ld, st, ldv, stv, exp, begin = (P[k] for k in ("ld", "st", "ldv", "stv", "exp", "begin"))
    ldv_raw = P["ldv_raw"]
    ctype = P["ctype"]
    LOG = spec.op == "log_softmax_backward"
    V, B, UL = spec.V, spec.B, spec.U
    ULV = UL * V
    RAW = spec.cache == "s"
    cdt = types.uint16 if RAW else ctype
    XCH = B if P["sim"] else 1

    @_dev(P)
    def cached(cache, c):
        if RAW:
            return ld(cache, c)
        return cache[c]

    def kernel(a, sa, b, sb, out, so, m, n):
        begin()
        cache = cuda.shared.array(0, cdt)  # a's packs, then b's at offset half
        red = cuda.shared.array(32, ctype)
        xch = cuda.shared.array(XCH, ctype)
        ta = cuda.local.array(ULV, ctype)
        tb = cuda.local.array(ULV, ctype)
        ra = cuda.local.array(ULV, cdt)
        rb = cuda.local.array(ULV, cdt)
        tid = cuda.threadIdx.x
        npk = n // V
        J = (npk + B - 1) // B
        half = J * B * V
        row = cuda.blockIdx.x
        while row < m:
            s = ctype(0.0)
            for j0 in range(0, J, UL):
                for u in range(UL):
                    p = (j0 + u) * B + tid
                    if p < npk:
                        if RAW:
                            if V == 1:
                                ra[u] = a[row * sa + p]
                                rb[u] = b[row * sb + p]
                            else:
                                ldv_raw(a, row * sa + p * V, ra, u * V, 1)
                                ldv_raw(b, row * sb + p * V, rb, u * V, 1)
                        elif V == 1:
                            ta[u] = ld(a, row * sa + p)
                            tb[u] = ld(b, row * sb + p)
                        else:
                            ldv(a, row * sa + p * V, ta, u * V, 1)
                            ldv(b, row * sb + p * V, tb, u * V, 1)
                for u in range(UL):
                    p = (j0 + u) * B + tid
                    if p < npk:
                        c = (j0 + u) * V * B + tid
                        for v in range(V):
                            if RAW:
                                cache[c + v * B] = ra[u * V + v]
                                cache[half + c + v * B] = rb[u * V + v]
                                av = ld(ra, u * V + v)
                                bv = ld(rb, u * V + v)
                            else:
                                cache[c + v * B] = ta[u * V + v]
                                cache[half + c + v * B] = tb[u * V + v]
                                av = ta[u * V + v]
                                bv = tb[u * V + v]
                            if LOG:
                                s += bv
                            else:
                                s += av * bv
            s = block_sum(s, ctype(0.0), red, xch)
            for j in range(J):
                p = j * B + tid
                if p < npk:
                    c = j * V * B + tid
                    for v in range(V):
                        av = cached(cache, c + v * B)
                        bv = cached(cache, half + c + v * B)
                        if LOG:
                            ta[v] = bv - exp(av) * s
                        else:
                            ta[v] = av * (bv - s)
                    if V == 1:
                        st(out, row * so + p, ta[0])
                    else:
                        stv(out, row * so + p * V, ta, 0, 1)
            row += cuda.gridDim.x

    return kernel


# ---------------------------------------------------------------------------------------
# long rows: online max / rescaled sum over [lo, hi) packs, U packs per thread per step

def _long_parts(P, spec):
    """Device functions shared by the long and split kernels."""
    dev = _dev(P)
    fmax, _, _, block_max, block_sum = _helpers(P)
    ld, st, ldv, stv, exp, log = (P[k] for k in ("ld", "st", "ldv", "stv", "exp", "log"))
    ctype = P["ctype"]
    V, B, U = spec.V, spec.B, spec.U
    UV = U * V
    op = spec.op

    @dev
    def online_stats(x, xb, plo, phi, buf):
        """This thread's (max, sum of exp(x - max) in float64) over packs plo..phi-1 of the
        row at x[xb:]. A thread that saw only -inf (or nothing) returns (-inf, 0)."""
        tid = cuda.threadIdx.x
        mt = ctype(NEG_INF)
        acc = F64(0.0)
        p0 = plo + tid
        while p0 < phi:
            bm = ctype(NEG_INF)
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if V == 1:
                        buf[u] = ld(x, xb + p)
                    else:
                        ldv(x, xb + p * V, buf, u * V, 1)
                else:
                    for v in range(V):
                        buf[u * V + v] = ctype(NEG_INF)
            for j in range(UV):
                bm = fmax(bm, buf[j])
            mn = fmax(mt, bm)
            if mn != ctype(NEG_INF):
                part = ctype(0.0)
                for j in range(UV):
                    part += exp(buf[j] - mn)
                acc = acc * exp(mt - mn) + part
            mt = mn
            p0 += U * B
        return mt, acc

    @dev
    def combine(mt, acc, red, redd, xch, xchd):
        """Block-wide (max, sum rescaled to that max) from every thread's pair."""
        mrow = block_max(mt, red, xch)
        if mt == ctype(NEG_INF):
            acc = F64(0.0)
        else:
            acc = acc * exp(mt - mrow)
        return mrow, block_sum(acc, F64(0.0), redd, xchd)

    @dev
    def write_forward(x, xb, out, ob, plo, phi, mrow, total, buf):
        if op == "log_softmax":
            f = ctype(log(total))
        else:
            f = ctype(1.0 / total)
        tid = cuda.threadIdx.x
        p0 = plo + tid
        while p0 < phi:
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if V == 1:
                        buf[u] = ld(x, xb + p)
                    else:
                        ldv(x, xb + p * V, buf, u * V, 1)
            for j in range(UV):
                if op == "log_softmax":
                    buf[j] = (buf[j] - mrow) - f
                else:
                    buf[j] = exp(buf[j] - mrow) * f
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if V == 1:
                        st(out, ob + p, buf[u])
                    else:
                        stv(out, ob + p * V, buf, u * V, 1)
            p0 += U * B

    @dev
    def row_dot(a, ab, b, bb, plo, phi, bufa, bufb):
        """This thread's float64 sum of a*b (softmax_backward) or of b (log) over packs."""
        tid = cuda.threadIdx.x
        acc = F64(0.0)
        p0 = plo + tid
        while p0 < phi:
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if V == 1:
                        if op != "log_softmax_backward":
                            bufa[u] = ld(a, ab + p)
                        bufb[u] = ld(b, bb + p)
                    else:
                        if op != "log_softmax_backward":
                            ldv(a, ab + p * V, bufa, u * V, 1)
                        ldv(b, bb + p * V, bufb, u * V, 1)
                else:
                    for v in range(V):
                        bufa[u * V + v] = ctype(0.0)
                        bufb[u * V + v] = ctype(0.0)
            part = ctype(0.0)
            for j in range(UV):
                if op == "log_softmax_backward":
                    part += bufb[j]
                else:
                    part += bufa[j] * bufb[j]
            acc += part
            p0 += U * B
        return acc

    @dev
    def write_backward(a, ab, b, bb, out, ob, plo, phi, s, bufa, bufb):
        tid = cuda.threadIdx.x
        p0 = plo + tid
        while p0 < phi:
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if V == 1:
                        bufa[u] = ld(a, ab + p)
                        bufb[u] = ld(b, bb + p)
                    else:
                        ldv(a, ab + p * V, bufa, u * V, 1)
                        ldv(b, bb + p * V, bufb, u * V, 1)
            for j in range(UV):
                if op == "log_softmax_backward":
                    bufa[j] = bufb[j] - exp(bufa[j]) * s
                else:
                    bufa[j] = bufa[j] * (bufb[j] - s)
            for u in range(U):
                p = p0 + u * B
                if p < phi:
                    if V == 1:
                        st(out, ob + p, bufa[u])
                    else:
                        stv(out, ob + p * V, bufa, u * V, 1)
            p0 += U * B

    return online_stats, combine, write_forward, row_dot, write_backward


def _long_forward(P, spec):
    online_stats, combine, write_forward, _, _ = _long_parts(P, spec)
    begin = P["begin"]
    ctype = P["ctype"]
    V, B, U = spec.V, spec.B, spec.U
    UV = U * V
    XCH = B if P["sim"] else 1

    def kernel(x, sx, out, so, m, n):
        begin()
        buf = cuda.local.array(UV, ctype)
        red = cuda.shared.array(32, ctype)
        redd = cuda.shared.array(32, F64)
        xch = cuda.shared.array(XCH, ctype)
        xchd = cuda.shared.array(XCH, F64)
        npk = n // V
        row = cuda.blockIdx.x
        while row < m:
            mt, acc = online_stats(x, row * sx, 0, npk, buf)
            mrow, total = combine(mt, acc, red, redd, xch, xchd)
            write_forward(x, row * sx, out, row * so, 0, npk, mrow, total, buf)
            row += cuda.gridDim.x

    return kernel


def _long_backward(P, spec):
    _, combine, _, row_dot, write_backward = _long_parts(P, spec)
    _, _, _, _, block_sum = _helpers(P)
    begin = P["begin"]
    ctype = P["ctype"]
    V, B, U = spec.V, spec.B, spec.U
    UV = U * V
    XCH = B if P["sim"] else 1

    def kernel(a, sa, b, sb, out, so, m, n):
        begin()
        bufa = cuda.local.array(UV, ctype)
        bufb = cuda.local.array(UV, ctype)
        redd = cuda.shared.array(32, F64)
        xchd = cuda.shared.array(XCH, F64)
        npk = n // V
        row = cuda.blockIdx.x
        while row < m:
            acc = row_dot(a, row * sa, b, row * sb, 0, npk, bufa, bufb)
            s = ctype(block_sum(acc, F64(0.0), redd, xchd))
            write_backward(a, row * sa, b, row * sb, out, row * so, 0, npk, s, bufa, bufb)
            row += cuda.gridDim.x

    return kernel


# ---------------------------------------------------------------------------------------
# split long rows: C chunks of L packs per row, block i -> (row, chunk) = divmod(i, C).
# ws (float64) holds per chunk (max, sum) for the forward, the partial sum for gradients.

def _split_forward_stats(P, spec):
    online_stats, combine, _, _, _ = _long_parts(P, spec)
    begin = P["begin"]
    ctype = P["ctype"]
    V, B, U = spec.V, spec.B, spec.U
    UV = U * V
    XCH = B if P["sim"] else 1

    def kernel(x, sx, ws, m, n, C, L):
        begin()
        buf = cuda.local.array(UV, ctype)
        red = cuda.shared.array(32, ctype)
        redd = cuda.shared.array(32, F64)
        xch = cuda.shared.array(XCH, ctype)
        xchd = cuda.shared.array(XCH, F64)
        npk = n // V
        i = cuda.blockIdx.x
        while i < m * C:
            row = i // C
            c = i - row * C
            plo = c * L
            phi = min(npk, plo + L)
            mt, acc = online_stats(x, row * sx, plo, phi, buf)
            mc, sc = combine(mt, acc, red, redd, xch, xchd)
            if cuda.threadIdx.x == 0:
                ws[2 * i] = mc
                ws[2 * i + 1] = sc
            i += cuda.gridDim.x

    return kernel


def _split_forward_write(P, spec):
    _, _, write_forward, _, _ = _long_parts(P, spec)
    fmax, _, _, _, _ = _helpers(P)
    begin, exp = P["begin"], P["exp"]
    ctype = P["ctype"]
    V, U = spec.V, spec.U
    UV = U * V

    def kernel(x, sx, out, so, ws, m, n, C, L):
        begin()
        buf = cuda.local.array(UV, ctype)
        npk = n // V
        i = cuda.blockIdx.x
        while i < m * C:
            row = i // C
            c = i - row * C
            # every thread combines the row's chunk statistics, in chunk order
            mrow = ctype(NEG_INF)
            for k in range(C):
                mrow = fmax(mrow, ctype(ws[2 * (row * C + k)]))
            total = F64(0.0)
            for k in range(C):
                mk = ctype(ws[2 * (row * C + k)])
                if mk != ctype(NEG_INF):
                    total += ws[2 * (row * C + k) + 1] * exp(mk - mrow)
            plo = c * L
            phi = min(npk, plo + L)
            write_forward(x, row * sx, out, row * so, plo, phi, mrow, total, buf)
            i += cuda.gridDim.x

    return kernel


def _split_backward_stats(P, spec):
    _, _, _, row_dot, _ = _long_parts(P, spec)
    _, _, _, _, block_sum = _helpers(P)
    begin = P["begin"]
    ctype = P["ctype"]
    V, B, U = spec.V, spec.B, spec.U
    UV = U * V
    XCH = B if P["sim"] else 1

    def kernel(a, sa, b, sb, ws, m, n, C, L):
        begin()
        bufa = cuda.local.array(UV, ctype)
        bufb = cuda.local.array(UV, ctype)
        redd = cuda.shared.array(32, F64)
        xchd = cuda.shared.array(XCH, F64)
        npk = n // V
        i = cuda.blockIdx.x
        while i < m * C:
            row = i // C
            c = i - row * C
            plo = c * L
            phi = min(npk, plo + L)
            acc = row_dot(a, row * sa, b, row * sb, plo, phi, bufa, bufb)
            acc = block_sum(acc, F64(0.0), redd, xchd)
            if cuda.threadIdx.x == 0:
                ws[i] = acc
            i += cuda.gridDim.x

    return kernel


def _split_backward_write(P, spec):
    _, _, _, _, write_backward = _long_parts(P, spec)
    begin = P["begin"]
    ctype = P["ctype"]
    V, U = spec.V, spec.U
    UV = U * V

    def kernel(a, sa, b, sb, out, so, ws, m, n, C, L):
        begin()
        bufa = cuda.local.array(UV, ctype)
        bufb = cuda.local.array(UV, ctype)
        npk = n // V
        i = cuda.blockIdx.x
        while i < m * C:
            row = i // C
            c = i - row * C
            total = F64(0.0)
            for k in range(C):
                total += ws[row * C + k]
            plo = c * L
            phi = min(npk, plo + L)
            write_backward(a, row * sa, b, row * sb, out, row * so, plo, phi, ctype(total),
                           bufa, bufb)
            i += cuda.gridDim.x

    return kernel


# ---------------------------------------------------------------------------------------
# strided copy with an optional cast: gathers a strided input into contiguous rows,
# scatters contiguous rows into a strided ``out``, converts integer/bool input to float64.

def make_copy(ndim, cast):
    """copy(src, soff, sstrides, dst, doff, dstrides, shape, total): element i (C order over
    ``shape``) goes from src[soff + i . sstrides] to dst[doff + i . dstrides] (element
    strides, possibly negative). ``cast`` (a numba type, or None for a plain copy) converts
    the value."""
    ND = ndim

    if cast is None:
        @_jit_dev_plain
        def convert(v):
            return v
    else:
        CAST = cast

        @_jit_dev_plain
        def convert(v):
            return CAST(v)

    def kernel(src, soff, sstr, dst, doff, dstr, shape, total):
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.x * cuda.blockDim.x
        while i < total:
            rem = i
            s = soff
            d = doff
            for k in range(ND):
                ax = ND - 1 - k
                q = rem // shape[ax]
                r = rem - q * shape[ax]
                s += r * sstr[ax]
                d += r * dstr[ax]
                rem = q
            dst[d] = convert(src[s])
            i += step

    return kernel


def _jit_dev_plain(f):
    from numba.cuda.core import config

    if config.ENABLE_CUDASIM:
        return f
    return cuda.jit(device=True, forceinline=True)(f)


_BUILDERS = {
    ("rows", True): _rows_forward,
    ("rows", False): _rows_backward,
    ("smem", True): _smem_forward,
    ("smem", False): _smem_backward,
    ("long", True): _long_forward,
    ("long", False): _long_backward,
    ("split_stats", True): _split_forward_stats,
    ("split_stats", False): _split_backward_stats,
    ("split_write", True): _split_forward_write,
    ("split_write", False): _split_backward_write,
}


def build(spec, primitives):
    """The Python function of the kernel for ``spec`` (not yet compiled)."""
    return _BUILDERS[spec.strategy, spec.op in FORWARD](primitives, spec)
