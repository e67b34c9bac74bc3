"""Row kernels for your own ``@numba.njit`` code.

Each function works on one 1-D row, writes into ``out`` (which may be the input itself) and
returns nothing. They take float32 or float64 arrays (contiguous rows run fastest) and
follow the same non-finite rules as the public functions::

    import numba, numpy as np
    from numbasoftmax.jit import softmax_row

    @numba.njit(parallel=True)
    def attention_weights(scores):
        out = np.empty_like(scores)
        for i in numba.prange(scores.shape[0]):
            softmax_row(scores[i], out[i])
        return out

A row and ``out`` (and a gradient's two rows) of different lengths raise ValueError, as the
public functions do for shapes that differ, and a read-only ``out`` or one whose elements
share memory (stride 0) too; other dimensions, integer arrays or a second row or ``out`` of
another dtype raise TypeError saying so (when the call runs: numba compiles a function that
raises it). numba itself refuses float16 arrays from Python before these functions see them.
They run the package's own row kernel, whose summation order is written in the code, so a
row gives bitwise the same result as ``numbasoftmax.softmax`` on it, whether your function
was compiled just now or loaded from numba's cache, inlined or not, serial or parallel.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from ._disk_cache import njit
from ._row_kernel import (
    CHUNK,
    LOG_SOFTMAX,
    LOG_SOFTMAX_BACKWARD,
    OPTIONS,
    SOFTMAX,
    SOFTMAX_BACKWARD,
    row,
)

__all__ = ["softmax_row", "log_softmax_row", "softmax_backward_row", "log_softmax_backward_row"]

_FLOATS = (types.float32, types.float64)


@njit(**OPTIONS)
def _scratch(n):
    return np.empty((2, max(1, (n + CHUNK - 1) // CHUNK)))


def _complaint(name, names, given):
    """(exception class, message) for arguments (numba types) that the row kernel cannot
    take, or None: 1-D float32 or float64 arrays, all of the first one's dtype, the last
    (out) writeable."""
    first = given[0]
    for arg, ty in zip(names, given, strict=True):
        if not (isinstance(ty, types.Array) and ty.ndim == 1 and ty.dtype in _FLOATS):
            return TypeError, f"{name}(): {arg} must be a 1-D float32 or float64 array; got {ty}"
        if ty.dtype != first.dtype:
            return TypeError, (f"{name}(): {arg} must have the dtype of {names[0]} "
                               f"({first.dtype}); got {ty.dtype}")
    if not given[-1].mutable:  # as the public functions' out= (a read-only buffer)
        return ValueError, f"{name}(): out must be writeable; got a read-only array"
    return None


def _entry(name, op, names):
    """The body of one public row function, ``run(a, b, out)`` (b is a for the forward
    ones): the row kernel where the types allow it, else a function that raises the
    error ``_complaint`` gives (numba would otherwise fail deep in the kernel's typing, or
    write a read-only out)."""
    pair = len(names) == 3
    short = (f"{name}(): {names[1]} and out must have the length of {names[0]}" if pair else
             f"{name}(): out must have the length of {names[0]}")

    def run(a, b, out):
        pass

    # inlined, as the kernel was into the function before: a call per row costs short rows
    @overload(run, inline="always")
    def _run(a, b, out):
        bad = _complaint(name, names, (a, b, out) if pair else (a, out))
        if bad is not None:
            error, message = bad

            def fail(a, b, out):
                raise error(message)
            return fail

        # the kernel reads and writes a's length (a forward function's b is a); an out of
        # any layout may have stride 0 (``as_strided``), its elements one memory: refused
        # as the public functions do
        strided = out.layout != "C"
        shared = f"{name}(): out must not have elements that share memory; got stride 0"

        def impl(a, b, out):
            if b.shape[0] != a.shape[0] or out.shape[0] != a.shape[0]:
                raise ValueError(short)
            if strided and out.strides[0] == 0 and out.shape[0] > 1:
                raise ValueError(shared)
            row(op, a, b, None, out, _scratch(a.shape[0]), None, False)
        return impl

    return run


_softmax = _entry("softmax_row", SOFTMAX, ("x", "out"))
_log_softmax = _entry("log_softmax_row", LOG_SOFTMAX, ("x", "out"))
_softmax_backward = _entry("softmax_backward_row", SOFTMAX_BACKWARD, ("y", "dy", "out"))
_log_softmax_backward = _entry("log_softmax_backward_row", LOG_SOFTMAX_BACKWARD,
                               ("z", "dz", "out"))


@njit(**OPTIONS)
def softmax_row(x, out):
    """out[:] = softmax(x) for a 1-D row."""
    _softmax(x, x, out)


@njit(**OPTIONS)
def log_softmax_row(x, out):
    """out[:] = log_softmax(x) for a 1-D row."""
    _log_softmax(x, x, out)


@njit(**OPTIONS)
def softmax_backward_row(y, dy, out):
    """out[:] = y * (dy - sum(y * dy)) for 1-D rows y = softmax(x) and dy = dL/dy."""
    _softmax_backward(y, dy, out)


@njit(**OPTIONS)
def log_softmax_backward_row(z, dz, out):
    """out[:] = dz - exp(z) * sum(dz) for 1-D rows z = log_softmax(x) and dz = dL/dz."""
    _log_softmax_backward(z, dz, out)
