"""Axes -> rows: every call is reduced to M independent rows of N elements.

The softmax axes are moved last (in ascending order, so a row is always read in the same
logical order whatever the memory layout: results do not depend on the layout), the other
axes first. ``plan`` then says, from metadata alone (addresses, shapes, byte strides), how
the kernels reach each array's rows; it allocates and copies nothing, so every backend
(CPU, GPU) can follow the same plan with its own buffers and copy kernels:

* ``ROWS``: the rows are contiguous and evenly spaced (row stride >= 0): read or written in
  place through a flat view and a row stride.
* ``GATHER``: any other layout. An input is first copied into a contiguous buffer in
  logical order; an output is computed into such a buffer and then copied ("scattered")
  into place. An input that partially overlaps ``out`` is gathered too, so it is read
  before the kernel writes.

Access kinds are strings, so a new one (for example reducing along a strided axis in
place) is one more constant, one more branch here and one more in each backend.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

ROWS = "rows"
GATHER = "gather"


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


def permutation(shape, strides, axes):
    """Axis order that puts the softmax axes last (ascending) and the others first, the
    others ordered by decreasing stride so that they merge into one row index when they can."""
    others = [a for a in range(len(shape)) if a not in axes]
    others.sort(key=lambda a: -abs(strides[a]))
    return tuple(others) + tuple(axes)


class Meta(NamedTuple):
    """What the plan needs to know about one array (all arrays of a call share a shape)."""

    address: int  # of the element at index (0, ..., 0)
    strides: tuple  # bytes
    itemsize: int
    cast: bool = False  # its dtype differs from the result's: a gather converts it


class Access(NamedTuple):
    """How the kernels reach one array's rows."""

    kind: str  # ROWS or GATHER
    stride: int = 0  # ROWS: elements from the start of one row to the next


class Plan(NamedTuple):
    m: int  # rows
    n: int  # elements per row
    perm: tuple  # axis order of the rows: the other axes, then the softmax axes
    inputs: tuple  # an Access per input
    out: Access


def row_stride(shape, strides, itemsize, perm, naxes):
    """Row stride in elements when the array, its axes in ``perm`` order (the ``naxes``
    softmax axes last), is M contiguous rows evenly spaced at a non-negative stride; else
    None."""
    split = len(perm) - naxes
    expect = itemsize
    for a in reversed(perm[split:]):
        if shape[a] != 1:
            if strides[a] != expect:
                return None
            expect *= shape[a]
    others = [a for a in perm[:split] if shape[a] != 1]
    if not others:
        return expect // itemsize  # a single row
    step = strides[others[-1]]
    for a in reversed(others):
        if strides[a] != step:
            return None
        step *= shape[a]
    rs = strides[others[-1]]
    if rs < 0 or rs % itemsize:
        return None
    return rs // itemsize


def extent(shape, meta):
    """(lowest byte address, highest byte address + 1) that an array touches."""
    lo = hi = meta.address
    for size, st in zip(shape, meta.strides, strict=True):
        if size == 0:
            return lo, lo
        if st < 0:
            lo += (size - 1) * st
        else:
            hi += (size - 1) * st
    return lo, hi + meta.itemsize


def _partial_overlap(shape, a, out):
    if a.address == out.address and tuple(a.strides) == tuple(out.strides):
        return False  # the same view: in place, element by element
    alo, ahi = extent(shape, a)
    olo, ohi = extent(shape, out)
    return alo < ohi and olo < ahi


def plan(shape, axes, inputs, out):
    """The Plan of a call on arrays of ``shape`` along sorted ``axes``; ``inputs`` and
    ``out`` are ``Meta`` (a fresh result is planned once it is allocated)."""
    n = math.prod(shape[a] for a in axes)
    m = math.prod(shape) // n if n else 0
    perm = permutation(shape, inputs[0].strides, axes)
    naxes = len(axes)
    accesses = []
    for meta in inputs:
        rs = None
        if not meta.cast and not _partial_overlap(shape, meta, out):
            rs = row_stride(shape, meta.strides, meta.itemsize, perm, naxes)
        accesses.append(Access(GATHER) if rs is None else Access(ROWS, rs))
    rs = row_stride(shape, out.strides, out.itemsize, perm, naxes)
    if rs is None or (m > 1 and rs < n):  # overlapping rows cannot be written in place
        out_access = Access(GATHER)
    else:
        out_access = Access(ROWS, rs)
    return Plan(m, n, perm, tuple(accesses), out_access)


def as_2d(a, m, n):
    """``a`` viewed as (m, n) without copying, or None."""
    try:
        return np.reshape(a, (m, n), copy=False)
    except ValueError:
        return None
