"""Explicit SIMD for the CPU kernels: a 16-lane vector type for numba and lane-wise IEEE
operations on it.

Why: the order of a floating-point sum decides its last bits. If the order is left to
LLVM (fast-math ``reassoc`` lets the vectorizer pick lane counts, unrolling and a combine
tree), it changes with the compile path: a kernel compiled in this process, loaded from
numba's disk cache, inlined into a user's function or specialized for a read-only array can
give different bits for the same input. Without ``reassoc`` LLVM keeps the written order
but no longer vectorizes reductions. So the kernels write the lanes themselves: a value of
type ``Vec`` is an LLVM ``<16 x float>`` (or ``<16 x double>``) that numba keeps in
registers, every operation here is one lane-wise IEEE instruction (no fast-math flags at
all: LLVM may not reassociate, contract or approximate them), and horizontal sums use one
fixed halving tree. The result is the same on any compile path and any x86 vector width
(AVX2 runs a ``<16 x float>`` as two registers, AVX-512 as one; the lanes are the same).

Integer ``imin`` and ``imax`` (index arithmetic) are intrinsics too: numba's ``min`` and
``max`` compile a function of their own for each pair of argument types (an integer
literal is a type of its own), 0.02 s each, six or more of them in a first call.

Storage and compute types: float16 arrays reach the kernels viewed as uint16 and are
computed in float32; float32 in float32; float64 in float64. Loads convert storage ->
compute type, stores convert back (round to nearest even). An input read "as if cast" to
another float type (``dtype=``) reaches them viewed as an integer type that names the pair
(``CAST_VIEWS``): its loads round to the target type and widen to the target's compute
type in the same instructions, so no cast pass over the input is needed. Masks (``where=``)
are bytes (numpy bool viewed as uint8), loaded as lane masks.

Loads and stores (``_vmem``) take a count ``k`` of valid lanes: lanes ``k..15`` are not touched in
memory, loads fill them with ``fill``. With ``k == W`` known at compile time (the main
loops), or ``k`` the marker ``ALL`` (a compile-time "all W lanes" that survives calls
between compiled functions), LLVM turns the masked access into a plain vector load or
store.
"""

from __future__ import annotations

import math

from llvmlite import ir
from numba import types
from numba.core.imputils import impl_ret_borrowed, lower_builtin
from numba.extending import intrinsic, models, register_model, type_callable

from ._markers import Marker, MarkerType

W = 16  # lanes per vector, for every dtype: the lane structure is part of the result
ALL = Marker("all lanes")  # as a lane count: W, known when compiling

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_BOOL = ir.IntType(1)


class Vec(types.Type):
    """W lanes of a compute type (float32 or float64)."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vec{W}({dtype})")


class Mask(types.Type):
    """W booleans: the result of a lane-wise comparison."""

    def __init__(self):
        super().__init__(name=f"Mask{W}")


MASK = Mask()


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elt = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elt, W))


@register_model(Mask)
class _MaskModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_BOOL, W))


# (input dtype, result dtype) -> the dtype its data is viewed as when the kernels read it
# as if cast to the result dtype; each names (storage, rounding, compute) in ``_CODES``
CAST_VIEWS = {
    ("float16", "float64"): "int16",
    ("float32", "float64"): "int32",
    ("float32", "float16"): "uint32",
    ("float64", "float32"): "int64",
    ("float64", "float16"): "uint64",
}
# array dtype as the kernels see it -> (stored float type, float type the value is first
# rounded to or None, compute type). Arrays of the first three are also stored to.
_CODES = {
    types.uint16: ("half", None, types.float32),
    types.float32: ("float", None, types.float32),
    types.float64: ("double", None, types.float64),
    types.int16: ("half", None, types.float64),
    types.int32: ("float", None, types.float64),
    types.uint32: ("float", "half", types.float32),
    types.int64: ("double", "float", types.float32),
    types.uint64: ("double", "half", types.float32),
}
_IR_FLOATS = {"half": ir.HalfType(), "float": ir.FloatType(), "double": ir.DoubleType()}


def storage_view(dtype, result):
    """The numpy dtype name that array data of float dtype ``dtype`` is viewed as for the
    kernels when the result has float dtype ``result`` (names, e.g. "float32")."""
    if dtype == result:
        return "uint16" if dtype == "float16" else dtype
    if (dtype, result) in CAST_VIEWS:
        return CAST_VIEWS[dtype, result]
    return "uint16" if dtype == "float16" else dtype  # float16 -> float32: the same loads


def compute_type(dtype):
    """The compute type of a storage (array) dtype, or None if unsupported."""
    code = _CODES.get(dtype)
    return None if code is None else code[2]


def _stored(dtype):
    """Whether the kernels store into arrays of this dtype (the result types)."""
    return dtype in (types.uint16, types.float32, types.float64)


def _ctype_of(t):
    """Compute type of an argument: a Vec, an array, or a float scalar."""
    if isinstance(t, Vec):
        return t.dtype
    if isinstance(t, types.Array):
        return compute_type(t.dtype)
    if isinstance(t, types.Float):
        return t
    return None


# ---------------------------------------------------------------------------------------
# IR helpers

def _splat(builder, value, n=W):
    vty = ir.VectorType(value.type, n)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _const(ty, value):
    """A constant of scalar or vector type ``ty``."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def _call(builder, name, args, ret=None):
    ty = args[0].type
    fnty = ir.FunctionType(ret or ty, [a.type for a in args])
    fn = builder.module.declare_intrinsic(name, fnty=fnty)
    return builder.call(fn, args)


def _suffix(ty):
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{_suffix(ty.element)}"
    return {ir.FloatType: "f32", ir.DoubleType: "f64", ir.HalfType: "f16"}.get(
        type(ty), f"i{getattr(ty, 'width', 0)}")


def _intrinsic1(builder, name, x):
    return _call(builder, f"llvm.{name}.{_suffix(x.type)}", [x])


def _intrinsic2(builder, name, x, y):
    return _call(builder, f"llvm.{name}.{_suffix(x.type)}", [x, y])


def _as_compute(context, builder, value, fromty, ctype):
    """A scalar or Vec argument as an LLVM value of ``ctype`` lanes (scalars splatted)."""
    if isinstance(fromty, Vec):
        return value
    return _splat(builder, context.cast(builder, value, fromty, ctype))


def _lane_mask(builder, k, ktype):
    """<W x i1>: lane < k; all lanes when ``k`` is the ``ALL`` marker."""
    if isinstance(ktype, MarkerType):
        return ir.Constant(ir.VectorType(_BOOL, W), [1] * W)
    idx = ir.Constant(ir.VectorType(_I32, W), list(range(W)))
    return builder.icmp_unsigned("<", idx, _splat(builder, builder.trunc(k, _I32)))


# ---------------------------------------------------------------------------------------
# lane-wise arithmetic: Vec with Vec, or Vec with a scalar (converted to the Vec's type and
# splatted). Each is one IEEE instruction without fast-math flags.

def _binary(emit):
    @intrinsic
    def op(typingctx, a, b):
        if isinstance(a, types.Float) and a == b:  # the same operation on two scalars
            return a(a, b), lambda context, builder, sig, args: emit(builder, *args)
        vt = a if isinstance(a, Vec) else b
        if not isinstance(vt, Vec) or not all(
                t == vt or isinstance(t, (types.Float, types.Integer)) for t in (a, b)):
            return None

        def codegen(context, builder, sig, args):
            x, y = (_as_compute(context, builder, v, t, vt.dtype)
                    for v, t in zip(args, sig.args, strict=True))
            return emit(builder, x, y)

        return vt(a, b), codegen

    return op


vadd = _binary(lambda b, x, y: b.fadd(x, y))
vsub = _binary(lambda b, x, y: b.fsub(x, y))
vmul = _binary(lambda b, x, y: b.fmul(x, y))
vdiv = _binary(lambda b, x, y: b.fdiv(x, y))
# llvm.maximum: NaN-propagating, -0 < +0. The maximum of a set is then independent of the
# order it is taken in, so max reductions need no fixed tree.
vmax = _binary(lambda b, x, y: _intrinsic2(b, "maximum", x, y))


def has_feature(context, name):
    """Whether numba's target machine has CPU feature ``name`` (e.g. "avx512f"): its feature
    string, which also honours ``NUMBA_CPU_FEATURES`` and keys numba's disk cache."""
    features = getattr(context.codegen(), "_tm_features", "") or ""
    return f"+{name}" in features.split(",")


def per_zmm(builder, values, emit):
    """``emit(*parts)`` for each 512-bit part of the W-lane vectors ``values`` (one part for
    float32, two halves for float64), the parts' results joined back into W lanes."""
    lanes = 512 // (32 if isinstance(values[0].type.element, ir.FloatType) else 64)
    if lanes == W:
        return emit(*values)
    parts = []
    for lo in range(0, W, lanes):
        pick = ir.Constant(ir.VectorType(_I32, lanes), list(range(lo, lo + lanes)))
        parts.append(emit(*(builder.shuffle_vector(v, v, pick) for v in values)))
    return builder.shuffle_vector(*parts, ir.Constant(ir.VectorType(_I32, W), list(range(W))))


@intrinsic
def vmax_num(typingctx, a, b):
    """``vmax`` of two vectors, but a NaN lane may be dropped: that lane then gives the other
    operand's (NaN where both are NaN). Where numba compiles for AVX-512DQ it is one
    ``vrangeps/pd`` per register (max, the sign of the larger: -0 < +0), against ~5
    instructions for llvm.maximum's NaN and signed-zero fixes: 14-15 % of a float32
    softmax's time in the cache (float64: 5 %). Elsewhere it is ``vmax``. The max passes
    take it, and their sums tell a NaN instead (``_row_kernel``): a max pass over a row
    with NaN may return any of its values."""
    if not isinstance(a, Vec) or a != b:
        return None

    def codegen(context, builder, sig, args):
        if not has_feature(context, "avx512dq"):
            return _intrinsic2(builder, "maximum", *args)

        def vrange(x, y):
            kind = "ps" if isinstance(x.type.element, ir.FloatType) else "pd"
            mask = ir.Constant(ir.IntType(x.type.count), -1)
            # (x, y, imm 0b0101: max, sign of the compare's result; passthrough, lane mask:
            # all, exceptions: as the current mode)
            return _call(builder, f"llvm.x86.avx512.mask.range.{kind}.512",
                         [x, y, ir.Constant(_I32, 5), x, mask, ir.Constant(_I32, 4)])

        return per_zmm(builder, args, vrange)

    return a(a, b), codegen


def _compare(pred):
    @intrinsic
    def op(typingctx, a, b):
        vt = a if isinstance(a, Vec) else b
        if not isinstance(vt, Vec):
            return None

        def codegen(context, builder, sig, args):
            x, y = (_as_compute(context, builder, v, t, vt.dtype)
                    for v, t in zip(args, sig.args, strict=True))
            return builder.fcmp_ordered(pred, x, y)

        return MASK(a, b), codegen

    return op


vlt = _compare("<")
veq = _compare("==")


@intrinsic
def vabs(typingctx, a):
    """|x| of every lane (the sign bit cleared)."""
    if not isinstance(a, Vec):
        return None
    return a(a), lambda context, builder, sig, args: _intrinsic1(builder, "fabs", args[0])


@intrinsic
def vnonzero(typingctx, a):
    """Lanes that are not 0 (NaN counts as not 0, as ``x != 0`` does)."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        return builder.fcmp_unordered("!=", args[0], _const(args[0].type, 0.0))

    return MASK(a), codegen


@intrinsic
def vone_nan(typingctx, a):
    """``a`` with every NaN lane the quiet NaN of positive sign and no payload. An
    operation on NaNs gives one of its operands' (x86: the first's), and LLVM may swap the
    operands of a commutative one, so a computed NaN's sign and payload depend on the
    compiled code: different drivers gave different NaN bits for one input."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        return builder.select(builder.fcmp_ordered("==", x, x), x, _const(x.type, math.nan))

    return a(a), codegen


@intrinsic
def visfinite(typingctx, a):
    """Lanes that are neither NaN nor infinite."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        mag = _intrinsic1(builder, "fabs", x)
        return builder.fcmp_ordered("<", mag, _const(x.type, math.inf))

    return MASK(a), codegen


@intrinsic
def vbelow(typingctx, k):
    """The mask of lanes 0 .. k-1 (an integer k)."""
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _lane_mask(builder, context.cast(builder, args[0], sig.args[0], types.int64),
                          types.int64)

    return MASK(k), codegen


@intrinsic
def vselect(typingctx, mask, a, b):
    """Lane-wise ``a if mask else b``; a scalar operand is splatted."""
    vt = a if isinstance(a, Vec) else b
    if mask != MASK or not isinstance(vt, Vec):
        return None

    def codegen(context, builder, sig, args):
        x, y = (_as_compute(context, builder, v, t, vt.dtype)
                for v, t in zip(args[1:], sig.args[1:], strict=True))
        return builder.select(args[0], x, y)

    return vt(mask, a, b), codegen


def _converter(splat):
    @intrinsic
    def op(typingctx, value, like):
        ctype = _ctype_of(like)
        if ctype is None or not isinstance(value, (types.Float, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            scalar = context.cast(builder, args[0], sig.args[0], ctype)
            return _splat(builder, scalar) if splat else scalar

        return (Vec(ctype) if splat else ctype)(value, like), codegen

    return op


vsplat = _converter(splat=True)
vsplat.__doc__ = ("``value`` in every lane, in the compute type of ``like`` (array, Vec or "
                  "float type).")
to_compute = _converter(splat=False)
to_compute.__doc__ = "A scalar converted to the compute type of ``like``."


@intrinsic
def vwiden(typingctx, a):
    """float32 lanes -> float64 lanes (exact)."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        if sig.args[0].dtype == types.float64:
            return args[0]
        return builder.fpext(args[0], ir.VectorType(ir.DoubleType(), W))

    return Vec(types.float64)(a), codegen


@intrinsic
def vnarrow(typingctx, a, like):
    """float64 lanes -> the compute type of ``like`` (round to nearest even)."""
    ctype = _ctype_of(like)
    if not isinstance(a, Vec) or a.dtype != types.float64 or ctype is None:
        return None

    def codegen(context, builder, sig, args):
        if ctype == types.float64:
            return args[0]
        return builder.fptrunc(args[0], ir.VectorType(ir.FloatType(), W))

    return Vec(ctype)(a, like), codegen


@intrinsic
def vlane(typingctx, a, lane):
    """One lane as a scalar."""
    if not isinstance(a, Vec) or not isinstance(lane, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], args[1])

    return a.dtype(a, lane), codegen


@intrinsic
def vwith_lane(typingctx, a, lane, value):
    """``a`` with one lane replaced by the scalar ``value``."""
    if not isinstance(a, Vec) or not isinstance(lane, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], a.dtype)
        return builder.insert_element(args[0], v, args[1])

    return a(a, lane, value), codegen


# ---------------------------------------------------------------------------------------
# horizontal reductions

def _halving(builder, v, combine):
    """Lanes i and i + h combined for h = W/2, W/4, ..., 1: the package's one tree."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n),
                                                       list(range(n, 2 * n))))
        v = combine(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


@intrinsic
def vsum(typingctx, a):
    """Sum of the lanes by the halving tree: ((l0+l8)+(l4+l12)) + ((l2+l10)+(l6+l14)) + ..."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        return _halving(builder, args[0], builder.fadd)

    return a.dtype(a), codegen


# The trees of TREE_ROWS vectors at once (``vsum_rows``, ``vmax_rows``): a row's lanes meet in
# ``_halving``'s pairs, in its order, so each result has the bits of that row's own tree,
# but every level combines several rows in one instruction. One tree after another is a
# chain of dependent steps per row (~20 cycles); over a short row's few vectors those chains
# took a third of a 32-element row's time.
TREE_ROWS = 8


def _halving_rows(builder, vs, combine):
    """``_halving`` of each vector in ``vs`` (TREE_ROWS of them): a vector of their results
    in order. Vectors are paired, lo halves of each row's lanes against hi halves, until one
    vector holds every row's remaining lanes; then it halves within itself."""
    rows, live = 1, W  # rows per vector, lanes per row

    def halves(p, q, nrows):
        h = live // 2
        lo = [r * live + j for r in range(nrows) for j in range(h)]
        hi = [r * live + h + j for r in range(nrows) for j in range(h)]
        if q is not p:  # two vectors: q's lanes are numbered from W on
            lo += [W + i for i in lo]
            hi += [W + i for i in hi]
        lo_v, hi_v = (ir.Constant(ir.VectorType(_I32, len(ix)), ix) for ix in (lo, hi))
        return combine(builder.shuffle_vector(p, q, lo_v), builder.shuffle_vector(p, q, hi_v))

    while len(vs) > 1:
        vs = [halves(vs[i], vs[i + 1], rows) for i in range(0, len(vs), 2)]
        rows, live = 2 * rows, live // 2
    v = vs[0]
    while live > 1:
        v = halves(v, v, rows)
        live //= 2
    return v


def _rows_tree(combine_of):
    @intrinsic
    def op(typingctx, arr):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
                and arr.dtype in (types.float32, types.float64)):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            vty = ir.VectorType(data.type.pointee, W)
            align = context.get_abi_sizeof(vty.element)
            vs = [builder.load(builder.bitcast(builder.gep(data, [ir.Constant(_I64, r * W)]),
                                               vty.as_pointer()), align=align)
                  for r in range(TREE_ROWS)]
            out = _halving_rows(builder, vs, combine_of(builder))
            pad = list(range(TREE_ROWS)) + [TREE_ROWS] * (W - TREE_ROWS)  # lanes past: 0
            return builder.shuffle_vector(out, ir.Constant(out.type, None),
                                          ir.Constant(ir.VectorType(_I32, W), pad))

        return Vec(arr.dtype)(arr), codegen

    return op


vsum_rows = _rows_tree(lambda builder: builder.fadd)
vsum_rows.__doc__ = """Lane r < TREE_ROWS: ``vsum`` of the vector at arr[r*W : (r+1)*W];
later lanes 0."""
vmax_rows = _rows_tree(lambda builder: lambda x, y: _intrinsic2(builder, "maximum", x, y))
vmax_rows.__doc__ = """Lane r < TREE_ROWS: ``vmax_all`` of the vector at arr[r*W : (r+1)*W];
later lanes 0."""


@intrinsic
def vmax_all(typingctx, a):
    """Maximum of the lanes (NaN if any lane is NaN)."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        return _halving(builder, args[0], lambda x, y: _intrinsic2(builder, "maximum", x, y))

    return a.dtype(a), codegen


def holds_exact(arr):
    """Whether numba type ``arr`` is an array that stores its compute type (float32,
    float64), so that an intermediate value kept there is not rounded (float16 would)."""
    return isinstance(arr, types.Array) and arr.dtype in (types.float32, types.float64)


@intrinsic
def exact_store(typingctx, where):
    """``where`` (an array, or a tuple whose first item is the array) if the array stores
    its compute type (``holds_exact``), else None."""
    arr = where[0] if isinstance(where, types.BaseTuple) else where
    if not isinstance(arr, types.Array):
        return None
    if not holds_exact(arr):
        return types.none(where), lambda context, builder, sig, args: context.get_dummy_value()

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, sig.return_type, args[0])

    return where(where), codegen


@intrinsic
def vall(typingctx, mask):
    """Whether every lane of a mask is set."""
    if mask != MASK:
        return None

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(args[0], ir.IntType(W))
        return builder.icmp_unsigned("==", bits, ir.Constant(ir.IntType(W), (1 << W) - 1))

    return types.boolean(mask), codegen


def imin(a, b):
    """The lesser of two integers (see the module's docstring)."""
    return b if b < a else a


def imax(a, b):
    """The greater of two integers."""
    return b if b > a else a


def _int_extreme(func, pred):
    # typed and lowered in place, as numba's own operators are: no function to compile
    @type_callable(func)
    def typer(context):
        def typed(a, b):
            if isinstance(a, types.Integer) and isinstance(b, types.Integer):
                ty = context.unify_types(a, b)
                if isinstance(ty, types.Integer):  # not signed with unsigned (float64)
                    return ty(a, b)
            return None
        return typed

    @lower_builtin(func, types.Integer, types.Integer)
    def lower(context, builder, sig, args):
        x, y = (context.cast(builder, v, t, sig.return_type)
                for v, t in zip(args, sig.args, strict=True))
        compare = builder.icmp_signed if sig.return_type.signed else builder.icmp_unsigned
        return builder.select(compare(pred, y, x), y, x)


_int_extreme(imin, "<")
_int_extreme(imax, ">")
