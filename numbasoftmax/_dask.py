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
* The rules are the core API's (``_inputs``, ``_layout.normalize_axes``): ``axis`` is an
  int, a tuple of ints or None; float16, float32 and float64 keep their dtype; bool and
  integer inputs give float64 (converted inside each task, no extra layer); other dtypes
  and dask arrays of masked blocks raise TypeError; for the gradients the two arrays must
  have the same shape (ValueError) and dtype (TypeError). All of these are checked at call
  time from the metadata alone.
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
function and the public function it calls are module-level functions (pickled by
reference) and the workers compile or load numba's cached kernels at their first block.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

from . import _cpu
from ._inputs import array_kind, check_pair, host_array, reject_masked, result_dtype
from ._layout import normalize_axes

__all__ = ["dispatch"]


def dispatch(op, arrays, axis, out, per_block):
    """Run ``op`` (an ``_ops.Op``) lazily on its ``arrays``, at least one of them a dask
    array; each task calls ``per_block`` (the public function) on one block. Returns a
    dask array."""
    func = op.name
    if len(arrays) != len(op.args):
        raise ValueError(f"{func}() takes {len(op.args)} array(s); got {len(arrays)}")

    # dtypes first (the core checks each input as it converts it), then shapes, then axes
    checked = [_operand(a, name, func) for a, name in zip(arrays, op.args, strict=True)]
    arrays = [a for a, _ in checked]
    dtypes = [dtype for _, dtype in checked]
    if len(arrays) == 2:
        check_pair(func, op.args, [a.shape for a in arrays], dtypes)
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
    return da.map_blocks(_block, per_block, axes, nblocks, *blocks, dtype=dtype, meta=meta,
                         token=func)


def _block(f, axes, nblocks, *blocks):
    """One task: the public function ``f`` on one block (whole rows along ``axes``)."""
    if nblocks > 1 and isinstance(blocks[0], np.ndarray):
        if blocks[0].size >= _cpu.PARALLEL_MIN_ELEMENTS:
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
    if isinstance(a, da.Array):
        reject_masked(getattr(a, "_meta", None), name, func)
        return a, result_dtype(np.dtype(a.dtype), name, func)
    kind = array_kind(a)
    if kind == "cuda":
        return a, result_dtype(np.dtype(a.dtype), name, func)
    if kind == "dask":  # another dask collection with .chunks
        raise TypeError(f"{func}(): {name} must be a dask.array.Array (or array_like); "
                        f"got {type(a).__name__}")
    a = host_array(a, name, func)
    return a, a.dtype


def _meta(x, dtype):
    """An empty array of the blocks' type (numpy, cupy, ...) with the result dtype."""
    meta = getattr(x, "_meta", None)
    if meta is None:
        return np.empty((0,) * x.ndim, dtype=dtype)
    return meta.astype(dtype, copy=False) if meta.dtype != dtype else meta
