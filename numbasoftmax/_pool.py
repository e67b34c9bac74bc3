"""Result pool (opt-in): large CPU results reuse the memory of recently freed results.

A fresh large numpy array has never been touched: the first write to each page faults, and
the OS maps and zeroes it. malloc (glibc) keeps freed blocks below 32 MiB and hands them out
again without new faults, but every larger result is fresh memory from the OS, and in a
loop that drops each result before the next call the faults can cost as much as the
softmax itself.

With the pool on, a result of ``MIN_BYTES`` or more is carved from a buffer of a result
that was freed earlier (same byte size), the way cupy's memory pool and torch's CUDA caching
allocator reuse device memory. Safety rests on one object per buffer, ``_Owner``: it is the
numpy ``base`` of the result, and every view of the result keeps it alive, so its
``__del__`` (the moment the buffer returns to the pool) runs only when no array can reach
the memory. At most ``limit`` bytes of free buffers are kept. The limit is 0 (pool off)
until ``set_result_pool_limit`` or the ``result_pool`` context manager raises it: memory
held for reuse is memory the user did not ask to keep (and, in a dask worker, memory the
worker's monitor counts as unmanaged).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

# Smaller results come from malloc's heap, which glibc reuses without new page faults
# (measured: no difference with the pool on at 4 and 16 MiB; at 32 MiB every fresh result
# faulted). Read at each allocation.
MIN_BYTES = 32 << 20
DEFAULT_LIMIT = 0  # off
_ALIGN = 64  # cache-line aligned results: full-line vector stores


class _Owner:
    """Owns one pooled buffer while a result (or any view of it) is alive."""

    __slots__ = ("_raw", "_nbytes", "__array_interface__")

    def __init__(self, raw, nbytes, shape, strides, dtype):
        self._raw = raw
        self._nbytes = nbytes
        address = raw.__array_interface__["data"][0]
        address += -address % _ALIGN
        self.__array_interface__ = {"shape": shape, "strides": strides, "typestr": dtype.str,
                                    "data": (address, False), "version": 3}

    def __del__(self):
        try:
            _POOL.give_back(self._raw, self._nbytes)
        except Exception:  # noqa: BLE001 - at interpreter shutdown: numpy frees the buffer
            pass


class ResultPool:
    def __init__(self, limit):
        self.limit = limit
        self._free = []  # (nbytes, raw buffer), the most recently freed last
        self._held = 0  # bytes of the buffers in _free
        # Re-entrant: a result freed by the garbage collector while this thread holds
        # the lock calls give_back from inside take(); each step below is one list op.
        self._lock = threading.RLock()

    def empty(self, shape, dtype, order_like=None):
        """An uninitialized array like ``np.empty(shape, dtype)``, or with the memory
        layout of ``order_like`` (numpy's ``empty_like`` order 'K')."""
        if self.limit > 0:  # off (the default): nothing to compute on a small call's path
            dtype = np.dtype(dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes >= MIN_BYTES:
                return self._pooled(shape, dtype, order_like, nbytes)
        if order_like is None:
            return np.empty(shape, dtype)
        return np.empty_like(order_like, dtype=dtype)

    def _pooled(self, shape, dtype, order_like, nbytes):
        raw = self._take(nbytes)
        if raw is None:
            raw = np.empty(nbytes + _ALIGN, np.uint8)
        if order_like is None or order_like.flags.c_contiguous:
            return np.asarray(_Owner(raw, nbytes, tuple(shape), None, dtype))
        # the input's axes from the largest stride to the smallest, like empty_like('K')
        order = sorted(range(len(shape)), key=lambda a: -abs(order_like.strides[a]))
        c = np.asarray(_Owner(raw, nbytes, tuple(shape[a] for a in order), None, dtype))
        return c.transpose(np.argsort(order))

    def _take(self, nbytes):
        with self._lock:
            free = self._free
            for i in range(len(free) - 1, -1, -1):
                if free[i][0] == nbytes:
                    raw = free.pop(i)[1]
                    self._held -= raw.nbytes
                    return raw
        return None

    def give_back(self, raw, nbytes):
        if raw.nbytes > self.limit:
            return  # dropped: numpy frees it
        with self._lock:
            free = self._free
            while free and self._held + raw.nbytes > self.limit:
                self._held -= free.pop(0)[1].nbytes  # the least recently freed goes
            free.append((nbytes, raw))
            self._held += raw.nbytes

    def set_limit(self, nbytes):
        with self._lock:
            previous, self.limit = self.limit, nbytes
            while self._free and self._held > nbytes:
                self._held -= self._free.pop(0)[1].nbytes
        return previous

    def held_bytes(self):
        return self._held

    def _after_fork(self):
        self._lock = threading.RLock()  # another thread may have held it at the fork


_POOL = ResultPool(DEFAULT_LIMIT)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._after_fork)


def _check_nbytes(nbytes, func):
    if isinstance(nbytes, bool) or not isinstance(nbytes, int | np.integer):
        raise TypeError(f"{func}(): nbytes must be an int; got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"{func}(): nbytes must be >= 0; got {nbytes}")
    return int(nbytes)


def set_result_pool_limit(nbytes):
    """Keep up to ``nbytes`` of freed CPU results for reuse; returns the previous limit.

    With a limit above 0, results of 32 MiB or more are carved from the memory of results
    freed earlier (same byte size), which spares each call the page faults of fresh memory
    (the OS maps and zeroes every page on first touch). It pays off in loops that drop a
    result of the same size before the next call. The pool holds only memory that no array
    refers to any more, and is process-wide. ``0`` (the default) turns the pool off and
    releases what it holds.
    """
    return _POOL.set_limit(_check_nbytes(nbytes, "set_result_pool_limit"))


class result_pool:  # lower case: used like a function, as numpy's errstate
    """Context manager: the result pool on with a limit of ``nbytes`` inside the block.

    ::

        with numbasoftmax.result_pool(1 << 30):
            for batch in batches:
                loss = step(numbasoftmax.softmax(batch))

    On exit the previous limit comes back (by default 0: the pool's memory is released).
    The setting is process-wide: other threads' results use the pool while a block runs.
    Blocks nest.
    """

    def __init__(self, nbytes):
        self._nbytes = _check_nbytes(nbytes, "result_pool")
        self._previous = []

    def __enter__(self):
        self._previous.append(_POOL.set_limit(self._nbytes))
        return self

    def __exit__(self, *exc):
        _POOL.set_limit(self._previous.pop())
        return False


# the results' allocator: the pool's method itself (a small call's result costs no
# wrapper around it)
empty = _POOL.empty
