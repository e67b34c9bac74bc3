"""Dask support for the options: ``where=``, ``dtype=``, and logsumexp / logsumexp_backward
(weights, keepdims, signs) on ``dask.array.Array`` inputs.

The plain four functions go through ``_dask`` (its one-pass and two-pass rules); so do
calls with these options on softmax axes split across numpy blocks (the mask read with
the blocks, the blocks read as the result dtype; logsumexp takes the statistics and the
finish, which gives the rows' values), and logsumexp_backward, element-wise given its
rows' values, takes x's blocks as they are. Otherwise (whole axes, or GPU blocks) the
softmax axes are merged into one chunk and each output block is one task that calls the
public function on its blocks, so the results are bitwise those of the in-memory call on
the same rows (a numpy block runs the CPU kernels, a cupy block the GPU path); there
logsumexp's blocks hold the reduced axes with size 1, and its value and sign come from
one task per block (stacked on a last axis of 2). The mask and the weights are broadcast
to the input's shape lazily (``dask.array.broadcast_to``: a block of them is a broadcast
view, not a copy) and chunked like it.

The rules are the core API's, checked at call time from the metadata: dtypes (``_inputs``),
``where`` boolean and broadcasting to the input (TypeError / ValueError naming both shapes),
``b`` broadcasting to ``x``, ``dtype`` a float dtype, ``out=`` refused (dask arrays are
immutable), and dask arrays of masked blocks refused.
"""

from __future__ import annotations

import functools
import math

import dask.array as da
import numpy as np

from ._inputs import (
    array_kind,
    check_pair,
    check_per_row,
    check_where,
    promoted,
    reduced_shape,
    requested_dtype,
    typename,
    weak,
)
from ._layout import normalize_axes

__all__ = ["dispatch"]


def dispatch(op, arrays, axis, out, per_block, *, where=None, dtype=None, b=None,
             keepdims=False, return_sign=False, sign=None):
    """``op`` (an ``_ops.Op``) on ``arrays`` (at least one a dask array) with the options;
    each task calls ``per_block`` (the public function) on its blocks. Returns a dask
    array (a pair with ``return_sign``)."""
    from . import _dask

    func = op.name
    _dask._refuse_out(func, out)
    dt = requested_dtype(dtype, func)
    names = op.args if not op.row_args else op.args[:1]
    checked = [_dask._operand(a, name, func, dt) for a, name in zip(arrays, names,
                                                                     strict=False)]
    x = checked[0][0]
    x = x if isinstance(x, da.Array) else da.from_array(x)
    dtypes = [d for _, d in checked]
    if len(names) == 2:
        check_pair(func, names, [a.shape for a, _ in checked], dtypes,
                   [getattr(a, "dtype", d) for a, d in zip(arrays, dtypes, strict=False)])
    axes = normalize_axes(axis, x.ndim, func)
    # a mask or weights are broadcast to x's shape, logsumexp's results take the reduced
    # shape, and merged softmax axes their whole length: those need every chunk size
    whole = where is not None or b is not None or op.name.startswith("logsumexp")
    _dask.check_known(x, range(x.ndim) if whole else axes, func)
    if b is not None:
        given = b
        b, bdtype = _dask._operand(b, "b", func)
        check_where(func, None, b.shape, "x", x.shape, name="b")
        dtypes.append(weak(given, bdtype))
    if where is not None and not isinstance(where, da.Array):
        _dask.refuse_unchunkable(where, "where", func)
        where = where if array_kind(where) == "cuda" else np.asarray(where)
    if where is not None:
        check_where(func, np.dtype(where.dtype), where.shape, names[0], x.shape)
    rdtype = dt or (promoted(dtypes) if op.name.startswith("logsumexp") else dtypes[0])
    if b is not None and weak(given, None) is not None:
        b = b.astype(rdtype)  # a Python scalar, read as the result dtype (each block's call)

    split = any(len(x.chunks[ax]) > 1 for ax in axes)
    meta = _dask._meta(x, rdtype)
    # split axes of numpy blocks (and a host mask): the two passes, as the plain functions
    # take them (logsumexp: the statistics and the finish); logsumexp's gradient is
    # element-wise given its rows' values: blocks as they are; GPU blocks merge the axes
    passes = (split and x.size != 0 and not op.row_args
              and isinstance(meta, _dask.KERNEL_BLOCKS) and _host(where))
    if split and not op.row_args:  # blocks dask can neither merge nor reduce: refused
        _dask.check_mergeable(x, axes, func, names[0])
    if split and not passes and not (op.row_args and x.size != 0):
        x = x.rechunk({ax: -1 for ax in axes})
    chunks = x.chunks
    blocks = [x] + [_like(a, chunks, func, name) for (a, _), name in zip(
        checked[1:], names[1:], strict=True)]
    options = {"dtype": dt}
    extra = []  # (keyword, dask array chunked like x)
    for name, a in (("where", where), ("b", b)):
        if a is not None:
            _check_broadcast(a, x.shape, func, name)
            extra.append((name, _like(a, chunks, func, name, broadcast=True)))
    # each task on numba threads // blocks, as the plain functions' one-pass tasks
    f = functools.partial(_on_shared_threads, per_block, math.prod(x.numblocks))

    mask = dict(extra).get("where")
    if passes and op.name != "logsumexp":
        return _dask._two_pass(op, blocks, axes, rdtype, meta, mask)
    if op.name == "logsumexp":
        keep = reduced_shape(x.shape, axes, True)
        width = 2 if return_sign else 1
        shape = keep if keepdims else reduced_shape(x.shape, axes, False)
        if passes:  # (the other axes..., value and sign)
            weights = [a for name, a in extra if name == "b"]
            both = _dask.reduce_two_pass("logsumexp_sign" if return_sign else "logsumexp",
                                         [x, *weights], axes, rdtype, mask)
            results = tuple(both[..., k:k + 1].reshape(shape) for k in range(width))
            return results if return_sign else results[0]
        out_chunks = tuple((1,) if ax in axes else c for ax, c in enumerate(chunks)) + ((width,),)
        both = da.map_blocks(_lse_block, f, axes, options, return_sign, rdtype,
                             [k for k, _ in extra], *blocks, *[a for _, a in extra],
                             chunks=out_chunks, new_axis=x.ndim, dtype=rdtype,
                             meta=meta.reshape((*meta.shape, 1)))
        # a slice, not an index: a 0-d result then computes to a 0-d array, not a scalar
        results = tuple(both[..., k:k + 1].reshape(shape) for k in range(width))
        return results if return_sign else results[0]

    if op.row_args:  # logsumexp_backward: lse, dlse (and sign) a value per row
        keep = reduced_shape(x.shape, axes, True)
        per_row = []
        for name, v in (("lse", arrays[1]), ("dlse", arrays[2]), ("sign", sign)):
            if v is None:
                continue
            v, _ = _dask._operand(v, name, func)  # its dtype checked now, not in a task
            v = v if isinstance(v, da.Array) else da.from_array(v)
            check_per_row(func, name, v.shape, x.shape, axes)
            v, own = v.reshape(keep), tuple((1,) if ax in axes else c
                                            for ax, c in enumerate(chunks))
            _dask.check_chunks(v, own, func, name)
            per_row.append(v.rechunk(own))
        keys = [k for k, _ in extra]
        return da.map_blocks(_grad_block, f, axes, options, keys, sign is not None, blocks[0],
                             *per_row, *[a for _, a in extra], dtype=rdtype, meta=meta)

    return da.map_blocks(_block, f, axes, options, [k for k, _ in extra], *blocks,
                         *[a for _, a in extra], dtype=rdtype, meta=meta, token=func)


def _host(where):
    """Whether mask ``where`` (None, a numpy or GPU array, a dask array) is on the host."""
    meta = getattr(where, "_meta", where)
    return where is None or isinstance(meta, np.ndarray)


def _on_shared_threads(f, nblocks, *args, **kwargs):
    from . import _dask

    with _dask._threads(nblocks, args[0]):
        return f(*args, **kwargs)


def _check_broadcast(a, shape, func, name):
    """TypeError, at call time, for a mask or weights that must be broadcast to ``shape``
    but whose blocks' library cannot broadcast (``_dask.gpu_blocks_only_whole``)."""
    from . import _dask

    meta = getattr(a, "_meta", None) if isinstance(a, da.Array) else a
    if tuple(a.shape) != tuple(shape) and meta is not None and _dask.gpu_blocks_only_whole(
            meta):
        raise TypeError(f"{func}(): {name} has shape {tuple(a.shape)} and must be broadcast "
                        f"to x's {tuple(shape)}, which its {typename(meta)} blocks cannot be "
                        f"(cupy's can); pass {name} in x's shape")


def _like(a, chunks, func, name, broadcast=False):
    """``a`` (argument ``name``) as a dask array in ``chunks`` (broadcast to their shape
    first when asked)."""
    from . import _dask

    shape = tuple(sum(c) for c in chunks)
    own = tuple((1,) if size == 1 else c for size, c in zip(
        a.shape, chunks[len(chunks) - a.ndim:], strict=True)) if broadcast else chunks
    if isinstance(a, da.Array):
        _dask.check_chunks(a, own, func, name)
        a = a if a.chunks == own else a.rechunk(own)
    else:
        a = da.from_array(a, chunks=own)
    return da.broadcast_to(a, shape, chunks=chunks) if broadcast else a


def _block(f, axes, options, keys, *blocks):
    """One task: the public function on one block of whole rows."""
    n = len(blocks) - len(keys)
    return f(*blocks[:n], axis=axes, **options, **dict(zip(keys, blocks[n:], strict=True)))


def _lse_block(f, axes, options, return_sign, dtype, keys, x, *extra):
    """One logsumexp task: the value (and sign) of a block, written into a last axis of an
    array of the block's library, with the reduced axes kept."""
    kw = dict(zip(keys, extra, strict=True))
    shape = tuple(1 if ax in axes else s for ax, s in enumerate(x.shape))
    width = 2 if return_sign else 1
    both = _empty_like(x, (*shape, width), dtype)
    outs = tuple(both[..., k] for k in range(width))  # arrays, 0-d ones too
    f(x, axis=axes, keepdims=True, return_sign=return_sign, out=outs if return_sign else
      outs[0], **options, **kw)
    return both


def _empty_like(block, shape, dtype):
    """An uninitialized array of ``block``'s library (numpy, or a GPU array library)."""
    if isinstance(block, np.ndarray):
        return np.empty(shape, dtype)
    from ._cuda.arrays import describe

    d = describe(block, "x", "logsumexp")
    return d.lib.empty(shape, dtype, d.dev or 0, d.lib.stream(d))


def _grad_block(f, axes, options, keys, with_sign, x, lse, dlse, *extra):
    sign = None
    if with_sign:
        sign, extra = extra[0], extra[1:]
    kw = dict(zip(keys, extra, strict=True))
    return f(x, lse, dlse, axis=axes, sign=sign, **options, **kw)
