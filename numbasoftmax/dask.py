"""Dask support: the four public functions on ``dask.array.Array`` inputs.

``numbasoftmax.softmax(x)`` (and ``log_softmax``, ``softmax_backward``,
``log_softmax_backward``) with a dask array returns a lazy dask array; nothing is computed at
call time. This module is imported (and imports dask) only when a dask array is given, so
``import numbasoftmax`` never imports dask.

How it works:

* The chunks along the softmax axes are merged into one (``rechunk``); the other axes keep
  their chunking. Every output block is then one task that calls the same public function
  on its block (a numpy block runs the CPU kernels, a cupy block the GPU path): a single
  ``blockwise`` layer with ``meta`` and ``dtype`` set, one task per block. A block holds
  whole rows, so it gives exactly what the in-memory call gives for those rows.
* The rules are the core API's: ``axis`` is an int, a tuple of ints or None; float16,
  float32 and float64 keep their dtype; bool and integer inputs give float64 (converted
  inside each task, no extra layer); other dtypes raise TypeError; for the gradients the two
  arrays must have the same shape (ValueError) and dtype (TypeError). All of these are
  checked at call time from the metadata alone.
* ``out=`` raises TypeError: dask arrays are immutable. Use the returned array, or write it
  into an existing array with ``dask.array.store(result, target)``.
* Gradients with one dask and one non-dask operand (numpy array, array_like or cupy array):
  the other operand is wrapped with ``dask.array.from_array`` in the dask operand's chunks
  (after the rechunk), so the result is lazy too. With two dask operands of different
  chunking, the second is rechunked to the first's.
* Threads: dask already runs blocks in parallel, so a numpy block big enough for the
  parallel driver runs with ``max(1, numba.get_num_threads() // number_of_blocks)`` numba
  threads (``numba.set_num_threads`` is thread-local; restored afterwards). With at least
  as many blocks as threads, dask threads x numba threads do not oversubscribe the cores;
  a single block keeps all numba threads. Parallel calls from several dask threads at once
  are safe on every threading layer (the CPU launcher serializes the workqueue layer).

Works with the threaded, the processes and the ``dask.distributed`` schedulers: the task
function is a plain module-level function (pickled by reference) and the workers compile or
load numba's cached kernels at their first block.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

from . import _api
from ._layout import normalize_axes

__all__ = ["dispatch"]

_NAMES = {
    "softmax": ("x",),
    "log_softmax": ("x",),
    "softmax_backward": ("y", "dy"),
    "log_softmax_backward": ("z", "dz"),
}


def dispatch(func, arrays, axis, out):
    """Run ``func`` (one of the four public function names) lazily on dask arrays.

    ``arrays`` is ``(x,)`` for the forward functions and ``(y, dy)`` / ``(z, dz)`` for the
    gradients; at least one of them is a dask array. Returns a dask array."""
    try:
        names = _NAMES[func]
    except KeyError:
        raise ValueError(f"unknown function {func!r}; expected one of {sorted(_NAMES)}") from None
    if len(arrays) != len(names):
        raise ValueError(f"{func}() takes {len(names)} array(s); got {len(arrays)}")

    # dtypes first (the core checks each input as it converts it), then shapes, then axes
    checked = [_operand(a, name, func) for a, name in zip(arrays, names, strict=True)]
    arrays = [a for a, _ in checked]
    dtypes = [dtype for _, dtype in checked]
    if len(arrays) == 2:
        a, b = arrays
        if not _same_shape(np.shape(a), np.shape(b)):
            hint = ""
            if any(isinstance(n, float) and math.isnan(n) for n in (*np.shape(a), *np.shape(b))):
                hint = " (nan: unknown chunk sizes; call .compute_chunk_sizes() first)"
            raise ValueError(f"{func}(): {names[0]} and {names[1]} must have the same shape; "
                             f"got {_shape(a)} and {_shape(b)}{hint}")
        if dtypes[0] != dtypes[1]:
            raise TypeError(f"{func}(): {names[0]} and {names[1]} must have the same dtype; "
                            f"got {dtypes[0]} and {dtypes[1]}")
    first = next(a for a in arrays if isinstance(a, da.Array))
    axes = normalize_axes(axis, first.ndim)
    if out is not None:
        raise TypeError(f"{func}(): out is not supported for dask arrays (they are immutable); "
                        "use the returned dask array, or write it into an existing array with "
                        "dask.array.store(result, out)")

    # merge the softmax axes into one chunk; the first dask operand sets the other axes'
    # chunking, every other operand follows it
    first = first.rechunk({ax: -1 for ax in axes}) if axes else first
    blocks = []
    for a in arrays:
        if isinstance(a, da.Array):
            a = a.rechunk({ax: -1 for ax in axes}) if axes else a
            if a.chunks != first.chunks:
                a = a.rechunk(first.chunks)
        else:
            a = da.from_array(a, chunks=first.chunks)
        blocks.append(a)

    dtype = dtypes[0]
    nblocks = math.prod(first.numblocks)
    meta = _meta(first, dtype)
    return da.map_blocks(_block, func, axes, nblocks, *blocks, dtype=dtype, meta=meta,
                         token=func)


def _block(func, axes, nblocks, *blocks):
    """One task: the public function on one block (whole rows along ``axes``)."""
    import numbasoftmax

    f = getattr(numbasoftmax, func)
    if nblocks > 1 and isinstance(blocks[0], np.ndarray):
        from . import _cpu

        if blocks[0].size >= getattr(_cpu, "PARALLEL_MIN_ELEMENTS", 0):
            import numba

            have = numba.get_num_threads()
            want = max(1, have // nblocks)
            if want < have:
                numba.set_num_threads(want)  # thread-local: only this worker thread
                try:
                    return f(*blocks, axis=axes)
                finally:
                    numba.set_num_threads(have)
    return f(*blocks, axis=axes)


def _operand(a, name, func):
    """(operand, result dtype), checked with the core API's rules and messages. A dask or
    GPU array is returned as is; any other array_like becomes a (checked) numpy array."""
    if isinstance(a, da.Array) or _api._kind(a) == "cuda":
        probe = np.empty(0, dtype=np.dtype(a.dtype))
        return a, _api._as_input(probe, name, func).dtype
    if _api._kind(a) == "dask":  # another dask collection with .chunks
        raise TypeError(f"{func}(): {name} must be a dask.array.Array (or array_like); "
                        f"got {type(a).__name__}")
    a = _api._as_input(a, name, func)
    return a, a.dtype


def _shape(a):
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def _same_shape(p, q):
    """Shapes equal; an unknown (NaN) dimension matches only another unknown one."""
    return len(p) == len(q) and all(
        m == n or (isinstance(m, float) and isinstance(n, float) and math.isnan(m)
                   and math.isnan(n))
        for m, n in zip(p, q, strict=True))


def _meta(x, dtype):
    """An empty array of the blocks' type (numpy, cupy, ...) with the result dtype."""
    meta = getattr(x, "_meta", None)
    if meta is None:
        return np.empty((0,) * x.ndim, dtype=dtype)
    return meta.astype(dtype, copy=False) if meta.dtype != dtype else meta
