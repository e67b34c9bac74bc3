"""Dask support: the four public functions on ``dask.array.Array`` inputs.

``numbasoftmax.softmax(x)`` (and ``log_softmax``, ``softmax_backward``,
``log_softmax_backward``) with a dask array returns a lazy dask array; nothing is computed at
call time. This module is imported (and imports dask) only when a dask array is given, so
``import numbasoftmax`` never imports dask. The output keeps the input's chunks.

Two ways to run, chosen by the chunk structure alone (the rule, in one place: ``dispatch``):

* **One pass**, when every softmax axis is a single chunk: each block holds whole rows, and
  each output block is one task that calls the public function on its block (a numpy block
  runs the CPU kernels, a cupy block the GPU path): a single ``blockwise`` layer, bitwise
  what the in-memory call gives.
* **Two passes**, when a softmax axis is split across chunks (no block is ever merged, so
  no task holds more than one block of each operand):

  A block holds, of each row, *runs*: pieces contiguous in the row (in its logical order,
  the softmax axes ascending), over the softmax axes from the last split one on.

  1. *statistics*, one task per block: for each run, the partial statistics per
     8192-element chunk from the run's start (max and sum of exp for the forward
     functions, the sum of y*dy or of dz for the gradients);
  2. *finish*, one task per group of blocks that share rows: the statistics of all the
     group's runs put in the row's order and combined into each row's (max, total);
  3. *write*, one task per block: the block's outputs from its own statistics and its
     rows' (max, total).

  A ``where=`` mask (from ``_dask_features``) is one more operand, its bytes read as x's:
  its excluded elements leave the statistics and take the excluded value in the write.
  logsumexp (``reduce_two_pass``) takes steps 1 and 2 with its weights as the second
  operand; its finish gives the rows' values (and signs).

  Numpy blocks run the CPU kernels' phases (``segment_stats``, ``segment_finish``,
  ``segment_write``) with the runs as the kernels' rows, read in place where they are
  evenly spaced in memory; where the runs lie along a strided axis (softmax over axis 0
  of C-ordered blocks: the layout plan's COLUMNS) the lane kernel's phases
  (``segment_columns_stats``, ``segment_columns_write``) read and write them in place, a
  run per vector lane, with the same bits; otherwise they are copied in and out in
  panels. When every run starts
  at a multiple of 8192 elements of the row and is a multiple of 8192 long (or ends the
  row), the chunks and their order are the in-memory call's and so are the bits;
  otherwise the results differ in the last bits, within the error bounds the in-memory
  call meets. Other blocks (cupy) compute the statistics with array operations of their
  own library (one max and sum per row piece in a block, combined in float64): not
  bitwise the GPU call's results, same rules. Blocks that dask can neither merge nor
  reduce (numba device arrays) take neither way: a softmax axis split across them is a
  TypeError at call time (``check_mergeable``).

* The rules are the core API's (``_inputs``, ``_layout.normalize_axes``): ``axis`` is an
  int, a tuple of ints or None; float16, float32 and float64 keep their dtype; bool and
  integer inputs give float64 (converted inside each task, no extra layer); other dtypes
  and dask arrays of masked blocks raise TypeError; for the gradients the two arrays must
  have the same shape (ValueError) and dtype (TypeError). All of these are checked at call
  time from the metadata alone. The non-finite rules are the kernels' (a NaN or +inf
  anywhere in a row, in any block, makes the row NaN; so does a row of -inf only).
* ``out=`` raises TypeError: dask arrays are immutable. Use the returned array, or write it
  into an existing array with ``dask.array.store(result, target)``.
* Gradients with one dask and one non-dask operand (numpy array, array_like or cupy array):
  the other operand is wrapped with ``dask.array.from_array`` in the dask operand's chunks,
  so the result is lazy too. With two dask operands of different chunking, the second is
  rechunked to the first's.
* Threads (one pass): dask already runs blocks in parallel, so a numpy block big enough for
  the parallel driver runs with ``max(1, numba.get_num_threads() // number_of_blocks)``
  numba threads (``numba.set_num_threads`` is thread-local; restored afterwards). With at
  least as many blocks as threads, dask threads x numba threads do not oversubscribe the
  cores; a single block keeps all numba threads. Parallel calls from several dask threads
  at once are safe on every threading layer (the CPU launcher serializes the workqueue
  layer). The two-pass tasks run serial kernels (dask's threads are the parallelism); their
  copies follow the same thread rule.

Works with the threaded, the processes and the ``dask.distributed`` schedulers: the task
functions and the public function they call are module-level functions (pickled by
reference) and the workers compile or load numba's cached kernels at their first block.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from typing import NamedTuple

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from . import _cpu, _cpu_path, _pool
from ._inputs import (
    array_kind,
    check_pair,
    host_array,
    reject_masked,
    result_dtype,
    typename,
)
from ._layout import as_2d, normalize_axes
from ._row_kernel import CHUNK, REDUCED

__all__ = ["dispatch"]

# blocks the two passes give to the CPU kernels; others (cupy) take array operations
KERNEL_BLOCKS = (np.ndarray,)


def dispatch(op, arrays, axis, out, per_block):
    """Run ``op`` (an ``_ops.Op``) lazily on its ``arrays``, at least one of them a dask
    array; each one-pass task calls ``per_block`` (the public function) on one block.
    Returns a dask array."""
    func = op.name
    if len(arrays) != len(op.args):
        raise ValueError(f"{func}() takes {len(op.args)} array(s); got {len(arrays)}")

    # dtypes first (the core checks each input as it converts it), then shapes, then axes
    checked = [_operand(a, name, func) for a, name in zip(arrays, op.args, strict=True)]
    given = [getattr(a, "dtype", d) for a, (_, d) in zip(arrays, checked, strict=True)]
    arrays = [a for a, _ in checked]
    dtypes = [dtype for _, dtype in checked]
    if len(arrays) == 2:
        check_pair(func, op.args, [a.shape for a in arrays], dtypes, given)
    first = next(a for a in arrays if isinstance(a, da.Array))
    axes = normalize_axes(axis, first.ndim, func)
    _refuse_out(func, out)

    # the rule: two passes when a softmax axis is split across chunks (of a non-empty
    # array), one pass over whole rows otherwise
    two_pass = any(len(first.chunks[ax]) > 1 for ax in axes) and first.size != 0
    if two_pass:
        check_mergeable(first, axes, func, _name(op.args, arrays, first))
        check_known(first, axes, func)
    elif axes and first.size != 0:  # an empty array keeps its chunks: its blocks are empty
        first = first.rechunk({ax: -1 for ax in axes})
    # the first dask operand sets the chunking, every other operand follows it
    blocks = []
    for name, a in zip(op.args, arrays, strict=True):
        if isinstance(a, da.Array):
            if a.chunks != first.chunks:
                check_chunks(a, first.chunks, func, name)
                a = a.rechunk(first.chunks)
        else:
            a = da.from_array(a, chunks=first.chunks)
        blocks.append(a)

    dtype = dtypes[0]
    meta = _meta(first, dtype)
    if two_pass:
        return _two_pass(op, blocks, axes, dtype, meta)
    nblocks = math.prod(first.numblocks)
    return da.map_blocks(_block, per_block, axes, nblocks, *blocks, dtype=dtype, meta=meta,
                         token=func)


def _refuse_out(func, out):
    if out is not None:
        raise TypeError(f"{func}(): out is not supported for dask arrays (they are immutable); "
                        "use the returned dask array, or write it into an existing array with "
                        "dask.array.store(result, out)")


def _name(names, arrays, a):
    return next(n for n, b in zip(names, arrays, strict=True) if b is a)


def gpu_blocks_only_whole(meta):
    """Whether blocks like ``meta`` are GPU arrays that dask can neither concatenate nor
    reduce with array operations (numba device arrays and other
    ``__cuda_array_interface__`` objects; cupy's can be)."""
    return array_kind(meta) == "cuda" and type(meta).__module__.partition(".")[0] != "cupy"


def refuse_unchunkable(a, name, func):
    """TypeError for a GPU array next to a dask array that dask would chunk on the host
    (``dask.array.from_array``): a numba device array; cupy's dask chunks on the GPU."""
    if gpu_blocks_only_whole(a):
        raise TypeError(f"{func}(): {name} is a {typename(a)} next to a dask array; pass it "
                        "as a dask array of GPU blocks too (or as a cupy array, which dask "
                        "chunks on the GPU)")


def check_chunks(a, chunks, func, name):
    """TypeError when dask array ``a`` must be rechunked to ``chunks`` (to the first
    operand's) and its blocks are GPU arrays dask can neither merge nor split."""
    meta = getattr(a, "_meta", None)
    if meta is not None and a.chunks != chunks and gpu_blocks_only_whole(meta):
        raise TypeError(f"{func}(): {name} is a dask array of {typename(meta)} blocks chunked "
                        f"{a.chunks}, and the call needs the chunks {chunks}; dask can "
                        "neither merge nor split such blocks: chunk it so before its blocks "
                        "become GPU arrays, or use cupy blocks")


def check_mergeable(x, axes, func, name):
    """TypeError, at call time, when a softmax axis of dask array ``x`` is split across
    chunks whose blocks are such GPU arrays: neither the two passes nor a merge into one
    chunk can run on them (the task would fail, or dask would join them on the host)."""
    meta = getattr(x, "_meta", None)
    split = [ax for ax in axes if len(x.chunks[ax]) > 1]
    if meta is not None and split and x.size and gpu_blocks_only_whole(meta):
        raise TypeError(f"{func}(): {name} is a dask array of {typename(meta)} blocks in "
                        f"{len(x.chunks[split[0]])} chunks along axis {split[0]}, which "
                        f"{func}() reduces over; dask can neither merge such blocks nor "
                        f"combine statistics across them: chunk {name} so that each of "
                        "those axes is one chunk before its blocks become GPU arrays, or "
                        "use cupy blocks")


def check_known(x, axes, func):
    """ValueError when the chunk sizes of ``x`` along ``axes`` are unknown (nan): the two
    passes size their statistics from them, and the options' merges, broadcasts and
    reductions need them."""
    unknown = [ax for ax in axes if any(math.isnan(c) for c in x.chunks[ax])]
    if unknown:
        raise ValueError(f"{func}(): the chunk sizes along axis {unknown[0]} are unknown "
                         "(nan); call .compute_chunk_sizes() first")


def _block(f, axes, nblocks, *blocks):
    """One task: the public function ``f`` on one block (whole rows along ``axes``)."""
    with _threads(nblocks, blocks[0]):
        return f(*blocks, axis=axes)


@contextlib.contextmanager
def _threads(nblocks, block):
    """Run the numba code of a task on ``numba threads // nblocks`` threads (at least one)
    when it is big enough to go parallel: dask already runs the blocks in parallel."""
    import numba

    have = numba.get_num_threads()
    want = max(1, have // nblocks)
    if want == have or not isinstance(block, np.ndarray) or (
            block.size < _cpu.PARALLEL_MIN_ELEMENTS):
        yield
        return
    numba.set_num_threads(want)  # thread-local: only this worker thread
    try:
        yield
    finally:
        numba.set_num_threads(have)


def _operand(a, name, func, requested=None):
    """(operand, result dtype), checked with the core API's rules and messages (``requested``:
    the call's dtype=). A dask or GPU array is returned as is; any other array_like becomes
    a (checked) numpy array."""
    if isinstance(a, da.Array):
        reject_masked(getattr(a, "_meta", None), name, func)
        return a, result_dtype(np.dtype(a.dtype), name, func, requested=requested)
    kind = array_kind(a)
    if kind == "cuda":
        refuse_unchunkable(a, name, func)
        return a, result_dtype(np.dtype(a.dtype), name, func, requested=requested)
    if kind == "dask":  # another dask collection with .chunks
        raise TypeError(f"{func}(): {name} must be a dask.array.Array (or array_like); "
                        f"got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):  # the call is on dask: its mask has no way in
        # what the in-memory call makes of the mask: where=~mask for the element-wise
        # arguments; a value per row counts as 0 where masked (lse: a row excluded)
        instead = (f"pass {name}.data with the mask as where=~{name}.mask (a dask mask "
                   "works)" if name in ("x", "y", "z", "dy", "dz", "b") else
                   f"pass {name}.filled(0)" if name in ("dlse", "sign") else
                   "pass the numpy arrays alone (the in-memory call takes the masked lse)")
        raise TypeError(f"{func}(): {name} is a masked array next to a dask argument, whose "
                        f"blocks cannot carry its mask; {instead}")
    a = host_array(a, name, func, requested)
    return a, a.dtype


def _meta(x, dtype):
    """An empty array of the blocks' type (numpy, cupy, ...) with the result dtype."""
    meta = getattr(x, "_meta", None)
    if meta is None:
        return np.empty((0,) * x.ndim, dtype=dtype)
    return meta.astype(dtype, copy=False) if meta.dtype != dtype else meta


# ---------------------------------------------------------------------------------------
# two passes: statistics per block -> (max, total) per row -> outputs per block
#
# Array indices of the graph: 0 .. ndim-1 are the input's axes; the statistics add two
# axes, S (2: max and sum) and C (a row's entries in the block: per run, per 8192 elements;
# padded to the most any block has).
# Statistics blocks keep the input's blocks along the other axes and have size 1 along the
# softmax axes, so block (i, j, ...) of the statistics is block (i, j, ...)'s.


class _Pass(NamedTuple):
    """What every task of the two passes needs to know."""

    key: str  # the CPU kernels' operation
    axes: tuple  # the softmax axes
    kernels: bool  # numpy blocks: the CPU kernels; otherwise array operations
    dtype: np.dtype  # of the result, and of the blocks as the kernels read them
    ncmax: int  # statistics entries per row in a statistics block (the most any block has)
    nblocks: int  # blocks of the input (the tasks' copies share the numba threads)
    run_axes: int  # the last softmax axes, over which a block's runs of a row extend
    masked: bool = False  # the blocks end with a ``where=`` mask's (boolean, x's shape)


def _two_pass(op, blocks, axes, dtype, meta, mask=None):
    """``op`` over split softmax ``axes`` of ``blocks`` (its operands, chunked alike), in
    two passes; ``mask``: a ``where=`` mask broadcast to x and chunked like it (numpy
    blocks only), or None."""
    key = "softmax_split" if op.name == "softmax" else op.name  # no exps kept between passes
    spec, operands, stats, fin = _statistics(key, blocks, axes, dtype, meta, op.name, mask)
    ind = tuple(range(blocks[0].ndim))
    S, C = len(ind), len(ind) + 1
    others = tuple(ax for ax in ind if ax not in axes)
    # the statistics have other chunk sizes than the input along the softmax axes but the
    # same number of blocks: paired block by block (align_arrays=False), the input first so
    # that the output takes its chunks
    return da.blockwise(
        _write_task, ind, spec, None, *operands, stats, ind + (S, C), fin, others + (S,),
        align_arrays=False, concatenate=False, dtype=dtype, meta=meta,
        token=f"{op.name}-write")


def reduce_two_pass(kernel, blocks, axes, dtype, mask=None):
    """logsumexp (``kernel``: "logsumexp", or "logsumexp_sign" for value and sign) of numpy
    blocks (x, then the weights chunked like x, if any; ``mask`` as for ``_two_pass``) over
    ``axes``, some of them split across chunks: the first two passes, whose finish gives
    each row's value (and sign) as the in-memory call writes it. Returns a dask array of
    the other axes' shape plus a last axis of the value (and the sign), in the result
    ``dtype``."""
    meta = np.empty((0,) * blocks[0].ndim, dtype)
    return _statistics(kernel, blocks, axes, dtype, meta, "logsumexp", mask)[3]


def _statistics(key, blocks, axes, dtype, meta, name, mask):
    """The statistics and finish layers of the two passes of kernel operation ``key``:
    (spec, the blocks (then the mask's) as blockwise operands, statistics, finish). The
    finish gives each row's (max, total), or a reduction's value (and sign)."""
    x = blocks[0]
    ndim = x.ndim
    ind = tuple(range(ndim))
    S, C = ndim, ndim + 1
    others = tuple(ax for ax in ind if ax not in axes)
    kernels = isinstance(meta, KERNEL_BLOCKS)
    # A block holds, of each row, runs: contiguous pieces of the row (in its logical order,
    # the softmax axes ascending) that extend over the softmax axes from the last split one
    # on (the later ones are whole). The kernels' statistics are per 8192 elements from a
    # run's start; the finish puts all runs' entries in the row's order.
    last_split = max(i for i, ax in enumerate(axes) if len(x.chunks[ax]) > 1)
    run_axes = len(axes) - last_split
    grid = tuple(x.chunks[ax] for ax in axes)
    # entries per block, in the order the finish step concatenates the blocks' statistics
    # (C order of the block indices along the softmax axes)
    ncs = tuple(_entries(ext, run_axes, kernels) for ext in itertools.product(*grid))
    order = (grid, run_axes) if kernels and run_axes < len(axes) else None
    spec = _Pass(key, axes, kernels, dtype, max(ncs), x.npartitions, run_axes,
                 mask is not None)
    operands = [p for a in _and_mask(blocks, mask) for p in (a, ind)]

    stats = da.blockwise(
        _stats_task, ind + (S, C), spec, None, *operands,
        new_axes={S: 2, C: spec.ncmax}, adjust_chunks=dict.fromkeys(axes, 1),
        dtype=np.float64, meta=meta_from_array(meta, ndim + 2, np.float64),
        token=f"{name}-stats")
    # one task per group of blocks sharing rows: all of the group's statistics blocks,
    # given as nested lists (blockwise's concatenate=False), combined in the row's order
    width = REDUCED.get(key)
    fin = da.blockwise(
        _finish_task, others + (S,), spec, None, ncs, None, order, None, stats, ind + (S, C),
        concatenate=False, adjust_chunks=None if width is None else {S: width},
        dtype=np.float64 if width is None else dtype,
        meta=meta_from_array(meta, len(others) + 1, np.float64 if width is None else dtype),
        token=f"{name}-finish")
    return spec, operands, stats, fin


def _runs(extents, run_axes):
    """(runs, elements per run) of a row in a block of these extents along the softmax
    axes."""
    split = len(extents) - run_axes
    return math.prod(extents[:split]), math.prod(extents[split:])


def _entries(extents, run_axes, kernels):
    """Statistics entries per row of a block: one per 8192 elements of each run (CPU
    kernels), one per block (array operations)."""
    if not kernels:
        return min(math.prod(extents), 1)
    runs, length = _runs(extents, run_axes)
    return runs * -(-length // CHUNK)


@functools.lru_cache(maxsize=16)
def _row_order(grid, run_axes):
    """Where each statistics entry goes in the row's order: the entries of all blocks (in
    block order; per block run by run, 8192-element chunk by chunk) sorted by the position
    of their run in the row, then by chunk."""
    full = [sum(c) for c in grid]
    strides = [math.prod(full[i + 1:]) for i in range(len(full))]  # of the row's axes
    split = len(grid) - run_axes
    starts, chunk = [], []
    for index in itertools.product(*(range(len(c)) for c in grid)):
        offsets = [sum(c[:b]) for c, b in zip(grid, index, strict=True)]
        extents = [c[b] for c, b in zip(grid, index, strict=True)]
        runs, length = _runs(extents, run_axes)
        nc = -(-length // CHUNK)
        if not runs * nc:
            continue
        # run starts: the block's positions along the outer softmax axes, in C order
        start = sum(offsets[i] * strides[i] for i in range(split, len(grid)))
        for i in range(split):
            start = np.add.outer(start, (offsets[i] + np.arange(extents[i])) * strides[i])
        starts.append(np.repeat(np.ravel(start), nc))
        chunk.append(np.tile(np.arange(nc), runs))
    return np.lexsort((np.concatenate(chunk), np.concatenate(starts)))


# log_softmax's statistics are softmax's (max and sum of exp per chunk, no exps kept), and
# logsumexp's are the same with or without its sign: one compiled statistics kernel each
_STATS_KEYS = {"log_softmax": "softmax_split", "logsumexp_sign": "logsumexp"}
# and the finish of logsumexp's (max, total) too (its values, and signs, come after it)
_FINISH_KEYS = {"logsumexp_sign": "logsumexp"}


def _stats_task(spec, *blocks):
    blocks, mask = _values_and_mask(spec, blocks)
    shape = blocks[0].shape
    m, n = _sizes(shape, spec.axes)
    if spec.kernels:
        st = np.empty((m, 2, spec.ncmax))  # entries past a block's own are never read
        runs, length = _runs([shape[ax] for ax in spec.axes], spec.run_axes)
        if m and n:
            from . import _cpu_kernels as k

            nc = -(-length // CHUNK)
            op = k.OPS[_STATS_KEYS.get(spec.key, spec.key)]
            # the kernels' rows are the runs: (row, run) -> the row's entries run by run
            part = st if runs == 1 else np.empty((m * runs, 2, nc))
            # the second operand: a gradient's, logsumexp's weights, softmax's x again
            alone = spec.key in REDUCED and len(blocks) == 1  # logsumexp without weights
            nv = len(blocks)
            columns = _columns(spec, blocks, None, mask)
            if columns is not None:
                (outer, along, inner), views, order = columns
                cst = np.empty((m * runs, 2, nc))
                tasks = k.column_tasks(outer, inner, 0, k.BAND_TILES)
                second = (None, 0, 0) if alone else views[nv - 1]
                w = views[nv] if mask is not None else (None, 0, 0)
                k.segment_columns_stats(op, *_read_only(views[0]), *_read_only(second),
                                        *_read_only(w), 0, tasks, along, inner, cst)
                part[:, :, :nc] = order.to_rows(cst)
            else:
                for lo, hi, rows in _panels(spec, _and_mask(blocks, mask)):
                    second = (None, 0) if alone else rows[nv - 1]
                    w = rows[nv] if mask is not None else (None, 0)
                    k.segment_stats(op, *_read_only(rows[0]), *_read_only(second),
                                    *_read_only(w), hi - lo, length, part[lo:hi])
            if runs > 1:
                st[:, :, :runs * nc] = (part.reshape(m, runs, 2, nc).transpose(0, 2, 1, 3)
                                        .reshape(m, 2, runs * nc))
    else:
        st = _xp_stats(spec.key, [_xp_rows(b, spec.axes) for b in blocks], spec.ncmax)
    # rows in C order of the other axes; size 1 along the softmax axes
    return st.reshape(tuple(1 if ax in spec.axes else s for ax, s in enumerate(shape))
                      + (2, spec.ncmax))


def _read_only(view):
    """A block's (flat array, strides...) as the segment kernels take their inputs and masks:
    the array read-only (``_cpu.read_only``), one compiled specialization for every block."""
    return (_cpu.read_only(view[0]), *view[1:])


def _finish_task(spec, ncs, order, nested):
    parts = list(_leaves(nested))  # the group's statistics blocks, in block order
    first = parts[0]
    m = math.prod(first.shape[:-2])
    st = [p.reshape(m, 2, p.shape[-1])[:, :, :nc] for p, nc in zip(parts, ncs, strict=True)]
    shape = [s for ax, s in enumerate(first.shape[:-2]) if ax not in spec.axes]
    if spec.kernels:
        from . import _cpu_kernels as k

        st = np.concatenate(st, axis=2)
        if order is not None:
            st = st[:, :, _row_order(*order)]
        fin = np.empty((m, 2))
        k.segment_finish(k.OPS[_FINISH_KEYS.get(spec.key, spec.key)], np.ascontiguousarray(st),
                         fin)
        if spec.key in REDUCED:  # a reduction: the rows' values (and signs) themselves
            width = REDUCED[spec.key]
            values = np.empty((m, width), spec.dtype)
            k.segment_values(k.OPS[spec.key], fin, _bits(values).reshape(-1), width)
            return values.reshape(*shape, width)
    else:
        fin = _xp_finish(spec.key, _namespace(first).concatenate(st, axis=2))
    return fin.reshape(*shape, 2)


def _write_task(spec, *args):
    *blocks, st, fin = args
    st, fin = _leaf(st), _leaf(fin)
    blocks, mask = _values_and_mask(spec, blocks)
    shape = blocks[0].shape
    m, n = _sizes(shape, spec.axes)
    if not spec.kernels:
        rows = [_xp_rows(b, spec.axes) for b in blocks]
        return _xp_block(_xp_write(spec.key, rows, fin.reshape(m, 2), spec.dtype), shape,
                         spec.axes)
    # a C-contiguous block, as the one-pass tasks give for C-contiguous input blocks
    out = _pool.empty(shape, spec.dtype)
    if m and n:
        from . import _cpu_kernels as k

        runs, length = _runs([shape[ax] for ax in spec.axes], spec.run_axes)
        nc = -(-length // CHUNK)
        st = st.reshape(m, 2, spec.ncmax)
        fin = np.ascontiguousarray(fin).reshape(m, 2)
        if runs > 1:  # the kernels' rows are the runs
            st = st[:, :, :runs * nc].reshape(m, 2, runs, nc).transpose(0, 2, 1, 3)
            st = st.reshape(m * runs, 2, nc)
            fin = np.repeat(fin, runs, axis=0)
        st = np.ascontiguousarray(st)
        nv = len(blocks)
        columns = _columns(spec, blocks, out, mask)
        if columns is not None:
            (outer, along, inner), views, order = columns
            lead, stream = _cpu.column_stream(*views[-1], out.size // inner, inner)
            tasks = k.column_tasks(outer, inner, lead, k.BAND_TILES)
            w = views[nv] if mask is not None else (None, 0, 0)
            k.segment_columns_write(k.OPS[spec.key], *_read_only(views[0]),
                                    *_read_only(views[nv - 1]), *_read_only(w),
                                    *views[-1], 0, tasks, along, inner, order.from_rows(st),
                                    order.from_rows(fin), lead, stream)
            return out
        # written past the caches when large and in place (a panel is read back at once)
        stream = (_cpu.streams(m * runs, length, out.itemsize, spec.key)
                  and _cpu_path.rows_in_place(_bits(out), _perm(out.ndim, spec.axes),
                                              spec.run_axes) is not None)
        for lo, hi, rows in _panels(spec, _and_mask(blocks, mask), out):
            w = rows[nv] if mask is not None else (None, 0)
            k.segment_write(k.OPS[spec.key], *_read_only(rows[0]), *_read_only(rows[nv - 1]),
                            *_read_only(w), *rows[-1], hi - lo, length, st[lo:hi],
                            fin[lo:hi], stream)
    return out


def _and_mask(blocks, mask):
    """``blocks``, then the mask's when there is one."""
    return list(blocks) if mask is None else [*blocks, mask]


def _values_and_mask(spec, blocks):
    """A task's blocks in the kernels' dtype, and its mask's block as bytes (or None)."""
    mask = blocks[-1].view(np.uint8) if spec.masked else None
    values = blocks[:-1] if spec.masked else blocks
    return [_converted(b, spec.dtype) for b in values], mask


# A block's rows (its runs) that are not evenly spaced in memory (softmax over axis 0 of
# C-ordered blocks, ...) are copied into and out of contiguous rows in panels of this
# many bytes: a task then holds no second copy of its blocks, and the tiled copies ran as
# fast as copies of whole blocks (1024 x 8192 float32: 32 ms either way, 2 threads).
PANEL_BYTES = 8 << 20


def _panels(spec, blocks, out=None):
    """The kernels' rows of numpy ``blocks`` (and of ``out``), panel by panel: yields
    (lo, hi, [(flat buffer, row stride) per block (and out)]) for rows lo .. hi-1. Rows
    evenly spaced in memory are reached in place; others are gathered into contiguous
    panels, and ``out``'s panel is copied into place once the caller has written it (when
    it asks for the next panel)."""
    arrays = [_bits(a) for a in (*blocks, *([] if out is None else [out]))]
    perm = _perm(arrays[0].ndim, spec.axes)
    length = math.prod(arrays[0].shape[ax] for ax in perm[arrays[0].ndim - spec.run_axes:])
    nrows = arrays[0].size // length
    views, panels, whole_out = [], [], None
    for i, a in enumerate(arrays):
        view, rows2d = _cpu_path.rows_in_place(a, perm, spec.run_axes), None
        if view is None:
            rows2d = as_2d(a.transpose(perm), nrows, length)
        if view is None and rows2d is None:  # axes that do not merge: whole copies
            if out is not None and i == len(arrays) - 1:
                whole_out = np.empty((nrows, length), a.dtype)
                view = (whole_out.reshape(-1), length)
            else:
                view = (np.ascontiguousarray(a.transpose(perm)).reshape(-1), length)
        views.append(view)
        panels.append(rows2d)
    step = nrows if all(p is None for p in panels) else max(
        1, PANEL_BYTES // (length * arrays[0].itemsize))
    buffers = [None if p is None else np.empty((min(step, nrows), length), p.dtype)
               for p in panels]
    written = out is not None and panels[-1] is not None
    with _threads(spec.nblocks, arrays[0]):
        for lo in range(0, nrows, step):
            hi = min(nrows, lo + step)
            args = []
            for i, (view, rows2d, buf) in enumerate(zip(views, panels, buffers, strict=True)):
                if view is not None:
                    flat, stride = view
                    args.append((flat[lo * stride:], stride))
                    continue
                if not (written and i == len(arrays) - 1):
                    _cpu.copy2d(rows2d[lo:hi], buf[:hi - lo])
                args.append((buf[:hi - lo].reshape(-1), length))
            yield lo, hi, args
            if written:
                _cpu.copy2d(buffers[-1][:hi - lo], panels[-1][lo:hi])
    if whole_out is not None:
        arrays[-1].transpose(perm)[...] = whole_out.reshape(
            [arrays[-1].shape[ax] for ax in perm])


class _Order(NamedTuple):
    """The kernels' rows of a block read in place along a strided axis are in C order of
    the axes ``kernel`` (the layout plan's); the statistics are in C order of ``rows`` (the
    other axes ascending, then the softmax axes before the run axes)."""

    shape: tuple  # of the block
    kernel: tuple
    rows: tuple

    def to_rows(self, a):
        return _reordered(a, self.shape, self.kernel, self.rows)

    def from_rows(self, a):
        return _reordered(a, self.shape, self.rows, self.kernel)


def _reordered(a, shape, src, dst):
    """``a`` (one row per leading index, in C order of the block's axes ``src``) with its
    rows in C order of the axes ``dst``."""
    if [ax for ax in src if shape[ax] != 1] == [ax for ax in dst if shape[ax] != 1]:
        return a
    tail = a.shape[1:]
    t = a.reshape(tuple(shape[ax] for ax in src) + tail).transpose(
        [src.index(ax) for ax in dst] + list(range(len(src), len(src) + len(tail))))
    return np.ascontiguousarray(t).reshape((-1,) + tail)


def _columns(spec, blocks, out=None, mask=None):
    """How the kernels read the runs of numpy ``blocks`` (and write ``out``) in place when
    the run axes are not the contiguous ones (softmax over axis 0 of C-ordered blocks): a
    row per vector lane, along the axis at its stride, as the one-pass path does; no copy.
    Returns ((outer positions, n, C), [(flat, outer stride, axis stride) per block (then
    the mask's bytes, then out, or the first block again)], _Order), or None where the
    layout plan has no such access (rows in place, or layouts that are copied in panels).
    The mask's bytes are read in place where laid out as a block, else copied once."""
    arrays = [_bits(b) for b in blocks]
    if mask is not None:
        same = mask.strides == tuple(s // arrays[0].itemsize for s in arrays[0].strides)
        arrays.append(mask if same else np.ascontiguousarray(mask))
    ndim = arrays[0].ndim
    split = ndim - spec.run_axes
    found = _cpu_path.columns_in_place(arrays, arrays[0] if out is None else _bits(out),
                                       _perm(ndim, spec.axes)[split:])
    if found is None:
        return None
    p, flat = found
    views = [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]
    order = _Order(arrays[0].shape, p.perm[:split], _perm(ndim, spec.axes)[:split])
    return (p.m // p.inner, p.n, p.inner), views, order


def _leaves(nested):
    if isinstance(nested, list):
        for item in nested:
            yield from _leaves(item)
    else:
        yield nested


def _leaf(nested):
    """The one block of a dimension blockwise passed as (nested) lists."""
    while isinstance(nested, list):
        (nested,) = nested
    return nested


def _converted(block, dtype):
    """bool and integer blocks are computed in float64; byte-swapped floats natively."""
    return block if block.dtype == dtype else block.astype(dtype)


def _sizes(shape, axes):
    """(rows, elements per row segment) of a block."""
    return (math.prod(s for ax, s in enumerate(shape) if ax not in axes),
            math.prod(shape[ax] for ax in axes))


def _perm(ndim, axes):
    """The axes of a block in row order: the other axes ascending (so that row i is the
    same logical row in every operand, output and statistics block), then the softmax axes
    ascending (the in-memory call's order along a row)."""
    return tuple(ax for ax in range(ndim) if ax not in axes) + tuple(axes)


def _bits(a):
    """float16 travels to numba code as its uint16 bits (numba has no float16)."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


# ---------------------------------------------------------------------------------------
# the same three steps with array operations, for blocks the CPU kernels cannot take
# (cupy): one (max, sum) per row segment; sums and the combination in float64. Like the
# kernels they follow the non-finite rules silently (numpy would warn about inf - inf and
# log(0), which the rules turn into NaN rows anyway; cupy does not warn).

_FORWARD_KEYS = ("softmax_split", "log_softmax")


def _quiet(f):
    @functools.wraps(f)
    def wrapper(*args):
        with np.errstate(all="ignore"):
            return f(*args)

    return wrapper


def _namespace(a):
    """The array library of ``a`` (numpy, or cupy for cupy arrays)."""
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy.get_array_module(a)


def _xp_rows(block, axes):
    """The block as a C-contiguous (rows, segment) array."""
    t = block.transpose(_perm(block.ndim, axes))
    return _namespace(block).ascontiguousarray(t).reshape(_sizes(block.shape, axes))


def _xp_block(rows, shape, axes):
    """Inverse of ``_xp_rows``: a C-contiguous block of ``shape``."""
    perm = _perm(len(shape), axes)
    view = rows.reshape(tuple(shape[p] for p in perm)).transpose(
        tuple(perm.index(ax) for ax in range(len(shape))))
    return _namespace(rows).ascontiguousarray(view)


def _compute(a, xp):
    """Values in the compute type: float64 for float64 data, float32 otherwise."""
    return a if a.dtype == np.float64 else a.astype(xp.float32)


@_quiet
def _xp_stats(key, rows, ncmax):
    xp = _namespace(rows[0])
    m, n = rows[0].shape
    st = xp.zeros((m, 2, ncmax), dtype=xp.float64)
    if n == 0:
        st[:, 0, :] = -math.inf if key in _FORWARD_KEYS else 0.0
        return st
    if key in _FORWARD_KEYS:
        x = _compute(rows[0], xp)
        mx = x.max(axis=1)  # NaN propagates
        shift = xp.where(mx == -math.inf, 0, mx)  # a segment of -inf adds exp(-inf) = 0
        st[:, 0, 0] = mx
        st[:, 1, 0] = xp.exp(x - shift[:, None]).sum(axis=1, dtype=xp.float64)
    elif key == "softmax_backward":
        st[:, 1, 0] = (_compute(rows[0], xp) * _compute(rows[1], xp)).sum(axis=1,
                                                                          dtype=xp.float64)
    else:
        st[:, 1, 0] = _compute(rows[1], xp).sum(axis=1, dtype=xp.float64)
    return st


@_quiet
def _xp_finish(key, st):
    """(m, t) per row from the (rows, 2, segments) statistics."""
    xp = _namespace(st)
    fin = xp.zeros((st.shape[0], 2), dtype=xp.float64)
    if key not in _FORWARD_KEYS:
        fin[:, 1] = st[:, 1, :].sum(axis=1)
        return fin
    cmax, csum = st[:, 0, :], st[:, 1, :]
    m = cmax.max(axis=1)
    # a segment of -inf adds 0 (its exp(-inf - m) is NaN when m = -inf too)
    scaled = xp.where(cmax == -math.inf, 0.0, csum * xp.exp(cmax - m[:, None]))
    t = scaled.sum(axis=1)
    fin[:, 0] = m
    fin[:, 1] = xp.log(t) if key == "log_softmax" else t
    return fin


@_quiet
def _xp_write(key, rows, fin, dtype):
    xp = _namespace(rows[0])
    a = _compute(rows[0], xp)
    ct = a.dtype
    if key in _FORWARD_KEYS:
        m, t = fin[:, 0], fin[:, 1]
        bad = ~((m > -math.inf) & (m < math.inf))  # NaN, +inf or only -inf: a NaN row
        mc = xp.where(bad, 0, m).astype(ct)[:, None]
        if key == "log_softmax":
            out = (a - mc) - t.astype(ct)[:, None]
        else:
            out = xp.exp(a - mc) / t.astype(ct)[:, None]
        out = xp.where(bad[:, None], xp.asarray(math.nan, dtype=ct), out)
    else:
        b = _compute(rows[1], xp)
        s = fin[:, 1].astype(ct)[:, None]
        out = a * (b - s) if key == "softmax_backward" else b - xp.exp(a) * s
    return out.astype(dtype)
