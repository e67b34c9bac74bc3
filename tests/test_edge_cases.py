"""Named edge cases of the documented semantics: 0-d and empty inputs, non-finite rules,
huge values, sums, determinism, layout independence, inputs never modified, aliasing."""

from __future__ import annotations

import math
import zlib

import numba
import numpy as np
import pytest
from _helpers import (
    FLOAT_DTYPES,
    FORWARD_OPS,
    LAYOUTS,
    OPS,
    adversarial_cases,
    assert_bitwise_equal,
    assert_matches_reference,
    bits,
    call,
    in_layout,
    inputs_for,
    num_threads,
    special_values,
)

import numbasoftmax


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _dtype_id(d):
    return np.dtype(d).name


def _shape_id(s):
    return "x".join(map(str, s))


# shapes that take each CPU path: serial driver, parallel driver with whole-row tasks,
# parallel (row, chunk) tasks for rows over 32768 elements
PATH_SHAPES = [(7, 33), (300, 129), (2, 40000)]


# ---------------------------------------------------------------------------------------
# 0-d

@pytest.mark.parametrize("axis", [-1, 0, None, (), (0,), (-1,)], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
def test_zero_d_softmax_is_one(dtype, axis):
    got = numbasoftmax.softmax(np.array(-12.5, dtype=dtype), axis=axis)
    assert got.shape == () and got.dtype == np.dtype(dtype)
    assert got == 1.0


@pytest.mark.parametrize("axis", [-1, 0, None, ()], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
def test_zero_d_log_softmax_is_zero(dtype, axis):
    got = numbasoftmax.log_softmax(np.array(7.0, dtype=dtype), axis=axis)
    assert got.shape == () and got.dtype == np.dtype(dtype)
    assert got == 0.0


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_zero_d_backward_is_zero(op):
    # a one-element softmax is constant: its gradient is 0
    first = 1.0 if op == "softmax_backward" else 0.0
    got = call(op, (np.array(first), np.array(3.5)))
    assert got.shape == () and got == 0.0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=repr)
@pytest.mark.parametrize("op", FORWARD_OPS)
def test_zero_d_non_finite_is_nan(op, value):
    assert np.isnan(call(op, (np.array(value),)))


# ---------------------------------------------------------------------------------------
# empty arrays

EMPTY_CASES = [((0,), -1), ((0,), None), ((3, 0), -1), ((3, 0), 0), ((0, 5), -1),
               ((0, 5), 0), ((2, 0, 3), (0, 2)), ((2, 0, 3), None), ((4, 0), ())]


@pytest.mark.parametrize("case", EMPTY_CASES, ids=lambda c: f"{_shape_id(c[0])}-ax{c[1]}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + (np.int32, np.bool_), ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_empty_returns_empty(op, dtype, case):
    shape, axis = case
    inputs = tuple(np.zeros(shape, dtype) for _ in range(1 if op in FORWARD_OPS else 2))
    got = call(op, inputs, axis=axis)
    assert type(got) is np.ndarray
    assert got.shape == shape
    assert got.dtype == (np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.float64)


@pytest.mark.parametrize("op", OPS)
def test_empty_with_out_returns_out(op):
    inputs = tuple(np.zeros((0, 4), np.float32) for _ in range(1 if op in FORWARD_OPS else 2))
    out = np.empty((0, 4), np.float32)
    assert call(op, inputs, out=out) is out


@pytest.mark.parametrize("op", OPS)
def test_empty_still_checks_axis(op):
    inputs = tuple(np.zeros((0, 4)) for _ in range(1 if op in FORWARD_OPS else 2))
    with pytest.raises(np.exceptions.AxisError):
        call(op, inputs, axis=2)


# ---------------------------------------------------------------------------------------
# non-finite rules (forward)

def _rows_with(dtype, bad_row, n=9, m=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(dtype)
    x[1] = np.asarray(bad_row, dtype=np.float64).astype(dtype)
    return x


@pytest.mark.parametrize("n", [9, 40000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", FORWARD_OPS)
def test_nan_row_gives_nan_row(op, dtype, n):
    row = np.linspace(-3, 3, n)
    row[n // 3] = np.nan
    x = _rows_with(dtype, row, n=n)
    got = call(op, (x,))
    assert np.isnan(got[1]).all()
    assert not np.isnan(got[[0, 2, 3]]).any()
    # other rows are untouched by the NaN row: the same bits as computed without it
    assert_bitwise_equal(got[[0, 2, 3]], call(op, (np.ascontiguousarray(x[[0, 2, 3]]),)))


@pytest.mark.parametrize("n", [9, 40000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", FORWARD_OPS)
def test_posinf_row_gives_nan_row(op, dtype, n):
    row = np.linspace(-3, 3, n)
    row[n - 2] = np.inf
    got = call(op, (_rows_with(dtype, row, n=n),))
    assert np.isnan(got[1]).all()
    assert np.isfinite(got[0]).all()


@pytest.mark.parametrize("n", [1, 9, 40000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", FORWARD_OPS)
def test_all_neginf_row_gives_nan_row(op, dtype, n):
    got = call(op, (_rows_with(dtype, np.full(n, -np.inf), n=n),))
    assert np.isnan(got[1]).all()
    assert np.isfinite(got[0]).all()


# A max pass may leave a NaN out, and the sum's pass then tells it (``_row_kernel``; the lane
# kernel's tiles for short rows likewise). The NaN at the places a max pass takes elements
# in its two chains and its tail (first, second vector, last element: in a row's last chunk
# for the longest rows), beside +inf or in a row otherwise all -inf, with and without a
# mask; rows of 5 and 20 take the lane kernel's tiles (in registers, in loops).
def _nan_beside(rng, dtype, m, n, beside, pos):
    """m random rows of n; row 1 holds a NaN of another bit pattern than numpy's nan at
    ``pos``, beside +inf (``beside`` "posinf") or -inf everywhere else ("neginf")."""
    x = rng.standard_normal((m, n)).astype(dtype)
    if beside == "neginf":
        x[1] = -np.inf
    elif beside == "posinf":
        x[1, n // 2] = np.inf
    x[1, pos] = -np.float64(np.nan)
    return x


def _nan_bits(dtype):
    """numpy's NaN pattern: every NaN result has it."""
    return bits(np.array(np.nan, dtype))


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("at", ["first", "second_vector", "last"])
@pytest.mark.parametrize("beside", ["finite", "posinf", "neginf"])
@pytest.mark.parametrize("n", [5, 20, 37, 1000, 20000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", FORWARD_OPS + ("logsumexp",))
def test_nan_beside_any_max_gives_nan_row(op, dtype, n, beside, at, masked):
    rng = np.random.default_rng(n)
    pos = {"first": 0, "second_vector": min(19, n - 2), "last": n - 1}[at]
    x = _nan_beside(rng, dtype, 3, n, beside, pos)
    where = None
    if masked:
        where = rng.random((3, n)) < 0.7
        where[1, [pos, n // 2]] = True
    got = getattr(numbasoftmax, op)(x, axis=-1, where=where)
    valid = np.ones((3, n), bool) if where is None else where
    nan = _nan_bits(got.dtype)
    if op == "logsumexp":
        assert bits(got[1]) == nan and np.isfinite(got[[0, 2]]).all()
        return
    assert (bits(got[1][valid[1]]) == nan).all()
    assert (got[1][~valid[1]] == (0 if op == "softmax" else -np.inf)).all()
    assert not np.isnan(got[[0, 2]]).any()


@pytest.mark.parametrize("beside", ["finite", "posinf", "neginf"])
@pytest.mark.parametrize("n", [37, 20000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", FORWARD_OPS + ("logsumexp",))
def test_nan_beside_any_max_along_a_strided_axis(op, dtype, n, beside):
    """As above along axis 0 of a C-ordered array (the lane kernel's bands): the bits of
    the same rows along the last axis, NaN rows with numpy's NaN pattern."""
    x = _nan_beside(np.random.default_rng(n), dtype, 40, n, beside, 19)
    f = getattr(numbasoftmax, op)
    got = f(np.ascontiguousarray(x.T), axis=0)
    assert_bitwise_equal(got.T, f(x, axis=-1))
    assert (bits(got.T[1]) == _nan_bits(got.dtype)).all()


@pytest.mark.parametrize("n", [9, 8193, 40000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
def test_neginf_among_finite(dtype, n):
    """-inf among finite values: probability exactly 0, log-probability exactly -inf, and
    the other elements as if the -inf ones were absent."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n)).astype(dtype)
    mask = rng.random((3, n)) < 0.3
    mask[:, 0] = False
    x[mask] = -np.inf
    sm = numbasoftmax.softmax(x)
    ls = numbasoftmax.log_softmax(x)
    assert (sm[mask] == 0).all()
    assert (ls[mask] == -np.inf).all()
    assert np.isfinite(ls[~mask]).all() and (sm[~mask] > 0).all()
    assert_matches_reference("softmax", sm, (x,))
    assert_matches_reference("log_softmax", ls, (x,))
    for i in range(3):
        kept = np.ascontiguousarray(x[i][~mask[i]])
        assert_matches_reference("softmax", sm[i][~mask[i]], (kept,))


@pytest.mark.parametrize("case", adversarial_cases(np.float64), ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", FORWARD_OPS)
def test_adversarial_forward(op, dtype, case):
    name = case[0]
    x = dict(adversarial_cases(dtype))[name]
    assert_matches_reference(op, call(op, (x,)), (x,))


@pytest.mark.parametrize("case", adversarial_cases(np.float64), ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_adversarial_backward(op, dtype, case):
    """Backward of the forward outputs of the adversarial inputs (NaN rows included)."""
    name = case[0]
    x = dict(adversarial_cases(dtype))[name]
    fwd = "softmax" if op == "softmax_backward" else "log_softmax"
    with np.errstate(over="ignore"):
        y = getattr(numbasoftmax.reference, fwd)(x).astype(dtype)
    dy = np.random.default_rng(3).standard_normal(x.shape).astype(dtype)
    assert_matches_reference(op, call(op, (y, dy)), (y, dy))


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_backward_nan_gradient_gives_nan_row(op):
    y = numbasoftmax.softmax(np.random.default_rng(0).standard_normal((3, 6)))
    if op == "log_softmax_backward":
        y = np.log(y)
    dy = np.ones((3, 6))
    dy[1, 2] = np.nan
    got = call(op, (y, dy))
    assert np.isnan(got[1]).all()
    assert np.isfinite(got[[0, 2]]).all()


def _odd_nans(rng, a):
    """``a`` with NaNs of both signs and a payload at random places: numpy's NaN, -NaN, and
    a quiet NaN with its lowest payload bit set."""
    a = a.copy()
    u = a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])
    flat = u.reshape(-1)
    nan = int(bits(np.array([np.nan], a.dtype))[0])
    sign = 1 << (8 * a.itemsize - 1)
    for value in (nan, nan | sign, nan | sign | 1, nan | 1):
        flat[rng.integers(flat.size, size=2)] = value
    return a


@pytest.mark.parametrize("n", [3, 37, 20000], ids=lambda n: f"n{n}")  # tiles, rows, chunks
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward",
                                "logsumexp_backward"])
def test_gradient_nans_have_numpys_pattern_on_every_driver(op, dtype, n):
    """NaNs of either sign, with payloads, in any input give every NaN of the gradient
    numpy's NaN pattern, whichever driver computes it: rows along the last axis, a strided
    axis read in place (the lane kernel), Fortran order. (An operation on NaNs gives one of
    its operands', and the compiled code may order them either way: the drivers' NaNs
    differed in sign.)"""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((20, n)) * 3).astype(dtype)
    if op == "logsumexp_backward":
        inputs = (_odd_nans(rng, x), _odd_nans(rng, rng.standard_normal(20).astype(dtype)),
                  _odd_nans(rng, rng.standard_normal(20).astype(dtype)))
    else:
        y = numbasoftmax.softmax(x)
        with np.errstate(divide="ignore"):
            y = np.log(y) if op == "log_softmax_backward" else y
        inputs = (_odd_nans(rng, y), _odd_nans(rng, rng.standard_normal((20, n)).astype(dtype)))
    f = getattr(numbasoftmax, op)
    rows = f(*inputs)
    along_axis0 = f(*(np.ascontiguousarray(a.T) if a.ndim == 2 else a for a in inputs), axis=0)
    fortran = f(*(np.asfortranarray(a) for a in inputs))
    assert_bitwise_equal(along_axis0.T, rows)
    assert_bitwise_equal(fortran, rows)
    assert np.isnan(rows).any()
    assert (bits(rows[np.isnan(rows)]) == _nan_bits(dtype)).all()


# ---------------------------------------------------------------------------------------
# huge values

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
def test_huge_values_softmax_no_overflow(dtype):
    h = special_values(dtype)["huge"]
    x = np.array([[h, h], [h, -h], [-h, -h]], dtype=dtype)
    got = numbasoftmax.softmax(x)
    np.testing.assert_array_equal(got, np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]], dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
def test_huge_values_log_softmax_no_overflow(dtype):
    h = special_values(dtype)["huge"]
    x = np.array([[h, h], [-h, -h], [h, h - abs(h) / 2]], dtype=dtype)
    got = numbasoftmax.log_softmax(x)
    ln2 = np.array(-math.log(2), dtype)
    np.testing.assert_array_equal(got[:2], np.full((2, 2), ln2))
    assert got[2, 0] == 0.0 and got[2, 1] == np.asarray(-abs(h) / 2, dtype)


@pytest.mark.parametrize("offset", [1e2, 1e4, 3e4, 1e6], ids=lambda o: f"{o:g}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_dtype_id)
def test_log_softmax_accuracy_with_large_offset(dtype, offset):
    """log_softmax is shift invariant; with an exact shift the result must stay as accurate
    as without it: within a few ulp of |x - max| + lse, not ulp(max)."""
    base = np.array([0.0, -0.5, -1.75, -3.25, -0.125, -8.0])  # exact after any shift below
    x = (base + offset).astype(dtype)
    assert np.array_equal(x.astype(np.float64) - offset, base)
    got = numbasoftmax.log_softmax(x)
    assert_matches_reference("log_softmax", got, (x,))
    assert_matches_reference("log_softmax", got, (base.astype(dtype),))


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6], ids=lambda o: f"{o:g}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_dtype_id)
def test_softmax_shift_invariant(dtype, offset):
    base = np.array([0.0, -0.5, -1.75, -3.25, -0.125, -8.0])
    x = (base + offset).astype(dtype)
    assert_matches_reference("softmax", numbasoftmax.softmax(x), (base.astype(dtype),))


# ---------------------------------------------------------------------------------------
# sums

SUM_SHAPES = [(64, 7), (16, 1000), (4, 8193), (2, 40000), (1, 1 << 20)]


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4, 3e38], ids=lambda s: f"scale{s:g}")
@pytest.mark.parametrize("shape", SUM_SHAPES, ids=_shape_id)
def test_float32_softmax_sums_to_one(shape, scale, rng):
    x = (rng.uniform(-1, 1, shape) * scale).astype(np.float32)
    s = numbasoftmax.softmax(x).astype(np.float64).sum(axis=-1)
    assert np.all(np.abs(s - 1) <= 1e-5), s[np.abs(s - 1) > 1e-5]


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5], ids=lambda s: f"offset{s:g}")
@pytest.mark.parametrize("shape", SUM_SHAPES, ids=_shape_id)
def test_float32_log_softmax_exp_sums_to_one(shape, offset, rng):
    x = (rng.standard_normal(shape) * 5 + offset).astype(np.float32)
    s = np.exp(numbasoftmax.log_softmax(x).astype(np.float64)).sum(axis=-1)
    assert np.all(np.abs(s - 1) <= 1e-5), s[np.abs(s - 1) > 1e-5]


# ---------------------------------------------------------------------------------------
# determinism

@pytest.mark.parametrize("shape", PATH_SHAPES + [(1, 32768)], ids=_shape_id)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_deterministic_repeated_calls(op, dtype, shape, rng):
    inputs = inputs_for(op, rng, shape, dtype)
    first = call(op, inputs)
    for _ in range(3):
        assert_bitwise_equal(call(op, inputs), first)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("shape", PATH_SHAPES[1:] + [(1, 32768), (1, 70000)], ids=_shape_id)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_deterministic_across_thread_counts(op, dtype, shape, rng):
    """One thread runs the serial driver, two the parallel one: same bits."""
    inputs = inputs_for(op, rng, shape, dtype)
    with num_threads(1):
        one = call(op, inputs)
    with num_threads(2):
        two = call(op, inputs)
    assert_bitwise_equal(two, one)


@pytest.mark.parametrize("shape", PATH_SHAPES + [(70, 1025)], ids=_shape_id)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_row_result_independent_of_batch(op, dtype, shape, rng):
    """A row gives the same bits alone as inside a batch (other driver, other tasks)."""
    inputs = inputs_for(op, rng, shape, dtype)
    batch = call(op, inputs)
    for i in (0, shape[0] - 1):
        alone = call(op, tuple(np.ascontiguousarray(a[i]) for a in inputs))
        assert_bitwise_equal(batch[i], alone)


# ---------------------------------------------------------------------------------------
# layout independence (bitwise): non-contiguous rows are copied in logical order

LAYOUT_CASES = [((7, 33), -1), ((300, 129), -1), ((300, 129), 0), ((6, 5, 7), (0, 2)),
                ((2, 40000), -1)]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: f"{_shape_id(c[0])}-ax{c[1]}")
@pytest.mark.parametrize("layout", [lay for lay in LAYOUTS if lay != "C"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_layout_independent_bits(op, dtype, layout, case, rng):
    shape, axis = case
    inputs = inputs_for(op, rng, shape, dtype, axis=axis)
    ref = call(op, inputs, axis=axis)
    got = call(op, tuple(in_layout(a, layout) for a in inputs), axis=axis)
    assert_bitwise_equal(got, ref)


# ---------------------------------------------------------------------------------------
# inputs never modified, out returned, aliasing

INPUT_CASES = [("serial", (7, 33), -1, "C"), ("parallel", (300, 129), -1, "C"),
               ("long_rows", (2, 40000), -1, "C"), ("staged_F", (300, 129), -1, "F"),
               ("axis0", (40, 50), 0, "C"), ("strided_rows", (30, 40), -1, "offset"),
               ("negative", (30, 40), (0, 1), "negative")]


@pytest.mark.parametrize("case", INPUT_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_input_never_modified(op, dtype, case, rng):
    _, shape, axis, layout = case
    inputs = tuple(in_layout(a, layout) for a in inputs_for(op, rng, shape, dtype, axis=axis))
    before = [bits(a).copy() for a in inputs]
    call(op, inputs, axis=axis)
    call(op, inputs, axis=axis, out=np.empty(shape, dtype))
    for a, b in zip(inputs, before, strict=True):
        np.testing.assert_array_equal(bits(a), b)


@pytest.mark.parametrize("out_layout", ["C", "negative"])
@pytest.mark.parametrize("op", OPS)
def test_out_is_returned(op, out_layout, rng):
    inputs = inputs_for(op, rng, (5, 6), np.float32)
    out = in_layout(np.zeros((5, 6), np.float32), out_layout)
    assert call(op, inputs, out=out) is out


@pytest.mark.parametrize("shape", PATH_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_inplace_bitwise_equal_to_out_of_place(op, dtype, shape, rng):
    """out=x gives the same bits as a fresh output (the same input, the same result)."""
    inputs = inputs_for(op, rng, shape, dtype)
    fresh = call(op, inputs)
    for k in range(len(inputs)):
        work = tuple(a.copy() for a in inputs)
        got = call(op, work, out=work[k])
        assert got is work[k]
        assert_bitwise_equal(got, fresh)


@pytest.mark.parametrize("shift", [1, -1, 7], ids=lambda s: f"shift{s}")
@pytest.mark.parametrize("op", OPS)
def test_out_partially_overlapping_input(op, shift, rng):
    """out overlaps the input, shifted by a few elements: the input is read as it was."""
    n = 50
    inputs = inputs_for(op, rng, (n,), np.float64)
    buf = np.zeros(n + abs(shift))
    if shift > 0:
        first, out = buf[:n], buf[shift:]
    else:
        first, out = buf[-shift:], buf[:n]
    first[...] = inputs[0]
    work = (first,) + inputs[1:]
    expected = call(op, inputs)
    assert call(op, work, out=out) is out
    assert_bitwise_equal(out, expected)


def test_backward_all_arguments_same_array():
    y = numbasoftmax.softmax(np.random.default_rng(0).standard_normal((4, 9)))
    expected = numbasoftmax.softmax_backward(y, y.copy())
    got = numbasoftmax.softmax_backward(y, y, out=y)
    assert got is y
    assert_bitwise_equal(got, expected)


# ---------------------------------------------------------------------------------------
# unusual but valid inputs

@pytest.mark.parametrize("op", OPS)
def test_readonly_input(op, rng):
    inputs = inputs_for(op, rng, (6, 20), np.float64)
    expected = call(op, inputs)
    for a in inputs:
        a.setflags(write=False)
    got = call(op, inputs)
    assert got.flags.writeable
    assert_bitwise_equal(got, expected)


@pytest.mark.parametrize("n", [3, 128])  # the lane kernel's short rows, the row kernel
@pytest.mark.parametrize("op", OPS)
def test_small_contiguous_calls_repeat_their_bits(op, n, rng):
    """From the second call on, a small C-contiguous call runs the serial driver's compiled
    entry without numba's dispatcher: the same bits as the first call, and as a read-only
    input, which the dispatcher runs."""
    inputs = inputs_for(op, rng, (8, n), np.float32)
    first = call(op, inputs)
    assert_bitwise_equal(call(op, inputs), first)
    for a in inputs:
        a.setflags(write=False)
    assert_bitwise_equal(call(op, inputs), first)


@pytest.mark.parametrize(("shape", "axis"), [
    ((8, 128), 0),  # serial column driver (its compiled entry from the second call on)
    ((3, 64, 40), 1),  # outer x axis x inner
    ((600, 100), 0),  # parallel column driver
    ((5, 7, 3), 0),  # 21 inner positions: the plan's COLUMNS threshold is 8
    ((40, 5), 0),  # 5 inner positions: the general path gathers the rows
])
@pytest.mark.parametrize("op", OPS)
def test_contiguous_calls_along_another_axis_give_the_general_paths_bits(op, shape, axis,
                                                                         rng):
    """A C-contiguous call along an axis that is not the last skips the layout plan: the
    bits of the general path (the same kernels, planned), first call and repeat, with a
    read-only input and into a C-contiguous ``out``."""
    from numbasoftmax import _cpu_path
    from numbasoftmax._ops import OPS as OP_TABLE

    inputs = inputs_for(op, rng, shape, np.float32, axis=axis)
    inputs[0].reshape(-1)[:3] = [np.inf, -np.inf, np.nan]
    general = _cpu_path.run(OP_TABLE[op], inputs, (axis,))
    assert_bitwise_equal(call(op, inputs, axis=axis), general)
    assert_bitwise_equal(call(op, inputs, axis=axis), general)
    out = np.empty(shape, np.float32)
    assert call(op, inputs, axis=axis, out=out) is out
    assert_bitwise_equal(out, general)
    for a in inputs:
        a.setflags(write=False)
    assert_bitwise_equal(call(op, inputs, axis=axis), general)


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("op", ["softmax", "log_softmax_backward"])
def test_contiguous_float16_calls_give_the_general_paths_bits(op, axis, rng):
    """float16 takes the fast path too (viewed as uint16, as the general path does)."""
    from numbasoftmax import _cpu_path
    from numbasoftmax._ops import OPS as OP_TABLE

    inputs = inputs_for(op, rng, (8, 128), np.float16, axis=axis)
    general = _cpu_path.run(OP_TABLE[op], inputs, (axis % 2,))
    assert general.dtype == np.float16
    assert_bitwise_equal(call(op, inputs, axis=axis), general)
    assert_bitwise_equal(call(op, inputs, axis=axis), general)


def test_broadcast_rows_input():
    """Rows broadcast with a zero stride (read in place, read-only)."""
    row = np.random.default_rng(0).standard_normal(10)
    x = np.broadcast_to(row, (5, 10))
    got = numbasoftmax.softmax(x)
    assert_bitwise_equal(got, np.broadcast_to(numbasoftmax.softmax(row), (5, 10)).copy())


def test_broadcast_along_axis_input():
    col = np.random.default_rng(0).standard_normal((5, 1))
    got = numbasoftmax.softmax(np.broadcast_to(col, (5, 10)), axis=-1)
    np.testing.assert_array_equal(got, np.full((5, 10), 0.1))


def test_unaligned_input():
    values = np.random.default_rng(0).standard_normal((3, 4))
    x = np.frombuffer(bytearray(b"\0" + values.tobytes()), dtype=np.float64, count=12,
                      offset=1).reshape(3, 4)
    assert not x.flags.aligned
    assert_bitwise_equal(numbasoftmax.softmax(x), numbasoftmax.softmax(values))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
def test_size_one_axis(dtype, rng):
    x = rng.standard_normal((4, 1, 3)).astype(dtype)
    np.testing.assert_array_equal(numbasoftmax.softmax(x, axis=1), np.ones_like(x))
    np.testing.assert_array_equal(numbasoftmax.log_softmax(x, axis=1), np.zeros_like(x))
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(
        numbasoftmax.softmax_backward(np.ones_like(x), dy, axis=1), np.zeros_like(x))
    np.testing.assert_array_equal(
        numbasoftmax.log_softmax_backward(np.zeros_like(x), dy, axis=1), np.zeros_like(x))


@pytest.mark.parametrize("op", OPS)
def test_empty_axis_tuple_is_elementwise(op, rng):
    """axis=() normalizes every element on its own (a softmax over one element)."""
    x = rng.standard_normal((3, 4))
    x[0, 0], x[1, 1], x[2, 2] = np.nan, np.inf, -np.inf
    inputs = (x,) if op in FORWARD_OPS else (x, rng.standard_normal((3, 4)))
    got = call(op, inputs, axis=())
    assert_matches_reference(op, got, inputs, axis=())
    if op == "softmax":
        finite = np.isfinite(x)
        assert (got[finite] == 1).all() and np.isnan(got[~finite]).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    "op", ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward"])
def test_long_rows_same_bits_in_small_and_large_batches(op, dtype):
    """Rows longer than ROW_TASK_MAX run whole per task in batches of >= 16 rows and as
    (row, chunk) tasks in smaller batches; both drivers must give the same bits."""
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    x = (rng.standard_normal((16, 40000)) * 4).astype(dtype)
    x[1, :20000] = -np.inf  # an all -inf chunk inside a finite row
    func = getattr(numbasoftmax, op)
    if op.endswith("backward"):
        y = numbasoftmax.softmax(x) if op == "softmax_backward" else numbasoftmax.log_softmax(x)
        dy = rng.standard_normal(x.shape).astype(dtype)
        big, small = func(y, dy), func(y[:2], dy[:2])
    else:
        big, small = func(x), func(x[:2])
    np.testing.assert_array_equal(big[:2].view(np.uint8), small.view(np.uint8))


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "softmax_backward",
                                "log_softmax_backward", "logsumexp", "logsumexp_backward"])
def test_out_in_the_other_byte_order(op):
    """As numpy's ufuncs: out= may hold the result dtype in the other byte order (a FITS
    file's '>f4' data, updated in place); it is written and returned, with the bits of
    the native call."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 9)).astype(np.float32)
    lse = numbasoftmax.logsumexp(x)
    args = {"logsumexp_backward": (x, lse, np.ones(5, np.float32)),
            "logsumexp": (x,)}.get(op, (x, x) if op.endswith("backward") else (x,))
    f = getattr(numbasoftmax, op)
    want = f(*args)
    swapped = want.dtype.newbyteorder()
    out = np.empty(want.shape, swapped)
    assert f(*args, out=out) is out
    assert np.array_equal(out.astype(want.dtype).view(np.uint32), want.view(np.uint32))


def test_in_place_on_big_endian_data():
    x = np.random.default_rng(9).standard_normal((3, 40)).astype(">f4")
    want = numbasoftmax.softmax(x.astype(np.float32))
    assert numbasoftmax.softmax(x, out=x) is x
    assert np.array_equal(x.astype(np.float32).view(np.uint32), want.view(np.uint32))
