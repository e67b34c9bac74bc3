"""GPU entry points, called by ``numbasoftmax._api`` for inputs that live on a GPU:
``dispatch`` (the four softmax operations), ``logsumexp`` and ``logsumexp_backward``.

Results are arrays of the input's library (``arrays.py``) on its device, laid out like the
input with the softmax axes innermost (rows contiguous). Work is queued on the caller's
stream; the host never waits. The layout plan is ``_layout.plan``: rows read in place where
they are evenly spaced, else gathered (integer and bool input converted to float64, as on
the CPU) by a copy kernel, and ``out`` written through one. A ``where=`` mask is read in
place where ``_layout.mask_rows`` allows, else gathered (a byte per row where it is constant
along the rows). logsumexp writes through an (m, 1 or 2) buffer; its gradient's per-row
arguments are gathered into a float64 workspace.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from .._inputs import (
    check_out,
    check_outs_apart,
    check_pair,
    check_per_row,
    check_where,
    promoted,
    reduced_shape,
    result_dtype,
    typename,
)
from .._layout import ROWS, Meta, extent, mask_rows, normalize_axes, permutation, plan
from .._ops import LOGSUMEXP, LOGSUMEXP_BACKWARD
from .arrays import BF16, KIND, c_strides, describe, fast_adapter, host_where


class CudaUnavailableError(RuntimeError):
    """A GPU array was passed but the GPU path cannot run (no numba-cuda, no GPU)."""


_launch = None
_fast_libs = {}  # array type -> its adapter with a fast path, or None


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
            if not cuda.is_available():
                why = "numba-cuda finds no usable GPU or CUDA driver"
        except Exception as err:  # noqa: BLE001 - any driver failure means no GPU
            why = f"CUDA is not usable ({err})"
    if why is not None:
        raise CudaUnavailableError(f"{func}(): {name} is a GPU array ({desc.where}) but the "
                                   f"GPU path is unavailable: {why}. numpy arrays still "
                                   "work.")
    from . import launch

    _launch = launch
    return launch


def dispatch(op, arrays, axis, out, dtype=None, where=None):
    """Run ``op`` (an ``_ops.Op``) on GPU ``arrays`` along ``axis``. ``dtype``: None or the
    result's numpy float dtype; ``where``: None or a boolean GPU array broadcasting to x."""
    if dtype is None and where is None and type(axis) is int and _launch is not None:
        res = _fast(op, arrays, axis, out)
        if res is not None:
            return res
    names = op.args
    launch, found, res = _checked(op.name, [*zip(names, arrays, strict=True), ("out", out),
                                            ("where", where)], names[:1], dtype)
    xs = [found[name] for name in names]
    x, o = xs[0], _checked_out(op.name, found, "out", xs[0].shape, res)
    with x.lib.device(x.dev):
        return _run(launch, op, xs, o, res, normalize_axes(axis, len(x.shape), op.name),
                    found.get("where"))


def _fast(op, arrays, axis, out=None):
    """The result from the adapter's fast path, or None: what it relies on beyond that is
    arrays (and ``out``, if given) of one type, shape and dtype, reduced along their last
    axis."""
    x, t = arrays[0], type(arrays[0])
    lib = _fast_libs.get(t, 0)
    if lib == 0:
        lib = _fast_libs[t] = fast_adapter(t)
    if lib is None or not x.ndim or axis not in (-1, x.ndim - 1) or any(
            type(a) is not t or a.shape != x.shape or a.dtype != x.dtype
            for a in (arrays if out is None else (*arrays, out))):
        return None
    return lib.fast(_launch, op, arrays, out)


def _checked(func, named, typed, dtype):
    """(launch module, {name: Array} of the (name, argument) pairs given, result dtype),
    once the rules every entry point shares hold: all on one GPU (a host array is a
    TypeError), strides whole elements; logsumexp's ``b`` and a boolean ``where``
    broadcasting to the first pair's array; the softmax gradients' two inputs alike.
    ``typed``: the inputs whose dtypes give the result's unless ``dtype`` is given."""
    inputs = [k for k, _ in named if k != "where" and not k.startswith("out")]
    given = [(name, obj, describe(obj, name, func)) for name, obj in named if obj is not None]
    gpu = next(((name, d) for name, _, d in given if d is not None), None)
    if gpu is None:
        raise TypeError(f"{func}(): the GPU path got no GPU array (types: "
                        f"{', '.join(type(obj).__name__ for _, obj, _ in given)})")
    gname, g = gpu
    for name, obj, d in given:
        if d is None:
            what = (f"a host array ({host_where(obj)})" if hasattr(obj, "shape") else
                    f"a {typename(obj)}, not an array")
            raise TypeError(f"{func}(): {gname} is a GPU array ({g.where}) but {name} is "
                            f"{what}; pass {'both' if name in inputs else 'a GPU array'} on "
                            "the same device")
    launch = _load(func, g, gname)
    found = {name: d.located() for name, _, d in given}
    first, x = named[0][0], found[named[0][0]]
    for name, d in found.items():
        if d.dev != x.dev:
            raise ValueError(f"{func}(): {name} is on cuda:{d.dev} but {first} is on "
                             f"cuda:{x.dev}; the arguments and out must share a device")
        if any(st % d.itemsize for st in d.strides):
            raise ValueError(f"{func}(): {name} has strides {d.strides} that are not "
                             f"multiples of its itemsize {d.itemsize}")
    b, w = found.get("b"), found.get("where")
    if b is not None:
        check_where(func, None, b.shape, "x", x.shape, name="b")
    if w is not None:
        check_where(func, w.dtype, w.shape, first, x.shape)
    if len(inputs) == 2 and len(typed) == 1:  # y and dy (z and dz): one shape, one dtype
        xs = [found[k] for k in inputs]
        check_pair(func, inputs, [d.shape for d in xs],
                   [result_dtype(d.dtype, k, func, extra=(BF16,), requested=dtype)
                    for k, d in zip(inputs, xs, strict=True)], [d.dtype for d in xs])
    if dtype is None:
        kinds = {result_dtype(found[k].dtype, k, func, extra=(BF16,)) for k in typed
                 if k in found}
        dtype = kinds.pop() if len(kinds) == 1 else promoted(
            [np.float32 if k == BF16 else k for k in kinds])
    return launch, found, dtype


def _checked_out(func, found, name, shape, res):
    o = found.get(name)
    if o is not None:
        check_out(func, shape, res, o.shape, o.dtype, not o.readonly, o.strides)
    return o


class _Call:
    """One call's rows on the device: the plan of ``_layout`` over x's shape and axes,
    with its buffers (``scratch``), on x's stream."""

    def __init__(self, launch, xs, res, axes, scratch, out=None):
        x = xs[0]
        self.launch, self.res, self.kind, self.scratch = launch, res, KIND[res], scratch
        self.shape, self.dev, self.stream, self.naxes = x.shape, x.dev, scratch.stream, len(axes)
        # inputs of one float kind are read as stored and converted by the kernels
        # (dtype=); others (integers, bool, mixed kinds) are gathered converted first
        same = all(d.dtype == x.dtype for d in xs) and x.dtype in KIND
        self.src = KIND[x.dtype] if same else self.kind
        self.conv = [None if same or d.dtype == res else
                     (d.dtype not in KIND, (self.kind, KIND.get(d.dtype, self.kind)))
                     for d in xs]
        self.p = plan(x.shape, axes, [self.meta(d, c) for d, c in zip(xs, self.conv, strict=True)],
                      None if out is None else out.meta(), columns=False)
        self.pshape = tuple(x.shape[a] for a in self.p.perm)
        self.rows = c_strides(self.pshape, 1)  # of a contiguous (m, n) buffer, in plan order
        # no elements (n == 0): nothing is read, the rows' results come from padding
        self.ins = [self.row_access(d, access, c) if self.p.n else
                    (launch.Buf(d.ptr, 0, self.storage(d)), 0)
                    for d, access, c in zip(xs, self.p.inputs, self.conv, strict=True)]

    def meta(self, d, conv=None):
        """d's Meta over x's shape (broadcast axes: stride 0)."""
        lead = len(self.shape) - len(d.shape)
        strides = tuple(0 if k < lead or d.shape[k - lead] < self.shape[k] else
                        d.strides[k - lead] for k in range(len(self.shape)))
        return Meta(d.ptr, strides, d.itemsize, conv is not None)

    def storage(self, d):
        """The dtype the kernels see ``d`` as (2-byte floats as their bits, masks as
        bytes)."""
        if d.dtype in KIND:
            return self.launch.STORAGE[KIND[d.dtype]]
        return np.dtype(np.uint8) if d.dtype == np.bool_ else d.dtype

    def view(self, d, shape, meta, axes):
        """(Buf over d's extent, element offset of its first element, element strides
        along ``axes``): d as the copy kernel reads or writes it."""
        lo, hi = extent(shape, meta)
        return (self.launch.Buf(lo, (hi - lo) // d.itemsize, self.storage(d)),
                (d.ptr - lo) // d.itemsize, tuple(meta.strides[a] // d.itemsize for a in axes))

    def in_place(self, d, access):
        return (self.launch.Buf(d.ptr, (self.p.m - 1) * access.stride + self.p.n,
                                self.storage(d)), access.stride)

    def gather(self, d, meta, pshape, dtype, cast=False, kinds=None):
        """d (its ``meta``) copied in plan order into a fresh contiguous ``pshape`` buffer."""
        buf = self.scratch.buf(math.prod(pshape), dtype)
        self.launch.copy(*self.view(d, self.shape, meta, self.p.perm), buf, 0,
                         c_strides(pshape, 1), pshape, self.dev, self.stream, cast=cast,
                         kinds=kinds)
        return buf

    def row_access(self, d, access, conv):
        """(Buf, row stride) of input d's rows: in place, or gathered (and converted)."""
        if access.kind == ROWS:
            return self.in_place(d, access)
        return self.gather(d, self.meta(d), self.pshape, self.launch.STORAGE[self.src],
                           *(conv or ())), self.p.n

    def mask(self, w):
        """The launch.Mask of mask ``w`` (an Array broadcasting to x), or None: its own
        bytes where ``_layout.mask_rows`` finds each row's contiguous (at most three outer
        dims), else gathered in rows order: one byte per row when it is constant along the
        rows, else the whole (m, n) mask (a layout the kernels cannot follow)."""
        if w is None:
            return None
        launch, p, meta = self.launch, self.p, self.meta(w)
        access = mask_rows(self.shape, meta.strides, p.perm, self.naxes)
        if access is not None and access.kind == ROWS and len(access.dims) <= 3:
            buf, step, dims = launch.Buf(w.ptr, access.extent, np.dtype(np.uint8)), 1, access.dims
        else:
            step = 0 if access is not None and access.kind != ROWS else 1  # 0: byte per row
            pshape = self.pshape if step else (self.pshape[:len(self.pshape) - self.naxes]
                                               + (1,) * self.naxes)
            buf = self.gather(w, meta, pshape, np.uint8)
            dims = ((0, p.n if step else 1),)
        flat = tuple(v for d in dims for v in d) + (1, 0) * (3 - len(dims))
        return launch.Mask(buf, step, flat)

    def per_row(self, d, kept):
        """(Buf, offset, element strides over the rows' outer axes in plan order) of an
        array of one value per row: of the reduced shape, ``kept`` its reduced axes as 1."""
        outer = self.p.perm[:len(self.p.perm) - self.naxes]
        axes = range(len(self.shape)) if kept else sorted(outer)
        strides = dict(zip(axes, d.strides, strict=True))
        buf, off, _ = self.view(d, d.shape, Meta(d.ptr, d.strides, d.itemsize), ())
        return buf, off, tuple(strides[a] // d.itemsize for a in outer) or (0,)

    def outer(self):
        """The rows' outer shape in plan order (at least one axis), and its C strides in
        an (m, 1) buffer."""
        shape = self.pshape[:len(self.pshape) - self.naxes] or (1,)
        return shape, c_strides(shape, 1)


def _scratch(launch, x):
    lib = x.lib
    return launch.Scratch(x.dev, lib.stream(x), lib.memory(x.dev, lib.stream(x)))


def _run(launch, op, xs, o, res, axes, w, rows=None, **options):
    """The rows of ``_layout``'s plan in device buffers; the result (``o``'s, else a fresh
    one laid out like x: the softmax axes innermost). ``rows``: the per-row arrays of
    logsumexp's gradient ((kept, Array) pairs)."""
    x = xs[0]
    lib = x.lib
    if o is None:
        perm = permutation(x.shape, x.strides, axes)
        result = lib.empty(tuple(x.shape[a] for a in perm), res, x.dev, lib.stream(x))
        if perm != tuple(range(len(x.shape))):
            result = lib.permute(result, tuple(perm.index(a) for a in range(len(x.shape))))
        o = lib.describe(result, "out", op.name)
    if not math.prod(x.shape):
        return o.obj
    with _scratch(launch, x) as scratch:
        c = _Call(launch, xs, res, axes, scratch, o)
        p = c.p
        ws = None if rows is None else _row_values(c, rows)
        in_place = p.out.kind == ROWS
        rows_out = (c.in_place(o, p.out) if in_place else
                    (scratch.buf(p.m * p.n, launch.STORAGE[c.kind]), p.n))
        launch.run_rows(op.name, c.kind, c.ins, rows_out, p.m, p.n, c.dev, c.stream, scratch,
                        c.src, c.mask(w), ws, **options)
        if not in_place:
            launch.copy(rows_out[0], 0, c.rows, *c.view(o, x.shape, o.meta(), p.perm),
                        c.pshape, c.dev, c.stream)
    return o.obj


def _row_values(c, rows):
    """The float64 workspace of logsumexp's gradient: (lse, dlse[, sign]) per row."""
    shape, strides = c.outer()
    nv = len(rows)
    ws = c.scratch.buf(c.p.m * nv, np.float64)
    for k, (kept, d) in enumerate(rows):
        cast = d.dtype not in KIND
        c.launch.copy(*c.per_row(d, kept), ws, k, tuple(nv * s for s in strides), shape,
                      c.dev, c.stream, cast=cast, kinds=None if cast else ("f8", KIND[d.dtype]))
    return ws


def _lse_checked(func, named, dtype, axis):
    """(launch module, {name: Array}, [x(, b)], result dtype, axes) of logsumexp or its
    gradient."""
    launch, found, res = _checked(func, named, ("x", "b"), dtype)
    x, b = found["x"], found.get("b")
    axes = normalize_axes(axis, len(x.shape), func)
    return launch, found, [x] if b is None else [x, b], res, axes


def logsumexp(x, b, axis, keepdims, return_sign, where, dtype, out):
    """logsumexp on GPU arrays (``numbasoftmax.logsumexp``'s arguments; ``out`` a tuple of
    (value, sign) outs with ``return_sign``)."""
    func = LOGSUMEXP.name
    if return_sign and isinstance(out, tuple) and len(out) != 2:
        raise ValueError(f"{func}(): out must be an array or, with return_sign, a pair of "
                         f"arrays (value, sign); got a tuple of {len(out)}")
    outs = (out if isinstance(out, tuple) else (out, None)) if return_sign else (out,)
    names = ("out", "out[1]")[:len(outs)]
    launch, found, xs, res, axes = _lse_checked(
        func, [("x", x), ("b", b), ("where", where), *zip(names, outs, strict=True)], dtype,
        axis)
    x = xs[0]
    lib, shape = x.lib, reduced_shape(x.shape, axes, keepdims)
    given = [_checked_out(func, found, name, shape, res) for name in names]
    # the same first element: both written there (partial overlaps are not looked for)
    check_outs_apart(func, return_sign and None not in given and math.prod(shape) and
                     given[0].ptr == given[1].ptr)
    with lib.device(x.dev):
        results = [o or lib.describe(lib.empty(shape, res, x.dev, lib.stream(x)), name, func)
                   for o, name in zip(given, names, strict=True)]
        m = math.prod(s for a, s in enumerate(x.shape) if a not in axes)
        if m:
            with _scratch(launch, x) as scratch:
                _reduce(_Call(launch, xs, res, axes, scratch), m, results, keepdims,
                        found.get("where"))
    values = tuple(r.obj for r in results)
    return values if return_sign else values[0]


def _reduce(c, m, results, keepdims, w):
    """logsumexp's kernel into a (m, 1 or 2) buffer, copied to the results (value, sign);
    written in place where there is one result, contiguous in rows order."""
    launch, so = c.launch, len(results)
    shape, strides = c.outer()
    views = [c.per_row(r, keepdims) for r in results]
    direct = so == 1 and views[0][2] == strides
    staged = (launch.Buf(results[0].ptr, m, c.storage(results[0])) if direct else
              c.scratch.buf(m * so, launch.STORAGE[c.kind]))
    launch.run_rows(LOGSUMEXP.name, c.kind, c.ins, (staged, so), m, c.p.n, c.dev, c.stream,
                    c.scratch, c.src, c.mask(w) if c.p.n else None, weights=len(c.ins) == 2,
                    signed=so == 2)
    for k, view in enumerate([] if direct else views):
        launch.copy(staged, k, tuple(so * s for s in strides), *view, shape, c.dev, c.stream)


def logsumexp_backward(x, lse, dlse, axis, b, sign, where, dtype, out):
    """The gradient of logsumexp on GPU arrays (``numbasoftmax.logsumexp_backward``'s
    arguments)."""
    func = LOGSUMEXP_BACKWARD.name
    launch, found, xs, res, axes = _lse_checked(
        func, [("x", x), ("b", b), ("lse", lse), ("dlse", dlse), ("sign", sign),
               ("where", where), ("out", out)], dtype, axis)
    x = xs[0]
    rows = []
    for name in ("lse", "dlse", "sign"):
        d = found.get(name)
        if d is not None:
            result_dtype(d.dtype, name, func, extra=(BF16,))
            rows.append((check_per_row(func, name, d.shape, x.shape, axes), d))
    o = _checked_out(func, found, "out", x.shape, res)
    with x.lib.device(x.dev):
        return _run(launch, LOGSUMEXP_BACKWARD, xs, o, res, axes, found.get("where"), rows,
                    weights=len(xs) == 2, signed=len(rows) == 3)
