"""CPU launcher: picks the serial or the parallel driver and keeps numba's thread pool safe.

Inputs here are already flat 1-D buffers with a row stride (see ``_layout``); float16 data
arrives viewed as uint16.
"""

from __future__ import annotations

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

        parallel._launch_threads()
        if numba.threading_layer() == "workqueue":
            _serialize_lock = threading.Lock()
        _layer_checked = True


def _run(serial, parallel, n_elements, args):
    from . import _cpu_kernels  # noqa: F401  (imported lazily: import compiles nothing)

    if n_elements < PARALLEL_MIN_ELEMENTS or numba.get_num_threads() == 1:
        serial(*args)
        return
    if not _layer_checked:
        _launch_pool()
    if _serialize_lock is None:
        parallel(*args)
    else:
        with _serialize_lock:
            parallel(*args)


def softmax(x, sx, out, so, m, n):
    from . import _cpu_kernels as k

    _run(k.softmax_rows_serial, k.softmax_rows_parallel, m * n, (x, sx, out, so, m, n))


def log_softmax(x, sx, out, so, m, n):
    from . import _cpu_kernels as k

    _run(k.log_softmax_rows_serial, k.log_softmax_rows_parallel, m * n, (x, sx, out, so, m, n))


def softmax_backward(y, sy, dy, sdy, out, so, m, n):
    from . import _cpu_kernels as k

    _run(k.softmax_backward_rows_serial, k.softmax_backward_rows_parallel, m * n,
         (y, sy, dy, sdy, out, so, m, n))


def log_softmax_backward(z, sz, dz, sdz, out, so, m, n):
    from . import _cpu_kernels as k

    _run(k.log_softmax_backward_rows_serial, k.log_softmax_backward_rows_parallel, m * n,
         (z, sz, dz, sdz, out, so, m, n))
