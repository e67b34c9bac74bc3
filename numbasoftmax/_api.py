"""Public API: the functions, each a line over one dispatch.

``_call`` tries the CPU fast path, then sends GPU and Dask arguments to their backends
(imported on first use, so ``import numbasoftmax`` imports neither), and runs everything
else on the CPU after the input rules of ``_inputs``.
"""

from __future__ import annotations

import numpy as np

from . import _cpu_path, _inputs
from ._layout import normalize_axes
from ._ops import (
    LOG_SOFTMAX,
    LOG_SOFTMAX_BACKWARD,
    LOGSUMEXP,
    LOGSUMEXP_BACKWARD,
    SOFTMAX,
    SOFTMAX_BACKWARD,
)


def softmax(x, axis=-1, *, where=None, dtype=None, out=None):
    """Softmax of ``x`` along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : array_like
        numpy array or anything ``np.asarray`` accepts (CPU path), a GPU array or a dask
        array. float16, float32 and float64 keep their dtype; bool and integers are
        computed in float64. ndarray subclasses (``np.memmap``, ``np.matrix``) are computed
        on their data and give a plain ndarray; a masked array's mask acts as
        ``where=~mask`` and the result is a masked array with the same mask.
    axis : int, tuple of ints or None, default -1
        Axis or axes to normalize over jointly; None means all axes.
    where : array_like of bool, optional
        Elements to include: broadcasts to ``x`` (a (N,) or (M, 1) mask is read as it is,
        not expanded). Excluded elements take no part in the max and the sum and give 0;
        a row without included elements gives 0 (as jax; torch and scipy would give NaN
        for the equivalent all -inf row).
    dtype : float16, float32 or float64, optional
        The result's dtype, computed as if ``x`` had been cast to it first (in one pass:
        the input is read and converted by the kernel).
    out : numpy.ndarray, optional
        Array of the result's shape and dtype, any strides (not 0 along an axis of more
        than one element: no two elements at one address), possibly ``x`` itself (an
        array of the input's kind: a GPU array for GPU input; not for dask input).

    Returns
    -------
    numpy.ndarray
        ``out`` if given. A row holding NaN or +inf, and an all -inf row, give NaN (among
        the included elements); -inf among finite values gives 0.
    """
    return _call(SOFTMAX, (x,), axis, out, where, dtype)


def log_softmax(x, axis=-1, *, where=None, dtype=None, out=None):
    """Log of the softmax of ``x`` along ``axis``: ``x - max - log(sum(exp(x - max)))``.

    Same parameters and rules as :func:`softmax`; an all -inf row gives NaN and -inf among
    finite values gives -inf. Excluded elements (``where`` False) and rows without
    included elements give -inf.
    """
    return _call(LOG_SOFTMAX, (x,), axis, out, where, dtype)


def softmax_backward(y, dy, axis=-1, *, where=None, dtype=None, out=None):
    """Gradient of a softmax: ``y * (dy - sum(y * dy))`` with ``y = softmax(x, axis)`` and
    ``dy`` the gradient of the loss with respect to ``y``. Returns dL/dx.

    ``y`` and ``dy`` must have the same shape and dtype. ``where`` (the forward call's
    mask): excluded elements take no part in the sum and get 0 gradient. ``dtype`` as
    for :func:`softmax`.
    """
    return _call(SOFTMAX_BACKWARD, (y, dy), axis, out, where, dtype)


def log_softmax_backward(z, dz, axis=-1, *, where=None, dtype=None, out=None):
    """Gradient of a log-softmax: ``dz - exp(z) * sum(dz)`` with ``z = log_softmax(x, axis)``
    and ``dz`` the gradient of the loss with respect to ``z``. Returns dL/dx.

    ``z`` and ``dz`` must have the same shape and dtype. ``where`` and ``dtype`` as for
    :func:`softmax_backward`.
    """
    return _call(LOG_SOFTMAX_BACKWARD, (z, dz), axis, out, where, dtype)


def logsumexp(x, axis=-1, *, b=None, keepdims=False, return_sign=False, where=None,
              dtype=None, out=None):
    """``log(sum(b * exp(x)))`` along ``axis``, computed as ``m + log(sum(b * exp(x - m)))``
    with m the max: scipy.special.logsumexp's semantics, over the last axis by default.

    Parameters
    ----------
    x : array_like
        As for :func:`softmax` (a masked array's mask acts as ``where=~mask``; the result
        is then a masked array, masked where a row has no included element).
    axis : int, tuple of ints or None, default -1
        Axis or axes to reduce; None means all axes. The default is the package's (the
        axis :func:`log_softmax` normalizes: ``log_softmax(x)`` is ``x - logsumexp(x,
        keepdims=True)`` up to rounding), not scipy's None (all axes); torch requires ``dim``.
    b : array_like, optional
        Weights, broadcasting to ``x``; may be negative. Elements whose weight is 0 are
        excluded, whatever ``x`` holds there (scipy 1.17 excludes a zero-weight +inf or
        NaN only in some rows and gives NaN in others).
    keepdims : bool, default False
        Keep the reduced axes as size-1 dimensions.
    return_sign : bool, default False
        Also return the sign of the sum (+1, -1, 0, or NaN), and ``log(|sum|)`` as the
        value. Without it a negative sum gives NaN.
    where : array_like of bool, optional
        Elements to include (broadcasting to ``x``); a row without included elements gives
        -inf (sign 0).
    dtype : float16, float32 or float64, optional
        The result's dtype, computed as if ``x`` (and ``b``) had been cast to it. By
        default the common dtype of ``x`` and ``b`` under the package's dtype rule.
    out : numpy.ndarray, or a pair of them with ``return_sign``, optional
        The result (and sign) array(s), of the result's shape and dtype; with
        ``return_sign`` a single array takes the value (the sign is then allocated); the
        two of a pair must not overlap in memory.

    Returns
    -------
    numpy.ndarray, or (value, sign)
        Always arrays (0-d for a full reduction). A row with +inf (positive weight) gives
        +inf, with NaN gives NaN; infinite terms of both signs give NaN; an empty row or a
        row of -inf gives -inf.
    """
    return _logsumexp(x, axis, b, keepdims, return_sign, where, dtype, out)


def logsumexp_backward(x, lse, dlse, axis=-1, *, b=None, sign=None, where=None, dtype=None,
                       out=None):
    """Gradient of :func:`logsumexp`: ``dlse * sign * b * exp(x - lse)`` per element, from
    ``x``, the forward result ``lse`` and its upstream gradient ``dlse`` (both in the
    reduced shape, with or without the kept axes). Returns dL/dx, shaped like ``x``.

    ``b``, ``where`` and ``axis`` as given to the forward call (excluded elements get 0
    gradient); ``sign``: the forward call's sign with ``return_sign`` (the gradient of
    ``log|sum|``), else 1. ``dtype`` and ``out`` as for :func:`softmax`. For a masked
    array ``x``, ``lse`` (and ``dlse``, ``sign``) may be the masked arrays the forward call
    returned; a masked ``dlse`` or ``sign`` counts as 0.
    """
    return _logsumexp_backward(x, lse, dlse, axis, b, sign, where, dtype, out)


def _call(op, arrays, axis, out, where=None, dtype=None):
    if dtype is None:
        result = _cpu_path.fast(op, arrays, axis, out, where)
        if result is not None:
            return result
    for name, a in zip(op.args, arrays, strict=True):
        _inputs.required(a, name, op.name)
    kind = _inputs.backend([*arrays, where])  # a dask mask makes the result lazy too
    if where is not None:
        _inputs.requested_dtype(dtype, op.name)  # checked first, as on the CPU
    if where is not None or kind == "dask":  # (the GPU path checks its own arguments)
        _inputs.same_side(op.name, [*zip(op.args, arrays, strict=True), ("where", where)])
    if kind == "dask":
        from . import _dask

        if where is not None or dtype is not None:
            from . import _dask_features

            return _dask_features.dispatch(op, arrays, axis, out, _PUBLIC[op.name],
                                           where=where, dtype=dtype)
        return _dask.dispatch(op, arrays, axis, out, _PUBLIC[op.name])
    if kind == "cuda":
        from ._cuda import api as _cuda_api

        return _cuda_api.dispatch(op, arrays, axis, out,
                                  _inputs.requested_dtype(dtype, op.name), where)
    arrays, mask, masked = _inputs.host_unmask(arrays)
    dt = _inputs.requested_dtype(dtype, op.name)
    arrays = _inputs.host_arrays(op, arrays, dt)
    x = arrays[0]
    axes = normalize_axes(axis, x.ndim, op.name)
    where = _host_where(where, mask, x.shape, op)
    rdtype = dt or x.dtype
    if out is None:
        result = _cpu_path.run(op, arrays, axes, dtype=rdtype, where=where)
    else:
        result = out
        written = _inputs.host_out(out, x.shape, rdtype, op.name)
        _cpu_path.run(op, arrays, axes, written, dtype=rdtype, where=where)
        _inputs.store_out(out, written)
    return np.ma.MaskedArray(result, mask=mask if mask is not None else np.ma.nomask) \
        if masked else result


def _host_where(where, mask, shape, op):
    """The checked mask of a host call: ``where`` and not ``mask`` (a masked array's)."""
    if where is not None:
        where = _inputs.host_where(where, shape, op.args[0], op.name)
    if mask is not None:
        where = ~mask if where is None else where & ~mask
    return where


def _weights_and_dtype(x, b, dtype, func):
    """(x, b or None, result dtype) for logsumexp and its gradient on the host."""
    dt = _inputs.requested_dtype(dtype, func)
    x = _inputs.host_array(x, "x", func, dt)
    given = b
    if b is not None:
        b, bmask, _ = _inputs.host_unmask((b,))
        b = _inputs.host_array(b[0], "b", func, dt)
        _inputs.check_where(func, None, b.shape, "x", x.shape, name="b")
        if bmask is not None:  # masked weights: excluded where masked
            b = np.where(bmask, 0, b)
    rdtype = dt or (x.dtype if b is None else
                    _inputs.promoted((x.dtype, _inputs.weak(given, b.dtype))))
    return x, b, rdtype


def _lse_host(op, x, b, axis, where, dtype):
    """The host arguments of logsumexp or its gradient, checked: (x, b, result dtype, axes,
    the mask of included elements or None, a masked array's mask, whether x was one)."""
    (x,), mask, masked = _inputs.host_unmask((x,))
    x, b, rdtype = _weights_and_dtype(x, b, dtype, op.name)
    axes = normalize_axes(axis, x.ndim, op.name)
    return x, b, rdtype, axes, _host_where(where, mask, x.shape, op), mask, masked


def _logsumexp(x, axis, b, keepdims, return_sign, where, dtype, out):
    if b is None and where is None and dtype is None and out is None and not return_sign:
        result = _cpu_path.fast_logsumexp(x, axis, keepdims)
        if result is not None:
            return result
    func = "logsumexp"
    _inputs.required(x, "x", func)
    kind = _inputs.backend([a for a in (x, b, where) if a is not None])
    if kind != "numpy":
        return _other_backend(LOGSUMEXP, (x,), axis, out, b=b, keepdims=keepdims,
                              return_sign=return_sign, where=where, dtype=dtype)
    x, b, rdtype, axes, where, mask, masked = _lse_host(LOGSUMEXP, x, b, axis, where, dtype)
    shape = _inputs.reduced_shape(x.shape, axes, keepdims)
    outs = _lse_outs(out, return_sign, shape, rdtype, func)
    kernel = "logsumexp_sign" if return_sign else "logsumexp"
    values, signs = _cpu_path.reduce(kernel, (x,), axes, dtype=rdtype, where=where, b=b)
    # the value and the sign come interleaved (one (m, 2) buffer): each copied into an
    # array of its own, laid out as the value without return_sign is (order "K"; m values,
    # a small copy beside the m x n read)
    results = [values, signs] if return_sign else [values]
    if return_sign:
        results = [r if o is not None else np.array(r, order="K")
                   for r, (o, _) in zip(results, outs, strict=True)]
    if not keepdims:
        results = [r.reshape(shape) for r in results]
    for k, (o, written) in enumerate(outs):
        if o is not None:
            np.copyto(written, results[k])
            _inputs.store_out(o, written)
            results[k] = o  # the caller's object (a subclass too), as out= returns
    if masked:
        rmask = (np.ones(x.shape, bool) if where is None else
                 ~np.broadcast_to(where, x.shape)).all(axis=axes, keepdims=keepdims)
        results = [np.ma.MaskedArray(r, mask=rmask) for r in results]
    return tuple(results) if return_sign else results[0]


def _lse_outs(out, return_sign, shape, dtype, func):
    """``out=`` of logsumexp checked: [value out or None] (+ [sign out or None]), each
    as (the caller's array, the array ``_inputs.host_out`` gives to write)."""
    if not return_sign:
        given = [out]
    elif isinstance(out, tuple):
        given = list(out)
    else:  # None, or the value's out alone
        given = [out, None]
    if len(given) != 1 + return_sign:
        raise ValueError(f"{func}(): out must be an array or, with return_sign, a pair of "
                         f"arrays (value, sign); got a tuple of {len(out)}")
    outs = [(o, None if o is None else _inputs.host_out(o, shape, dtype, func))
            for o in given]
    if return_sign:
        _inputs.check_outs_apart(func, _inputs.host_outs_overlap(*given))
    return outs


def _logsumexp_backward(x, lse, dlse, axis, b, sign, where, dtype, out):
    if b is None and sign is None and where is None and dtype is None and out is None:
        result = _cpu_path.fast_logsumexp_backward(x, lse, dlse, axis)
        if result is not None:
            return result
    func = "logsumexp_backward"
    for name, v in (("x", x), ("lse", lse), ("dlse", dlse)):
        _inputs.required(v, name, func)
    given = [a for a in (x, lse, dlse, b, sign, where) if a is not None]
    kind = _inputs.backend(given)
    if kind != "numpy":
        return _other_backend(LOGSUMEXP_BACKWARD, (x, lse, dlse), axis, out, b=b,
                              sign=sign, where=where, dtype=dtype)
    x, b, rdtype, axes, where, mask, masked = _lse_host(LOGSUMEXP_BACKWARD, x, b, axis, where,
                                                         dtype)
    keep = _inputs.reduced_shape(x.shape, axes, True)
    rows = []
    for name, v in (("lse", lse), ("dlse", dlse), ("sign", sign)):
        if v is None:
            continue
        empty = None
        if isinstance(v, np.ma.MaskedArray):  # as logsumexp returns for a masked x: its
            # masked rows have no included element; a masked dlse or sign adds nothing
            empty = np.ma.getmaskarray(v) if name == "lse" else None
            v = np.ma.getdata(v) if name == "lse" else np.ma.filled(v, 0)
        v = _inputs.host_array(v, name, func)
        _inputs.check_per_row(func, name, v.shape, x.shape, axes)
        rows.append(v.reshape(keep))
        if empty is not None and empty.any():  # those rows excluded, whatever x's mask
            included = ~np.broadcast_to(empty.reshape(keep), x.shape)
            where = included if where is None else where & included
    g = rows[1] if sign is None else rows[1] * rows[2]
    o = None if out is None else _inputs.host_out(out, x.shape, rdtype, func)
    result = _cpu_path.run(LOGSUMEXP_BACKWARD, (x,), axes, o, dtype=rdtype, where=where,
                           values=(rows[0], g), kernel="logsumexp_backward", b=b)
    if o is not None:
        _inputs.store_out(out, o)
    result = out if out is not None else result
    return np.ma.MaskedArray(result, mask=mask if mask is not None else np.ma.nomask) \
        if masked else result


def _other_backend(op, arrays, axis, out, **options):
    """logsumexp and its gradient on GPU arrays and on dask arrays (of numpy or GPU
    blocks)."""
    named = [*zip(op.args, arrays, strict=True),
             *((k, options.get(k)) for k in ("b", "sign", "where"))]
    _inputs.requested_dtype(options["dtype"], op.name)  # checked first, as on the CPU
    _inputs.same_side(op.name, named)
    if _inputs.backend([arrays[0]]) == "cuda":
        from ._cuda import api as _cuda_api

        dtype = _inputs.requested_dtype(options.pop("dtype"), op.name)
        if op is LOGSUMEXP:
            return _cuda_api.logsumexp(arrays[0], options["b"], axis, options["keepdims"],
                                       options["return_sign"], options["where"], dtype, out)
        return _cuda_api.logsumexp_backward(*arrays, axis, options["b"], options["sign"],
                                            options["where"], dtype, out)
    from . import _dask_features

    return _dask_features.dispatch(op, arrays, axis, out, _PUBLIC[op.name], **options)


# the function each dask task runs on its block (pickled by reference)
_PUBLIC = {f.__name__: f for f in (softmax, log_softmax, softmax_backward, log_softmax_backward,
                                   logsumexp, logsumexp_backward)}
