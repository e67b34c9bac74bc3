"""``python -m numbasoftmax warmup``: compile every CPU kernel into numba's disk cache.

A kernel compiles at its first call (seconds); with the cache, later processes load it in
milliseconds. Warming up once, e.g. when building a container image or at the start of a CI
job, moves all of that out of the first real call. It calls the public functions on small
arrays whose shapes reach every driver (short rows, rows, long rows in chunks, a strided
axis in place, gathered layouts; serial and parallel) for every operation and dtype, and
large enough outputs to reach the drivers of large results (rows streamed as runs), so it
compiles exactly what those calls use. Where dask is installed, it also calls the four
softmax functions on dask arrays whose softmax axis is split across chunks, which run the
kernels' phases one at a time (``_dask``'s two passes; on rows and on a strided axis),
computed with dask's synchronous scheduler. Options that change the kernels' arguments
(``where=``, ``dtype=`` another than the input's, logsumexp's ``b`` and ``return_sign``)
compile at their first use.
"""

from __future__ import annotations

import importlib.util
import time
from typing import NamedTuple

import numpy as np

from ._ops import OPS, SOFTMAX_NAMES

DTYPES = (np.float32, np.float64, np.float16)

# (shape, axis, layout): one per driver; sizes above the launcher's parallel threshold
# where the driver is a parallel one
SHAPES = (
    ((4, 3), -1, "C"),  # short rows, serial
    ((16384, 3), -1, "C"),  # short rows, parallel
    ((8, 40), -1, "C"),  # rows in groups, serial
    ((1024, 40), -1, "C"),  # rows in groups, parallel
    ((1, 8200), -1, "C"),  # rows, serial
    ((4, 8200), -1, "C"),  # rows, parallel
    ((2, 40000), -1, "C"),  # few long rows, in chunks
    ((64, 16), 0, "C"),  # a strided axis in place, serial
    ((4096, 16), 0, "C"),  # a strided axis in place, parallel
    ((512, 130), -1, "stepped"),  # gathered rows (tiled copy)
)


# rows of this length with a large output run on ``_cpu_kernels.run_rows`` for each of its
# operations (log_softmax's from the short rows' end, 32)
RUN_ROW = 40


# (shape, chunks, axis) of the dask calls: the softmax axis split, its runs read as rows
# (segment_stats / segment_write) and along a strided axis (segment_columns_*)
DASK_SHAPES = (
    ((4, 64), (4, 32), -1),
    ((64, 64), (32, 64), 0),
)


class Case(NamedTuple):
    """One warm-up call: ``op`` on an array of ``shape`` and ``dtype`` along ``axis``;
    ``layout`` "C", "stepped" (every other element of a wider array) or "dask" (a dask
    array of ``chunks``)."""

    op: str
    dtype: type
    shape: tuple
    axis: int
    layout: str = "C"
    chunks: tuple | None = None


def _runs():
    """The calls whose outputs stream as runs: as large as ``_config.STREAM_MIN_BYTES``
    asks (none when outputs never stream). The parallel driver compiles the serial one it
    calls."""
    from . import _cpu
    from ._cpu_kernels import RUN_OPS

    least = _cpu.STREAM_MIN_BYTES
    if least is None:
        return []
    out = []
    for dtype in DTYPES:
        item = np.dtype(dtype).itemsize
        if item in _cpu.RUN_ITEMSIZES:
            parallel = -(-_cpu.PARALLEL_MIN_ELEMENTS // RUN_ROW)  # rows for the parallel driver
            rows = max(-(-least // (RUN_ROW * item)), parallel)
            out += [Case(op, dtype, (rows, RUN_ROW), -1) for op in RUN_OPS]
    return out


def _dask_cases():
    """The split-axis dask calls, where dask is installed."""
    if importlib.util.find_spec("dask") is None:
        return []
    return [Case(op, dtype, shape, axis, "dask", chunks) for op in SOFTMAX_NAMES
            for dtype in DTYPES for shape, chunks, axis in DASK_SHAPES]


def cases():
    """The Case of every kernel the CPU path compiles."""
    return ([Case(op, dtype, shape, axis, layout) for op in OPS for dtype in DTYPES
             for shape, axis, layout in SHAPES] + _runs() + _dask_cases())


def _call(case):
    import numbasoftmax

    op, dtype, shape, axis, layout, chunks = case
    x = np.full(shape, 0.5, dtype)
    if layout == "stepped":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif layout == "dask":
        import dask.array as da

        x = da.from_array(x, chunks=chunks)
    spec = OPS[op]
    if spec.row_args:  # logsumexp's gradient: x, then a value per row twice
        row = np.zeros(np.delete(shape, axis), dtype)
        arrays = (x, row, row)
    else:
        arrays = (x, x) if spec.backward else (x,)
    result = getattr(numbasoftmax, op)(*arrays, axis=axis)
    if layout == "dask":
        result.compute(scheduler="sync")


def warmup(progress=True):
    """Compile (or load) every CPU kernel; returns (number of calls, seconds)."""
    todo = cases()
    bar = None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:  # the bench extra is not installed: no bar
            pass
        else:
            bar = tqdm(total=len(todo), desc="numbasoftmax warmup", unit="kernel")
    t0 = time.perf_counter()
    for case in todo:
        _call(case)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return len(todo), time.perf_counter() - t0
