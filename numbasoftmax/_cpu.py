"""CPU launcher: picks the kernel and the serial or parallel driver, and keeps numba's
thread pool safe.

Inputs here are flat 1-D buffers with strides (see ``_layout``); float16 data arrives
viewed as uint16. Every kernel gives the same bits (see ``_cpu_kernels``), so the choice
below is about speed only.
"""

from __future__ import annotations

import threading

import numba

# Below this many elements the serial driver runs: waking the thread pool costs more than
# the work (omp: ~2.7 us per call; a 32K-element float32 softmax takes ~30 us on one core).
PARALLEL_MIN_ELEMENTS = 1 << 15
# Rows shorter than this run W at a time, a lane per row (gathered into a tile): the row
# kernel's per-row cost (two horizontal reductions, a division) dominates short rows.
SHORT_ROW_MAX = 16
# Longer rows always run whole inside one parallel task (the second pass over a row then
# reads from cache); with fewer than ROW_TASK_MIN_ROWS of them they are split into chunks
# so that every thread has work.
ROW_TASK_MAX = 32768
ROW_TASK_MIN_ROWS = 16

_layer_lock = threading.Lock()
_serialize_lock = None  # a Lock when numba runs on the workqueue layer
_layer_checked = False


def _launch_pool():
    """Start numba's thread pool once and learn which threading layer it got.

    The workqueue layer aborts the process when two threads enter parallel code at once
    and costs ~87 us per call; numba only falls back to it when neither TBB nor OpenMP
    can be loaded. Then parallel calls are serialized with a lock, which is safe."""
    global _serialize_lock, _layer_checked
    with _layer_lock:
        if _layer_checked:
            return
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        if numba.threading_layer() == "workqueue":
            _serialize_lock = threading.Lock()
        _layer_checked = True


_kernels = None


def _load_kernels():
    global _kernels
    # imported at the first call: ``import numbasoftmax`` compiles nothing
    from . import _cpu_kernels

    _kernels = _cpu_kernels
    return _kernels


def _parallel(kernel, args):
    if not _layer_checked:
        _launch_pool()
    # Tasks are handed out one at a time instead of split evenly up front: when another
    # process holds a core, an even split waits for the descheduled thread (a 1 MiB softmax
    # went from 0.2 ms to 8 ms). Each task is >= 16K elements, so the extra atomics are free.
    previous = numba.set_parallel_chunksize(1)
    try:
        if _serialize_lock is None:
            kernel(*args)
        else:
            with _serialize_lock:
                kernel(*args)
    finally:
        numba.set_parallel_chunksize(previous)


def run(op, args):
    """Run operation ``op`` on M rows of n contiguous elements. ``args``: flat buffers and
    row strides (``a, sa[, b, sb], out, so``), then M and n."""
    k = _kernels or _load_kernels()
    *arrays, m, n = args
    a, sa = arrays[0], arrays[1]
    b, sb = (arrays[2], arrays[3]) if len(arrays) == 6 else (a, sa)
    out, so = arrays[-2], arrays[-1]
    marker = k.OPS[op]
    if m * n < PARALLEL_MIN_ELEMENTS:
        driver = k.short_rows if n < SHORT_ROW_MAX else k.rows
        driver(marker, a, sa, 1, b, sb, 1, out, so, 1, 0, m, n, 1)
        return
    if n < SHORT_ROW_MAX:
        driver = k.short_rows_parallel
    elif n <= ROW_TASK_MAX or m >= ROW_TASK_MIN_ROWS:
        driver = k.rows_parallel
    else:
        driver = k.chunks_parallel
    _parallel(driver, (marker, a, sa, 1, b, sb, 1, out, so, 1, m, n, 1))


# Below this many elements numpy's own strided copy is as fast and needs no compilation.
TILED_COPY_MIN_ELEMENTS = 1 << 16


def copy2d(src, dst):
    """dst[...] = src for 2-D arrays of any strides."""
    if src.size < TILED_COPY_MIN_ELEMENTS:
        dst[...] = src
        return
    k = _kernels or _load_kernels()
    _parallel(k.copy2d, (src, dst))
