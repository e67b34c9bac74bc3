"""numbasoftmax: softmax, log-softmax, logsumexp and their gradients for numpy and CUDA
arrays, in Numba.

Importing the package compiles nothing and touches no GPU: kernels compile (or load from
numba's on-disk cache) at their first call.
"""

from ._api import (
    log_softmax,
    log_softmax_backward,
    logsumexp,
    logsumexp_backward,
    softmax,
    softmax_backward,
)
from ._pool import result_pool, set_result_pool_limit

__version__ = "0.1.0"

__all__ = ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward", "logsumexp",
           "logsumexp_backward", "set_result_pool_limit", "result_pool", "__version__"]
