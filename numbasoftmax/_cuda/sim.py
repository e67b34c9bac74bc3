"""The CUDA simulator's versions of the device primitives in ``intrinsics.py``.

``NUMBA_ENABLE_CUDASIM=1`` runs kernels as Python, a thread per CUDA thread, without warp
shuffles or intrinsics; ``kernels.py`` is the same source in both modes, only these differ:

* Group reductions become one exchange through a block-wide shared array between two
  ``syncthreads()``, after which every thread replays the GPU's butterflies and its fold
  of a group's warps in their order: the same numbers combined in the same order, 2
  barriers instead of 2 per step (each costs milliseconds here). Faithful because every
  thread of a block runs every reduction.
* Vector loads/stores are V scalar accesses that assert 16-byte alignment (the simulator's
  arrays have real host addresses), so the launcher's alignment checks are exercised too.
* float16/bfloat16 conversions go through numpy (round to nearest even, as ``cvt.rn``);
  exp/log/division run on numpy scalars with errors ignored (inf, -inf as on the GPU).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

_F32, _F64 = np.float32, np.float64


def _h2f(bits):
    return _F32(np.uint16(bits).view(np.float16))


def _f2h(value):
    return np.float16(_F32(value)).view(np.uint16)


def _b2f(bits):
    return (np.uint32(bits) << np.uint32(16)).view(_F32)


def _f2b(value):
    u = _F32(value).view(np.uint32)
    if value != value:  # a quiet NaN, sign kept
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    lsb = (u >> np.uint32(16)) & np.uint32(1)
    return np.uint16((u + np.uint32(0x7FFF) + lsb) >> np.uint32(16))


# storage -> compute type (exact), and back
_TO_C = {"f4": _F32, "f8": _F64, "f2": _h2f, "bf16": _b2f}
_FROM_C = {"f4": _F32, "f8": _F64, "f2": _f2h, "bf16": _f2b}
# a value rounded once to a result kind (dtype=), as numpy's astype, in the compute type
_ROUND = {"f4": _F32, "f8": _F64, "f2": lambda v: _F32(np.float16(v))}
f32_to_bf16_bits, bf16_bits_to_f32 = _f2b, _b2f


@cuda.jit(device=True)
def group_reduce(v, width, xch, op):
    """What the GPU's group reduction computes, from one exchange: every thread reads its
    group's values and replays the butterfly of each warp in the GPU's order (lane l
    combines op(v[l], v[l ^ off]) for off = min(width, 32)/2 .. 1), then for a group of
    several warps folds their first lanes' results in warp order, so the result is
    bitwise the GPU's."""
    t = cuda.threadIdx.x
    cuda.syncthreads()
    xch[t] = v
    cuda.syncthreads()
    base = t - t % width
    vals = [xch[base + i] for i in range(width)]
    off = min(width, 32) // 2
    while off > 0:
        vals = [op(vals[i], vals[i ^ off]) for i in range(width)]
        off //= 2
    if width <= 32:
        return vals[t - base]
    r = vals[0]
    for k in range(32, width, 32):
        r = op(r, vals[k])
    return r


def make_primitives(kind, src=None):
    """The primitives of ``kernels.py`` for one storage kind (simulator); ``src``: the
    inputs' kind where it differs (``dtype=``: each element as if cast to ``kind``)."""
    from .kernels import Primitives

    itemsize = {"f4": 4, "f8": 8, "f2": 2, "bf16": 2}[kind]
    width = 16 // itemsize
    to_c, from_c = _TO_C[kind], _FROM_C[kind]
    widen, rounded = _TO_C[src or kind], _ROUND.get(kind)

    def ld(arr, i):
        if src is None:
            return to_c(arr[i])
        return rounded(widen(arr[i]))

    def st(arr, i, v):
        arr[i] = from_c(v)

    def pack(arr, i):  # the element offsets of the 16-byte pack at arr[i:], once aligned
        assert (arr.__array_interface__["data"][0] + i * itemsize) % 16 == 0, \
            "misaligned vector access"
        return range(width)

    def ldv(arr, i, buf, off):
        for v in pack(arr, i):
            buf[off + v] = ld(arr, i + v)

    def stv(arr, i, buf, off):
        for v in pack(arr, i):
            st(arr, i + v, buf[off + v])

    def begin():
        np.seterr(all="ignore")  # per thread: each simulated CUDA thread is a Python thread

    def at(arr, i):  # the GPU's does not wrap a negative index around: here it is an error
        assert i >= 0, f"negative index {i}"
        return arr[i]

    def put(arr, i, v):
        assert i >= 0, f"negative index {i}"
        arr[i] = v

    return Primitives(sim=True, ctype=types.float64 if kind == "f8" else types.float32,
                      ld=ld, st=st, ldv=ldv, stv=stv, exp=np.exp, log=np.log,
                      begin=begin, shfl_xor=None, group_reduce=group_reduce, at=at, put=put)
