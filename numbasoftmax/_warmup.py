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
compile at their first use, unless the warm-up is asked for them too (``features=True``,
``warmup --features``): then every call above is also made with a mask that varies along
the rows, and the numpy calls with each wider result dtype, and logsumexp with weights,
with its sign and with both. Other combinations (a mask with ``dtype=``) are left to their
first use.
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
# operations (log_softmax's from the short rows' end, 33)
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
    array of ``chunks``); ``options``: keyword arguments beyond ``axis``, as (name, value)
    pairs (``where`` True: a mask of the array's shape)."""

    op: str
    dtype: type
    shape: tuple
    axis: int
    layout: str = "C"
    chunks: tuple | None = None
    options: tuple = ()


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
    """The split-axis dask calls, where dask is installed: the four functions' and
    logsumexp's (its own statistics; its gradient runs on the blocks as the numpy call)."""
    if importlib.util.find_spec("dask") is None:
        return []
    return [Case(op, dtype, shape, axis, "dask", chunks)
            for op in (*SOFTMAX_NAMES, "logsumexp") for dtype in DTYPES
            for shape, chunks, axis in DASK_SHAPES]


def _with_features(plain):
    """The feature calls of the ``plain`` cases: each masked; the numpy ones also with each
    wider result dtype; logsumexp's and its gradient's also with weights and with a sign."""
    out = []
    for case in plain:
        out.append(case._replace(options=(("where", True),)))
        if case.layout != "dask":
            wider = [d for d in DTYPES
                     if np.dtype(d).itemsize > np.dtype(case.dtype).itemsize]
            out += [case._replace(options=(("dtype", d),)) for d in wider]
        if OPS[case.op].forward == "logsumexp":
            sign = "return_sign" if case.op == "logsumexp" else "sign"
            out += [case._replace(options=options) for options in (
                (("b", True),), ((sign, True),), (("b", True), (sign, True)))]
    return out


def cases(features=False):
    """The Case of every kernel the CPU path compiles (``features``: also with the options
    that change the kernels' arguments)."""
    plain = ([Case(op, dtype, shape, axis, layout) for op in OPS for dtype in DTYPES
              for shape, axis, layout in SHAPES] + _runs() + _dask_cases())
    return plain + (_with_features(plain) if features else [])


def _call(case):
    import numbasoftmax

    op, dtype, shape, axis, layout, chunks, options = case
    kwargs = dict(options)
    if kwargs.get("where"):  # every other element along the softmax axis (a mask constant
        # along the rows runs the unmasked kernels)
        kwargs["where"] = (np.arange(shape[axis]) % 2 == 0).reshape(
            [-1 if k == axis % len(shape) else 1 for k in range(len(shape))]) | np.zeros(
                shape, bool)
    if kwargs.get("b"):
        kwargs["b"] = np.full(shape, 2.0, dtype)
    x = np.full(shape, 0.5, dtype)
    row = np.zeros(np.delete(shape, axis), dtype)  # a value per row
    if kwargs.get("sign"):
        kwargs["sign"] = row + 1
    if layout == "stepped":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif layout == "dask":
        import dask.array as da

        x = da.from_array(x, chunks=chunks)
        if "where" in kwargs:
            kwargs["where"] = da.from_array(kwargs["where"], chunks=chunks)
    spec = OPS[op]
    if spec.row_args:  # logsumexp's gradient: x, then a value per row twice
        arrays = (x, row, row)
    else:
        arrays = (x, x) if spec.backward else (x,)
    result = getattr(numbasoftmax, op)(*arrays, axis=axis, **kwargs)
    if layout == "dask":
        import dask

        dask.compute(result, scheduler="sync")  # a pair with return_sign


def warmup(progress=True, features=False):
    """Compile (or load) every CPU kernel (``features``: also those of ``where=``,
    ``dtype=`` and logsumexp's ``b`` and ``return_sign``); returns (number of calls,
    seconds)."""
    todo = cases(features)
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
