"""Helpers for the GPU tests: device views with any layout, guard bands, the oracle."""

from __future__ import annotations

import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from numbasoftmax import reference

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
FUNCS = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
BACKWARD = ("softmax_backward", "log_softmax_backward")

# a signalling-NaN bit pattern per storage itemsize: no kernel produces it (arithmetic
# quiets NaNs), so an element that still holds it after a call was never written
POISON = {1: np.uint8(0xA5), 2: np.uint16(0x7D5A), 4: np.uint32(0x7F8A5A5A),
          8: np.uint64(0x7FF5A5A5A5A5A5A5)}


def cuda():
    from numba import cuda as c

    return c


def device_ptr(dev_array):
    """Address of element 0 of a numba device array (host address under the simulator)."""
    if SIM:
        return dev_array._ary.__array_interface__["data"][0]
    return dev_array.__cuda_array_interface__["data"][0]


def to_host(obj):
    """numpy copy of any GPU array (numba, DevView, cupy, torch)."""
    if isinstance(obj, DevView):
        return obj.copy_to_host()
    mod = type(obj).__module__.partition(".")[0]
    if mod == "cupy":
        return obj.get()
    if mod == "torch":
        import torch

        if obj.dtype == torch.bfloat16:
            return obj.view(torch.int16).cpu().numpy().view(np.uint16)
        return obj.cpu().numpy()
    return obj.copy_to_host()


class DevView:
    """A view into a 1-D device buffer, offered only through __cuda_array_interface__
    (a "generic CAI object"). offset, strides in elements; strides may be negative."""

    def __init__(self, base, offset, shape, strides, dtype=None, readonly=False, stream=None):
        self.base = base
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.strides = tuple(int(s) for s in strides)
        self.dtype = np.dtype(dtype or base.dtype)
        self.readonly = readonly
        self.stream = stream

    @property
    def size(self):
        return int(np.prod(self.shape))

    @property
    def __cuda_array_interface__(self):
        item = self.dtype.itemsize
        d = {"shape": self.shape, "strides": tuple(s * item for s in self.strides),
             "typestr": self.dtype.str,
             "data": (device_ptr(self.base) + self.offset * item, self.readonly),
             "version": 3}
        if self.stream is not None:
            d["stream"] = self.stream
        return d

    def host_base(self):
        return self.base.copy_to_host().view(self.dtype)

    def copy_to_host(self):
        base = self.host_base()
        item = self.dtype.itemsize
        v = as_strided(base[self.offset:], shape=self.shape,
                       strides=tuple(s * item for s in self.strides))
        return np.array(v)


def layout_strides(shape, order=None, steps=None, flip=None, row_extra=0):
    """Element strides for ``shape``: axes laid out in memory ``order`` (outermost first),
    axis a stepping ``steps[a]`` elements, ``flip``-ped axes negative, and ``row_extra``
    unused elements after each run of the innermost axis."""
    nd = len(shape)
    order = tuple(range(nd)) if order is None else tuple(order)
    steps = (1,) * nd if steps is None else tuple(steps)
    flip = (False,) * nd if flip is None else tuple(flip)
    strides = [0] * nd
    acc = 1
    for k in reversed(range(nd)):
        a = order[k]
        strides[a] = acc * steps[a]
        acc *= shape[a] * steps[a]
        if k == nd - 1:
            acc += row_extra
    return [(-s if flip[a] and shape[a] > 1 else s) for a, s in enumerate(strides)]


def strided_view(host, strides, pad=0, align=1):
    """A DevView with element ``strides`` holding ``host``'s values; every other element of
    its buffer (``pad`` before, ``pad`` after, gaps) holds POISON. The view starts at an
    element offset that is a multiple of ``align``. Returns (view, host copy of the buffer
    as written)."""
    host = np.asarray(host)
    item = host.dtype.itemsize
    lo = sum((s - 1) * t for s, t in zip(host.shape, strides, strict=True) if t < 0 and s > 0)
    hi = sum((s - 1) * t for s, t in zip(host.shape, strides, strict=True) if t > 0 and s > 0)
    origin = pad - lo
    origin = -(-origin // align) * align
    count = origin + hi + 1 + pad
    base = np.full(count, POISON[item], dtype=POISON[item].dtype)
    raw = base.view(host.dtype)
    if host.size:
        v = as_strided(raw[origin:], shape=host.shape, strides=[s * item for s in strides])
        v[...] = host
    dbase = cuda().to_device(base)
    return DevView(dbase, origin, host.shape, strides, dtype=host.dtype), base


def view_of(host, order=None, steps=None, flip=None, row_extra=0, pad=0, align=1):
    host = np.asarray(host)
    st = layout_strides(host.shape, order, steps, flip, row_extra)
    return strided_view(host, st, pad, align)


def guarded(shape, dtype, strides=None, pad=5, align=1):
    """A poisoned output view and a checker: every element of the view written, nothing
    else in its buffer touched."""
    dtype = np.dtype(dtype)
    if strides is None:
        strides = layout_strides(shape)
    view, _ = strided_view(np.zeros(shape, dtype=dtype), strides, pad, align)
    # strided_view wrote zeros into the view: poison it too
    host = view.base.copy_to_host()
    poison = POISON[dtype.itemsize]
    inside = np.zeros(host.size, dtype=bool)
    if view.size:
        idx = as_strided(np.arange(host.size)[view.offset:], shape=view.shape,
                         strides=[s * 8 for s in view.strides])
        inside[np.asarray(idx).ravel()] = True
    host[inside] = poison
    view.base.copy_to_device(host)

    def check():
        after = view.base.copy_to_host()
        assert np.all(after[~inside] == poison), "wrote outside the output view"
        assert not np.any(after[inside] == poison), "left output elements unwritten"

    return view, check


# ---------------------------------------------------------------------------------------
# bfloat16 (stored as uint16 bits)

def bf16_bits(x):
    """float -> bfloat16 bits, round to nearest even (NaN kept quiet)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def bf16_values(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------------
# the oracle

RTOL = {"float64": 1e-12, "float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
TINY = {"float64": 1e-300, "float32": 2.4e-38, "float16": 6e-8, "bfloat16": 2.4e-38}
BIG = {"float64": 1.7e308, "float32": 3.4e38, "float16": 65504.0, "bfloat16": 3.38e38}


# what an excluded element is worth to the error bounds (x = -inf: exp(x) = 0; y, dy = 0)
NEUTRAL = {"softmax": (-np.inf,), "log_softmax": (-np.inf,), "softmax_backward": (0.0, 0.0),
           "log_softmax_backward": (-np.inf, 0.0)}


def expected(func, inputs, axis, dtype_name, where=None):
    """(reference float64 result, per-element tolerance, where any result is right) for
    float64 ``inputs`` (and a ``where=`` mask; the bounds of the unmasked call with the
    excluded elements made neutral bound the masked one's)."""
    from numbasoftmax._layout import normalize_axes

    a = inputs[0]
    axes = normalize_axes(axis, a.ndim)
    ref = getattr(reference, func)(*inputs, axis=axis, where=where)
    if where is not None:  # excluded elements take no part: neutral values for the bounds
        excluded = ~np.broadcast_to(where, a.shape)
        inputs = [np.where(excluded, v, i) for i, v in zip(inputs, NEUTRAL[func], strict=True)]
        a = inputs[0]
    rtol = RTOL[dtype_name]
    tiny = TINY[dtype_name]
    n = max(1, int(np.prod([a.shape[k] for k in axes])) if a.ndim else 1)
    free = np.zeros(ref.shape, bool)  # where any result is right (the bounds say nothing)
    with np.errstate(all="ignore"):
        if a.size == 0:
            return ref, np.zeros_like(ref), free
        if func == "softmax":
            tol = 4 * rtol * np.abs(ref) + 2 * tiny
        elif func == "log_softmax":
            fin = np.where(np.isfinite(a), np.abs(a), 0.0)
            rowmax = np.max(fin, axis=axes, keepdims=True)
            tol = 4 * rtol * (np.abs(ref) + 2 * rowmax + np.log(n) + 1) + tiny
        elif func == "softmax_backward":
            y, dy = inputs
            s = np.sum(np.abs(y * dy), axis=axes, keepdims=True)
            tol = 4 * rtol * (np.abs(ref) + np.abs(y) * (np.abs(dy) + s)) + 2 * tiny
        else:
            z, dz = inputs
            s = np.sum(np.abs(dz), axis=axes, keepdims=True)
            tol = 4 * rtol * (np.abs(ref) + np.abs(dz) + np.exp(z) * s) + 2 * tiny
            # z = +inf: dz - inf * sum(dz) is -inf * the sum's sign, NaN where it is 0; a
            # sum within its rounding bound of 0 may have either sign (or be 0) in the dtype
            cancelled = np.abs(np.sum(dz, axis=axes, keepdims=True)) <= 4 * rtol * s
            free = np.isposinf(z) & cancelled
    if where is not None:  # excluded elements are exact (0, or -inf for log_softmax)
        tol = np.where(excluded, 0.0, tol)
        free = free & ~excluded
    return ref, tol, free


def assert_close(func, got, inputs, axis, dtype_name, where=None):
    """``got`` (float64 values of the result) against the float64 reference: NaN exactly
    where the reference has NaN, infinities where it overflows the dtype, the rest within
    error bounds derived from the inputs."""
    ref, tol, free = expected(func, inputs, axis, dtype_name, where)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    big = BIG[dtype_name]
    with np.errstate(all="ignore"):
        ref_nan = np.isnan(ref)
        got_nan = np.isnan(got)
        bad = ref_nan != got_nan
        ref_over = np.abs(ref) > big  # overflows the dtype: the result may be +-inf
        got_inf = np.isinf(got)
        # an infinity must be the reference's (same sign), or an overflow near the edge
        inf_ok = np.where(np.isinf(ref), got == ref,
                          ref_over | (np.abs(ref) > 0.5 * big))
        bad |= got_inf & ~ref_nan & ~inf_ok
        fin = ~ref_nan & ~got_nan & ~got_inf & np.isfinite(ref)
        bad |= fin & ~(np.abs(got - ref) <= tol)
        bad |= ~ref_nan & np.isinf(ref) & ~got_inf & ~(np.abs(got) > 0.5 * big)
        bad &= ~free
    if np.any(bad):
        i = np.argwhere(bad)[:5]
        detail = [(tuple(int(v) for v in k), float(got[tuple(k)]), float(ref[tuple(k)]),
                   float(tol[tuple(k)]) if np.isfinite(tol[tuple(k)]) else None) for k in i]
        raise AssertionError(f"{func}: {int(bad.sum())} of {bad.size} elements off "
                             f"(index, got, expected, tol): {detail}")


def as_float64(host, dtype_name):
    if dtype_name == "bfloat16":
        return bf16_values(host).astype(np.float64)
    return np.asarray(host).astype(np.float64)
