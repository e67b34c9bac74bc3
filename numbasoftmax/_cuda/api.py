"""GPU entry point: ``dispatch(op, arrays, axis, out)``, called by ``numbasoftmax._api`` for
inputs that live on a GPU.

The result is an array of the input's library (``arrays.py``; numba for generic
``__cuda_array_interface__`` objects) on the input's device, laid out like the input with
the softmax axes innermost, so its rows are contiguous. Work is queued on the caller's
stream; the host never waits for it. Input rules are the package's (``_inputs``), the
layout plan is ``_layout.plan``: rows in place where they are evenly spaced, otherwise
gathered into a contiguous temporary by a copy kernel (which converts integer and bool
input to float64, as on the CPU), and ``out`` written through one. A ``where=`` mask is read
in place where its rows allow it (``_layout.mask_rows``: a (N,) mask, one of x's layout,
...), else its rows (or its one value per row) are gathered first.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from .._inputs import check_out, check_pair, check_where, result_dtype
from .._layout import ROWS, Meta, extent, mask_rows, normalize_axes, permutation, plan
from .arrays import BF16, KIND, c_strides, describe, fast_adapter, host_where


class CudaUnavailableError(RuntimeError):
    """A GPU array was passed but the GPU path cannot run (no numba-cuda, no GPU)."""


_launch = None


def _load(func, desc, name):
    """The launch module, or a CudaUnavailableError that says why."""
    global _launch
    if _launch is not None:
        return _launch
    why = None
    try:
        # numba still ships a numba.cuda of its own, which is not what runs the kernels
        if importlib.util.find_spec("numba_cuda") is None:
            raise ImportError("no module named numba_cuda")
        from numba import cuda
    except ImportError as err:
        why = (f"numba-cuda is not installed ({err}); install numbasoftmax[cuda12] or "
               "numbasoftmax[cuda13] (the GPU extras), or numba-cuda for the CUDA simulator")
    else:
        try:
            ok = cuda.is_available()
        except Exception as err:  # noqa: BLE001 - any driver failure means no GPU
            ok, why = False, f"CUDA is not usable ({err})"
        if not ok and why is None:
            why = "numba-cuda finds no usable GPU or CUDA driver"
    if why is not None:
        raise CudaUnavailableError(f"{func}(): {name} is a GPU array ({desc.where}) but the "
                                   f"GPU path is unavailable: {why}. numpy arrays still "
                                   "work.")
    from . import launch

    _launch = launch
    return launch


_fast_libs = {}  # array type -> its adapter with a fast path, or None


def dispatch(op, arrays, axis, out, dtype=None, where=None):
    """Run ``op`` (an ``_ops.Op``) on GPU ``arrays`` along ``axis``; see the module doc.
    ``dtype``: None or the result's numpy float dtype (``dtype=``); ``where``: None or a
    boolean GPU array broadcasting to the input (``where=``)."""
    if out is None and dtype is None and where is None and type(axis) is int and (
            _launch is not None):
        res = _fast(op, arrays, axis)
        if res is not None:
            return res
    launch, xs, o, res, w = _check(op, arrays, out, dtype, where)
    x = xs[0]
    axes = normalize_axes(axis, len(x.shape))
    with x.lib.device(x.dev):
        return _run(launch, op, xs, o, res, axes, w)


def _fast(op, arrays, axis):
    """The result from the adapter's fast path, or None: what it relies on beyond that is
    arrays of one type, shape and dtype, reduced along their last axis."""
    x = arrays[0]
    t = type(x)
    lib = _fast_libs.get(t, 0)
    if lib == 0:
        lib = _fast_libs[t] = fast_adapter(t)
    if lib is None or not x.ndim or (axis != -1 and axis != x.ndim - 1):
        return None
    for a in arrays[1:]:
        if type(a) is not t or a.shape != x.shape or a.dtype != x.dtype:
            return None
    return lib.fast(_launch, op, arrays)


def _check(op, arrays, out, dtype, where):
    """(launch module, an Array per argument, out's Array or None, result dtype, the mask's
    Array or None), once every input rule holds."""
    func, names = op.name, op.args
    xs = [describe(a, name, func) for a, name in zip(arrays, names, strict=True)]
    o = None if out is None else describe(out, "out", func)
    w = None if where is None else describe(where, "where", func)
    k = next((i for i, d in enumerate(xs) if d is not None), None)
    if k is None:
        raise TypeError(f"{func}(): the GPU path got no GPU array (types: "
                        f"{', '.join(type(a).__name__ for a in arrays)})")
    gpu, gname = xs[k], names[k]
    for obj, name, d in zip((*arrays, out, where), (*names, "out", "where"), (*xs, o, w),
                            strict=True):
        if d is None and obj is not None:
            raise TypeError(f"{func}(): {gname} is a GPU array ({gpu.where}) but {name} is a "
                            f"host array ({host_where(obj)}); pass "
                            f"{'both' if name in names else 'a GPU array'} on the same "
                            "device")
    launch = _load(func, gpu, gname)
    xs = [d.located() for d in xs]
    x = xs[0]
    everything = list(zip(names, xs, strict=True))
    if o is not None:
        o = o.located()
        everything.append(("out", o))
    if w is not None:
        w = w.located()
        everything.append(("where", w))
        check_where(func, w.dtype, w.shape, names[0], x.shape)
    for name, d in everything:
        if d.dev != x.dev:
            raise ValueError(f"{func}(): {name} is on cuda:{d.dev} but {names[0]} is on "
                             f"cuda:{x.dev}; the arguments and out must share a device")
    if len(xs) == 2:
        check_pair(func, names, [d.shape for d in xs], [d.dtype for d in xs])
    res = result_dtype(x.dtype, names[0], func, extra=(BF16,))
    if dtype is not None:
        res = dtype
    for name, d in everything:
        if any(st % d.itemsize for st in d.strides):
            raise ValueError(f"{func}(): {name} has strides {d.strides} that are not "
                             f"multiples of its itemsize {d.itemsize}")
    if o is not None:
        check_out(func, x.shape, res, o.shape, o.dtype, not o.readonly)
    return launch, xs, o, res, w


def _run(launch, op, xs, o, res, axes, w):
    """The plan of ``_layout`` with device buffers: rows in place, or gathered and staged."""
    x = xs[0]
    lib, dev, shape = x.lib, x.dev, x.shape
    stream = lib.stream(x)
    if o is None:  # laid out like x: the softmax axes innermost, the others as in x
        perm = permutation(shape, x.strides, axes)
        result = lib.empty(tuple(shape[a] for a in perm), res, dev, stream)
        if perm != tuple(range(len(shape))):
            result = lib.permute(result, tuple(perm.index(a) for a in range(len(shape))))
        o = lib.describe(result, "out", op.name)
    else:
        result = o.obj
    if not math.prod(shape):
        return result
    kind = KIND[res]
    # float inputs are read as they are stored and converted by the kernels (dtype=); others
    # (integers, bool) are gathered into a converting copy of the result's dtype
    src = KIND.get(x.dtype, kind)
    cast = x.dtype not in KIND
    p = plan(shape, axes, [d.meta(cast=cast) for d in xs], o.meta(), columns=False)
    pshape = tuple(shape[a] for a in p.perm)
    rows = c_strides(pshape, 1)  # of a contiguous (m, n) buffer, in plan order

    def storage(d):
        """The dtype the kernels see ``d`` as (2-byte floats as their bits)."""
        return launch.STORAGE[KIND[d.dtype]] if d.dtype in KIND else d.dtype

    def strided(d):
        """(Buf over d's extent, element offset of d's first element, element strides in
        plan order): d as the copy kernel reads or writes it."""
        lo, hi = extent(shape, d.meta())
        return (launch.Buf(lo, (hi - lo) // d.itemsize, storage(d)), (d.ptr - lo) // d.itemsize,
                tuple(d.strides[a] // d.itemsize for a in p.perm))

    def in_place(d, access):
        return launch.Buf(d.ptr, (p.m - 1) * access.stride + p.n, storage(d)), access.stride

    with launch.Scratch(dev, stream, lib.memory(dev, stream)) as scratch:
        ins = []
        for d, access in zip(xs, p.inputs, strict=True):
            if access.kind == ROWS:
                ins.append(in_place(d, access))
            else:
                buf = scratch.buf(p.m * p.n, launch.STORAGE[src])
                launch.copy(*strided(d), buf, 0, rows, pshape, dev, stream, cast=cast)
                ins.append((buf, p.n))
        mask = None if w is None else _mask(launch, w, shape, p, len(axes), scratch, dev,
                                            stream)
        if p.out.kind == ROWS:
            launch.run_rows(op.name, kind, ins, in_place(o, p.out), p.m, p.n, dev, stream,
                            scratch, src, mask)
        else:
            staged = scratch.buf(p.m * p.n, launch.STORAGE[kind])
            launch.run_rows(op.name, kind, ins, (staged, p.n), p.m, p.n, dev, stream, scratch,
                            src, mask)
            launch.copy(staged, 0, rows, *strided(o), pshape, dev, stream)
    return result


def _mask(launch, w, shape, p, naxes, scratch, dev, stream):
    """The launch.Mask of mask ``w`` (an Array broadcasting to ``shape``) for plan ``p``:
    its own bytes where ``_layout.mask_rows`` finds each row's contiguous (at most three
    outer dims), else gathered in rows order: one byte per row when it is constant along
    the rows, else the whole (m, n) mask (a layout the kernels cannot follow)."""
    lead = len(shape) - len(w.shape)
    strides = tuple(0 if k < lead or w.shape[k - lead] == 1 else w.strides[k - lead]
                    for k in range(len(shape)))
    access = mask_rows(shape, strides, p.perm, naxes)
    u8 = np.dtype(np.uint8)
    if access is not None and access.kind == ROWS and len(access.dims) <= 3:
        buf, step, dims = launch.Buf(w.ptr, access.extent, u8), 1, access.dims
    else:
        pshape = tuple(shape[a] for a in p.perm)
        step = 0 if access is not None and access.kind != ROWS else 1  # 0: a byte per row
        if not step:
            pshape = pshape[:len(pshape) - naxes] + (1,) * naxes
        buf = scratch.buf(math.prod(pshape), u8)
        lo, hi = extent(shape, Meta(w.ptr, strides, 1))
        launch.copy(launch.Buf(lo, hi - lo, u8), w.ptr - lo, tuple(strides[a] for a in p.perm),
                    buf, 0, c_strides(pshape, 1), pshape, dev, stream)
        dims = ((0, p.n if step else 1),)
    flat = tuple(v for d in dims for v in d) + (1, 0) * (3 - len(dims))
    return launch.Mask(buf, step, flat)
