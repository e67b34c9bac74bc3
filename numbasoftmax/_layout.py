"""Axes -> rows: every call is reduced to M independent rows of N elements.

The softmax axes are moved last (in ascending order, so a row is always read in the same
logical order whatever the memory layout: results do not depend on the layout), the other
axes first. When the rows of that view are contiguous and evenly spaced in memory, the
kernels read them in place through a flat 1-D view and a row stride; otherwise the rows are
copied into a contiguous buffer first (and results copied back into ``out``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple
from numpy.lib.stride_tricks import as_strided


def normalize_axes(axis, ndim):
    """``axis`` (int, tuple of ints or None) -> sorted tuple of non-negative axes.

    Raises numpy's AxisError for an out-of-range axis and ValueError for a repeated one.
    A 0-d array accepts axis None, 0, -1 (as torch does) and is one element."""
    if type(axis) is int and -ndim <= axis < ndim:
        return (axis % ndim,)
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis must be an int, a tuple of ints or None; got {axis!r}")
    axes = axis if isinstance(axis, tuple) else (axis,)
    for a in axes:
        if isinstance(a, (bool, np.bool_)):
            raise TypeError(f"axis must be an int, a tuple of ints or None; got {axis!r}")
        try:
            operator.index(a)
        except TypeError:
            raise TypeError(f"axis must be an int, a tuple of ints or None; got {axis!r}") from None
    if ndim == 0:  # one element: axis 0 or -1, once (as torch)
        if len(axes) > 1:
            raise ValueError(f"repeated axis in `axis` argument: {axis!r} for a 0-d array")
        if any(operator.index(a) not in (0, -1) for a in axes):
            raise np.exceptions.AxisError(f"axis {axis!r} is out of bounds for a 0-d array")
        return ()
    return tuple(sorted(normalize_axis_tuple(axis, ndim, argname="axis")))


@dataclass
class Rows:
    """M rows of N elements: row i is ``flat[i*stride : i*stride + N]``."""

    flat: np.ndarray
    stride: int


def permutation(shape, strides, axes):
    """Axis order that puts the softmax axes last (ascending) and the others first, the
    others ordered by decreasing stride so that they merge into one row index when they can."""
    others = [a for a in range(len(shape)) if a not in axes]
    others.sort(key=lambda a: -abs(strides[a]))
    return tuple(others) + tuple(axes)


def rows_in_place(a, m, n):
    """A zero-copy ``Rows`` view of ``a`` (already permuted) or None when its rows are not
    contiguous and evenly spaced with a non-negative stride."""
    a2 = as_2d(a, m, n)
    if a2 is None:
        return None
    if a2.flags.c_contiguous:
        return Rows(a2.reshape(-1), n)
    item = a2.itemsize
    if n > 1 and a2.strides[1] != item:
        return None
    if m == 1:
        stride = n
    else:
        stride, rem = divmod(a2.strides[0], item)
        if rem or stride < 0:
            return None
    flat = as_strided(a2, shape=((m - 1) * stride + n,), strides=(item,),
                      writeable=a2.flags.writeable)
    return Rows(flat, stride)


def as_2d(a, m, n):
    """``a`` viewed as (m, n) without copying, or None."""
    try:
        return np.reshape(a, (m, n), copy=False)
    except ValueError:
        return None


def contiguous_rows(a, m, n, copy2d, empty=np.empty):
    """Rows of a C-contiguous copy of ``a`` (in logical order); ``copy2d(src, dst)`` copies
    2-D views (a tiled kernel: numpy's strided copies of transposed views are slow) into
    ``empty(shape, dtype)``."""
    a2 = as_2d(a, m, n)
    if a2 is None:
        return Rows(np.ascontiguousarray(a).reshape(m * n), n)
    dst = empty((m, n), a.dtype)
    copy2d(a2, dst)
    return Rows(dst.reshape(-1), n)
