"""Device primitives of the real GPU path (the simulator's are in ``sim.py``): 16-byte
vector loads/stores, float16 and bfloat16 conversions (both stored as uint16), shuffles.

numba's own vector types and hand-unrolled code emit scalar loads; these intrinsics bitcast
the element pointer to a 16-byte vector pointer and load/store it with ``align 16``
(``ld.global.v4.*`` / ``st.global.v4.*``). The launcher plans vector kernels only where
every row start is 16-byte aligned.
"""

from __future__ import annotations

import math

from llvmlite import ir
from numba import cuda, types
from numba.cuda.extending import intrinsic

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32, _F64 = ir.FloatType(), ir.DoubleType()


def _to_i64(builder, value, ty):
    if isinstance(ty, types.Integer) and ty.bitwidth < 64:
        return builder.sext(value, _I64) if ty.signed else builder.zext(value, _I64)
    return value


def _cvt(asm, constraints, res, arg):
    """The emitter of one PTX ``cvt`` instruction: emit(builder, value)."""
    return lambda builder, value: builder.call(
        ir.InlineAsm(ir.FunctionType(res, [arg]), asm, constraints), [value])


_h2f = _cvt("cvt.f32.f16 $0, $1;", "=f,h", _F32, _I16)
_f2h = _cvt("cvt.rn.f16.f32 $0, $1;", "=h,f", _I16, _F32)
# float64 -> float16 bits rounded once (as numpy's astype), not through float32
_d2h = _cvt("cvt.rn.f16.f64 $0, $1;", "=h,d", _I16, _F64)


def _b2f(builder, bits):
    return builder.bitcast(builder.shl(builder.zext(bits, _I32), ir.Constant(_I32, 16)), _F32)


def _f2b(builder, value):
    """float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN (sign kept)."""
    u = builder.bitcast(value, _I32)
    high = builder.lshr(u, ir.Constant(_I32, 16))
    lsb = builder.and_(high, ir.Constant(_I32, 1))
    rounded = builder.lshr(builder.add(builder.add(u, ir.Constant(_I32, 0x7FFF)), lsb),
                           ir.Constant(_I32, 16))
    quiet = builder.or_(high, ir.Constant(_I32, 0x40))
    isnan = builder.fcmp_unordered("uno", value, value)
    return builder.trunc(builder.select(isnan, quiet, rounded), _I16)


_TO_F32 = {"f2": _h2f, "bf16": _b2f}
_FROM_F32 = {"f2": _f2h, "bf16": _f2b}


def make_vector_io(kind):
    """(ldv, stv) intrinsics for one storage kind: ``ldv(arr, i, buf, off)`` loads the 16
    bytes at ``arr[i:]`` (16-byte aligned) and writes the V converted values to
    ``buf[off:off + V]``; ``stv(arr, i, buf, off)`` the reverse."""
    # 16 bytes: 4 float32, 2 float64, or 4 words of two 2-byte values (width: values)
    lane, lanes, width = {"f4": (_F32, 4, 4), "f8": (_F64, 2, 2)}.get(kind, (_I32, 4, 8))
    vec_ty = ir.VectorType(lane, lanes)
    native = kind in ("f4", "f8")

    def pack_intrinsic(emit):
        """f(arr, i, buf, off) whose code ``emit(builder, vector pointer at arr[i:],
        pointers to the V elements of buf)`` writes."""
        @intrinsic
        def f(typingctx, arr, idx, buf, off):
            if not (isinstance(arr, types.Array) and isinstance(buf, types.Array)):
                return None

            def codegen(context, builder, sig, args):
                def data(k):  # the data pointer of array argument k
                    return context.make_array(sig.args[k])(context, builder, args[k]).data

                ptr = builder.gep(data(0), [_to_i64(builder, args[1], sig.args[1])])
                vptr = builder.bitcast(ptr, vec_ty.as_pointer())
                buf, o = data(2), _to_i64(builder, args[3], sig.args[3])
                emit(builder, vptr, [builder.gep(buf, [builder.add(o, ir.Constant(_I64, v))])
                                     for v in range(width)])
                return context.get_dummy_value()

            return types.void(arr, idx, buf, off), codegen
        return f

    def load(builder, vptr, dst):
        vec = builder.load(vptr, align=16)
        if native:
            for v in range(width):
                builder.store(builder.extract_element(vec, ir.Constant(_I32, v)), dst[v])
            return
        conv = _TO_F32[kind]
        for w in range(4):  # two 2-byte values a word, the first in the low half
            word = builder.extract_element(vec, ir.Constant(_I32, w))
            lo = builder.trunc(word, _I16)
            hi = builder.trunc(builder.lshr(word, ir.Constant(_I32, 16)), _I16)
            builder.store(conv(builder, lo), dst[2 * w])
            builder.store(conv(builder, hi), dst[2 * w + 1])

    def store(builder, vptr, src):
        vec = ir.Constant(vec_ty, ir.Undefined)
        if native:
            for v in range(width):
                vec = builder.insert_element(vec, builder.load(src[v]), ir.Constant(_I32, v))
        else:
            conv = _FROM_F32[kind]
            for w in range(4):
                lo = builder.zext(conv(builder, builder.load(src[2 * w])), _I32)
                hi = builder.zext(conv(builder, builder.load(src[2 * w + 1])), _I32)
                word = builder.or_(lo, builder.shl(hi, ir.Constant(_I32, 16)))
                vec = builder.insert_element(vec, word, ir.Constant(_I32, w))
        builder.store(vec, vptr, align=16)

    return pack_intrinsic(load), pack_intrinsic(store)


def _element(context, builder, sig, args):
    """The pointer to element args[1] of 1-D array args[0], as ``gep inbounds``."""
    data = context.make_array(sig.args[0])(context, builder, args[0]).data
    return builder.gep(data, [_to_i64(builder, args[1], sig.args[1])], inbounds=True)


# arr[i] and arr[i] = v without numba's wraparound of a negative index (the kernels'
# indices are never negative): numba's indexing adds a 64-bit shift, mask and add to each
# access with a run-time index
@intrinsic
def at(typingctx, arr, idx):
    if not (isinstance(arr, types.Array) and isinstance(idx, types.Integer)):
        return None
    return arr.dtype(arr, idx), lambda context, builder, sig, args: builder.load(
        _element(context, builder, sig, args))


@intrinsic
def put(typingctx, arr, idx, value):
    if not (isinstance(arr, types.Array) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
        builder.store(v, _element(context, builder, sig, args))
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


def _conversion(emit, argty, resty):
    """An intrinsic ``resty(argty)`` whose code ``emit(builder, value)`` writes."""
    @intrinsic
    def convert(typingctx, value):
        if value != argty:
            return None
        return resty(argty), lambda context, builder, sig, args: emit(builder, args[0])
    return convert


h2f = _conversion(_h2f, types.uint16, types.float32)
f2h = _conversion(_f2h, types.float32, types.uint16)
b2f = _conversion(_b2f, types.uint16, types.float32)
f2b = _conversion(_f2b, types.float32, types.uint16)
d2h = _conversion(_d2h, types.float64, types.uint16)

_dev = {"device": True, "forceinline": True}


def make_primitives(kind, src=None):
    """The primitives of ``kernels.py`` for one storage kind (real GPU); ``src``: the
    inputs' kind where it differs (see ``_cast_load``)."""
    from .kernels import Primitives

    ldv, stv = make_vector_io(kind)
    if kind in ("f4", "f8"):
        ld, st = at, put
    else:
        to_f32, from_f32 = (h2f, f2h) if kind == "f2" else (b2f, f2b)

        @cuda.jit(**_dev)
        def ld(arr, i):
            return to_f32(at(arr, i))

        @cuda.jit(**_dev)
        def st(arr, i, v):
            put(arr, i, from_f32(types.float32(v)))
    if src is not None:
        ld = _cast_load(kind, src)

    @cuda.jit(**_dev)
    def shfl_xor(v, lanemask):
        return cuda.shfl_xor_sync(0xFFFFFFFF, v, lanemask)

    @cuda.jit(**_dev)
    def begin():
        pass

    return Primitives(sim=False, ctype=types.float64 if kind == "f8" else types.float32,
                      ld=ld, st=st, ldv=ldv, stv=stv, exp=math.exp, log=math.log,
                      begin=begin, shfl_xor=shfl_xor, group_reduce=None, at=at, put=put)


def _cast_load(kind, src):
    """``ld(arr, i)`` of a ``kind`` kernel for inputs stored as ``src`` (``dtype=``): the
    element as if the input had been cast to ``kind`` (rounded once), in the compute type."""
    @cuda.jit(**_dev)
    def same(v):
        return v

    widen = {"f4": same, "f8": same, "f2": h2f, "bf16": b2f}[src]  # exact
    if kind == "f2":
        to_half = d2h if src == "f8" else f2h

        @cuda.jit(**_dev)
        def narrow(v):
            return h2f(to_half(v))
    else:
        ctype = types.float64 if kind == "f8" else types.float32

        @cuda.jit(**_dev)
        def narrow(v):
            return ctype(v)

    @cuda.jit(**_dev)
    def ld(arr, i):
        return narrow(widen(at(arr, i)))

    return ld
