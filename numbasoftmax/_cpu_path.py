"""CPU path: checked numpy arrays -> the buffers a layout plan asks for -> the CPU launcher.

``run`` follows ``_layout.plan``: rows read and written in place where the plan says
``ROWS``; a strided axis read and written in place, a row per vector lane, where it says
``COLUMNS``; gathered into contiguous buffers (from the result pool) with the tiled 2-D copy
where it says ``GATHER``, and a staged result scattered back into ``out``. float16 data is
handed to the kernels viewed as uint16 (numba has no float16).

Options of the general path: ``dtype`` (the result dtype; inputs of another float dtype
are read in place as if cast, through the kernels' storage views), ``where`` (a boolean
mask broadcasting to the input: read in place by row offsets where each row's bytes are
contiguous, else its own rows copied once; a mask constant along the rows runs the
unmasked kernels and fills the excluded rows), given row values (logsumexp's gradient).
``reduce`` runs logsumexp: one value (and sign) per row.

``fast`` is the common case without any of that: C-contiguous float arrays along
one axis (rows, or columns read in place as the plan would), a fresh or C-contiguous
non-overlapping ``out``, and no mask or a C-contiguous boolean mask of the input's shape
(or of its rows' shape) along the last axis. It checks only what it relies
on, so an 8x128 call costs a few microseconds; anything else returns None and takes the
general path (which applies every input rule). ``fast_logsumexp`` and
``fast_logsumexp_backward`` are the same for logsumexp and its gradient without options.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _cpu, _pool
from ._layout import (
    COLUMNS,
    GATHER,
    ROWS,
    Access,
    Meta,
    _merged_stride,
    as_2d,
    fresh_plan,
    mask_rows,
    plan,
    row_stride,
)

_FAST = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
_F16 = np.dtype(np.float16)
_BOOL = np.dtype(np.bool_)


def _fast_layout(x, axis, count=1):
    """(flags, plan) of ``x`` when the fast paths take it, else None: a non-empty
    C-contiguous float16, float32 or float64 ndarray along an int ``axis``, whose rows are
    then contiguous (the last axis: plan None) or, for ``count`` arrays laid out like it and
    a result laid out like it, columns read in place (``_layout``'s COLUMNS plan)."""
    if not (type(x) is np.ndarray and type(axis) is int):
        return None
    flags = x.flags
    if not (flags.c_contiguous and x.dtype in _FAST and x.size):
        return None
    ndim = x.ndim
    if not -ndim <= axis < ndim:
        return None
    if axis == -1 or axis == ndim - 1:
        return flags, None
    layout = (x.strides, x.itemsize)
    p = fresh_plan(x.shape, (axis % ndim,), (layout,) * count, layout)
    return (flags, p) if p.out.kind == COLUMNS else None


def fast(op, arrays, axis, out, where=None):
    """The result of ``op`` for the common case, or None when the general path must run.
    ``where``: None, or a mask the fast path takes along the last axis (``_fast_side``)."""
    x = arrays[0]
    if type(x) is not np.ndarray or type(axis) is not int:
        return None
    flags = x.flags
    # direct: every buffer C-contiguous and aligned, out writable (see _cpu.run)
    direct = flags.c_contiguous and flags.aligned
    dt = x.dtype
    shape = x.shape
    last = len(shape) - 1
    size = x.size
    if axis == -1 or axis == last:  # rows, the common case: checked here (~0.1 us less)
        if not ((direct or flags.c_contiguous) and dt in _FAST and last >= 0 and size):
            return None
        p = None
    else:
        layout = _fast_layout(x, axis, len(arrays))
        if layout is None:
            return None
        p = layout[1]
    side = None
    if where is not None:
        side = _fast_side(where, x) if p is None else None
        if side is None:
            return None
    # arrays that each allocated their own memory cannot overlap: numpy's bounds check
    # (~0.25 us of a ~3.5 us small call) only where one is a view
    owned = flags.owndata
    b = None
    if len(arrays) == 2:  # a gradient's second input (None there is the general path's error)
        b = arrays[1]
        if not (type(b) is np.ndarray and b.dtype == dt and b.shape == shape):
            return None
        flags = b.flags
        if not flags.c_contiguous:
            return None
        direct = direct and flags.aligned
        owned = owned and flags.owndata
    if out is None:
        out = _pool.empty(shape, dt)
    else:
        if not (type(out) is np.ndarray and out.dtype == dt and out.shape == shape):
            return None
        flags = out.flags
        if not flags.carray:  # C-contiguous, aligned and writable
            if not (flags.c_contiguous and flags.writeable):
                return None
            direct = False
        if not (owned and flags.owndata
                or (out is x or not np.may_share_memory(x, out))
                and (b is None or out is b or not np.may_share_memory(b, out))):
            return None
    n = shape[axis]
    # ravel: a view of a C-contiguous array, at half reshape(-1)'s cost
    a, o = x.ravel(), out.ravel()
    bf = a if b is None else b.ravel()
    if dt.itemsize == 2:  # float16, the one 2-byte dtype here
        a, bf, o = a.view(np.uint16), bf.view(np.uint16), o.view(np.uint16)
    if p is None:
        _cpu.run(op.name, a, n, bf, n, o, n, size // n, n, side, direct)
    else:  # every array has the layout of x: one outer stride and one axis stride
        s, i = p.out.stride, p.out.axis_stride
        _cpu.run_columns(op.name, (a, s, i, bf, s, i, o, s, i, p.m // p.inner, p.n, p.inner),
                         direct=direct)
    return out


# row pitch -> the mask's row offsets (``_side``'s dims), read-only as the launcher passes
# them: C-ordered rows of n at n, one row for every row at 0
_ROW_DIMS = {0: _cpu.read_only(np.empty((0, 2), np.int64))}


def _fast_side(where, x):
    """The kernels' ``side`` for ``where`` when it is a C-contiguous boolean ndarray of the
    shape of ``x`` (C-contiguous, rows along the last axis), or of its rows' shape (one
    mask for every row), with rows of two or more elements; else None. It is what
    ``_side`` gives for such a mask, the mask's bytes read-only as there (one compiled
    specialization for both)."""
    if not (type(where) is np.ndarray and where.dtype == _BOOL and where.flags.c_contiguous):
        return None
    n = x.shape[-1]
    if where.shape == x.shape:
        pitch = n
    elif where.shape == (n,):
        pitch = 0
    else:
        return None
    if n < 2:  # rows of one element: ``_side`` takes the mask as constant along them
        return None
    dims = _ROW_DIMS.get(pitch)
    if dims is None:
        dims = _ROW_DIMS[pitch] = _cpu.read_only(np.array([[0, pitch]], np.int64))
    flat = where.view(np.uint8).reshape(-1)
    flat.flags.writeable = False  # a view: the caller's mask stays as it is
    return flat, dims, None


def fast_logsumexp(x, axis, keepdims):
    """logsumexp of ``x`` in the common case of ``fast`` (no options), or None."""
    layout = _fast_layout(x, axis)
    if layout is None or layout[1] is not None:
        return None
    flags = layout[0]
    n = x.shape[-1]
    values = np.empty(x.shape[:-1] + ((1,) if keepdims else ()), x.dtype)
    a, v = x.ravel(), values.reshape(-1)
    if x.dtype == _F16:
        a, v = a.view(np.uint16), v.view(np.uint16)
    _cpu.run("logsumexp", a, n, None, 0, v, 1, x.size // n, n, None, flags.aligned)
    return values


def fast_logsumexp_backward(x, lse, dlse, axis):
    """logsumexp's gradient in the common case of ``fast`` (no options; ``lse`` and
    ``dlse`` float ndarrays of the rows' shape, with or without the reduced axis kept), or
    None. The rows' given values as the general path gives them (``_side``)."""
    layout = _fast_layout(x, axis)
    if layout is None or layout[1] is not None:
        return None
    rows = x.shape[:-1]
    for v in (lse, dlse):
        if not (type(v) is np.ndarray and v.dtype in _FAST and v.shape in (rows, (*rows, 1))):
            return None
    n = x.shape[-1]
    m = x.size // n
    rv = _given(lse, dlse)
    out = _pool.empty(x.shape, x.dtype)
    a, o = x.ravel(), out.ravel()
    if x.dtype == _F16:
        a, o = a.view(np.uint16), o.view(np.uint16)
    _cpu.run("logsumexp_backward", a, n, None, 0, o, n, m, n, (None, None, *rv),
             layout[0].aligned)
    return out


def _given(first, second, out=None):
    """The kernels' given row values (``_cpu_kernels``' ``side[2:]``) from two arrays of a
    value per row in the rows' order: as they are where both are float32 or both float64,
    contiguous (the launcher passes them read-only, whatever their flags: one compiled
    specialization) and apart from ``out`` (which the kernels write while they read them),
    else copies, both float64 (every float converts exactly)."""
    same = first.dtype == second.dtype and first.dtype in _GIVEN
    dtype = first.dtype if same else np.dtype(np.float64)

    def given(v):
        v = v.reshape(-1)
        if out is not None and np.may_share_memory(v, out):
            return np.array(v, dtype)
        return v if v.dtype == dtype and v.flags.c_contiguous else np.ascontiguousarray(v, dtype)
    return given(first), given(second)


_GIVEN = (np.dtype(np.float32), np.dtype(np.float64))


def _meta(a):
    return Meta(a.__array_interface__["data"][0], a.strides, a.itemsize)


@functools.lru_cache(maxsize=64)
def _storage(dtype, result):
    """What the kernels see an array of float ``dtype`` as, for a ``result`` dtype."""
    if dtype == result:
        return np.uint16 if dtype == np.float16 else dtype
    from ._simd import storage_view  # the kernels' table (imported at the first cast)

    return np.dtype(storage_view(dtype.name, np.dtype(result).name))


def run(op, arrays, axes, out=None, *, dtype=None, where=None, values=None, kernel=None,
        b=None):
    """``op`` on checked numpy ``arrays`` (same shape; the same float dtype, or read as if
    cast to ``dtype``) along sorted ``axes``, into ``out`` (checked; a plain ndarray) or a
    fresh result laid out like the input. ``where``: a boolean mask broadcasting to the
    input; ``values``: per-row values in reduced shape (see ``_row_values``); ``kernel``:
    the kernels' operation when it is not ``op.name``; ``b``: weights (broadcasting to the
    input) for an operation that takes them, passed as its second array."""
    x = arrays[0]
    dtype = np.dtype(dtype or x.dtype)
    result = _pool.empty(x.shape, dtype, order_like=x) if out is None else out
    if x.size == 0:
        return result
    if b is not None:
        arrays = (x, np.broadcast_to(b, x.shape))
    # a strided axis read in place (a COLUMNS plan); with a mask or logsumexp's gradient
    # (given values) in parallel calls only, as logsumexp (``reduce``)
    columns = (where is None and values is None) or x.size >= _cpu.PARALLEL_MIN_ELEMENTS

    def planned(columns):
        if out is None:
            return fresh_plan(x.shape, axes, tuple((a.strides, a.itemsize) for a in arrays),
                              (result.strides, result.itemsize), columns)
        return plan(x.shape, axes, [_meta(a) for a in arrays], _meta(result),
                    columns=columns)

    p = planned(columns)
    runs, mask = _columns_with(where, x, axes, p)
    if not runs:
        p = planned(False)
    views = [a.view(_storage(a.dtype, dtype)) for a in arrays]
    dest = result.view(_storage(dtype, dtype))
    if p.out.kind == COLUMNS:
        side, filled = _column_side(where, values, x, axes, p, result, mask)
        args = _column_views((*views, dest), p)
        if kernel is not None and len(views) == 1:  # logsumexp's gradient: no weights
            args[3:3] = [None, 0, 0]
        _cpu.run_columns(kernel or op.name, (*args, p.m // p.inner, p.n, p.inner), side=side)
    else:
        side, filled = _side(where, values, x.shape, axes, p, result)
        _run_rows(op, views, dest, p, side, kernel)
    if filled is not None:
        _fill_rows(result, filled, p, _EXCLUDED[op.name])
    return result


def _run_rows(op, views, dest, p, side, kernel):
    """The rows of plan ``p`` (not COLUMNS) through the row drivers: read in place or
    gathered, written in place or staged and scattered into ``dest``."""
    args = []
    for a, access in zip(views, p.inputs, strict=True):
        flat, stride = _rows(a, access, p.m, p.n, p.perm)
        args += [flat, stride]
    if len(args) == 2:  # one input: logsumexp's gradient takes None for its absent
        args += [None, 0] if kernel is not None else args  # weights, the others x again
    name = kernel or op.name
    if p.out.kind == ROWS:
        flat, stride = _rows(dest, p.out, p.m, p.n, p.perm)
        _cpu.run(name, *args, flat, stride, p.m, p.n, side)
    else:
        staged = _pool.empty((p.m, p.n), dest.dtype)
        _cpu.run(name, *args, staged.reshape(-1), p.n, p.m, p.n, side)
        _scatter(staged, dest.transpose(p.perm), p)


# the value of an excluded element (``where`` False), per operation
_EXCLUDED = {"softmax": 0.0, "log_softmax": -np.inf, "softmax_backward": 0.0,
             "log_softmax_backward": 0.0, "logsumexp_backward": 0.0}


def reduce(kernel, arrays, axes, *, dtype, where=None, b=None):
    """logsumexp (``kernel``: "logsumexp", or "logsumexp_sign" for value and sign) of
    checked numpy ``arrays`` (x) along sorted ``axes``, with weights ``b`` broadcasting to
    x or None. Returns (values, signs or None) in the keepdims shape, fresh arrays of
    ``dtype`` in the rows' order."""
    x = arrays[0]
    dtype = np.dtype(dtype)
    keep = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
    inputs = (x,) if b is None else (x, np.broadcast_to(b, x.shape))
    layouts = tuple((a.strides, a.itemsize) for a in inputs)
    p = fresh_plan(x.shape, axes, layouts, None)
    width = 2 if kernel == "logsumexp_sign" else 1
    m = math.prod(keep)
    # the strided axes read in place, where the rows would be gathered, in parallel calls:
    # a first serial call compiled 1.5 s longer so (the band's logsumexp), where gathered
    # rows share their compiled code with contiguous ones
    cp = filled = None
    if (x.size >= _cpu.PARALLEL_MIN_ELEMENTS and p.n and any(a.kind != ROWS for a in p.inputs)
            and all(a.dtype == dtype for a in inputs)):
        cp = fresh_plan(x.shape, axes, layouts, layouts[0])  # as if for a result like x
    runs, mask = _columns_with(where, x, axes, cp)
    cp = cp if runs else None
    if cp is not None and cp.out.kind == COLUMNS:
        side, filled = _column_side(where, None, x, axes, cp, None, mask)
        flat = _reduce_columns(kernel, inputs, b is None, cp, width, dtype, side)
    else:
        flat = np.empty((m, width), dtype)
        if flat.size and p.n == 0:  # empty rows: the sum is 0
            flat[:, 0] = -np.inf
            flat[:, 1:] = 0.0
        elif flat.size:
            side, filled = _side(where, None, x.shape, axes, p, None)
            args = []
            for a, access in zip(inputs, p.inputs, strict=True):
                buf, stride = _rows(a.view(_storage(a.dtype, dtype)), access, p.m, p.n,
                                    p.perm)
                args += [buf, stride]
            if b is None:
                args += [None, 0]
            _cpu.run(kernel, *args, flat.view(_storage(dtype, dtype)).reshape(-1), width,
                     p.m, p.n, side)
    if filled is not None:  # rows without an included element
        flat[~filled.reshape(-1), 0] = -np.inf
        flat[~filled.reshape(-1), 1:] = 0.0
    perm_shape = tuple(keep[a] for a in p.perm)
    inverse = tuple(sorted(range(len(p.perm)), key=p.perm.__getitem__))
    values = flat[:, 0].reshape(perm_shape).transpose(inverse)
    signs = flat[:, 1].reshape(perm_shape).transpose(inverse) if width == 2 else None
    return values, signs


def _reduce_columns(kernel, inputs, unweighted, p, width, dtype, side):
    """logsumexp along strided axes read in place (a COLUMNS plan ``p`` of the inputs, all
    of ``dtype``; ``side``: the column drivers' mask, or None): an (m, width) view of
    values and signs in rows order. The column kernel stores a band's values as one run,
    so the values lie in one plane, the signs in a second."""
    m, outer = p.m, p.m // p.inner
    planes = np.empty((width, m), dtype)
    args = _column_views([a.view(_storage(dtype, dtype)) for a in inputs], p, p.inputs)
    if unweighted:
        args += [None, 0, 0]
    _cpu.run_columns(kernel, (*args, planes.view(_storage(dtype, dtype)).reshape(-1),
                              p.inner, m, outer, p.n, p.inner), side=side)
    return planes.T


def _side(where, values, shape, axes, p, out):
    """(the kernels' ``side`` or None, per-row mask or None) for ``where`` and the given
    row ``values`` ((lse, g) arrays broadcasting to the keepdims shape) of a plan. A mask
    constant along the rows is not given to the kernels: its per-row values (in the rows'
    order, outer shape) come back for ``_fill_rows``."""
    rv = _row_values(values, shape, axes, p, out)
    if where is None:
        return (None if rv is None else (None, None, *rv)), None
    naxes = len(axes)
    w = np.broadcast_to(where.view(np.uint8), shape)
    access = mask_rows(shape, w.strides, p.perm, naxes)
    if access is None:  # copy the mask's own rows (broadcast outer axes stay broadcast)
        t = w.transpose(p.perm)
        own = tuple(slice(0, 1) if st == 0 else slice(None) for st in t.strides[:-naxes or None])
        base = np.ascontiguousarray(t[own])
        inverse = tuple(np.argsort(p.perm))
        w = np.broadcast_to(base, t.shape).transpose(inverse)
        access = mask_rows(shape, w.strides, p.perm, naxes)
    if access.kind == "constant":
        t = w.transpose(p.perm)
        filled = np.array(t[(Ellipsis,) + (0,) * naxes], dtype=bool)  # 0-d stays 0-d
        return (None if rv is None else (None, None, *rv)), filled
    flat = as_strided(w, shape=(access.extent,), strides=(1,))
    dims = np.array(access.dims, dtype=np.int64).reshape(-1, 2)
    return (flat, dims, *(rv or (None,))), None


def _constant_along(where, shape, axes):
    """Whether mask ``where`` (broadcasting to ``shape``) is constant along ``axes``."""
    strides = np.broadcast_to(where, shape).strides
    return not any(strides[a] for a in axes if shape[a] > 1)


def _column_mask(where, x, axes, p):
    """The column drivers' mask (bytes, layout) for ``where`` (broadcasting to x, varying
    along ``axes``) under the COLUMNS plan ``p``, or None where they take none. One
    constant along the plan's inner positions (a (K, 1) mask along axis 0): a byte per
    outer position and element along the axes, in the plan's order (outer positions x n
    bytes, the mask's own size at most), layout n = p.n. Others: their bytes at their own
    (outer stride, axis stride), the inner positions contiguous, read in place where they
    lie so; else a mask broadcast along no axis is copied into x's layout (``_mask_like``)
    and others' own elements into C order of the outer axes, the axes and the inner ones
    (a (K, N) mask over a batch stays that size). None where the copy's axes do not merge
    either."""
    w = np.broadcast_to(where.view(np.uint8), x.shape)
    rest = p.perm[:len(p.perm) - len(axes)]
    inner, size = [], 1
    for d in reversed([d for d in rest if x.shape[d] > 1]):  # the plan's C inner positions
        if size == p.inner:
            break
        inner.insert(0, d)
        size *= x.shape[d]
    if not any(w.strides[d] for d in inner):
        kept = [d for d in rest if d not in inner] + list(axes)  # as the plan merges them
        rows = w[tuple(0 if d in inner else slice(None) for d in range(x.ndim))]
        order = sorted(kept)
        return (np.ascontiguousarray(rows.transpose([order.index(d) for d in kept]))
                .reshape(-1), p.n)
    layout = _mask_strides(w, rest, inner, axes)
    if layout is None and all(w.strides[d] for d in range(x.ndim) if x.shape[d] > 1):
        return _mask_like(w, x), _layout_of(p.inputs[0].stride, p.inputs[0].axis_stride)
    if layout is None:  # its own elements (broadcast axes stay so) in C order of the
        # outer axes, the softmax axes, then the inner ones
        order = [d for d in rest if d not in inner] + list(axes) + inner
        t = w.transpose(order)
        own = tuple(slice(0, 1) if st == 0 else slice(None) for st in t.strides)
        w = np.broadcast_to(np.ascontiguousarray(t[own]), t.shape).transpose(
            np.argsort(order))
        layout = _mask_strides(w, rest, inner, axes)
    if layout is None:
        return None
    return _flat(w, 1 + sum((n - 1) * st for n, st in zip(w.shape, w.strides,
                                                          strict=True))), layout


def _mask_strides(w, rest, inner, axes):
    """The layout (``_layout_of``) of mask bytes ``w`` in a COLUMNS plan whose other axes
    are ``rest`` (the ``inner`` ones last), when its inner positions are contiguous, its
    outer axes and the softmax ``axes`` each merge into one stride, and no stride is
    negative; else None."""
    if any(st < 0 for st in w.strides):
        return None
    meta = Meta(0, w.strides, 1)
    outer = _merged_stride(w.shape, meta, [d for d in rest if d not in inner])
    along = _merged_stride(w.shape, meta, list(axes))
    if _merged_stride(w.shape, meta, inner) != 1 or outer is None or along is None:
        return None
    return _layout_of(outer, along)


def _layout_of(outer, along):
    """A mask's layout as the column drivers take it: (outer stride, axis stride)."""
    return np.array([outer, along], np.int64)


def _row_values(values, shape, axes, p, out):
    """The kernels' given row values ((lse, g) arrays broadcasting to the keepdims shape)
    in the rows' order, or None."""
    if values is None:
        return None
    keep = tuple(1 if a in axes else s for a, s in enumerate(shape))
    return _given(*((v if v.shape == keep else np.broadcast_to(v, keep))
                    .transpose(p.perm).reshape(-1) for v in values), out=out)


def _column_side(where, values, x, axes, p, out, mask):
    """``_side``'s (side, per-row mask) for a COLUMNS plan ``p``; ``mask``: the column
    drivers' mask (``_column_mask``), or None for a mask constant along the axes (the
    rows' own rule) or none."""
    if mask is None:
        return _side(where, values, x.shape, axes, p, out)
    return (*mask, *(_row_values(values, x.shape, axes, p, out) or (None,))), None


def _columns_with(where, x, axes, p):
    """(whether plan ``p`` (or None) runs as planned with mask ``where``, the column
    drivers' mask or None): a COLUMNS plan takes a mask that varies along the axes as
    ``_column_mask`` lays it out, or gathers its rows (False) where it cannot."""
    if (p is None or p.out.kind != COLUMNS or where is None
            or _constant_along(where, x.shape, axes)):
        return True, None
    mask = _column_mask(where, x, axes, p)
    return mask is not None, mask


def _mask_like(w, x):
    """The bytes ``w`` (uint8, x's shape, broadcast along no axis longer than 1) as a flat
    array laid out as x (whose strides are non-negative): x's element at flat offset i (in
    elements, from its first element) has its byte at i. The mask's own memory where it
    lies so, else a copy."""
    strides = tuple(st // x.itemsize for st in x.strides)
    size = 1 + sum((s - 1) * st for s, st in zip(x.shape, strides, strict=True))
    if all(a == b for a, b, n in zip(w.strides, strides, x.shape, strict=True) if n > 1):
        return _flat(w, size)
    own = np.empty(size, np.uint8)
    as_strided(own, shape=x.shape, strides=strides)[...] = w
    return own


def _fill_rows(result, filled, p, value):
    """result rows whose per-row mask ``filled`` is False set to ``value``."""
    t = result.transpose(p.perm)
    naxes = t.ndim - filled.ndim
    t[~np.broadcast_to(filled, t.shape[:t.ndim - naxes])] = value


def rows_in_place(a, perm, naxes):
    """(flat 1-D view, row stride) of the m rows of n elements of non-empty ``a``, its axes
    in ``perm`` order with the ``naxes`` softmax axes last, when they are evenly spaced
    (at a non-negative stride); None otherwise. (The Dask backend's two passes reach a
    block's rows through it.)"""
    n = math.prod(a.shape[ax] for ax in perm[len(perm) - naxes:])
    stride = row_stride(a.shape, a.strides, a.itemsize, perm, naxes)
    if stride is None:
        return None
    return _rows(a, Access(ROWS, stride), a.size // n, n, perm)


def _rows(a, access, m, n, perm):
    """(flat 1-D view, row stride) through which the kernels reach the rows of ``a``."""
    if access.kind == ROWS:
        # the plan found the rows evenly spaced at a non-negative stride: element (i, j)
        # of the rows is flat[i * stride + j], starting at a's first element
        size = (m - 1) * access.stride + n
        return _flat(a, size), access.stride
    if access.kind != GATHER:
        raise NotImplementedError(f"the CPU path has no access kind {access.kind!r}")
    t = a.transpose(perm)
    t2 = as_2d(t, m, n)
    if t2 is None:  # axes that do not merge into a 2-D view: numpy's copy
        return np.ascontiguousarray(t).reshape(-1), n
    dst = _pool.empty((m, n), a.dtype)
    _cpu.copy2d(t2, dst)  # a tiled kernel: numpy's copies of transposed views are slow
    return dst.reshape(-1), n


def _flat(a, size):
    """``size`` elements of memory from a's first element on, as a 1-D view of a's dtype (the
    plan checked they are a's). A C- or F-contiguous array is its own memory in memory order
    (ravel: ~0.3 us; as_strided: ~5 us)."""
    flags = a.flags
    if size == a.size and (flags.c_contiguous or flags.f_contiguous):
        return a.ravel(order="K")
    return as_strided(a, shape=(size,), strides=(a.itemsize,), writeable=flags.writeable)


def _column_views(arrays, p, accesses=None):
    """Every array of a COLUMNS plan (its inputs, then out; or those of ``accesses``) read
    in place as (outer, n, inner): flat views from each array's first element with its
    outer and axis strides (the plan checked they are non-negative)."""
    outer = p.m // p.inner
    args = []
    for a, access in zip(arrays, accesses or (*p.inputs, p.out), strict=True):
        size = (outer - 1) * access.stride + (p.n - 1) * access.axis_stride + p.inner
        flat = _flat(a, size)
        args += [flat, access.stride, access.axis_stride]
    return args


def columns_in_place(arrays, out, axes):
    """(the plan, per array of ``arrays`` and ``out``: flat view, outer stride, axis stride)
    when non-empty numpy ``arrays`` (same shape and dtype; ``out`` may be ``arrays[0]``
    when nothing is written) are read and written in place along a strided axis (a COLUMNS
    plan along sorted ``axes``); None when the plan is another one. The rows are the
    plan's: C order of the other axes in ``plan.perm`` order. (The Dask backend's two
    passes reach a block's rows through it where ``rows_in_place`` cannot.)"""
    p = plan(arrays[0].shape, axes, [_meta(a) for a in arrays], _meta(out))
    if p.out.kind != COLUMNS:
        return None
    return p, _column_views((*arrays, out), p)


def _scatter(staged, out_t, p):
    """Copy the staged (m, n) result into ``out`` (axes already in plan order)."""
    out_2d = as_2d(out_t, p.m, p.n)
    if out_2d is None:
        out_t[...] = staged.reshape(out_t.shape)
    else:
        _cpu.copy2d(staged, out_2d)
