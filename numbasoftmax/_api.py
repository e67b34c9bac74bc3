"""Public API: validation, axes -> rows, and dispatch to the CPU, GPU or Dask path."""

from __future__ import annotations

import math

import numpy as np

from . import _cpu, _pool
from ._layout import Rows, as_2d, contiguous_rows, normalize_axes, permutation, rows_in_place

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_FAST = (np.dtype(np.float32), np.dtype(np.float64))


def softmax(x, axis=-1, *, out=None):
    """Softmax of ``x`` along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : array_like
        numpy array or anything ``np.asarray`` accepts (CPU path). float16, float32 and
        float64 keep their dtype; bool and integers are computed in float64.
    axis : int, tuple of ints or None, default -1
        Axis or axes to normalize over jointly; None means all axes.
    out : numpy.ndarray, optional
        Array of the result's shape and dtype, any strides, possibly ``x`` itself.

    Returns
    -------
    numpy.ndarray
        ``out`` if given. A row holding NaN or +inf, and an all -inf row, give NaN;
        -inf among finite values gives 0.
    """
    fast = _fast_path(x, axis, out)
    if fast is not None:
        _cpu.run("softmax", fast[0])
        return fast[1]
    return _forward("softmax", x, axis, out)


def log_softmax(x, axis=-1, *, out=None):
    """Log of the softmax of ``x`` along ``axis``: ``x - max - log(sum(exp(x - max)))``.

    Same parameters and rules as :func:`softmax`; an all -inf row gives NaN and -inf among
    finite values gives -inf.
    """
    fast = _fast_path(x, axis, out)
    if fast is not None:
        _cpu.run("log_softmax", fast[0])
        return fast[1]
    return _forward("log_softmax", x, axis, out)


def softmax_backward(y, dy, axis=-1, *, out=None):
    """Gradient of a softmax: ``y * (dy - sum(y * dy))`` with ``y = softmax(x, axis)`` and
    ``dy`` the gradient of the loss with respect to ``y``. Returns dL/dx.

    ``y`` and ``dy`` must have the same shape and dtype.
    """
    fast = _fast_path_pair(y, dy, axis, out)
    if fast is not None:
        _cpu.run("softmax_backward", fast[0])
        return fast[1]
    return _backward("softmax_backward", ("y", "dy"), y, dy, axis, out)


def log_softmax_backward(z, dz, axis=-1, *, out=None):
    """Gradient of a log-softmax: ``dz - exp(z) * sum(dz)`` with ``z = log_softmax(x, axis)``
    and ``dz`` the gradient of the loss with respect to ``z``. Returns dL/dx.

    ``z`` and ``dz`` must have the same shape and dtype.
    """
    fast = _fast_path_pair(z, dz, axis, out)
    if fast is not None:
        _cpu.run("log_softmax_backward", fast[0])
        return fast[1]
    return _backward("log_softmax_backward", ("z", "dz"), z, dz, axis, out)


# ---------------------------------------------------------------------------------------

def _fast_path(x, axis, out):
    """(kernel arguments, result) for the common case: C-contiguous float32/float64 numpy
    input, last axis, fresh or C-contiguous non-overlapping out. It skips the general
    machinery, so an 8x128 call costs a few microseconds. None when the general path is needed.
    """
    if not (type(x) is np.ndarray and type(axis) is int and axis == -1 and x.dtype in _FAST
            and x.ndim and x.size and x.flags.c_contiguous):
        return None
    if out is None:
        out = _pool.empty(x.shape, x.dtype)
    elif not (type(out) is np.ndarray and out.shape == x.shape and out.dtype == x.dtype
              and out.flags.c_contiguous and out.flags.writeable
              and (out is x or not np.may_share_memory(x, out))):
        return None
    n = x.shape[-1]
    return (x.reshape(-1), n, out.reshape(-1), n, x.size // n, n), out


def _fast_path_pair(a, b, axis, out):
    """The fast path for the backward functions: ``a`` and ``b`` alike in every respect."""
    fast = _fast_path(a, axis, out)
    if fast is None or not (type(b) is np.ndarray and b.shape == a.shape and b.dtype == a.dtype
                            and b.flags.c_contiguous):
        return None
    (af, n, of, _, m, _), res = fast
    if out is not None and out is not b and np.may_share_memory(b, out):
        return None
    return (af, n, b.reshape(-1), n, of, n, m, n), res


def _kind(obj):
    """'numpy' (and array-likes), 'cuda' or 'dask'; decided without importing cupy/dask."""
    if isinstance(obj, np.ndarray):
        return "numpy"
    t = type(obj)
    module = t.__module__.partition(".")[0]
    if module == "cupy" or getattr(t, "__cuda_ndarray__", False):
        return "cuda"  # cupy; numba device arrays (the simulator's have no CAI)
    if module == "torch":  # before the CAI probe: torch raises RuntimeError there when a
        return "cuda" if getattr(obj, "is_cuda", False) else "numpy"  # tensor requires grad
    if module == "dask" and hasattr(obj, "dask") and hasattr(obj, "chunks"):
        return "dask"
    if hasattr(obj, "__cuda_array_interface__"):
        return "cuda"
    return "numpy"


def _as_input(obj, name, func):
    if not isinstance(obj, np.ndarray):
        try:
            obj = np.asarray(obj)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{func}(): {name} must be array-like; got {type(obj).__name__} "
                            f"that numpy cannot convert ({err})") from None
    dtype = obj.dtype
    if dtype in _FLOATS:
        return obj
    if dtype.kind == "f" and dtype.newbyteorder("=") in _FLOATS:  # byte-swapped float
        return obj.astype(dtype.newbyteorder("="))
    if dtype.kind in "biu":
        return obj.astype(np.float64)
    raise TypeError(f"{func}(): {name} must have dtype float16, float32, float64, an integer "
                    f"or bool dtype; got {dtype}")


def _check_out(out, shape, dtype, func):
    if not isinstance(out, np.ndarray):
        where = " (a GPU array; the input is on the CPU)" if _kind(out) == "cuda" else ""
        raise TypeError(f"{func}(): out must be a numpy.ndarray; got {type(out).__name__}{where}")
    if out.dtype != dtype:
        raise TypeError(f"{func}(): out must have dtype {dtype} (the result's); got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"{func}(): out must have shape {shape} (the result's); "
                         f"got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{func}(): out must be writeable; got a read-only array")
    return out


def _same_view(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape)


def _forward(func, x, axis, out):
    kind = _kind(x)
    if kind != "numpy":
        return _other_backend(kind, func, (x,), axis, out)
    x = _as_input(x, "x", func)
    axes = normalize_axes(axis, x.ndim)
    if out is not None:
        _check_out(out, x.shape, x.dtype, func)
    return _run_cpu(func, (x,), axes, out)


def _backward(func, names, a, b, axis, out):
    kind = _kind(a)
    if kind != "numpy" or _kind(b) != "numpy":
        return _other_backend(kind if kind != "numpy" else _kind(b), func, (a, b), axis, out)
    a = _as_input(a, names[0], func)
    b = _as_input(b, names[1], func)
    if a.shape != b.shape:
        raise ValueError(f"{func}(): {names[0]} and {names[1]} must have the same shape; "
                         f"got {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{func}(): {names[0]} and {names[1]} must have the same dtype; "
                        f"got {a.dtype} and {b.dtype}")
    axes = normalize_axes(axis, a.ndim)
    if out is not None:
        _check_out(out, a.shape, a.dtype, func)
    return _run_cpu(func, (a, b), axes, out)


def _other_backend(kind, func, arrays, axis, out):
    if kind == "dask":
        from . import dask as _dask

        return _dask.dispatch(func, arrays, axis, out)
    from ._cuda import api as _cuda_api

    return _cuda_api.dispatch(func, arrays, axis, out)


def _run_cpu(func, inputs, axes, out):
    x = inputs[0]
    fresh = out is None
    if fresh:
        out = _pool.empty(x.shape, x.dtype, order_like=x)
    if x.size == 0:
        return out
    shape = x.shape
    n = math.prod(shape[a] for a in axes)
    m = x.size // n
    storage = np.uint16 if x.dtype == np.float16 else x.dtype
    perm = permutation(shape, x.strides, axes)
    rows = []
    for a in inputs:
        if (not fresh and a is not out and np.may_share_memory(a, out)
                and not _same_view(a, out)):
            a = a.copy()  # partial overlap with out: read from a private copy
        t = a.view(storage).transpose(perm)
        rows.append(rows_in_place(t, m, n)
                    or contiguous_rows(t, m, n, _cpu.copy2d, _pool.empty))
    out_t = out.view(storage).transpose(perm)
    dest = rows_in_place(out_t, m, n)
    staged = dest is None
    if staged:
        dest = Rows(_pool.empty((m * n,), storage), n)
    args = []
    for r in rows:
        args += [r.flat, r.stride]
    _cpu.run(func, (*args, dest.flat, dest.stride, m, n))
    if staged:
        out_2d = as_2d(out_t, m, n)
        if out_2d is None:
            out_t[...] = dest.flat.reshape(out_t.shape)
        else:
            _cpu.copy2d(dest.flat.reshape(m, n), out_2d)
    return out
