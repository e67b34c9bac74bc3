"""Benchmark data and the one correctness check: every implementation is compared with the
float64 reference (:mod:`numbasoftmax.reference`) before its timings count.

Tolerances are per dtype; a gradient's absolute tolerance scales with its largest value
(its entries are differences of products and cancel).
"""

from __future__ import annotations

import numpy as np

from .. import reference
from .._ops import OPS

TOL = {"float16": (2e-3, 2e-2), "float32": (1e-6, 2e-4), "float64": (1e-12, 1e-9)}
CHECK_SHAPES = ((8, 128), (16, 4096), (2, 40000))
_EXACT_FORWARD_MAX = 1 << 20  # elements: above this the forward output comes from ours


def logits(shape, dtype, rng):
    """Random logits (standard normal x 3) in ``dtype``."""
    return (rng.standard_normal(shape, dtype=np.float32) * 3).astype(dtype)


def op_inputs(op, x, dy):
    """numpy inputs of ``op`` from logits ``x`` and an upstream gradient ``dy``: the
    forward output (exact from the reference for small inputs, ours for large ones, where
    the reference would take seconds), rounded to x's dtype. logsumexp's gradient takes
    x, its logsumexp and a gradient per row (dy's first column)."""
    spec = OPS[op]
    if not spec.backward:
        return (x,)
    if x.size <= _EXACT_FORWARD_MAX:
        y = getattr(reference, spec.forward)(x)
    else:
        import numbasoftmax

        y = getattr(numbasoftmax, spec.forward)(x)
    if spec.row_args:
        return (x, y.astype(x.dtype), np.ascontiguousarray(dy[..., 0]))
    return (y.astype(x.dtype), dy)


def out_shape(op, shape):
    """The result's shape for inputs of ``shape`` (the last axis reduced by logsumexp)."""
    return tuple(shape[:-1]) if OPS[op].reduces else tuple(shape)


def make_inputs(op, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = logits(shape, dtype, rng)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    return op_inputs(op, x, dy)


def check_result(op, got, inputs, dtype, axis=-1):
    """AssertionError unless ``got`` (numpy) matches the float64 reference of ``op`` on
    ``inputs`` (numpy) in shape, dtype and value, within the dtype's tolerance."""
    want = getattr(reference, op)(*inputs, axis=axis)
    got = np.asarray(got)
    if got.shape != want.shape or got.dtype != np.dtype(dtype):
        raise AssertionError(f"{op}: got {got.shape} {got.dtype}, expected {want.shape} "
                             f"{np.dtype(dtype)}")
    atol, rtol = TOL[np.dtype(dtype).name]
    if OPS[op].backward:
        atol = atol * 10 * (float(np.abs(want).max()) or 1.0) + atol
    if not np.allclose(got, want, atol=atol, rtol=rtol):
        with np.errstate(invalid="ignore"):
            err = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
        raise AssertionError(f"{op} {np.dtype(dtype)} {'x'.join(map(str, got.shape))}: max abs "
                             f"error {err:.3g} (atol {atol:.3g}, rtol {rtol:g})")


def mask(kind, shape, rng):
    """A feature cell's mask: "full": x's shape, random, 3 in 4 elements included and the
    first of each row always (a row without included elements is NaN for the peers);
    "row": (N,), the first 3/4 included (padding)."""
    m, n = shape
    if kind == "row":
        return np.arange(n) < max(1, 3 * n // 4)
    full = rng.random((m, n)) < 0.75
    full[:, 0] = True
    return full


def feature_inputs(op, feature, x, dy, seed=5):
    """numpy inputs of a feature cell (see ``config.FEATURES``) of ``op`` from logits ``x``
    and an upstream gradient ``dy`` of the feature's dtype: the operation's inputs (see
    ``op_inputs``), then the mask of a where= cell."""
    if feature.mask is None:
        return (x,)
    return (*op_inputs(op, x, dy), mask(feature.mask, x.shape, np.random.default_rng(seed)))


def check_feature_result(op, feature, got, inputs):
    """AssertionError unless ``got`` matches the float64 reference of ``op`` called with
    the feature's argument (``where=``: the last input; or ``dtype=``), in the result
    dtype's tolerance (a gradient's absolute one scaled as ``check_result`` does)."""
    if feature.mask:
        want = getattr(reference, op)(*inputs[:-1], axis=-1, where=inputs[-1])
    else:
        want = getattr(reference, op)(*inputs, axis=-1, dtype=feature.result_dtype)
    got = np.asarray(got)
    if got.shape != want.shape or got.dtype != np.dtype(feature.result_dtype):
        raise AssertionError(f"{op}: got {got.shape} {got.dtype}, expected {want.shape} "
                             f"{feature.result_dtype}")
    atol, rtol = TOL[feature.result_dtype]
    if OPS[op].backward:
        atol = atol * 10 * (float(np.abs(want).max()) or 1.0) + atol
    if not np.allclose(got, want, atol=atol, rtol=rtol):
        raise AssertionError(f"{op} {feature.title}: max abs error "
                             f"{float(np.nanmax(np.abs(got - want))):.3g}")


def check_impl(impl, op, dtype, variant, shapes=CHECK_SHAPES, seed=7, feature=None):
    """Run registry entry ``impl`` on small shapes and check each result; with variant
    'out' the output buffer is poisoned with NaN first. ``feature`` (a ``config.Feature``)
    checks a feature entry: its inputs, its argument, its result dtype (a "baseline"
    entry, the call without that argument, against the plain reference)."""
    for k, (m, n) in enumerate(shapes):
        if feature is None:
            args = make_inputs(op, (m, n), dtype, seed + k)
            rdtype = dtype
        else:
            rng = np.random.default_rng(seed + k)
            x = logits((m, n), dtype, rng)
            dy = rng.standard_normal((m, n), dtype=np.float32).astype(dtype)
            args = feature_inputs(op, feature, x, dy, seed + k)
            rdtype = feature.result_dtype
        native = impl.prepare(*args)
        if variant == "out":
            out = impl.prepare(np.full(out_shape(op, (m, n)), np.nan, dtype=rdtype))[0]
            got = impl.call_out(*native, axis=-1, out=out)
        else:
            got = impl.call(*native, -1)
        impl.sync()
        try:
            if feature is None:
                check_result(op, impl.to_numpy(got), args, dtype)
            elif impl.role == "baseline":  # the call without the feature's argument
                check_result(op, impl.to_numpy(got), args[:-1] if feature.mask else args,
                             rdtype)
            else:
                check_feature_result(op, feature, impl.to_numpy(got), args)
        except AssertionError as err:
            raise AssertionError(f"{impl.key}: {err}") from None
