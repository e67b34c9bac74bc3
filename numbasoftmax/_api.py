"""Public API: the four functions, each a line over one dispatch.

``_call`` tries the CPU fast path, then sends GPU and Dask arguments to their backends
(imported on first use, so ``import numbasoftmax`` imports neither), and runs everything
else on the CPU after the input rules of ``_inputs``.
"""

from __future__ import annotations

from . import _cpu_path, _inputs
from ._layout import normalize_axes
from ._ops import LOG_SOFTMAX, LOG_SOFTMAX_BACKWARD, SOFTMAX, SOFTMAX_BACKWARD


def softmax(x, axis=-1, *, out=None):
    """Softmax of ``x`` along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : array_like
        numpy array or anything ``np.asarray`` accepts (CPU path), a GPU array or a dask
        array. float16, float32 and float64 keep their dtype; bool and integers are
        computed in float64. ndarray subclasses (``np.memmap``, ``np.matrix``) are computed
        on their data and give a plain ndarray; masked arrays raise TypeError.
    axis : int, tuple of ints or None, default -1
        Axis or axes to normalize over jointly; None means all axes.
    out : numpy.ndarray, optional
        Array of the result's shape and dtype, any strides, possibly ``x`` itself (an
        array of the input's kind: a GPU array for GPU input; not for dask input).

    Returns
    -------
    numpy.ndarray
        ``out`` if given. A row holding NaN or +inf, and an all -inf row, give NaN;
        -inf among finite values gives 0.
    """
    return _call(SOFTMAX, (x,), axis, out)


def log_softmax(x, axis=-1, *, out=None):
    """Log of the softmax of ``x`` along ``axis``: ``x - max - log(sum(exp(x - max)))``.

    Same parameters and rules as :func:`softmax`; an all -inf row gives NaN and -inf among
    finite values gives -inf.
    """
    return _call(LOG_SOFTMAX, (x,), axis, out)


def softmax_backward(y, dy, axis=-1, *, out=None):
    """Gradient of a softmax: ``y * (dy - sum(y * dy))`` with ``y = softmax(x, axis)`` and
    ``dy`` the gradient of the loss with respect to ``y``. Returns dL/dx.

    ``y`` and ``dy`` must have the same shape and dtype.
    """
    return _call(SOFTMAX_BACKWARD, (y, dy), axis, out)


def log_softmax_backward(z, dz, axis=-1, *, out=None):
    """Gradient of a log-softmax: ``dz - exp(z) * sum(dz)`` with ``z = log_softmax(x, axis)``
    and ``dz`` the gradient of the loss with respect to ``z``. Returns dL/dx.

    ``z`` and ``dz`` must have the same shape and dtype.
    """
    return _call(LOG_SOFTMAX_BACKWARD, (z, dz), axis, out)


def _call(op, arrays, axis, out):
    result = _cpu_path.fast(op, arrays, axis, out)
    if result is not None:
        return result
    kind = _inputs.backend(arrays)
    if kind == "dask":
        from . import _dask

        return _dask.dispatch(op, arrays, axis, out, _PUBLIC[op.name])
    if kind == "cuda":
        from ._cuda import api as _cuda_api

        return _cuda_api.dispatch(op, arrays, axis, out)
    arrays = _inputs.host_arrays(op, arrays)
    x = arrays[0]
    axes = normalize_axes(axis, x.ndim)
    if out is None:
        return _cpu_path.run(op, arrays, axes)
    _cpu_path.run(op, arrays, axes, _inputs.host_out(out, x.shape, x.dtype, op.name))
    return out


# the function each dask task runs on its block (pickled by reference)
_PUBLIC = {f.__name__: f for f in (softmax, log_softmax, softmax_backward, log_softmax_backward)}
