"""Slow, obviously-correct float64 implementations: the test oracle.

They follow the package's documented semantics (axis rules, non-finite rules, empty
arrays, ``where=`` masks, logsumexp's weights and signs) with plain numpy in float64, and
return float64 whatever the input dtype. ``dtype``: the inputs are first rounded to that
dtype (what "computed as if cast" promises), then computed in float64.
"""

from __future__ import annotations

import numpy as np

from ._layout import normalize_axes


def _prepare(x, axis, dtype=None):
    x = np.asarray(x)
    if dtype is not None:
        x = x.astype(dtype)
    x = np.asarray(x, dtype=np.float64)
    return x, normalize_axes(axis, x.ndim)


def _operand(a, dtype):
    a = np.asarray(a)
    return np.asarray(a if dtype is None else a.astype(dtype), dtype=np.float64)


def _mask(where, shape):
    """``where`` broadcast to ``shape`` (all True when None)."""
    if where is None:
        return np.ones(shape, bool)
    return np.broadcast_to(np.asarray(where, dtype=bool), shape)


def _log_sum_exp(x, axes, valid):
    """max and log(sum(exp(x - max))) over the valid elements of ``axes`` (kept as size-1
    dims). A row without valid elements has max -inf and log-sum -inf."""
    xv = np.where(valid, x, -np.inf)
    m = np.max(xv, axis=axes, keepdims=True) if x.size else np.zeros((1,) * x.ndim)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        shifted = x - m  # an all -inf row: -inf - -inf = NaN; +inf in a row: inf - inf = NaN
        lse = np.log(np.sum(np.where(valid, np.exp(shifted), 0.0), axis=axes, keepdims=True))
    return shifted, lse


def _no_valid(valid, axes):
    return ~np.any(valid, axis=axes, keepdims=True)


def log_softmax(x, axis=-1, *, where=None, dtype=None):
    x, axes = _prepare(x, axis, dtype)
    if x.size == 0:
        return x.copy()
    valid = _mask(where, x.shape)
    shifted, lse = _log_sum_exp(x, axes, valid)
    with np.errstate(invalid="ignore"):
        return np.where(valid & ~_no_valid(valid, axes), shifted - lse, -np.inf)


def softmax(x, axis=-1, *, where=None, dtype=None):
    x, axes = _prepare(x, axis, dtype)
    if x.size == 0:
        return x.copy()
    valid = _mask(where, x.shape)
    shifted, _ = _log_sum_exp(x, axes, valid)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        e = np.where(valid, np.exp(shifted), 0.0)
        return np.where(valid, e / np.sum(e, axis=axes, keepdims=True), 0.0)


def softmax_backward(y, dy, axis=-1, *, where=None, dtype=None):
    y, axes = _prepare(y, axis, dtype)
    dy = _operand(dy, dtype)
    valid = _mask(where, y.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.sum(np.where(valid, y * dy, 0.0), axis=axes, keepdims=True)
        return np.where(valid, y * (dy - s), 0.0)


def log_softmax_backward(z, dz, axis=-1, *, where=None, dtype=None):
    z, axes = _prepare(z, axis, dtype)
    dz = _operand(dz, dtype)
    valid = _mask(where, z.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.sum(np.where(valid, dz, 0.0), axis=axes, keepdims=True)
        return np.where(valid, dz - np.exp(z) * s, 0.0)


def _weighted_exp(d, w):
    """w * exp(d), the term of a weight w: in the log domain where exp(d) is not a normal
    number (a large weight lifts it), and +-inf for an infinite weight on a finite
    element however small its exp (inf * 0 is NaN only where d is -inf)."""
    tiny = d < np.log(np.finfo(np.float64).tiny)
    lifted = np.sign(w) * np.exp(np.log(np.abs(w)) + d)
    term = np.where(tiny, lifted, w * np.exp(d))
    return np.where(np.isinf(w) & np.isfinite(d), w, term)


def logsumexp(x, axis=-1, *, b=None, keepdims=False, return_sign=False, where=None,
              dtype=None):
    """log(sum(b * exp(x))) over the valid elements (``where`` and b != 0). A row with a
    valid +inf: +inf with the sign of the weights there (NaN where they differ or are
    NaN); finite elements do not change that."""
    x, axes = _prepare(x, axis, dtype)
    bb = np.ones(x.shape) if b is None else np.broadcast_to(_operand(b, dtype), x.shape)
    valid = _mask(where, x.shape) & (bb != 0)
    xv = np.where(valid, x, -np.inf)
    m = (np.max(xv, axis=axes, keepdims=True) if xv.size
         else np.full(tuple(1 if a in axes else s for a, s in enumerate(x.shape)), -np.inf))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        shift = np.where(np.isfinite(m), m, 0.0)
        s = np.sum(np.where(valid, _weighted_exp(x - shift, bb), 0.0), axis=axes,
                   keepdims=True)
        inf_terms = np.sum(np.where(valid & (x == np.inf), bb * np.inf, 0.0), axis=axes,
                           keepdims=True)
        s = np.where(m == np.inf, inf_terms, s)
        s = np.where(np.isnan(m), np.nan, s)
        value = m + np.log(np.abs(s))
        sign = np.sign(s)
    if not return_sign:
        value = np.where(s < 0, np.nan, value)
    if not keepdims:
        value = np.squeeze(value, axis=axes)
        sign = np.squeeze(sign, axis=axes)
    return (value, sign) if return_sign else value


def logsumexp_backward(x, lse, dlse, axis=-1, *, b=None, sign=None, where=None, dtype=None):
    x, axes = _prepare(x, axis, dtype)
    keep = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
    lse = np.asarray(lse, dtype=np.float64).reshape(keep)
    g = np.asarray(dlse, dtype=np.float64).reshape(keep)
    if sign is not None:
        g = g * np.asarray(sign, dtype=np.float64).reshape(keep)
    bb = np.ones(x.shape) if b is None else np.broadcast_to(_operand(b, dtype), x.shape)
    valid = _mask(where, x.shape) & (bb != 0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return np.where(valid, g * _weighted_exp(x - lse, bb), 0.0)
