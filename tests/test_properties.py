"""Property-based tests (hypothesis) of the four public functions against the float64
reference, under the documented non-finite rules.

Each example draws a shape (0-d to 4-D, zero sizes included), axes (int, negative, tuples in
any order, None, ()), a dtype, values mixing normal, huge (+-1e308 / +-3e38 / +-6e4), tiny,
+-0, -inf, +inf and NaN, a memory layout (any axis permutation, C or Fortran container,
steps, negative strides) and an output (none, a strided array, or in place). Shapes are kept
small: the kernels' size thresholds are covered by tests/test_api.py; here the point is the
combinations.

CI runs 1000 examples per function (keeping the suite within its time budget); ``pytest
--fuzz-long`` runs 100x more.
"""

from __future__ import annotations

import numpy as np
from _helpers import (
    FLOAT_DTYPES,
    assert_matches_reference,
    call,
    expected,
    fuzz_examples,
    special_values,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numbasoftmax import reference

SETTINGS = settings(
    max_examples=fuzz_examples(1000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

WIDTH = {np.dtype(np.float16): 16, np.dtype(np.float32): 32, np.dtype(np.float64): 64}


# ---------------------------------------------------------------------------------------
# strategies (built once: hypothesis spends most of an example validating strategies)

_SIDES = {1: st.integers(0, 40), 2: st.integers(0, 12), 3: st.integers(0, 7),
          4: st.integers(0, 5)}
SHAPES = st.one_of(
    st.just(()),
    *[st.tuples(*[_SIDES[nd]] * nd) for nd in range(1, 5)],
)
_AXES_0D = st.sampled_from([None, 0, -1, (), (0,), (-1,)])


@st.composite
def _axis_tuple(draw, ndim):
    chosen = draw(st.lists(st.integers(0, ndim - 1), unique=True, min_size=1, max_size=ndim))
    negate = draw(st.lists(st.booleans(), min_size=len(chosen), max_size=len(chosen)))
    return tuple(a - ndim if neg else a for a, neg in zip(chosen, negate, strict=True))


_AXES = {0: _AXES_0D}
for _nd in range(1, 5):
    _AXES[_nd] = st.one_of(st.integers(-_nd, _nd - 1), st.integers(-_nd, _nd - 1),
                           _axis_tuple(_nd), st.just(None), st.just(()))


def axes_for(ndim):
    return _AXES[ndim]


def _specials(dtype, huge, with_nonfinite=True, with_inf=True):
    sv = special_values(dtype)
    out = [huge, -huge, sv["tiny"], -sv["tiny"], sv["normal_tiny"], 0.0, -0.0]
    if with_nonfinite:
        out += [np.nan] + ([np.inf, -np.inf] if with_inf else [])
    return out


_ELEMENTS = {}


def elements(dtype, huge, with_nonfinite=True, with_inf=True):
    key = (np.dtype(dtype), huge, with_nonfinite, with_inf)
    if key not in _ELEMENTS:
        normal = st.floats(-30, 30, width=WIDTH[np.dtype(dtype)])
        special = st.sampled_from(_specials(dtype, huge, with_nonfinite, with_inf))
        _ELEMENTS[key] = st.one_of(normal, normal, special)
    return _ELEMENTS[key]


_SCALES = st.sampled_from([1.0, 30.0, 1e3, None])
_SHARES = st.sampled_from([0.0, 0.02, 0.2, 0.7])
_SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def values(draw, dtype, shape, huge, with_nonfinite=True, with_inf=True):
    """Either a hypothesis array (shrinkable, often a fill value with a few distinct
    elements) or a dense random array with a drawn share of special values."""
    dtype = np.dtype(dtype)
    if draw(st.booleans()):
        el = elements(dtype, huge, with_nonfinite, with_inf)
        return draw(hnp.arrays(dtype, shape, elements=el, fill=el))
    seed = draw(_SEEDS)
    scale = draw(_SCALES) or huge / 4
    share = draw(_SHARES)
    rng = np.random.default_rng(seed)
    # clipped: a normal draw beyond ~4.5 sigma of scale huge / 4 would overflow to inf
    a = np.asarray(np.clip(rng.standard_normal(shape) * scale, -huge, huge))
    specials = np.array(_specials(dtype, huge, with_nonfinite, with_inf))
    pick = np.asarray(rng.random(shape) < share)
    a[pick] = specials[rng.integers(0, specials.size, size=int(pick.sum()))]
    with np.errstate(over="ignore"):
        return a.astype(dtype)


_STEPS = st.sampled_from([1, 1, 2, -1, -3])
_ORDER = st.sampled_from("CF")


@st.composite
def laid_out(draw, a):
    """A new array equal to ``a`` in a drawn memory layout: the axes of a C or Fortran
    container permuted, each axis stepped by 1, 2, -1 or -3."""
    nd = a.ndim
    perm = draw(st.permutations(range(nd))) if nd > 1 else list(range(nd))
    steps = [draw(_STEPS) for _ in range(nd)]
    order = draw(_ORDER)
    pshape = tuple(a.shape[p] * abs(s) for p, s in zip(perm, steps, strict=True))
    buf = np.zeros(pshape, dtype=a.dtype, order=order)
    view = buf[(Ellipsis,) + tuple(slice(None, None, s) for s in steps)]
    view = view.transpose(tuple(np.argsort(perm)))
    view[...] = a
    assert view.shape == a.shape
    return view


def _same_bits(a, b):
    return np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                          np.ascontiguousarray(b).view(np.uint8))


# ---------------------------------------------------------------------------------------
# the properties

DTYPES = st.sampled_from(FLOAT_DTYPES)
OUT_KINDS = st.sampled_from(["none", "none", "strided", "inplace"])


def _check(op, data, inputs, axis):
    """Call ``op`` with a drawn output option and compare with the reference."""
    originals = tuple(a.copy() for a in inputs)
    ref = expected(op, originals, axis=axis)
    out_kind = data.draw(OUT_KINDS, label="out")
    if out_kind == "none":
        got = call(op, inputs, axis=axis)
        for a, b in zip(inputs, originals, strict=True):
            assert _same_bits(a, b), "input modified"
    elif out_kind == "strided":
        out = data.draw(laid_out(np.zeros(inputs[0].shape, inputs[0].dtype)), label="out layout")
        got = call(op, inputs, axis=axis, out=out)
        assert got is out
    else:
        k = data.draw(st.integers(0, len(inputs) - 1), label="inplace arg")
        got = call(op, inputs, axis=axis, out=inputs[k])
        assert got is inputs[k]
    assert_matches_reference(op, got, originals, axis=axis, ref=ref)


def _forward(op, data):
    dtype = np.dtype(data.draw(DTYPES, label="dtype"))
    shape = data.draw(SHAPES, label="shape")
    axis = data.draw(axes_for(len(shape)), label="axis")
    huge = special_values(dtype)["huge"]
    x = data.draw(values(dtype, shape, huge), label="x values")
    x = data.draw(laid_out(x), label="x layout")
    _check(op, data, (x,), axis)


def _backward(op, data):
    """y / z: the forward result (rounded to the dtype) of drawn logits, NaN rows and exact
    zeros / -inf included. dy / dz: drawn values whose magnitude is capped at max/1024: the
    sums (y . dy, sum of dz) are taken in the compute type, and the float64 reference has no
    overflow to mirror (see README: backward inputs are gradients, not extreme logits)."""
    dtype = np.dtype(data.draw(DTYPES, label="dtype"))
    shape = data.draw(SHAPES, label="shape")
    axis = data.draw(axes_for(len(shape)), label="axis")
    huge = special_values(dtype)["huge"]
    x = data.draw(values(dtype, shape, huge), label="logits")
    fwd = "softmax" if op == "softmax_backward" else "log_softmax"
    with np.errstate(over="ignore"):
        y = reference.__dict__[fwd](x, axis=axis).astype(dtype)
    cap = float(np.finfo(dtype).max) / 1024
    # +-inf gradients: exp(z) * inf is NaN where exp(z) underflows to 0 in the compute type
    # (float32 for float16/float32) but inf in the float64 reference; NaN gradients stay
    dy = data.draw(values(dtype, shape, cap, with_inf=op == "softmax_backward"),
                   label="grad values")
    y = data.draw(laid_out(y), label="y layout")
    dy = data.draw(laid_out(dy), label="grad layout")
    _check(op, data, (y, dy), axis)


@SETTINGS
@given(data=st.data())
def test_softmax_matches_reference(data):
    _forward("softmax", data)


@SETTINGS
@given(data=st.data())
def test_log_softmax_matches_reference(data):
    _forward("log_softmax", data)


@SETTINGS
@given(data=st.data())
def test_softmax_backward_matches_reference(data):
    _backward("softmax_backward", data)


@SETTINGS
@given(data=st.data())
def test_log_softmax_backward_matches_reference(data):
    _backward("log_softmax_backward", data)


# finite inputs only: the float32 sum rule holds for any finite input

@settings(max_examples=fuzz_examples(500), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_float32_softmax_sums_to_one(data):
    shape = data.draw(SHAPES.filter(lambda s: len(s) > 0 and 0 not in s), label="shape")
    axis = data.draw(axes_for(len(shape)), label="axis")
    x = data.draw(values(np.float32, shape, 3e38, with_nonfinite=False), label="x")
    y = call("softmax", (x,), axis=axis).astype(np.float64)
    from numbasoftmax._layout import normalize_axes

    s = y.sum(axis=normalize_axes(axis, y.ndim))
    assert np.all(np.abs(s - 1) <= 1e-5), s
