"""Slow, obviously-correct float64 implementations: the test oracle.

They follow the package's documented semantics (axis rules, non-finite rules, empty
arrays) with plain numpy in float64, and return float64 whatever the input dtype.
"""

from __future__ import annotations

import numpy as np

from ._layout import normalize_axes


def _prepare(x, axis):
    x = np.asarray(x, dtype=np.float64)
    return x, normalize_axes(axis, x.ndim)


def _log_sum_exp(x, axes):
    """max and log(sum(exp(x - max))) over ``axes`` (kept as size-1 dims)."""
    m = np.max(x, axis=axes, keepdims=True) if x.size else np.zeros((1,) * x.ndim)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        shifted = x - m  # an all -inf row: -inf - -inf = NaN; +inf in a row: inf - inf = NaN
        lse = np.log(np.sum(np.exp(shifted), axis=axes, keepdims=True))
    return shifted, lse


def log_softmax(x, axis=-1):
    x, axes = _prepare(x, axis)
    if x.size == 0:
        return x.copy()
    shifted, lse = _log_sum_exp(x, axes)
    with np.errstate(invalid="ignore"):
        return shifted - lse


def softmax(x, axis=-1):
    x, axes = _prepare(x, axis)
    if x.size == 0:
        return x.copy()
    shifted, _ = _log_sum_exp(x, axes)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(shifted)
        return e / np.sum(e, axis=axes, keepdims=True)


def softmax_backward(y, dy, axis=-1):
    y, axes = _prepare(y, axis)
    dy = np.asarray(dy, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return y * (dy - np.sum(y * dy, axis=axes, keepdims=True))


def log_softmax_backward(z, dz, axis=-1):
    z, axes = _prepare(z, axis)
    dz = np.asarray(dz, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return dz - np.exp(z) * np.sum(dz, axis=axes, keepdims=True)
