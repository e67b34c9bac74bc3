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
public functions do for shapes that differ. They run the package's own row kernel, whose
summation order is written in the code, so a row gives bitwise the same result as
``numbasoftmax.softmax`` on it, whether your function was compiled just now or loaded from
numba's cache, inlined or not, serial or parallel.
"""

from __future__ import annotations

import numpy as np

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


@njit(**OPTIONS)
def _scratch(n):
    return np.empty((2, max(1, (n + CHUNK - 1) // CHUNK)))


@njit(**OPTIONS)
def softmax_row(x, out):
    """out[:] = softmax(x) for a 1-D row."""
    if out.shape[0] != x.shape[0]:  # the kernel reads and writes x's length
        raise ValueError("softmax_row(): out must have the length of x")
    row(SOFTMAX, x, x, None, out, _scratch(x.shape[0]), None, False)


@njit(**OPTIONS)
def log_softmax_row(x, out):
    """out[:] = log_softmax(x) for a 1-D row."""
    if out.shape[0] != x.shape[0]:
        raise ValueError("log_softmax_row(): out must have the length of x")
    row(LOG_SOFTMAX, x, x, None, out, _scratch(x.shape[0]), None, False)


@njit(**OPTIONS)
def softmax_backward_row(y, dy, out):
    """out[:] = y * (dy - sum(y * dy)) for 1-D rows y = softmax(x) and dy = dL/dy."""
    if dy.shape[0] != y.shape[0] or out.shape[0] != y.shape[0]:
        raise ValueError("softmax_backward_row(): dy and out must have the length of y")
    row(SOFTMAX_BACKWARD, y, dy, None, out, _scratch(y.shape[0]), None, False)


@njit(**OPTIONS)
def log_softmax_backward_row(z, dz, out):
    """out[:] = dz - exp(z) * sum(dz) for 1-D rows z = log_softmax(x) and dz = dL/dz."""
    if dz.shape[0] != z.shape[0] or out.shape[0] != z.shape[0]:
        raise ValueError("log_softmax_backward_row(): dz and out must have the length of z")
    row(LOG_SOFTMAX_BACKWARD, z, dz, None, out, _scratch(z.shape[0]), None, False)
