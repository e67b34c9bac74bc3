"""exp and log on ``_simd`` vectors (and on scalars: the same IR, so a scalar result and
any lane of a vector result agree bit for bit).

Both are written out in IEEE operations (fused multiply-adds where the code says so), with
no call into the C library: the bits do not depend on the machine's libm.
"""

from __future__ import annotations

import math

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._markers import INLINE
from ._simd import (
    _I64,
    W,
    _call,
    _const,
    _ctype_of,
    _intrinsic1,
    _intrinsic2,
    _suffix,
    has_feature,
    per_zmm,
    vabs,
    vadd,
    vall,
    veq,
    vlt,
    vmul,
    vselect,
)

# ---------------------------------------------------------------------------------------
# exp: t = k ln2 + r with |r| <= ln2/2, a polynomial in r by fused multiply-adds,
# 2^k built from exponent bits. The argument is clamped with maxnum/minnum first, so a NaN
# never reaches the float -> int conversion (which would be poison in LLVM; where vectors
# scale by ``vscalef`` there is no conversion, and ``vexp_nonpos`` lets a NaN through).
# Results below the smallest normal number are 0 (an absolute error under 1.2e-38 /
# 2.3e-308); above the largest finite one, inf; NaN stays NaN. Scalars and vectors take the
# same steps, so a scalar exp and any lane of a vector exp agree bit for bit.

_LOG2E = 1.4426950408889634
# ln 2 split so that k * hi is exact: float32 ...; float64 fdlibm's split
_LN2 = {types.float32: (0.693359375, -2.12194440e-4),
        types.float64: (0.6931471803691238, 1.9082149292705877e-10)}
_RANGE = {types.float32: (-87.33, 88.37), types.float64: (-708.39, 709.0)}
# The polynomial, highest degree first: 1 + r + c2 r^2 + ... with c2.. the minimax fit of
# exp's relative error on |r| <= ln2/2 (Remez, 40 digits): degree 6 for float32 (3.1e-9,
# against 5.3e-9 for the degree-7 Taylor polynomial), 11 for float64 (3.6e-18). One and two
# fused multiply-adds fewer than Taylor's for the same accuracy: the exp pass is bound by
# them. Its constant terms 1, 1 keep exp(0) exactly 1.
_POLY = {
    types.float32: [0.0013814613121415032, 0.00836870989145493, 0.041668387367783825,
                    0.1666652068927879, 0.4999999345167114, 1.0, 1.0],
    types.float64: [2.5000072190215835e-08, 2.7630234052893854e-07, 2.755758626743288e-06,
                    2.4801493135841673e-05, 0.00019841269506777747, 0.0013888888943597998,
                    0.008333333333494335, 0.041666666666530267, 0.16666666666666413,
                    0.5000000000000011, 1.0, 1.0],
}


def _exp2_int(builder, k, ctype):
    """2**k for integral k in the normal exponent range."""
    vec = isinstance(k.type, ir.VectorType)

    def ity(bits):
        return ir.VectorType(ir.IntType(bits), W) if vec else ir.IntType(bits)

    ki = builder.fptosi(k, ity(32))
    if ctype == types.float32:
        bits = builder.shl(builder.add(ki, _const(ity(32), 127)), _const(ity(32), 23))
    else:
        wide = builder.sext(ki, ity(64))
        bits = builder.shl(builder.add(wide, _const(ity(64), 1023)), _const(ity(64), 52))
    return builder.bitcast(bits, k.type)


def _by_scalef(context, ty):
    """Whether exp's values of LLVM type ``ty`` scale by ``vscalefps/pd`` (``_scale``):
    vectors, where numba compiles for AVX-512."""
    return isinstance(ty, ir.VectorType) and has_feature(context, "avx512f")


def _scale(context, builder, p, k, ctype):
    """p * 2**k for exp's p (1/sqrt(2) <= p <= sqrt(2)) and integral k: with exp's clamp
    the product is a normal number, so it is exact. Where numba compiles for AVX-512,
    vectors take ``vscalefps/pd``, one instruction instead of four (2**k built from
    exponent bits, then a multiply): 3-12 % of an in-cache softmax; the same bits."""
    if _by_scalef(context, p.type):
        kind = "ps" if ctype == types.float32 else "pd"

        def scalef(a, b):
            # (a, b, passthrough, lane mask: all, rounding: the current mode)
            return _call(builder, f"llvm.x86.avx512.mask.scalef.{kind}.512",
                         [a, b, a, ir.Constant(ir.IntType(a.type.count), -1),
                          ir.Constant(ir.IntType(32), 4)])

        return per_zmm(builder, (p, k), scalef)
    return builder.fmul(p, _exp2_int(builder, k, ctype))


def emit_exp(context, builder, t, ctype, nonpos):
    """exp(t) in ``ctype``; ``nonpos``: t <= 0 or NaN is promised, which drops the upper
    clamp and the inf select."""
    ty = t.type
    lo, hi = _RANGE[ctype]
    # vectors scaled by vscalef take k as a float, never converted to int: a NaN may then
    # pass the lower clamp and stay NaN through every step
    nan_passes = nonpos and _by_scalef(context, ty)
    if nan_passes:
        tc = builder.select(builder.fcmp_ordered("<", t, _const(ty, lo)), _const(ty, lo), t)
    else:
        tc = _intrinsic2(builder, "maxnum", t, _const(ty, lo))
    if not nonpos:
        tc = _intrinsic2(builder, "minnum", tc, _const(ty, hi))
    k = _intrinsic1(builder, "rint", builder.fmul(tc, _const(ty, _LOG2E)))
    ln2_hi, ln2_lo = _LN2[ctype]
    r = _call(builder, f"llvm.fma.{_suffix(ty)}", [k, _const(ty, -ln2_hi), tc])
    r = _call(builder, f"llvm.fma.{_suffix(ty)}", [k, _const(ty, -ln2_lo), r])
    coeffs = _POLY[ctype]
    p = _const(ty, coeffs[0])
    for c in coeffs[1:]:
        p = _call(builder, f"llvm.fma.{_suffix(ty)}", [p, r, _const(ty, c)])
    res = _scale(context, builder, p, k, ctype)
    res = builder.select(builder.fcmp_ordered("<", t, _const(ty, lo)), _const(ty, 0.0), res)
    if not nonpos:
        res = builder.select(builder.fcmp_ordered(">", t, _const(ty, hi)),
                             _const(ty, math.inf), res)
    if not nan_passes:
        res = builder.select(builder.fcmp_unordered("uno", t, t), t, res)
    return res


def _exp_intrinsic(nonpos):
    @intrinsic
    def op(typingctx, t):
        ctype = _ctype_of(t)
        if ctype not in (types.float32, types.float64):
            return None

        def codegen(context, builder, sig, args):
            return emit_exp(context, builder, args[0], ctype, nonpos)

        return t(t), codegen

    return op


vexp = _exp_intrinsic(nonpos=False)
vexp.__doc__ = """exp of every lane (or of a float scalar): under 1 ulp off (0.88 / 0.90 ulp the
largest error measured, float32 / float64)."""
vexp_nonpos = _exp_intrinsic(nonpos=True)
vexp_nonpos.__doc__ = """``vexp`` for arguments <= 0 (x - max) or NaN: the same bits, fewer
operations. A NaN gives NaN: a max pass may leave a NaN out (``_simd.vmax_num``), and the sum
of these exps tells it."""


# A weight can lift a term whose exp is below the smallest normal number (0 above) back to
# significance: w * exp(t) with t < lo is taken as (w * 2^-S) * exp(t + S ln2) instead, with
# S ln2 just under -lo (so t + S ln2 < -0.68, and 2^-S is a normal number). Terms count down
# to t = lo - S ln2 (-1416.09 / -173.97, float64 / float32), where even the largest finite
# weight leaves a term near the smallest normal number. S ln2_hi is exact (ln2_hi has 32 / 9
# significant bits), and so is t + S ln2_hi (a multiple of ulp(t), smaller than t);
# adding S ln2_lo rounds once (a relative error of the term under 5.7e-14 / 3.8e-6). A
# lifted term that is itself below the normal range stays 0, as exp's results there. An
# infinite weight on a finite element gives that infinity however far its exp underflows
# (not inf * 0 = NaN). Lanes from lo on keep w * exp(t): the same bits as before; -inf
# lanes give what both forms give (0, or NaN for an infinite weight: inf * 0).
_LIFT = {types.float32: 125, types.float64: 1021}


def lift_constants(ctype):
    """(lo, S ln2_hi, S ln2_lo, 2^-S, the smallest normal number) of the lift for compute
    type ``ctype`` (float32 or float64), as floats: for kernels that write the lift out
    themselves (the GPU's)."""
    s = _LIFT[ctype]
    tiny = 2.0 ** -126 if ctype == types.float32 else 2.0 ** -1022
    return _RANGE[ctype][0], s * _LN2[ctype][0], s * _LN2[ctype][1], 2.0 ** -s, tiny


def _exp_weighted(nonpos):
    exp = vexp_nonpos if nonpos else vexp

    def vexp_weighted(t, w):
        """w * exp(t), lane by lane, for weights w (``vexp`` or, ``nonpos``, ``vexp_nonpos``
        on t): where exp(t) is below the smallest normal number, the term is computed
        scaled (see ``_LIFT``) instead of w * 0."""

    @overload(vexp_weighted, jit_options=INLINE)
    def _impl(t, w):
        ctype = _ctype_of(t)
        if ctype not in _LIFT:
            return None
        lo, hi_part, lo_part, scale, tiny = lift_constants(ctype)
        if isinstance(t, types.Float):  # a scalar: a branch instead of lane selects
            def scalar(t, w):
                if t < lo and t != -math.inf:
                    if abs(w) == math.inf:
                        return w
                    lifted = (w * scale) * vexp_nonpos((t + hi_part) + lo_part)
                    if abs(lifted) >= tiny:
                        return lifted
                return exp(t) * w
            return scalar

        def impl(t, w):
            e = vmul(exp(t), w)
            if vall(vlt(lo, t)):  # the common case: no lane below the range
                return e
            # only a weight above 1 lifts a term below the range into it: without such a
            # lane (-inf lanes aside; NaN lanes take the check), no second exp
            big = vlt(1.0, vabs(w))
            if vall(vlt(lo, vselect(big, vselect(veq(t, -math.inf), 0.0, t), 0.0))):
                return e
            # r = exp(t + S ln2) w = w exp(t) 2^S from weights above 1 (others: 1), scaled
            # back only where |r| >= 1/2 (the term is then normal): no subnormal operand
            # or result, each a microcode assist on x86 (a weighted float32 logsumexp of
            # widely spread values ran ~10x slower through them). Scaling by 2^-S is exact
            # there, so these are the bits of (w 2^-S) exp(t + S ln2).
            r = vmul(vexp_nonpos(vadd(vadd(t, hi_part), lo_part)), vselect(big, w, 1.0))
            small = vlt(vabs(r), 0.5)
            lifted = vmul(vselect(big, vselect(small, 1.0, r), 1.0), scale)
            low = vselect(big, vselect(small, e, lifted), e)
            low = vselect(vlt(-math.inf, t), vselect(veq(vabs(w), math.inf), w, low), low)
            return vselect(vlt(t, lo), low, e)
        return impl

    return vexp_weighted


vexp_weighted = _exp_weighted(nonpos=False)
vexp_nonpos_weighted = _exp_weighted(nonpos=True)


# ---------------------------------------------------------------------------------------
# log for float64, as fdlibm computes it (error < 1 ulp): x = 2^k (1 + f) with
# sqrt(2)/2 <= 1 + f < sqrt(2), s = f / (2 + f), and log(1 + f) = f - hfsq + s (hfsq + R(s^2))
# with R a fixed polynomial. No fused operations, so any machine gives the same bits; the
# same IR serves scalars and vectors.

_LOG_LG = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
           2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
           1.479819860511658591e-01)
_LOG_LN2 = (6.93147180369123816490e-01, 1.90821492927058770002e-10)


def emit_log(builder, x):
    ty = x.type
    vec = isinstance(ty, ir.VectorType)
    ity = ir.VectorType(_I64, W) if vec else _I64
    # subnormal x: scaled by 2^54 first
    tiny = builder.fcmp_ordered("<", x, _const(ty, 2.2250738585072014e-308))
    xs = builder.select(tiny, builder.fmul(x, _const(ty, 18014398509481984.0)), x)
    bits = builder.bitcast(xs, ity)
    k = builder.sub(builder.lshr(bits, _const(ity, 52)), _const(ity, 1023))
    k = builder.select(tiny, builder.sub(k, _const(ity, 54)), k)
    mbits = builder.or_(builder.and_(bits, _const(ity, (1 << 52) - 1)),
                        _const(ity, 0x3FF0000000000000))
    m = builder.bitcast(mbits, ty)  # in [1, 2)
    big = builder.fcmp_ordered(">=", m, _const(ty, 1.4142135623730951))
    m = builder.select(big, builder.fmul(m, _const(ty, 0.5)), m)
    k = builder.select(big, builder.add(k, _const(ity, 1)), k)
    dk = builder.sitofp(k, ty)
    f = builder.fsub(m, _const(ty, 1.0))
    s = builder.fdiv(f, builder.fadd(_const(ty, 2.0), f))
    z = builder.fmul(s, s)
    w = builder.fmul(z, z)
    lg = [_const(ty, c) for c in _LOG_LG]
    t1 = builder.fmul(w, builder.fadd(lg[1], builder.fmul(
        w, builder.fadd(lg[3], builder.fmul(w, lg[5])))))
    t2 = builder.fmul(z, builder.fadd(lg[0], builder.fmul(w, builder.fadd(
        lg[2], builder.fmul(w, builder.fadd(lg[4], builder.fmul(w, lg[6])))))))
    r = builder.fadd(t2, t1)
    hfsq = builder.fmul(builder.fmul(_const(ty, 0.5), f), f)
    inner = builder.fadd(builder.fmul(s, builder.fadd(hfsq, r)),
                         builder.fmul(dk, _const(ty, _LOG_LN2[1])))
    res = builder.fsub(builder.fmul(dk, _const(ty, _LOG_LN2[0])),
                       builder.fsub(builder.fsub(hfsq, inner), f))
    # 0 -> -inf; inf -> inf; negative or NaN -> NaN
    res = builder.select(builder.fcmp_ordered("==", x, _const(ty, 0.0)),
                         _const(ty, -math.inf), res)
    res = builder.select(builder.fcmp_ordered("==", x, _const(ty, math.inf)),
                         _const(ty, math.inf), res)
    return builder.select(builder.fcmp_ordered(">=", x, _const(ty, 0.0)), res,
                          _const(ty, math.nan))


@intrinsic
def vlog(typingctx, x):
    """Natural log of every lane of a float64 Vec, or of a float64 scalar (< 1 ulp)."""
    if _ctype_of(x) != types.float64:
        return None
    return x(x), lambda context, builder, sig, args: emit_log(builder, args[0])
