"""CPU path: checked numpy arrays -> the buffers a layout plan asks for -> the CPU launcher.

``run`` follows ``_layout.plan``: rows read and written in place where the plan says
``ROWS``; a strided axis read and written in place, a row per vector lane, where it says
``COLUMNS``; gathered into contiguous buffers (from the result pool) with the tiled 2-D copy
where it says ``GATHER``, and a staged result scattered back into ``out``. float16 data is
handed to the kernels viewed as uint16 (numba has no float16).

``fast`` is the common case without any of that: C-contiguous float32/float64 arrays, the
last axis, a fresh or C-contiguous non-overlapping ``out``. It checks only what it relies
on, so an 8x128 call costs a few microseconds; anything else returns None and takes the
general path (which applies every input rule).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _cpu, _pool
from ._layout import COLUMNS, GATHER, ROWS, Access, Meta, as_2d, plan, row_stride

_FAST = (np.dtype(np.float32), np.dtype(np.float64))


def fast(op, arrays, axis, out):
    """The result of ``op`` for the common case, or None when the general path must run."""
    x = arrays[0]
    if not (type(x) is np.ndarray and type(axis) is int and axis == -1 and x.dtype in _FAST
            and x.ndim and x.size and x.flags.c_contiguous):
        return None
    b = arrays[1] if len(arrays) == 2 else None
    if b is not None and not (type(b) is np.ndarray and b.shape == x.shape
                              and b.dtype == x.dtype and b.flags.c_contiguous):
        return None
    if out is None:
        out = _pool.empty(x.shape, x.dtype)
    elif not (type(out) is np.ndarray and out.shape == x.shape and out.dtype == x.dtype
              and out.flags.c_contiguous and out.flags.writeable
              and (out is x or not np.may_share_memory(x, out))
              and (b is None or out is b or not np.may_share_memory(b, out))):
        return None
    n = x.shape[-1]
    m = x.size // n
    # ravel: a view of a C-contiguous array, at half reshape(-1)'s cost
    if b is None:
        _cpu.run(op.name, (x.ravel(), n, out.ravel(), n, m, n))
    else:
        _cpu.run(op.name, (x.ravel(), n, b.ravel(), n, out.ravel(), n, m, n))
    return out


def _meta(a):
    return Meta(a.__array_interface__["data"][0], a.strides, a.itemsize)


def run(op, arrays, axes, out=None):
    """``op`` on checked numpy ``arrays`` (same shape and dtype) along sorted ``axes``,
    into ``out`` (checked; a plain ndarray) or a fresh result laid out like the input."""
    x = arrays[0]
    result = _pool.empty(x.shape, x.dtype, order_like=x) if out is None else out
    if x.size == 0:
        return result
    p = plan(x.shape, axes, [_meta(a) for a in arrays], _meta(result))
    storage = np.uint16 if x.dtype == np.float16 else x.dtype
    if p.out.kind == COLUMNS:
        _columns(op, [a.view(storage) for a in arrays], result.view(storage), p)
        return result
    args = []
    for a, access in zip(arrays, p.inputs, strict=True):
        flat, stride = _rows(a.view(storage), access, p.m, p.n, p.perm)
        args += [flat, stride]
    dest = result.view(storage)
    if p.out.kind == ROWS:
        flat, stride = _rows(dest, p.out, p.m, p.n, p.perm)
        _cpu.run(op.name, (*args, flat, stride, p.m, p.n))
    else:
        staged = _pool.empty((p.m, p.n), storage)
        _cpu.run(op.name, (*args, staged.reshape(-1), p.n, p.m, p.n))
        _scatter(staged, dest.transpose(p.perm), p)
    return result


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
        return as_strided(a, shape=(size,), strides=(a.itemsize,),
                          writeable=a.flags.writeable), access.stride
    if access.kind != GATHER:
        raise NotImplementedError(f"the CPU path has no access kind {access.kind!r}")
    t = a.transpose(perm)
    t2 = as_2d(t, m, n)
    if t2 is None:  # axes that do not merge into a 2-D view: numpy's copy
        return np.ascontiguousarray(t).reshape(-1), n
    dst = _pool.empty((m, n), a.dtype)
    _cpu.copy2d(t2, dst)  # a tiled kernel: numpy's copies of transposed views are slow
    return dst.reshape(-1), n


def _columns(op, arrays, out, p):
    """Every array read in place as (outer, n, inner): flat views from each array's first
    element with its outer and axis strides (the plan checked they are non-negative)."""
    outer = p.m // p.inner
    args = []
    for a, access in zip((*arrays, out), (*p.inputs, p.out), strict=True):
        size = (outer - 1) * access.stride + (p.n - 1) * access.axis_stride + p.inner
        flat = as_strided(a, shape=(size,), strides=(a.itemsize,), writeable=a.flags.writeable)
        args += [flat, access.stride, access.axis_stride]
    _cpu.run_columns(op.name, (*args, outer, p.n, p.inner))


def _scatter(staged, out_t, p):
    """Copy the staged (m, n) result into ``out`` (axes already in plan order)."""
    out_2d = as_2d(out_t, p.m, p.n)
    if out_2d is None:
        out_t[...] = staged.reshape(out_t.shape)
    else:
        _cpu.copy2d(staged, out_2d)
