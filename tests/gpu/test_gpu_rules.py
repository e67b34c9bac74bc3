"""Non-finite rules on every strategy: a row with NaN or +inf gives NaN, an all -inf row
gives NaN, -inf among finite values gives 0 (log_softmax: -inf), huge values stay
finite where the reference does; the gradients propagate NaN/inf as the float64 formulas
do."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_helpers import assert_close, cuda, to_host

import numbasoftmax as ns
from numbasoftmax import reference

pytestmark = pytest.mark.gpu

HUGE = {"float32": 3e38, "float64": 1e308, "float16": 6e4}


def _forward_rows(n, dtype, rng):
    name = np.dtype(dtype).name
    x = rng.standard_normal((6, n))
    x[0, n // 2] = np.nan
    x[1, 0] = np.inf
    x[2, :] = -np.inf
    x[3, ::3] = -np.inf
    x[4, 0] = HUGE[name]
    x[4, -1] = -HUGE[name]
    x[5, :] = HUGE[name]  # equal huge values: uniform probabilities
    return x.astype(dtype)


def _backward_rows(n, dtype, rng):
    a = rng.random((4, n))
    b = rng.standard_normal((4, n))
    a[0, 1] = np.nan
    b[1, 2] = np.inf
    a[2, :] = 0.0
    b[3, -1] = -np.inf
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("strategy,dtype", [
    (s, d) for s in ("rows", "smem", "long", "split") for d in ("float32", "float64", "float16")
])
def test_nonfinite(strategy, dtype):
    from numbasoftmax._cuda import launch

    rng = np.random.default_rng(3)
    W = 16 // np.dtype(dtype).itemsize
    n = {"rows": 4 * W, "smem": 6 * W, "long": 70 * W, "split": 70 * W}[strategy]
    x = _forward_rows(n, dtype, rng)
    with launch.config.override(force=strategy):
        for func in ("softmax", "log_softmax"):
            r = to_host(getattr(ns, func)(cuda().to_device(x)))
            assert_close(func, r.astype(np.float64), [x.astype(np.float64)], -1, dtype)
        # the rules themselves, spelled out
        y = to_host(ns.softmax(cuda().to_device(x))).astype(np.float64)
        assert np.all(np.isnan(y[0])) and np.all(np.isnan(y[1])) and np.all(np.isnan(y[2]))
        assert np.all(y[3, ::3] == 0) and np.all(np.isfinite(y[3]))
        assert np.allclose(y[5], 1.0 / n, rtol=1e-2)
        a, b = _backward_rows(n, dtype, rng)
        for func in ("softmax_backward", "log_softmax_backward"):
            if func == "log_softmax_backward":
                a = np.log(np.where(a > 0, a, 1e-3)).astype(dtype)
                a[0, 1] = np.nan
            r = to_host(getattr(ns, func)(cuda().to_device(a), cuda().to_device(b)))
            assert_close(func, r.astype(np.float64), [a.astype(np.float64),
                                                      b.astype(np.float64)], -1, dtype)


def test_reference_agrees_on_rules():
    """The oracle used above follows the documented rules."""
    x = np.array([[0.0, np.nan], [np.inf, 0.0], [-np.inf, -np.inf], [0.0, -np.inf]])
    y = reference.softmax(x)
    assert np.isnan(y[:3]).all() and y[3].tolist() == [1.0, 0.0]
    assert reference.log_softmax(x)[3].tolist() == [0.0, -np.inf]
