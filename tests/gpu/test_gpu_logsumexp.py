"""logsumexp and its gradient on GPU arrays: every strategy, weights, signs, masks,
layouts, dtypes and the non-finite rules, against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_helpers import RTOL, cuda, guarded, to_host, view_of

import numbasoftmax as ns
from numbasoftmax import reference

pytestmark = pytest.mark.gpu


def _x(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _dev(a):
    return None if a is None else cuda().to_device(np.ascontiguousarray(a))


def _close(got, ref, dtype, scale=None):
    """NaN and infinities exactly where the reference has them, finite values within
    ``RTOL`` of the dtype times (|ref| + ``scale`` + 1)."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), (got, ref)
    inf = np.isinf(ref)
    assert np.array_equal(got[inf], ref[inf]), (got, ref)
    fin = np.isfinite(ref)
    tol = 8 * RTOL[np.dtype(dtype).name] * (np.abs(ref) + (0 if scale is None else scale) + 1)
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        err = np.abs(got - ref)
    assert np.all(err[fin] <= np.broadcast_to(tol, ref.shape)[fin]), (got, ref)


def _case(shape, dtype, seed=1):
    """x with the non-finite cases in rows of their own (when there are enough rows), signed
    weights with a zero, and a mask with a row of nothing included."""
    rng = np.random.default_rng(seed)
    x = _x(shape, dtype, seed)
    b = rng.standard_normal(shape).astype(dtype)
    w = rng.random(shape) < 0.7
    if shape[0] >= 6 and shape[1] >= 4:
        x[1] = -np.inf  # all -inf: -inf
        x[2, 3] = np.inf  # +inf with a positive weight: +inf
        b[2, 3] = 1.0
        x[3, 1] = np.nan  # NaN: NaN
        x[4, :2] = np.inf  # +inf with weights of both signs: NaN
        b[4, :2] = (1.0, -1.0)
        w[5] = False  # nothing included: -inf, sign 0
        b[0, 2] = 0  # a zero weight excludes its element, whatever x holds there
        x[0, 2] = np.inf
        b[-1] = -np.abs(b[-1])  # a negative sum: sign -1 (without return_sign: NaN)
        w[-1] = True
    return x, b, w


# (strategy, shape): rows in registers, a block per row, rows split into chunks
STRATEGIES = [("rows", (7, 40)), ("long", (6, 300)), ("split", (6, 900))]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(("strategy", "shape"), STRATEGIES)
def test_logsumexp_strategies(strategy, shape, dtype):
    from numbasoftmax._cuda import launch

    x, b, w = _case(shape, dtype)
    with launch.config.override(force=strategy):
        v, sign = ns.logsumexp(_dev(x), b=_dev(b), where=_dev(w), return_sign=True)
        plain = ns.logsumexp(_dev(x))
    ref, rsign = reference.logsumexp(x, b=b, where=w, return_sign=True)
    assert v.dtype == np.dtype(dtype) and sign.dtype == np.dtype(dtype)
    _close(to_host(v), ref, dtype, np.log(shape[1]))
    assert np.array_equal(to_host(sign), rsign, equal_nan=True)
    _close(to_host(plain), reference.logsumexp(x), dtype, np.log(shape[1]))


@pytest.mark.parametrize(("strategy", "shape"), STRATEGIES)
def test_logsumexp_infinite_weights_below_an_infinite_max(strategy, shape):
    """A row whose max is +inf sums its +inf terms only: its other elements add 0 whatever
    their weight (inf, NaN), also where the long and split kernels met them first at a
    lower max (a part sum of inf * 0 would be NaN). Below a finite max, or in a row of
    -inf, they are NaN."""
    from numbasoftmax._cuda import launch

    x = np.full(shape, 2.0, np.float32)
    b = np.ones(shape, np.float32)
    x[:, -1] = np.inf  # the row's max comes last, after parts summed at 2 and at -inf
    b[0, :-1] = np.inf
    b[1, :-1] = np.nan
    x[2, :-1], b[2, :-1] = -np.inf, np.inf
    x[3, -1] = 3.0  # a finite max: inf * exp(2 - 3) = inf; below it, inf * 0 = NaN
    b[3, :2] = np.inf
    x[3, 0] = -np.inf
    x[4], b[4, 0] = -np.inf, np.inf  # a row of -inf: inf * exp(-inf) = NaN, as on the CPU
    with launch.config.override(force=strategy):
        got = to_host(ns.logsumexp(_dev(x), b=_dev(b)))
    with np.errstate(all="ignore"):
        want = ns.logsumexp(x, b=b)  # the CPU path's rule
    assert np.isposinf(want[:3]).all() and np.isnan(want[3:5]).all()
    _close(got, want, "float32", np.log(shape[1]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("strategy", "shape"), STRATEGIES)
def test_logsumexp_large_weights_lift_terms_below_the_normal_range(strategy, shape, dtype):
    """As on the CPU: a large weight counts on a term whose exp is below the smallest normal
    number, met at the row's max or first at a lower one (the long and split kernels carry
    such a part sum to the row's max as a weighted term), in the sum and the gradient; an
    infinite weight on a finite element gives that infinity."""
    from numbasoftmax._cuda import launch

    far, big = (-750.0, 1e308) if dtype == "float64" else (-95.0, 3e38)
    x = np.full(shape, -1e4, dtype)
    b = np.ones(shape, dtype)
    x[:, -1], b[:, -1] = 0.0, 1e-30  # the max comes last: earlier parts sum at lower maxima
    x[:, 1], b[:, 1] = far, big
    b[2, 1] = np.inf
    with launch.config.override(force=strategy):
        v = to_host(ns.logsumexp(_dev(x), b=_dev(b)))
        g = to_host(ns.logsumexp_backward(_dev(x), _dev(v), _dev(np.ones(shape[0], dtype)),
                                          b=_dev(b)))
    want = reference.logsumexp(x, b=b)
    assert np.isposinf(want[2]) and np.isfinite(np.delete(want, 2)).all()
    _close(v, want, dtype)
    rows = [0, 1, 3]
    _close(g[rows], reference.logsumexp_backward(x[rows], want[rows], np.ones(3), b=b[rows]),
           dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(("strategy", "shape"), [STRATEGIES[0], STRATEGIES[1]])
def test_logsumexp_backward_strategies(strategy, shape, dtype):
    from numbasoftmax._cuda import launch

    x, b, w = _case(shape, dtype, seed=2)
    x = np.nan_to_num(x, nan=0.0, posinf=3.0, neginf=-3.0)
    lse, sign = (r.astype(dtype) for r in reference.logsumexp(x, b=b, return_sign=True))
    g = _x(lse.shape, dtype, seed=3)
    with launch.config.override(force=strategy):
        d = ns.logsumexp_backward(_dev(x), _dev(lse), _dev(g), b=_dev(b), sign=_dev(sign),
                                  where=_dev(w))
        plain = ns.logsumexp_backward(_dev(x), _dev(lse), _dev(g))
    ref = reference.logsumexp_backward(x, lse, g, b=b, sign=sign, where=w)
    assert d.dtype == np.dtype(dtype) and d.shape == x.shape
    _close(to_host(d), ref, dtype)
    assert np.all(to_host(d)[~w | (b == 0)] == 0)  # excluded: exactly 0
    _close(to_host(plain), reference.logsumexp_backward(x, lse, g), dtype)


@pytest.mark.parametrize(("shape", "axis", "keepdims"), [
    ((6, 9), 0, False), ((2, 3, 5), (0, 2), True), ((3, 5), None, False),
    ((3, 5), None, True), ((2, 4, 3), 1, False)])
def test_logsumexp_axes(shape, axis, keepdims):
    x = _x(shape)
    v = ns.logsumexp(_dev(x), axis=axis, keepdims=keepdims)
    ref = reference.logsumexp(x, axis=axis, keepdims=keepdims)
    _close(to_host(v), ref, "float32", 3)
    lse = ref.astype(np.float32)
    g = _x(lse.shape, seed=4)
    d = ns.logsumexp_backward(_dev(x), cuda().to_device(np.array(lse)),
                              cuda().to_device(np.array(g)), axis=axis)
    _close(to_host(d), reference.logsumexp_backward(x, lse, g, axis=axis), "float32")


def test_logsumexp_layouts_and_broadcast_weights():
    """F-ordered and strided x (gathered), a (N,) and an (M, 1) weight (broadcast)."""
    x = _x((5, 12))
    for v, _ in (view_of(x, order=(1, 0)), view_of(x, steps=(2, 3))):
        for b in (_x(12, seed=5), _x((5, 1), seed=6)):
            got = ns.logsumexp(v, b=_dev(b))
            _close(to_host(got), reference.logsumexp(x, b=b), "float32", 3)


def test_logsumexp_out_written_in_place():
    """out= (and a (value, sign) pair of outs) written, nothing else touched; strided
    outs."""
    x = _x((6, 20))
    ref, rsign = reference.logsumexp(x, axis=-1, return_sign=True)
    out, check = guarded((6,), np.float32, strides=(3,))
    assert ns.logsumexp(_dev(x), out=out) is out
    check()
    _close(out.copy_to_host(), ref, "float32", 3)
    vo, check_v = guarded((6, 1), np.float32)
    so, check_s = guarded((6, 1), np.float32, strides=(2, 1))
    got = ns.logsumexp(_dev(x), keepdims=True, return_sign=True, out=(vo, so))
    assert got[0] is vo and got[1] is so
    check_v()
    check_s()
    assert np.array_equal(so.copy_to_host().ravel(), rsign)


def test_logsumexp_backward_out_and_layouts():
    x = _x((4, 10))
    lse = reference.logsumexp(x).astype(np.float32)
    g = _x(4, seed=7)
    out, check = guarded(x.shape, np.float32, strides=(1, 4))  # F order: staged, scattered
    xv, _ = view_of(x, steps=(1, 2))
    r = ns.logsumexp_backward(xv, _dev(lse), _dev(g[:, None]), out=out)  # kept dims
    assert r is out
    check()
    _close(out.copy_to_host(), reference.logsumexp_backward(x, lse, g), "float32")


@pytest.mark.parametrize("strategy", [None, "long", "split"])
def test_logsumexp_empty_rows_and_no_rows(strategy):
    """Empty rows give -inf with sign 0 whatever strategy is asked for (a forced split
    of zero-length rows divided by zero in the plan)."""
    from numbasoftmax._cuda import launch

    with launch.config.override(force=strategy):
        v, sign = ns.logsumexp(_dev(np.zeros((3, 0), np.float32)), return_sign=True)
    assert np.array_equal(to_host(v), np.full(3, -np.inf, np.float32))
    assert np.array_equal(to_host(sign), np.zeros(3, np.float32))
    assert to_host(ns.logsumexp(_dev(np.zeros((0, 4), np.float32)))).shape == (0,)


def test_logsumexp_dtypes():
    """dtype= (one pass, as if cast), mixed weights (promoted), integer x (float64)."""
    x = _x((4, 30))
    b = np.random.default_rng(8).random((4, 30))
    got = ns.logsumexp(_dev(x), b=_dev(b))
    assert got.dtype == np.float64
    _close(to_host(got), reference.logsumexp(x, b=b), "float64", 4)
    got = ns.logsumexp(_dev(x), dtype=np.float16)
    assert got.dtype == np.float16
    _close(to_host(got), reference.logsumexp(x, dtype=np.float16), "float16", 4)
    h = x.astype(np.float16)
    got = ns.logsumexp(_dev(h), b=_dev(b.astype(np.float32)))
    assert got.dtype == np.float32
    _close(to_host(got), reference.logsumexp(h, b=b.astype(np.float32)), "float32", 4)
    xi = np.random.default_rng(9).integers(-3, 3, (4, 30))
    got = ns.logsumexp(_dev(xi))
    assert got.dtype == np.float64
    _close(to_host(got), reference.logsumexp(xi), "float64", 4)
    lse = reference.logsumexp(h).astype(np.float16)
    d = ns.logsumexp_backward(_dev(h), _dev(lse), _dev(np.ones(4, np.float16)),
                              dtype=np.float32)
    assert d.dtype == np.float32
    _close(to_host(d), reference.logsumexp_backward(h, lse, np.ones(4)), "float16")


def test_logsumexp_bad_inputs():
    x = _dev(_x((4, 6)))
    with pytest.raises(TypeError, match="b is a host array"):
        ns.logsumexp(x, b=np.ones(6, np.float32))
    with pytest.raises(ValueError, match=r"b of shape \(5,\) does not broadcast"):
        ns.logsumexp(x, b=_dev(np.ones(5, np.float32)))
    with pytest.raises(TypeError, match="where must be a boolean array"):
        ns.logsumexp(x, where=_dev(np.ones(6, np.float32)))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        ns.logsumexp(x, out=cuda().device_array(4, np.float64))
    with pytest.raises(ValueError, match=r"out must have shape \(4,\)"):
        ns.logsumexp(x, out=cuda().device_array(5, np.float32))
    with pytest.raises(ValueError, match="a pair of arrays"):
        ns.logsumexp(x, return_sign=True, out=(None, None, None))
    row = _dev(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"lse must have the reduced shape \(4,\)"):
        ns.logsumexp_backward(x, _dev(np.zeros(3, np.float32)), row)
    with pytest.raises(TypeError, match="dlse is a host array"):
        ns.logsumexp_backward(x, row, np.zeros(4, np.float32))


def test_logsumexp_writes_contiguous_results_in_place(monkeypatch):
    """A value per row into a result contiguous in rows order: no temporary, no copy
    kernel; a sign, or a strided out, goes through one."""
    from numbasoftmax._cuda import launch

    copies = []
    real = launch.copy
    monkeypatch.setattr(launch, "copy", lambda *a, **k: copies.append(a) or real(*a, **k))
    x = _x((5, 12))
    got = ns.logsumexp(_dev(x))
    assert copies == []
    _close(to_host(got), reference.logsumexp(x), "float32", 3)
    ns.logsumexp(_dev(x), return_sign=True)
    assert len(copies) == 2
    out, check = guarded((5,), np.float32, strides=(2,))
    ns.logsumexp(_dev(x), out=out)
    check()
    assert len(copies) == 3
