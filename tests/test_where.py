"""Masked softmax: ``where=`` for the four functions (and logsumexp), and numpy masked
arrays, against the float64 reference, with the guarantees: an all-True mask gives the
unmasked bits, a row with a valid finite element gives the bits of the unmasked call on
``np.where(mask, x, -inf)``, a row without valid elements gives 0 / -inf / 0, broadcast
masks are read as they are (not expanded to x's shape), and the bits do not depend on the
driver or thread count. Cases are float32 (few kernel specializations to compile).
"""

from __future__ import annotations

import tracemalloc
import zlib
from typing import NamedTuple

import numpy as np
import pytest
from _helpers import (
    FORWARD_OPS,
    OPS,
    assert_bitwise_equal,
    assert_matches_reference,
    call,
    fuzz_examples,
    in_layout,
    inputs_for,
    num_threads,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbasoftmax as nsm

EXCLUDED = {"softmax": 0.0, "log_softmax": -np.inf, "softmax_backward": 0.0,
            "log_softmax_backward": 0.0}


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def masked(op, inputs, where, axis=-1, out=None):
    kw = {} if out is None else {"out": out}
    return getattr(nsm, op)(*inputs, axis=axis, where=where, **kw)


def _mask(rng, shape, p=0.6):
    return rng.random(shape) < p


# ---------------------------------------------------------------------------------------
# against the reference, on every row driver

# serial rows for every op; the parallel drivers (rows, chunks of long rows) for some: each
# (op, driver) compiles kernels of its own
CASES = [(op, shape) for op in OPS for shape in ((5, 7), (40, 33), (3, 9000))] + [
    ("softmax", (600, 100)), ("log_softmax_backward", (600, 100)),
    ("log_softmax", (2, 40000))]


@pytest.mark.parametrize("op, shape", CASES, ids=str)
def test_matches_reference(op, shape, rng):
    inputs = inputs_for(op, rng, shape, np.float32)
    where = _mask(rng, shape)
    where[0] = False
    if shape[0] > 1:
        where[1] = True
    got = masked(op, inputs, where)
    assert_matches_reference(op, got, inputs, where=where)


@pytest.mark.parametrize("op", OPS)
def test_all_true_is_unmasked_bitwise(op, rng):
    inputs = inputs_for(op, rng, (50, 300), np.float32)
    if op in FORWARD_OPS:
        x = inputs[0]
        x[0, 3], x[1, :], x[2, 7], x[3, 0] = -np.inf, -np.inf, np.nan, np.inf
    for where in (True, np.ones((50, 300), bool), np.ones(300, bool)):
        assert_bitwise_equal(masked(op, inputs, where), call(op, inputs))


@pytest.mark.parametrize("op", FORWARD_OPS)
def test_same_bits_as_minus_inf_fill(op, rng):
    """Rows with a valid finite element: the bits of the call on np.where(w, x, -inf)."""
    x = rng.standard_normal((16, 2000)).astype(np.float32)
    where = _mask(rng, x.shape, 0.3)
    where[:, 0] = True
    assert_bitwise_equal(masked(op, (x,), where), call(op, (np.where(where, x, -np.inf),)))


@pytest.mark.parametrize("op", OPS)
def test_rows_without_valid_elements(op, rng):
    inputs = inputs_for(op, rng, (3, 20), np.float32)
    where = np.ones((3, 20), bool)
    where[0] = False
    where[2, ::2] = False
    got = masked(op, inputs, where)
    assert (got[0] == EXCLUDED[op]).all()
    assert (got[2, ::2] == EXCLUDED[op]).all()
    assert np.isfinite(got[1]).all()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("keep", [True, False])
def test_zero_dim_input_with_a_mask(op, keep, rng):
    """A 0-d input is one row of one element: a 0-d mask includes or excludes it (this
    raised ValueError from the rows' fill)."""
    inputs = tuple(np.asarray(a) for a in inputs_for(op, rng, (), np.float32))
    got = masked(op, inputs, np.array(keep))
    assert got.shape == ()
    if keep:
        assert_bitwise_equal(got, getattr(nsm, op)(*inputs))
    else:
        assert got == EXCLUDED[op]


# the fast path's masks (C-ordered, x's shape, rows along the last axis of two or more)
# and masks it leaves to the general path
FAST_MASKS = {"same shape": True, "one row's shape": True, "rows of one": False,
              "Fortran order": False, "a column's mask": False, "not last axis": False}


@pytest.mark.parametrize("case", list(FAST_MASKS))
@pytest.mark.parametrize("op", OPS)
def test_the_fast_path_takes_a_mask_of_xs_shape(op, case, rng, monkeypatch):
    """A C-ordered boolean mask of x's shape runs on the fast path, with the general
    path's bits and kernels; others take the general path. The mask is not touched."""
    from numbasoftmax import _cpu_path

    shape, axis = ((5, 1), -1) if case == "rows of one" else ((6, 40), -1)
    if case == "not last axis":
        axis = 0
    inputs = inputs_for(op, rng, shape, np.float32, axis)
    w = rng.random(shape) < 0.7
    w[1] = False
    if case == "Fortran order":
        w = np.asfortranarray(w)
    elif case == "one row's shape":
        w = w[0]
    elif case == "a column's mask":  # (M, 1): constant along the rows
        w = w[:, :1]
    before = w.copy()
    taken = []
    fast = _cpu_path.fast

    def spy(*args):
        taken.append(fast(*args) is not None)
        return None if not taken[-1] else fast(*args)

    f = getattr(nsm, op)
    monkeypatch.setattr(_cpu_path, "fast", spy)
    got = f(*inputs, axis=axis, where=w)
    assert taken == [FAST_MASKS[case]]
    assert_bitwise_equal(w, before)
    assert w.flags.writeable
    monkeypatch.setattr(_cpu_path, "fast", lambda *args: None)
    assert_bitwise_equal(got, f(*inputs, axis=axis, where=w))
    assert_matches_reference(op, got, inputs, axis, where=w)
    out = np.full_like(got, 7.0)
    monkeypatch.setattr(_cpu_path, "fast", fast)
    assert f(*inputs, axis=axis, where=w, out=out) is out
    assert_bitwise_equal(out, got)


def test_excluded_non_finite_values_take_no_part(rng):
    x = rng.standard_normal((4, 30)).astype(np.float32)
    where = np.ones((4, 30), bool)
    where[:, :3] = False
    poisoned = x.copy()
    poisoned[:, 0], poisoned[:, 1], poisoned[:, 2] = np.nan, np.inf, 1e30
    for op in FORWARD_OPS:
        assert_bitwise_equal(masked(op, (poisoned,), where), masked(op, (x,), where))
    v, s = nsm.logsumexp(poisoned, where=where, return_sign=True)
    assert_bitwise_equal(v, nsm.logsumexp(x, where=where))
    assert (s == 1).all()


def test_valid_elements_all_neginf_give_nan():
    """The unmasked rules apply to the valid elements: only -inf there is NaN."""
    x = np.array([[-np.inf, -np.inf, 5.0], [1.0, 2.0, 3.0]], np.float32)
    where = np.array([[True, True, False], [True, True, True]])
    got = nsm.softmax(x, where=where)
    assert np.isnan(got[0, :2]).all() and got[0, 2] == 0
    got = nsm.log_softmax(x, where=where)
    assert np.isnan(got[0, :2]).all() and got[0, 2] == -np.inf
    assert nsm.logsumexp(x, where=where)[0] == -np.inf


@pytest.mark.parametrize("n", [2, 40, 3000, 9000, 40000])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_one_valid_element_of_neginf_gives_nan(op, n):
    """A single valid element of -inf is a row of valid elements all -inf: NaN there (the
    row kernel once took log_softmax's log(1) = 0 for "no valid element"), rows without a
    valid element 0 / -inf. Row lengths: short rows' tiles, groups, a row at a time,
    chunks."""
    x = np.ones((3, n), np.float32)
    x[:, :2] = -np.inf
    where = np.zeros((3, n), bool)
    where[0, 0] = True
    where[1, :2] = True
    got = getattr(nsm, op)(x, where=where)
    other = -np.inf if op == "log_softmax" else 0.0
    assert np.isnan(got[0, 0]) and (got[0, 1:] == other).all()
    assert np.isnan(got[1, :2]).all() and (got[1, 2:] == other).all()
    assert (got[2] == other).all()


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_where_matches_jax(op, rng):
    """jax.nn's ``where=`` where jax is installed (it is not a test dependency): the same
    values, NaN, -inf and 0 in the same places, rows without an included element and
    rows whose included elements are all -inf (one, or several) included."""
    jax = pytest.importorskip("jax")
    x = rng.standard_normal((40, 7)).astype(np.float32)
    where = rng.random(x.shape) < 0.6
    where[0] = False
    x[1, :] = -np.inf
    where[1] = [True, False, False, True, False, False, False]
    x[2, 0] = -np.inf
    where[2] = [True] + [False] * 6
    x[3, 2] = np.nan
    got = getattr(nsm, op)(x, where=where)
    want = np.asarray(getattr(jax.nn, op)(x, axis=-1, where=where))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


class ShortRows(NamedTuple):
    """A parallel call's worth of rows of n elements (float64), weights, the same rows and
    weights laid out apart (at a pitch: the row drivers take them), and two masks: one of
    x's shape (its first row all False) and one (n,) mask."""

    x: np.ndarray
    b: np.ndarray
    x_apart: np.ndarray
    b_apart: np.ndarray
    full: np.ndarray
    row: np.ndarray


def _short_rows(rng, n):
    from numbasoftmax import _cpu

    m = -(-_cpu.PARALLEL_MIN_ELEMENTS // n)
    x, b = rng.standard_normal((m, n)), rng.random((m, n)) - 0.3
    apart = np.empty((2, m, n + 1))
    apart[0, :, :n], apart[1, :, :n] = x, b
    full = rng.random(x.shape) < 0.7
    full[0] = False
    row = rng.random(n) < 0.7
    row[0] = True
    return ShortRows(x, b, apart[0, :, :n], apart[1, :, :n], full, row)


@pytest.fixture
def tile_calls(monkeypatch):
    """The calls of the parallel masked tiles' driver, counted."""
    from numbasoftmax import _cpu_kernels

    calls = []
    real = _cpu_kernels.masked_short_rows_parallel
    monkeypatch.setattr(_cpu_kernels, "masked_short_rows_parallel",
                        lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("n", [2, 3, 8, 17])
def test_masked_logsumexp_short_rows(n, rng, tile_calls):
    """Masked logsumexp on rows of a few elements (in a parallel call: the lane kernel's
    tiles) gives the reference's values and signs, and bitwise what the row kernel gives
    the same rows laid out apart (at a pitch: the row drivers), weighted or not, with a
    mask of x's shape or one for every row; rows without an included element give -inf
    (sign 0). A call below the parallel threshold runs on the row drivers."""
    from numbasoftmax import reference

    c = _short_rows(rng, n)
    c.x[5, 0] = c.x_apart[5, 0] = np.inf
    for where in (c.full, c.row):
        for weights, apart in ((None, None), (c.b, c.b_apart)):
            got, sign = nsm.logsumexp(c.x, b=weights, where=where, return_sign=True)
            want, wsign = reference.logsumexp(c.x, b=weights, where=where, return_sign=True)
            # (log of a weighted sum near 1: an absolute error, as the reference's own)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
            np.testing.assert_array_equal(sign, wsign)
            ref = nsm.logsumexp(c.x_apart, b=apart, where=where, return_sign=True)
            assert_bitwise_equal(got, ref[0])
            assert_bitwise_equal(sign, ref[1])
            assert_bitwise_equal(nsm.logsumexp(c.x, b=weights, where=where),
                                 nsm.logsumexp(c.x_apart, b=apart, where=where))
    assert nsm.logsumexp(c.x, where=c.full)[0] == -np.inf
    assert len(tile_calls) == 9
    small = nsm.logsumexp(c.x[:100], where=c.full[:100])
    assert len(tile_calls) == 9
    assert_bitwise_equal(small, nsm.logsumexp(c.x_apart[:100], where=c.full[:100]))


@pytest.mark.parametrize("n", [2, 3, 8])
def test_masked_logsumexp_backward_short_rows(n, rng, tile_calls):
    """logsumexp's masked gradient on rows of a few elements (in a parallel call: the
    masked tiles) gives the reference's values, 0 where excluded, and bitwise what the
    row kernel gives the same rows laid out apart, weighted or not, with a mask of x's
    shape or one for every row. A call below the parallel threshold runs on the row
    drivers."""
    from numbasoftmax import reference

    c = _short_rows(rng, n)
    g = rng.standard_normal(c.x.shape[0])
    for where in (c.full, c.row):
        for weights, apart in ((None, None), (np.abs(c.b), np.abs(c.b_apart))):
            lse = nsm.logsumexp(c.x, b=weights, where=where)
            got = nsm.logsumexp_backward(c.x, lse, g, b=weights, where=where)
            want = reference.logsumexp_backward(c.x, lse, g, b=weights, where=where)
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
            assert (got[~np.broadcast_to(where, c.x.shape)] == 0).all()
            assert_bitwise_equal(got, nsm.logsumexp_backward(c.x_apart, lse, g, b=apart,
                                                             where=where))
    assert len(tile_calls) == 8  # logsumexp's and its gradient's
    lse = nsm.logsumexp(c.x[:100], where=c.full[:100])
    small = nsm.logsumexp_backward(c.x[:100], lse, g[:100], where=c.full[:100])
    assert len(tile_calls) == 8
    assert_bitwise_equal(small, nsm.logsumexp_backward(c.x_apart[:100], lse, g[:100],
                                                       where=c.full[:100]))


def test_logsumexp_with_mask_and_weights(rng):
    from numbasoftmax import reference

    x = rng.standard_normal((30, 80))
    b = rng.standard_normal((30, 80))
    where = _mask(rng, (30, 80))
    where[0] = False
    got, sign = nsm.logsumexp(x, b=b, where=where, return_sign=True)
    want, wsign = reference.logsumexp(x, b=b, where=where, return_sign=True)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(sign, wsign)
    assert got[0] == -np.inf and sign[0] == 0


# ---------------------------------------------------------------------------------------
# broadcast masks, axes, layouts

BROADCAST = [
    ((6, 40), (40,)),
    ((6, 40), (6, 1)),
    ((6, 40), (1, 40)),
    ((6, 40), ()),
    ((2, 3, 5, 5), (5, 5)),  # causal-style: one mask per (query, key)
    ((2, 3, 5, 5), (2, 1, 1, 5)),  # padding-style: one mask row per batch
    ((2, 3, 5, 5), (2, 1, 5, 5)),
    ((2, 3, 5, 5), (3, 1, 5)),
]


@pytest.mark.parametrize("shape, wshape", BROADCAST, ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax_backward"])
def test_broadcast_masks(op, shape, wshape, rng):
    inputs = inputs_for(op, rng, shape, np.float32)
    where = _mask(rng, wshape)
    if wshape == (5, 5):
        where = np.tril(np.ones((5, 5), bool))
    got = masked(op, inputs, where)
    assert_matches_reference(op, got, inputs, where=where)
    assert_bitwise_equal(got, masked(op, inputs, np.broadcast_to(where, shape).copy()))


def test_strided_mask_and_negative_strides(rng):
    x = rng.standard_normal((20, 30)).astype(np.float32)
    where = _mask(rng, (20, 60))[:, ::2]
    want = nsm.softmax(x, where=where.copy())
    assert_bitwise_equal(nsm.softmax(x, where=where), want)
    flipped = where.copy()[::-1, ::-1]
    assert_bitwise_equal(nsm.softmax(x, where=flipped), nsm.softmax(x, where=flipped.copy()))


@pytest.mark.parametrize("axis", [0, (0, 2), None])
@pytest.mark.parametrize("op", ["softmax", "softmax_backward"])
def test_axes(op, axis, rng):
    inputs = inputs_for(op, rng, (6, 7, 8), np.float32, axis=axis)
    where = _mask(rng, (6, 7, 8))
    got = masked(op, inputs, where, axis=axis)
    assert_matches_reference(op, got, inputs, axis=axis, where=where)


@pytest.mark.parametrize("layout", ["F", "stepped", "negative"])
@pytest.mark.parametrize("shape", [(30, 70), (300, 5)], ids=str)  # rows, short rows' tiles
def test_layout_independent_bits(layout, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    where = _mask(rng, x.shape)
    want = nsm.softmax(x, where=where)
    assert_bitwise_equal(nsm.softmax(in_layout(x, layout), where=in_layout(where, layout)),
                         want)
    out = in_layout(np.zeros_like(x), layout)
    assert nsm.softmax(x, where=where, out=out) is out
    assert_bitwise_equal(np.ascontiguousarray(out), want)


def test_bits_independent_of_driver_and_threads(rng):
    x = rng.standard_normal((20, 40000)).astype(np.float32)
    where = _mask(rng, x.shape)
    many = nsm.log_softmax(x, where=where)
    few = np.concatenate([nsm.log_softmax(x[i:i + 2], where=where[i:i + 2])
                          for i in range(0, 20, 2)])
    with num_threads(1):
        serial = nsm.log_softmax(x, where=where)
    assert_bitwise_equal(few, many)
    assert_bitwise_equal(serial, many)


# ---------------------------------------------------------------------------------------
# along a strided axis, read in place: the column drivers take a mask at its own strides
# (in place where its inner positions are contiguous and its axes merge; else one
# broadcast along no axis copied into x's layout, and others' own elements copied into
# the plan's order, never expanded to x's shape), and one constant along the inner
# positions as a byte per outer position and element; a mask constant along the axis
# takes the rows' own rule (the unmasked drivers, then rows without an included element
# filled)

@pytest.fixture
def column_calls(monkeypatch):
    """The ``side`` of each call of the column drivers' launcher."""
    from numbasoftmax import _cpu

    calls = []
    real = _cpu.run_columns
    monkeypatch.setattr(_cpu, "run_columns",
                        lambda op, args, direct=False, side=None:
                        calls.append(side) or real(op, args, direct, side))
    return calls


# of x's shape and layout; in another layout (copied); constant along the axis; varying
# along the axis only
COLUMN_MASKS = {"x's shape": (1000, 40), "F order": None, "constant": (40,),
                "along the axis": (1000, 1)}


def _column_case(rng, op, form, dtype=np.float32):
    """Inputs of ``op`` over (1000, 40) to reduce along axis 0 (a parallel call), a mask
    of ``form`` excluding every element of column 3, NaN and infinities at excluded
    elements and -inf at included ones, and the same inputs and mask transposed into
    contiguous rows."""
    inputs = list(inputs_for(op, rng, (1000, 40), dtype, axis=0))
    shape = COLUMN_MASKS[form]
    where = _mask(rng, shape or (1000, 40), p=0.7)
    if shape is None:
        where = np.asfortranarray(where)
    if where.ndim == 2 and where.shape[1] == 40:
        where[:, 3] = False
    full = np.broadcast_to(where, (1000, 40))
    excluded = np.flatnonzero(~full)[:30]
    inputs[0].flat[excluded[:10]] = np.nan
    inputs[0].flat[excluded[10:20]] = np.inf
    inputs[-1].flat[excluded[20:]] = np.nan
    inputs[0].flat[np.flatnonzero(full)[:5]] = -np.inf
    rows = [np.ascontiguousarray(v.T) for v in inputs]
    return inputs, where, rows, np.ascontiguousarray(full.T)


@pytest.mark.parametrize("form", list(COLUMN_MASKS))
@pytest.mark.parametrize("op", OPS)
def test_masked_strided_axis_read_in_place(op, form, rng, column_calls):
    """A masked call along axis 0 of a C-ordered array (a parallel call) runs on the column
    drivers: bitwise the masked call on the same values transposed into contiguous rows,
    excluded non-finite values taking no part, a column without an included element all
    0 (log_softmax: -inf), the mask read in place where it lies as x."""
    inputs, where, rows, rows_where = _column_case(rng, op, form)
    got = masked(op, inputs, where, axis=0)
    assert len(column_calls) == 1
    side = column_calls[0]
    if form == "constant":
        assert side is None
    elif form == "along the axis":  # a byte per element along the axis
        assert side[0].size == 1000 and side[1] == 1000
    else:  # (outer stride, axis stride) of x's layout: 40 bytes a row of (1000, 40)
        assert np.shares_memory(side[0], where) == (form == "x's shape")
        assert side[1].tolist()[1] == 40
    assert_bitwise_equal(got, masked(op, rows, rows_where, axis=1).T)
    if form == "x's shape":
        np.testing.assert_array_equal(got[:, 3], EXCLUDED[op])
        assert_matches_reference(op, got, inputs, axis=0, where=where)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_masked_strided_axis_dtypes(dtype, rng, column_calls):
    inputs, where, rows, rows_where = _column_case(rng, "log_softmax", "x's shape", dtype)
    got = masked("log_softmax", inputs, where, axis=0)
    assert len(column_calls) == 1
    assert_bitwise_equal(got, masked("log_softmax", rows, rows_where, axis=1).T)


@pytest.mark.parametrize("case", ["broadcast view", "fewer dims", "batch", "over a batch",
                                  "over a batch, F order"])
def test_masked_strided_axis_masks_not_expanded(case, rng, column_calls):
    """Masks along a strided axis are never expanded to x's shape: a broadcast view of a
    (K, 1) mask (as dask hands its blocks over) goes to the column drivers as a byte per
    element along the axis; a mask without x's leading axis of 1 is read in place; along
    axis 1 of (B, K, N), a (K, 1) mask becomes B x K bytes, and a (K, N) mask (broadcast
    over the batch, varying along the contiguous axis) is read at its own strides (outer
    stride 0), in place, or copied at its own size when its rows are not contiguous."""
    if case.startswith("batch") or case.startswith("over a batch"):
        x = rng.standard_normal((6, 300, 40)).astype(np.float32)
        where = _mask(rng, (300, 1) if case == "batch" else (300, 40))
        if case.endswith("F order"):
            where = np.asfortranarray(where)
        got = nsm.softmax(x, axis=1, where=where)
        want = np.moveaxis(nsm.softmax(np.ascontiguousarray(np.moveaxis(x, 1, -1)), where=(
            np.ascontiguousarray(np.moveaxis(np.broadcast_to(where, x.shape), 1, -1)))), -1, 1)
        if case == "batch":
            assert [(c[0].size, c[1]) for c in column_calls] == [(1800, 300)]
        else:
            assert [(c[0].size, c[1].tolist()) for c in column_calls] == [(12000, [0, 40])]
            assert np.shares_memory(column_calls[0][0], where) == (case == "over a batch")
    elif case == "broadcast view":
        x = rng.standard_normal((1000, 40)).astype(np.float32)
        where = np.broadcast_to(_mask(rng, (1000, 1)), x.shape)
        got, want = nsm.softmax(x, axis=0, where=where), nsm.softmax(
            np.ascontiguousarray(x.T), axis=1, where=np.ascontiguousarray(where.T)).T
        assert [(c[0].size, c[1]) for c in column_calls] == [(1000, 1000)]
    else:
        x = rng.standard_normal((1, 1000, 40)).astype(np.float32)
        where = _mask(rng, (1000, 40))
        got, want = nsm.softmax(x, axis=1, where=where), nsm.softmax(
            np.ascontiguousarray(x[0].T), axis=1, where=np.ascontiguousarray(where.T)).T
        assert len(column_calls) == 1 and np.shares_memory(column_calls[0][0], where)
    assert_bitwise_equal(got, want.reshape(got.shape))


def test_masked_strided_axis_small_call_gathers(rng, column_calls):
    """Below the parallel threshold a masked call along a strided axis gathers its rows
    (no column driver to compile for it), with the same bits."""
    x = rng.standard_normal((300, 40)).astype(np.float32)
    where = _mask(rng, x.shape)
    got = nsm.softmax(x, axis=0, where=where)
    assert column_calls == []
    assert_bitwise_equal(got, nsm.softmax(np.ascontiguousarray(x.T), axis=1,
                                          where=np.ascontiguousarray(where.T)).T)


@pytest.mark.parametrize("form", ["x's shape", "F order", "along the axis"])
def test_masked_logsumexp_strided_axis_read_in_place(form, rng, column_calls):
    """Masked logsumexp (weighted, with signs) and its gradient along a strided axis run on
    the column drivers: bitwise the calls on the transposed values; a column without an
    included element gives -inf with sign 0, and a zero gradient."""
    (x,), where, (xr,), wr = _column_case(rng, "softmax", form)
    b = rng.random(x.shape) - 0.2
    b = b.astype(np.float32)
    br = np.ascontiguousarray(b.T)
    value, sign = nsm.logsumexp(x, axis=0, b=b, where=where, return_sign=True)
    rvalue, rsign = nsm.logsumexp(xr, axis=1, b=br, where=wr, return_sign=True)
    assert_bitwise_equal(value, rvalue)
    assert_bitwise_equal(sign, rsign)
    assert_bitwise_equal(nsm.logsumexp(x, axis=0, where=where),
                         nsm.logsumexp(xr, axis=1, where=wr))
    g = rng.standard_normal(value.shape).astype(np.float32)
    grad = nsm.logsumexp_backward(x, value, g, axis=0, b=b, sign=sign, where=where)
    assert_bitwise_equal(grad, nsm.logsumexp_backward(xr, value, g, axis=1, b=br,
                                                      sign=sign, where=wr).T)
    assert len(column_calls) == 3
    if form == "x's shape":
        assert value[3] == -np.inf and sign[3] == 0
        np.testing.assert_array_equal(grad[:, 3], 0.0)


# rows below and at the stream rule's row length (float32: 512, float64: 256), in groups
# (serial and parallel), a row at a time (a long chunk and a short one) and in chunks
STREAMED = [(np.float32, (40, 511)), (np.float32, (40, 512)), (np.float32, (100, 2047)),
            (np.float32, (100, 2048)), (np.float32, (4, 9000)), (np.float32, (5, 40000)),
            (np.float64, (40, 255)), (np.float64, (40, 256))]


@pytest.mark.parametrize("dtype, shape", STREAMED,
                         ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple)
                         else np.dtype(c).name)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_masked_large_outputs_have_the_plain_bits(op, dtype, shape, rng, monkeypatch):
    """A large output (the write phase's stores past the caches, which a masked call's
    first passes leave out) gives the same bits, also for rows without valid elements
    and rows whose valid elements are all -inf."""
    from numbasoftmax import _cpu
    x = rng.standard_normal(shape).astype(dtype)
    where = _mask(rng, shape)
    where[0] = False
    x[1, where[1]] = -np.inf
    x[2, 5] = np.inf
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", None)
    plain = masked(op, (x,), where)
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", 0)
    size = np.dtype(dtype).itemsize
    if op == "softmax":  # log_softmax's rule: see tests/test_api.py
        assert _cpu.streams(shape[0], shape[1], size, op) is (shape[1] * size >= 2048)
    assert_bitwise_equal(masked(op, (x,), where), plain)
    assert_bitwise_equal(masked(op, (x,), np.ones(shape, bool)), call(op, (x,)))
    assert_matches_reference(op, plain, (x,), where=where)


@pytest.mark.parametrize("wshape", [(2000,), (2000, 1)], ids=str)
def test_broadcast_mask_is_not_expanded(wshape, rng):
    """A (N,) or (M, 1) mask is read as it is: the call allocates far less than x's size
    in bytes (an expanded boolean mask would take 4 MB here)."""
    x = rng.standard_normal((2000, 2000)).astype(np.float32)
    out = np.empty_like(x)
    where = _mask(rng, wshape)
    nsm.softmax(x, where=where, out=out)  # compiled before measuring
    tracemalloc.start()
    try:
        nsm.softmax(x, where=where, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400_000, peak


# ---------------------------------------------------------------------------------------
# numpy masked arrays

@pytest.mark.parametrize("op", OPS)
def test_masked_array_is_where_not_mask(op, rng):
    inputs = inputs_for(op, rng, (6, 20), np.float32)
    mask = _mask(rng, (6, 20), 0.3)
    args = list(inputs)
    args[0] = np.ma.masked_array(args[0], mask=mask)
    got = call(op, tuple(args))
    assert isinstance(got, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(got), mask)
    assert_bitwise_equal(got.data, masked(op, inputs, ~mask))


def test_masked_arrays_masks_combine(rng):
    y, dy = inputs_for("softmax_backward", rng, (4, 10), np.float32)
    m1, m2 = _mask(rng, (4, 10), 0.2), _mask(rng, (4, 10), 0.2)
    got = nsm.softmax_backward(np.ma.masked_array(y, m1), np.ma.masked_array(dy, m2))
    np.testing.assert_array_equal(np.ma.getmaskarray(got), m1 | m2)
    assert_bitwise_equal(got.data, nsm.softmax_backward(y, dy, where=~(m1 | m2)))


def test_masked_array_without_mask_and_with_where(rng):
    x = rng.standard_normal((4, 10)).astype(np.float32)
    got = nsm.softmax(np.ma.masked_array(x))
    assert isinstance(got, np.ma.MaskedArray) and got.mask is np.ma.nomask
    assert_bitwise_equal(got.data, nsm.softmax(x))
    mask = _mask(rng, (4, 10), 0.3)
    where = _mask(rng, (4, 10), 0.7)
    got = nsm.log_softmax(np.ma.masked_array(x, mask), where=where)
    assert_bitwise_equal(got.data, nsm.log_softmax(x, where=where & ~mask))


def test_masked_array_logsumexp(rng):
    x = rng.standard_normal((4, 10)).astype(np.float32)
    mask = _mask(rng, (4, 10), 0.3)
    mask[2] = True
    got = nsm.logsumexp(np.ma.masked_array(x, mask))
    assert isinstance(got, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(got), mask.all(axis=-1))
    assert_bitwise_equal(got.data, nsm.logsumexp(x, where=~mask))


# ---------------------------------------------------------------------------------------
# bad masks

@pytest.mark.parametrize("op", ["softmax", "log_softmax_backward", "logsumexp"])
def test_non_boolean_where_raises(op, rng):
    inputs = inputs_for(op if op != "logsumexp" else "softmax", rng, (3, 4), np.float32)
    for bad in (np.ones((3, 4)), np.ones((3, 4), np.uint8), [[1, 0, 1, 0]]):
        with pytest.raises(TypeError, match=r"where must be a boolean array; got dtype"):
            getattr(nsm, op)(*inputs, where=bad)


@pytest.mark.parametrize("op", ["softmax", "softmax_backward", "logsumexp"])
def test_non_broadcasting_where_raises(op, rng):
    inputs = inputs_for(op if op != "logsumexp" else "softmax", rng, (3, 4), np.float32)
    for bad in (np.ones(3, bool), np.ones((2, 3, 4), bool), np.ones((4, 3), bool)):
        with pytest.raises(ValueError) as info:
            getattr(nsm, op)(*inputs, where=bad)
        msg = str(info.value)
        assert "where" in msg and str(bad.shape) in msg and "(3, 4)" in msg


def test_bad_where_leaves_out_untouched():
    out = np.full((3, 4), 7.0, np.float32)
    with pytest.raises(ValueError):
        nsm.softmax(np.zeros((3, 4), np.float32), where=np.ones(3, bool), out=out)
    assert (out == 7.0).all()


# ---------------------------------------------------------------------------------------
# property test: random masks (all-False and all-True rows included), shapes, axes and
# broadcast mask shapes, against the reference and the documented excluded values

@st.composite
def _masked_case(draw):
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    nd = len(shape)
    axis = draw(st.one_of(st.integers(-nd, nd - 1), st.just(None),
                          st.lists(st.integers(0, nd - 1), unique=True, min_size=1,
                                   max_size=nd).map(tuple)))
    # the mask's own shape: x's, with some axes broadcast (size 1) and leading ones dropped
    wshape = tuple(s if draw(st.booleans()) else 1 for s in shape)[draw(st.integers(0, nd)):]
    kind = draw(st.sampled_from(["random", "random", "all False", "all True"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, axis, wshape, kind, seed


@settings(max_examples=fuzz_examples(150), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=_masked_case(), op=st.sampled_from(OPS))
def test_random_masks_property(case, op):
    shape, axis, wshape, kind, seed = case
    rng = np.random.default_rng(seed)
    inputs = inputs_for(op, rng, shape, np.float32)
    if kind == "random":
        where = rng.random(wshape) < rng.random()
    else:
        where = np.full(wshape, kind == "all True")
    got = masked(op, inputs, where, axis=axis)
    assert_matches_reference(op, got, inputs, axis=axis, where=where)
    excluded = ~np.broadcast_to(where, shape)
    assert (got[excluded] == EXCLUDED[op]).all()
