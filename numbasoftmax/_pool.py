"""Result pool: large CPU results reuse the memory of recently freed results.

A fresh multi-megabyte numpy array has never been touched: the first write to each page
faults, and the OS maps and zeroes it (for numpy's huge-page-advised arrays, sometimes
after a compaction stall). On the 2-core EPYC this project is measured on, a 2^24 float32
softmax_backward ran at ~26 GB/s into a reused buffer and at 1.4-17 GB/s into a fresh one;
the faults, not the kernel, set the speed of a plain ``softmax_backward(y, dy)`` call.

So a result of ``MIN_BYTES`` or more is carved from a buffer of a result that was freed
earlier (same byte size), the way cupy's memory pool and torch's CUDA caching allocator
reuse device memory. Safety rests on one object per buffer, ``_Owner``: it is the numpy
``base`` of the result, and every view of the result keeps it alive, so its ``__del__``
(the moment the buffer returns to the pool) runs only when no array can reach the memory.
At most ``limit`` bytes of free buffers are kept; ``set_result_pool_limit`` changes it.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

# Smaller results come from malloc's heap, which glibc reuses without new page faults.
MIN_BYTES = 1 << 20
DEFAULT_LIMIT = 512 << 20
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
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < MIN_BYTES or self.limit <= 0:
            if order_like is None:
                return np.empty(shape, dtype)
            return np.empty_like(order_like, dtype=dtype)
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


def set_result_pool_limit(nbytes):
    """Keep at most ``nbytes`` of freed CPU results for reuse; returns the previous limit.

    Results of 1 MiB or more are carved from the memory of results freed earlier, which
    spares each call the page faults of fresh memory (the OS maps and zeroes every page on
    first touch). The pool holds only memory that no array refers to any more. ``0``
    disables the pool and releases what it holds. Default: 512 MiB.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int | np.integer):
        raise TypeError(f"set_result_pool_limit(): nbytes must be an int; "
                        f"got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"set_result_pool_limit(): nbytes must be >= 0; got {nbytes}")
    return _POOL.set_limit(int(nbytes))


def empty(shape, dtype, order_like=None):
    return _POOL.empty(shape, dtype, order_like)
