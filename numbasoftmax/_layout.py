"""Axes -> rows: every call is reduced to M independent rows of N elements.

The softmax axes are moved last (in ascending order, so a row is always read in the same
logical order whatever the memory layout: results do not depend on the layout), the other
axes first. ``plan`` then says, from metadata alone (addresses, shapes, byte strides), how
the kernels reach each array's rows; it allocates and copies nothing, so every backend
(CPU, GPU) can follow the same plan with its own buffers and copy kernels:

* ``ROWS``: the rows are contiguous and evenly spaced (row stride >= 0): read or written in
  place through a flat view and a row stride.
* ``COLUMNS``: the softmax axes are not the innermost, but every array is, in place, M
  outer positions x n elements along the (merged) softmax axes x C contiguous inner
  positions, at non-negative strides: softmax over axis 0 of a C-ordered matrix, over the
  channels of an NCHW batch. The kernels then run C rows side by side, one per vector lane,
  reading along the axis at its stride. Chosen when the rows cannot all be read in place
  and C >= COLUMNS_MIN_INNER (with fewer columns most lanes would idle: gathering is
  faster). A plan is all-COLUMNS or has none.
* ``GATHER``: any other layout. An input is first copied into a contiguous buffer in
  logical order; an output is computed into such a buffer and then copied ("scattered")
  into place. An input that partially overlaps ``out`` is gathered too, so it is read
  before the kernel writes.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import NamedTuple

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

ROWS = "rows"
COLUMNS = "columns"
GATHER = "gather"

COLUMNS_MIN_INNER = 8


def normalize_axes(axis, ndim, func=None):
    """``axis`` (int, tuple of ints or None) -> sorted tuple of non-negative axes.

    Raises numpy's AxisError for an out-of-range axis, ValueError for a repeated one and
    TypeError for anything but ints, each message starting with ``func``'s name when given.
    A 0-d array accepts axis None, 0, -1 (as torch does) and is one element."""
    if type(axis) is int and -ndim <= axis < ndim:
        return (axis % ndim,)
    if axis is None:
        return tuple(range(ndim))
    who = f"{func}(): " if func else ""
    bad_type = TypeError(f"{who}axis must be an int, a tuple of ints or None; got {axis!r}")
    if isinstance(axis, (bool, np.bool_)):
        raise bad_type
    axes = axis if isinstance(axis, tuple) else (axis,)
    for a in axes:
        if isinstance(a, (bool, np.bool_)):
            raise bad_type
        try:
            operator.index(a)
        except TypeError:
            raise bad_type from None
    if ndim == 0:  # one element: axis 0 or -1, once (as torch)
        if len(axes) > 1:
            raise ValueError(f"{who}repeated axis in `axis` argument: {axis!r} for a 0-d array")
        if any(operator.index(a) not in (0, -1) for a in axes):
            raise np.exceptions.AxisError(f"{who}axis {axis!r} is out of bounds for a 0-d array")
        return ()
    try:
        return tuple(sorted(normalize_axis_tuple(axis, ndim)))
    except np.exceptions.AxisError as err:  # the axis and ndim kept, the prefix ours
        raise np.exceptions.AxisError(err.axis, ndim, f"{func}()" if func else None) from None
    except ValueError:  # numpy's message does not say which axes were given
        raise ValueError(f"{who}repeated axis in {axis!r} (for an array of {ndim} "
                         "dimensions); each axis may appear once") from None


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

    kind: str  # ROWS, COLUMNS or GATHER
    stride: int = 0  # ROWS: elements from one row to the next; COLUMNS: from one outer
    # position to the next
    axis_stride: int = 1  # COLUMNS: elements from one element of a row to the next


class Plan(NamedTuple):
    m: int  # rows
    n: int  # elements per row
    perm: tuple  # axis order of the rows: the other axes, then the softmax axes
    inputs: tuple  # an Access per input
    out: Access
    inner: int = 1  # COLUMNS: C, the contiguous inner positions (m // C outer positions)


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


def plan(shape, axes, inputs, out, columns=True):
    """The Plan of a call on arrays of ``shape`` along sorted ``axes``; ``inputs`` and
    ``out`` are ``Meta`` (a fresh result is planned once it is allocated). ``out`` None:
    a reduction, whose values the backend keeps in rows order itself (its Plan's ``out``
    is None). ``columns``: whether the backend has COLUMNS kernels for this call (else
    such layouts are gathered)."""
    n = math.prod(shape[a] for a in axes)
    m = math.prod(shape) // n if n else 0
    perm = permutation(shape, inputs[0].strides, axes)
    if out is None:
        accesses = []
        for meta in inputs:
            rs = None if meta.cast else row_stride(shape, meta.strides, meta.itemsize, perm,
                                                   len(axes))
            accesses.append(Access(GATHER) if rs is None else Access(ROWS, rs))
        return Plan(m, n, perm, tuple(accesses), None)
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
    if columns and (out_access.kind == GATHER or any(a.kind == GATHER for a in accesses)):
        found = _columns(shape, axes, perm, inputs, out)
        if found is not None:
            inner, column_accesses = found
            return Plan(m, n, perm, column_accesses[:-1], column_accesses[-1], inner)
    return Plan(m, n, perm, tuple(accesses), out_access)


@functools.lru_cache(maxsize=1024)
def fresh_plan(shape, axes, inputs, out, columns=True):
    """``plan`` when ``out`` is freshly allocated (it overlaps no input) or None (a
    reduction): a function of the layouts alone, cached. ``inputs``: a (strides, itemsize)
    pair per input; ``out``: the result's pair, or None."""
    far = 1 << 62  # out's stand-in address, past every input's extent
    return plan(shape, axes, [Meta(0, *layout) for layout in inputs],
                None if out is None else Meta(far, *out), columns)


def _merged_stride(shape, meta, axes):
    """Byte stride of ``axes`` (in this order) merged into one, or None when they do not
    merge; 0 when they hold one element."""
    step = None
    for a in reversed(axes):
        if shape[a] == 1:
            continue
        if step is None:
            step = meta.strides[a]
            stride = step
        elif meta.strides[a] != step:
            return None
        step *= shape[a]
    return 0 if step is None else stride


def _columns(shape, axes, perm, inputs, out):
    """(C, an Access per array, out last) of the COLUMNS plan, or None. The other axes, in
    ``perm`` order, split into outer ones and inner ones (the innermost, C of them in all);
    the largest C that every array allows wins."""
    others = [a for a in perm[:len(perm) - len(axes)] if shape[a] != 1]
    n = math.prod(shape[a] for a in axes)
    if any(meta.cast or _partial_overlap(shape, meta, out) for meta in inputs):
        return None
    for j in range(len(others), 0, -1):
        outer_axes, inner_axes = others[:-j], others[-j:]
        inner = math.prod(shape[a] for a in inner_axes)
        if inner < COLUMNS_MIN_INNER:
            return None
        outer = math.prod(shape[a] for a in outer_axes)
        accesses = []
        for meta in (*inputs, out):
            item = meta.itemsize
            strides = [_merged_stride(shape, meta, group)
                       for group in (inner_axes, axes, outer_axes)]
            if strides[0] != item or any(s is None or s < 0 or s % item for s in strides):
                break
            accesses.append(Access(COLUMNS, strides[2] // item, strides[1] // item))
        else:
            o = accesses[-1]  # out: its elements must not overlap one another
            if (n == 1 or o.axis_stride >= inner) and (
                    outer == 1 or o.stride >= (n - 1) * o.axis_stride + inner):
                return inner, tuple(accesses)
    return None


def as_2d(a, m, n):
    """``a`` viewed as (m, n) without copying, or None."""
    try:
        return np.reshape(a, (m, n), copy=False)
    except ValueError:
        return None


class MaskRows(NamedTuple):
    """How the kernels reach a mask that broadcasts to the rows (see ``mask_rows``)."""

    kind: str  # ROWS: a row of n bytes per row at its offset; "constant": one value per row
    dims: tuple = ()  # ROWS: (size, byte stride) per outer axis of the rows, innermost
    # first; row i's mask starts at sum((i // inner) % size * stride), where a size of 0
    # (the outermost axis, when it is the rows' own) takes no modulo
    extent: int = 0  # ROWS: bytes from the first mask byte to past the last


def mask_rows(shape, strides, perm, naxes):
    """The access of a byte mask broadcast to ``shape`` (``strides``: the broadcast view's,
    0 along broadcast axes), its axes in ``perm`` order with the ``naxes`` softmax axes
    last: "constant" when it holds one value per row (the softmax axes all broadcast);
    ROWS when each row's bytes are contiguous and the outer strides non-negative; None
    otherwise (the backend then copies the mask's own rows first)."""
    split = len(perm) - naxes
    inner = [(shape[a], strides[a]) for a in perm[split:] if shape[a] != 1]
    if all(st == 0 for _, st in inner):
        return MaskRows("constant")
    expect = 1
    for size, st in reversed(inner):
        if st != expect:
            return None
        expect *= size
    dims = []
    for a in reversed(perm[:split]):  # innermost first, merged where they can be
        size, st = shape[a], strides[a]
        if st < 0:
            return None
        if size == 1:
            continue
        if dims and dims[-1][1] * dims[-1][0] == st:  # also two broadcast axes (0 == 0)
            dims[-1] = (dims[-1][0] * size, dims[-1][1])
        else:
            dims.append((size, st))
    extent = sum((size - 1) * st for size, st in dims) + expect
    if dims and dims[-1][1] != 0:  # the rows' outermost axis: i // inner < its size
        dims[-1] = (0, dims[-1][1])
    while dims and dims[-1][1] == 0:  # outermost broadcast axes move no offset
        dims.pop()
    return MaskRows(ROWS, tuple(dims), extent)
