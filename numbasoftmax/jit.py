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

They are the same code the package's batch drivers run, so results are bitwise identical
to ``numbasoftmax.softmax(x)`` for the same row.
"""

from __future__ import annotations

from numba import njit

from . import _cpu_kernels as _k
from ._config import CACHE
from ._math import FASTMATH

__all__ = ["softmax_row", "log_softmax_row", "softmax_backward_row", "log_softmax_backward_row"]

_opts = {"fastmath": FASTMATH, "cache": CACHE, "nogil": True, "error_model": "numpy"}


@njit(**_opts)
def softmax_row(x, out):
    """out[:] = softmax(x) for a 1-D row."""
    _k.softmax_row(x, out)


@njit(**_opts)
def log_softmax_row(x, out):
    """out[:] = log_softmax(x) for a 1-D row."""
    _k.log_softmax_row(x, out)


@njit(**_opts)
def softmax_backward_row(y, dy, out):
    """out[:] = y * (dy - sum(y * dy)) for 1-D rows y = softmax(x) and dy = dL/dy."""
    _k.softmax_backward_row(y, dy, out)


@njit(**_opts)
def log_softmax_backward_row(z, dz, out):
    """out[:] = dz - exp(z) * sum(dz) for 1-D rows z = log_softmax(x) and dz = dL/dz."""
    _k.log_softmax_backward_row(z, dz, out)
