"""CPU launcher: picks the serial or the parallel driver and keeps numba's thread pool safe.

Inputs here are already flat 1-D buffers with a row stride (see ``_layout``); float16 data
arrives viewed as uint16.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import numba

# Below this many elements the serial driver runs: waking the thread pool costs more than
# the work (omp: ~2.7 us per call; a 32K-element float32 softmax takes ~30 us on one core).
PARALLEL_MIN_ELEMENTS = 1 << 15

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

        _preload_tbb()
        parallel._launch_threads()
        if numba.threading_layer() == "workqueue":
            _serialize_lock = threading.Lock()
        _layer_checked = True


def _preload_tbb():
    """Let numba find a pip-installed TBB (``numbasoftmax[tbb]``).

    numba tries its TBB layer first (fork-safe, thread-safe) but loads ``libtbb.so.12`` by
    name, and pip puts it in the environment's ``lib/``, which is not on the loader's
    search path (conda's is). Loading it once by its full path makes the name resolve."""
    if not sys.platform.startswith("linux"):
        return
    path = os.path.join(sys.prefix, "lib", "libtbb.so.12")
    if os.path.exists(path):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # numba then picks OpenMP or workqueue, as without TBB


# Fork safety. GNU OpenMP (numba's "omp" layer on Linux builds) cannot run a parallel region
# in a process forked after the parent started its threads: numba then kills the child
# ("Terminating: fork() called from a process already using GNU OpenMP") and a
# multiprocessing pool waits forever. Such a child runs the serial drivers (same bits, one
# thread). TBB and workqueue children keep the parallel drivers.
_serial_only = False


def _after_fork_in_child():
    global _serial_only, _serialize_lock
    if _serialize_lock is not None:
        _serialize_lock = threading.Lock()  # another thread may have held it at the fork
    if _serial_only:
        return
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never started a thread pool: the child may
        return
    omp = sys.modules.get("numba.np.ufunc.omppool")
    if layer == "omp" and getattr(omp, "openmp_vendor", "GNU") == "GNU":
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_allowed():
    """False in a child forked after GNU OpenMP threads started in an ancestor."""
    return not _serial_only


_kernels = None
_drivers = {}  # op -> (serial, rows_parallel, chunks_parallel), bound at the first call


def _load_kernels():
    global _kernels
    # imported at the first call: ``import numbasoftmax`` compiles nothing
    from . import _cpu_kernels as k

    for op in ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward"):
        _drivers[op] = (getattr(k, f"{op}_rows_serial"), getattr(k, f"{op}_rows_parallel"),
                        getattr(k, f"{op}_chunks_parallel"))
    _kernels = k
    return _kernels


def _parallel(kernel, args):
    if not _layer_checked:
        _launch_pool()
    # Tasks are handed out one at a time instead of split evenly up front: when another
    # process holds a core, an even split waits for the descheduled thread (a 1 MiB softmax
    # went from 0.2 ms to 8 ms). A task is a group of whole rows or a chunk of a row (thousands
    # of elements, see _cpu_kernels), so the extra atomics cost nothing measurable.
    previous = numba.set_parallel_chunksize(1)
    try:
        if _serialize_lock is None:
            kernel(*args)
        else:
            with _serialize_lock:
                kernel(*args)
    finally:
        numba.set_parallel_chunksize(previous)


def _row_tasks(m, n, k):
    """Whole rows per task (second pass from cache) unless there are too few long rows to
    keep the threads busy. Both drivers do the same arithmetic: the choice changes no bits."""
    return n <= k.ROW_TASK_MAX or m >= k.ROW_TASK_MIN_ROWS


# The driver depends only on the problem size, never on the thread count, so results are
# bitwise the same with any number of threads (both drivers do the same arithmetic anyway).

def run(op, args):
    """Run operation ``op``; ``args`` are the drivers' arguments: flat buffers and row
    strides, then the number of rows m and the row length n."""
    k = _kernels or _load_kernels()
    m, n = args[-2], args[-1]
    serial, rows_parallel, chunks_parallel = _drivers[op]
    if m * n < PARALLEL_MIN_ELEMENTS or not parallel_allowed():
        serial(*args)
    else:
        _parallel(rows_parallel if _row_tasks(m, n, k) else chunks_parallel, args)


# Below this many elements numpy's own strided copy is as fast and needs no compilation.
TILED_COPY_MIN_ELEMENTS = 1 << 16


def copy2d(src, dst):
    """dst[...] = src for 2-D arrays of any strides."""
    if src.size < TILED_COPY_MIN_ELEMENTS or not parallel_allowed():
        dst[...] = src
        return
    k = _kernels or _load_kernels()
    _parallel(k.copy2d, (src, dst))
