"""Scalar helpers for the CPU kernels: a vectorizable exp and float16 conversions.

numba 0.68 has no SVML, so ``np.exp``/``math.exp`` inside a loop become scalar libm calls
(4096x4096 float32 softmax: 26.6 ms with ``np.exp``, 7.6 ms with a polynomial exp; see
shared FACTS.md). The exp below is written from plain arithmetic and two bit-casts so that
LLVM's loop vectorizer can turn it into SIMD code.

float16 cannot be used inside ``@njit`` at all; float16 arrays reach the kernels viewed as
uint16 and are converted element-wise with ``fpext``/``fptrunc`` (F16C instructions on x86).
"""

from __future__ import annotations

import math

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

# Fast-math flags without ``nnan``/``ninf``: reassociation lets LLVM vectorize the
# reductions, while comparisons against NaN/inf keep their IEEE meaning (the non-finite
# rules of the public API depend on that).
FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}
# The exp itself must not be reassociated: that would fold away the rounding trick and
# merge the two-part ln 2 of the range reduction. It is compiled as its own function with
# these flags; LLVM still inlines and vectorizes it inside the callers' loops.
EXP_FASTMATH = {"contract", "nsz"}


@intrinsic
def _rint(typingctx, value):
    """Round to nearest (ties to even); LLVM vectorizes it to one rounding instruction."""
    if value not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.rint", [args[0].type])
        return builder.call(fn, args)

    return value(value), codegen


@intrinsic
def maximum(typingctx, a, b):
    """IEEE maximum that propagates NaN. Unlike ``max()`` or a compare-and-select, LLVM
    vectorizes it as a reduction (4096-element float32 max: 0.054 vs 0.32 ns/element)."""
    if a != b or a not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maximum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return a(a, a), codegen


def _strict(opname):
    """An IEEE operation that LLVM may neither reassociate with its neighbours
    (``(x - m) - lse`` must not become ``x - (m + lse)``: wrong for x near 1e308) nor fold
    a division into, so every caller gets the same bits. It still vectorizes.

    numba stamps its fast-math flags on every floating-point instruction that has none
    (and functions called from a fast-math function inherit its flags), so the instruction
    is emitted here with ``nsz`` alone, which allows no reordering."""

    @intrinsic
    def op(typingctx, a, b):
        floats = (types.float32, types.float64)
        if a not in floats or b not in floats:
            return None
        result = types.float64 if types.float64 in (a, b) else types.float32

        def codegen(context, builder, sig, args):
            x, y = (context.cast(builder, v, t, result)
                    for v, t in zip(args, sig.args, strict=True))
            return getattr(builder, opname)(x, y, flags=("nsz",))

        return result(a, b), codegen

    return op


strict_add = _strict("fadd")
strict_sub = _strict("fsub")
strict_mul = _strict("fmul")
strict_div = _strict("fdiv")


@intrinsic
def _exp2_int(typingctx, k):
    """2**k for an integral float32/float64 k inside the normal exponent range.

    The exponent field is built in 32-bit integers (float64: converted through int32 and
    widened), because AVX2 has no vector int64 <-> float conversions."""
    if k not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        ki = builder.fptosi(args[0], i32)
        if k == types.float32:
            biased = builder.add(ki, ir.Constant(i32, 127))
            bits = builder.shl(biased, ir.Constant(i32, 23))
            return builder.bitcast(bits, ir.FloatType())
        i64 = ir.IntType(64)
        biased = builder.add(builder.sext(ki, i64), ir.Constant(i64, 1023))
        bits = builder.shl(biased, ir.Constant(i64, 52))
        return builder.bitcast(bits, ir.DoubleType())

    return k(k), codegen


@intrinsic
def half_bits_to_f32(typingctx, bits):
    """IEEE half stored in a uint16 -> float32 (exact)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_half_bits(typingctx, value):
    """float32 -> IEEE half (round to nearest even) stored in a uint16."""
    if value != types.float32:
        return None

    def codegen(context, builder, sig, args):
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return types.uint16(types.float32), codegen


# ---------------------------------------------------------------------------------------
# exp: range reduction t = k*ln2 + r, |r| <= ln2/2, Taylor polynomial in r, 2^k built
# from its exponent bits. For NaN the float->int conversion inside _exp2_int is poison in
# LLVM, but that value is never selected: the last select returns t itself.
# Below the smallest normal result the value is 0 (denormal results are dropped: an
# absolute error under 1.2e-38 / 2.3e-308); above the largest finite result it is inf;
# NaN stays NaN.

_LOG2E = 1.4426950408889634
_LN2_HI_32 = 0.693359375  # ln 2 split so that k * _LN2_HI_32 is exact in float32
_LN2_LO_32 = -2.12194440e-4
_LN2_HI_64 = 0.6931471803691238  # fdlibm's split
_LN2_LO_64 = 1.9082149292705877e-10


@numba.njit(fastmath=EXP_FASTMATH, inline="always")
def _exp_poly_f32(tc):
    """exp(tc) for tc already clamped to the finite range."""
    k = _rint(tc * numba.float32(_LOG2E))
    r = tc - k * numba.float32(_LN2_HI_32)
    r = r - k * numba.float32(_LN2_LO_32)
    p = numba.float32(1.0 / 720.0)
    p = p * r + numba.float32(1.0 / 120.0)
    p = p * r + numba.float32(1.0 / 24.0)
    p = p * r + numba.float32(1.0 / 6.0)
    p = p * r + numba.float32(0.5)
    p = p * r + numba.float32(1.0)
    p = p * r + numba.float32(1.0)
    return p * _exp2_int(k)


@numba.njit(fastmath=EXP_FASTMATH)
def exp_f32(t):
    """exp for float32 in float32 arithmetic, max error about 3 ulp, vectorizable. Results
    above exp(88.37) (2.5e38) are returned as inf, below exp(-87.33) as 0."""
    res = _exp_poly_f32(min(max(t, numba.float32(-87.33)), numba.float32(88.37)))
    if t < numba.float32(-87.33):
        res = numba.float32(0.0)
    if t > numba.float32(88.37):
        res = numba.float32(math.inf)
    if t != t:
        res = t
    return res


@numba.njit(fastmath=EXP_FASTMATH)
def exp_nonpos_f32(t):
    """``exp_f32`` for t <= 0 (not NaN), bit for bit, with 5 of its ~20 vector operations
    left out: the upper clamp and the inf and NaN selects. softmax calls it with
    t = x - max, after sending rows whose max is NaN or +inf to NaN (10-25 % faster
    forward passes on rows of 128+ elements, measured on the 2-core EPYC)."""
    res = _exp_poly_f32(max(t, numba.float32(-87.33)))
    if t < numba.float32(-87.33):
        res = numba.float32(0.0)
    return res


@numba.njit(fastmath=EXP_FASTMATH, inline="always")
def _exp_poly_f64(tc):
    k = _rint(tc * _LOG2E)
    r = tc - k * _LN2_HI_64
    r = r - k * _LN2_LO_64
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _exp2_int(k)


@numba.njit(fastmath=EXP_FASTMATH)
def exp_f64(t):
    """exp for float64, max error about 2 ulp, vectorizable."""
    res = _exp_poly_f64(min(max(t, -708.39), 709.0))
    if t < -708.39:
        res = 0.0
    if t > 709.0:
        res = math.inf
    if t != t:
        res = t
    return res


@numba.njit(fastmath=EXP_FASTMATH)
def exp_nonpos_f64(t):
    """``exp_f64`` for t <= 0 (not NaN), bit for bit; see ``exp_nonpos_f32``."""
    res = _exp_poly_f64(max(t, -708.39))
    if t < -708.39:
        res = 0.0
    return res


# ---------------------------------------------------------------------------------------
# Element access that hides the storage type: kernels load into the compute type
# (float32 for float16/float32 storage, float64 for float64) and store back.

def load(value):
    """Storage element -> compute value (python fallback; the njit version is overloaded)."""
    raise NotImplementedError


def store(value, like):
    """Compute value -> storage element of ``like``'s dtype (njit only)."""
    raise NotImplementedError


def compute_zero(arr):
    """Zero in the compute type of array ``arr`` (njit only)."""
    raise NotImplementedError


def compute_cast(value, arr):
    """``value`` converted to the compute type of array ``arr`` (njit only)."""
    raise NotImplementedError


def exp(value):
    """The vectorizable exp of the compute type (njit only)."""
    raise NotImplementedError


def exp_nonpos(value):
    """``exp`` for arguments <= 0 that are not NaN, e.g. x - max of a row whose max is
    finite (njit only)."""
    raise NotImplementedError


@overload(load, inline="always")
def _load_impl(value):
    if value == types.uint16:
        return lambda value: half_bits_to_f32(value)
    if value in (types.float32, types.float64):
        return lambda value: value
    return None


@overload(store, inline="always")
def _store_impl(value, like):
    dtype = like.dtype if isinstance(like, types.Array) else like
    if dtype == types.uint16:
        return lambda value, like: f32_to_half_bits(numba.float32(value))
    if dtype == types.float32:
        return lambda value, like: numba.float32(value)
    if dtype == types.float64:
        return lambda value, like: numba.float64(value)
    return None


@overload(exp, inline="always")
def _exp_impl(value):
    if value == types.float32:
        return lambda value: exp_f32(value)
    if value == types.float64:
        return lambda value: exp_f64(value)
    return None


@overload(exp_nonpos, inline="always")
def _exp_nonpos_impl(value):
    if value == types.float32:
        return lambda value: exp_nonpos_f32(value)
    if value == types.float64:
        return lambda value: exp_nonpos_f64(value)
    return None


def _compute_type(dtype):
    if dtype in (types.uint16, types.float32):
        return types.float32
    if dtype == types.float64:
        return types.float64
    return None


@overload(compute_zero, inline="always")
def _compute_zero_impl(arr):
    ctype = _compute_type(arr.dtype)
    if ctype is None:
        return None
    return lambda arr: ctype(0.0)


@overload(compute_cast, inline="always")
def _compute_cast_impl(value, arr):
    ctype = _compute_type(arr.dtype)
    if ctype is None:
        return None
    return lambda value, arr: ctype(value)
