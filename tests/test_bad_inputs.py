"""Bad inputs, table-driven: each class of bad input raises the documented exception type,
and the message names the offending parameter (and the offending dtype where there is one).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import numbasoftmax

X = np.arange(6, dtype=np.float64).reshape(2, 3)
X32 = X.astype(np.float32)
AxisError = np.exceptions.AxisError


def _readonly(shape=(2, 3), dtype=np.float64):
    a = np.zeros(shape, dtype)
    a.setflags(write=False)
    return a


class Unconvertible:
    """An object whose conversion to an array fails."""

    def __array__(self, dtype=None, copy=None):
        raise ValueError("no array for you")


# (id, positional args, keyword args, exception type, words the message must contain)
FORWARD_CASES = [
    # dtypes
    ("complex64", (X.astype(np.complex64),), {}, TypeError, ["x", "complex64"]),
    ("complex128", (X.astype(np.complex128),), {}, TypeError, ["x", "complex128"]),
    ("object_array", (X.astype(object),), {}, TypeError, ["x", "object"]),
    ("string", (np.array(["a", "b"]),), {}, TypeError, ["x", "<U1"]),
    ("bytes", (np.array([b"a"]),), {}, TypeError, ["x", "|S1"]),
    ("datetime", (np.array(["2024-01-01"], dtype="M8[D]"),), {}, TypeError,
     ["x", "datetime64"]),
    ("timedelta", (np.array([1], dtype="m8[s]"),), {}, TypeError, ["x", "timedelta64"]),
    ("longdouble", (X.astype(np.longdouble),), {}, TypeError, ["x"]),
    ("structured", (np.zeros(3, dtype=[("a", "f8")]),), {}, TypeError, ["x"]),
    ("string_scalar", ("abc",), {}, TypeError, ["x"]),
    # not convertible to an array
    ("ragged_list", ([[1.0, 2.0], [3.0]],), {}, TypeError, ["x"]),
    ("none", (None,), {}, TypeError, ["x"]),
    ("plain_object", (object(),), {}, TypeError, ["x"]),
    ("dict", ({"a": 1},), {}, TypeError, ["x"]),
    ("array_raises", (Unconvertible(),), {}, TypeError, ["x"]),
    # axis
    ("axis_too_big", (X,), {"axis": 2}, AxisError, ["axis"]),
    ("axis_too_negative", (X,), {"axis": -3}, AxisError, ["axis"]),
    ("axis_tuple_out_of_range", (X,), {"axis": (0, 5)}, AxisError, ["axis"]),
    ("axis_0d_out_of_range", (np.float64(1.0),), {"axis": 1}, AxisError, ["axis"]),
    ("axis_duplicate", (X,), {"axis": (0, 0)}, ValueError, ["axis"]),
    ("axis_duplicate_negative", (X,), {"axis": (1, -1)}, ValueError, ["axis"]),
    ("axis_duplicate_0d", (np.float64(1.0),), {"axis": (0, 0)}, ValueError, ["axis"]),
    # a 0-d array accepts axis 0 or -1 (as torch does); both at once name it twice
    ("axis_duplicate_0d_mixed_sign", (np.float64(1.0),), {"axis": (0, -1)}, ValueError,
     ["axis"]),
    ("axis_float", (X,), {"axis": 1.0}, TypeError, ["axis"]),
    ("axis_numpy_float", (X,), {"axis": np.float64(1.0)}, TypeError, ["axis"]),
    ("axis_float_in_tuple", (X,), {"axis": (1.0,)}, TypeError, ["axis"]),
    ("axis_float_in_tuple_0d", (np.float64(1.0),), {"axis": (0.0,)}, TypeError, ["axis"]),
    ("axis_nested_tuple", (X,), {"axis": ((0,),)}, TypeError, ["axis"]),
    ("axis_bool", (X,), {"axis": True}, TypeError, ["axis"]),
    ("axis_numpy_bool", (X,), {"axis": np.True_}, TypeError, ["axis"]),
    ("axis_bool_in_tuple", (X,), {"axis": (0, True)}, TypeError, ["axis"]),
    ("axis_string", (X,), {"axis": "last"}, TypeError, ["axis"]),
    ("axis_list", (X,), {"axis": [0]}, TypeError, ["axis"]),
    # out
    ("out_wrong_shape", (X,), {"out": np.empty((3, 2))}, ValueError, ["out", r"\(2, 3\)"]),
    ("out_wrong_ndim", (X,), {"out": np.empty(6)}, ValueError, ["out"]),
    ("out_wrong_dtype", (X,), {"out": np.empty((2, 3), np.float32)}, TypeError,
     ["out", "float32", "float64"]),
    ("out_int_for_int_input", (X.astype(np.int64),), {"out": np.empty((2, 3), np.int64)},
     TypeError, ["out", "float64"]),
    ("out_float16_for_float32", (X32,), {"out": np.empty((2, 3), np.float16)}, TypeError,
     ["out"]),
    ("out_list", (X,), {"out": [[0.0] * 3] * 2}, TypeError, ["out", "list"]),
    ("out_numpy_scalar", (np.float64(1.0),), {"out": np.float64(0.0)}, TypeError, ["out"]),
    ("out_readonly", (X,), {"out": _readonly()}, ValueError, ["out"]),
    ("out_broadcast_readonly", (X,), {"out": np.broadcast_to(np.zeros(3), (2, 3))}, ValueError,
     ["out"]),
    # where
    ("where_float", (X,), {"where": np.ones((2, 3))}, TypeError, ["where", "float64"]),
    ("where_int", (X,), {"where": np.ones(3, np.int8)}, TypeError, ["where", "int8"]),
    ("where_list_of_ints", (X,), {"where": [1, 0, 1]}, TypeError, ["where"]),
    ("where_not_broadcasting", (X,), {"where": np.ones(2, bool)}, ValueError,
     ["where", r"\(2,\)", r"\(2, 3\)"]),
    ("where_too_many_dims", (X,), {"where": np.ones((4, 2, 3), bool)}, ValueError,
     ["where", r"\(4, 2, 3\)", r"\(2, 3\)"]),
    ("where_ragged", (X,), {"where": [[True], [True, False]]}, TypeError, ["where"]),
    # dtype
    ("dtype_int", (X,), {"dtype": np.int32}, TypeError, ["dtype"]),
    ("dtype_complex", (X,), {"dtype": complex}, TypeError, ["dtype"]),
    ("dtype_unknown", (X,), {"dtype": "float"}, None, []),  # "float" is float64: accepted
    ("dtype_garbage", (X,), {"dtype": "nope"}, TypeError, ["dtype"]),
    ("out_not_of_dtype", (X,), {"dtype": np.float32, "out": np.empty((2, 3))}, TypeError,
     ["out", "float32", "float64"]),
]

BACKWARD_CASES = [
    ("shape_mismatch", lambda a, b: (X, X.T), {}, ValueError, ["{a}", "{b}"]),
    ("no_broadcasting", lambda a, b: (X, X[:1]), {}, ValueError, ["{a}", "{b}"]),
    ("dtype_mismatch", lambda a, b: (X, X32), {}, TypeError, ["{a}", "{b}", "float32"]),
    ("dtype_mismatch_f16", lambda a, b: (X.astype(np.float16), X32), {}, TypeError,
     ["{a}", "{b}", "float16"]),
    ("first_complex", lambda a, b: (X.astype(complex), X), {}, TypeError, ["{a}", "complex128"]),
    ("second_complex", lambda a, b: (X, X.astype(complex)), {}, TypeError, ["{b}", "complex128"]),
    ("first_string", lambda a, b: (np.array(["a"]), np.zeros(1)), {}, TypeError, ["{a}"]),
    ("second_object", lambda a, b: (X, X.astype(object)), {}, TypeError, ["{b}", "object"]),
    ("second_ragged", lambda a, b: (np.zeros(2), [[1.0], [1.0, 2.0]]), {}, TypeError, ["{b}"]),
    ("first_none", lambda a, b: (None, X), {}, TypeError, ["{a}", "None"]),
    # C-contiguous along the last axis: the fast path, which once took None for a forward
    # call's missing second input and ran the gradient of y with itself
    ("second_none", lambda a, b: (X, None), {}, TypeError, ["{b}", "None"]),
    ("second_none_masked", lambda a, b: (X, None), {"where": np.ones((2, 3), bool)},
     TypeError, ["{b}", "None"]),
    ("axis_out_of_range", lambda a, b: (X, X), {"axis": 3}, AxisError, ["axis"]),
    ("axis_duplicate", lambda a, b: (X, X), {"axis": (0, -2)}, ValueError,
     ["axis", r"\(0, -2\)"]),
    ("axis_float", lambda a, b: (X, X), {"axis": 0.5}, TypeError, ["axis"]),
    ("out_wrong_shape", lambda a, b: (X, X), {"out": np.empty((2, 2))}, ValueError, ["out"]),
    ("out_wrong_dtype", lambda a, b: (X, X), {"out": np.empty((2, 3), np.float32)}, TypeError,
     ["out"]),
    ("out_not_array", lambda a, b: (X, X), {"out": (1, 2)}, TypeError, ["out"]),
    ("out_readonly", lambda a, b: (X, X), {"out": _readonly()}, ValueError, ["out"]),
    ("where_float", lambda a, b: (X, X), {"where": np.ones(3)}, TypeError, ["where"]),
    ("where_not_broadcasting", lambda a, b: (X, X), {"where": np.ones((3, 2), bool)},
     ValueError, ["where", r"\(3, 2\)", r"\(2, 3\)", "{a}"]),
    ("dtype_int", lambda a, b: (X, X), {"dtype": "int64"}, TypeError, ["dtype"]),
]

BACKWARD_NAMES = {"softmax_backward": ("y", "dy"), "log_softmax_backward": ("z", "dz")}


def _assert_names(excinfo, words):
    msg = str(excinfo.value)
    for w in words:
        pattern = w if "\\" in w else rf"(?<![\w]){re.escape(w)}(?![\w])"
        assert re.search(pattern, msg), f"message {msg!r} does not name {w!r}"


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_bad_forward_input(op, case):
    _, args, kwargs, exc, words = case
    if exc is None:  # a near miss that is valid
        getattr(numbasoftmax, op)(*args, **kwargs)
        return
    with pytest.raises(exc) as excinfo:
        getattr(numbasoftmax, op)(*args, **kwargs)
    _assert_names(excinfo, words)
    assert str(excinfo.value).startswith(f"{op}(): "), str(excinfo.value)  # which call


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_bad_backward_input(op, case):
    _, make, kwargs, exc, words = case
    a, b = BACKWARD_NAMES[op]
    with pytest.raises(exc) as excinfo:
        getattr(numbasoftmax, op)(*make(a, b), **kwargs)
    _assert_names(excinfo, [w.format(a=a, b=b) for w in words])
    assert str(excinfo.value).startswith(f"{op}(): "), str(excinfo.value)


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "softmax_backward",
                                "log_softmax_backward"])
def test_out_is_keyword_only(op):
    args = (X,) if op in ("softmax", "log_softmax") else (X, X)
    with pytest.raises(TypeError):
        getattr(numbasoftmax, op)(*args, -1, np.empty((2, 3)))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_bad_out_leaves_out_untouched(op):
    """A rejected call writes nothing."""
    out = np.full((2, 3), 7.0)
    out.setflags(write=False)
    with pytest.raises(ValueError):
        getattr(numbasoftmax, op)(X, out=out)
    wrong = np.full((2, 3), 7.0, np.float32)
    with pytest.raises(TypeError):
        getattr(numbasoftmax, op)(X, out=wrong)
    assert (wrong == 7.0).all()


class _RefusesNumpy:
    """As a CPU torch tensor that requires grad: its conversion to numpy raises
    RuntimeError."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use "
                           "tensor.detach().numpy() instead.")


def test_an_array_like_whose_conversion_raises_runtime_error():
    with pytest.raises(TypeError, match=r"softmax\(\): x must be array-like.*detach"):
        numbasoftmax.softmax(_RefusesNumpy())


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_gradient_pair_of_other_dtypes_names_the_dtypes_given(op):
    """An integer second array computes in float64: the error names what was passed."""
    with pytest.raises(TypeError, match=r"must have the same dtype; got float32 and int32"):
        getattr(numbasoftmax, op)(np.ones(3, np.float32), np.ones(3, np.int32))


def test_gradient_pair_with_an_integer_input_and_dtype():
    """An integer input is read as the requested dtype, so it pairs with a float input of
    that dtype."""
    y, dy = np.ones(3, np.float32), np.arange(3, dtype=np.int32)
    got = numbasoftmax.softmax_backward(y, dy, dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, numbasoftmax.softmax_backward(y, dy.astype(np.float32)))


# out= whose elements share memory: every function's rows would overwrite one another
# (nondeterministically with the parallel drivers); refused before anything is written
_ALL_OPS = ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward", "logsumexp",
            "logsumexp_backward"]


def _call_with_out(op, x, out, **kwargs):
    """``op`` on ``x`` (4, 5) along the last axis with ``out``; returns the inputs it read."""
    f = getattr(numbasoftmax, op)
    if op in ("softmax", "log_softmax", "logsumexp"):
        inputs = (x,)
    elif op == "logsumexp_backward":
        inputs = (x, np.full(4, 3.0), np.ones(4))  # lse, dlse of the rows' shape
    else:
        inputs = (x, x[::-1].copy())
    f(*inputs, out=out, **kwargs)
    return inputs


@pytest.mark.parametrize(("op", "zero_axis"), [(op, 0) for op in _ALL_OPS] + [
    (op, 1) for op in _ALL_OPS if op != "logsumexp"])  # logsumexp's out: (4,), one axis
def test_out_with_a_zero_stride_is_refused(op, zero_axis):
    """A writeable out with stride 0 along an axis of length > 1 (as_strided) raises
    ValueError naming out, the axis and its length; nothing is written or modified."""
    x = np.arange(20, dtype=np.float64).reshape(4, 5) / 7
    if op == "logsumexp":
        shape, strides = (4,), (0,)
    else:
        shape, strides = (4, 5), ((0, 8) if zero_axis == 0 else (8, 0))
    base = np.full(5 if zero_axis == 0 else 4, 7.0)
    out = np.lib.stride_tricks.as_strided(base, shape=shape, strides=strides)
    assert out.flags.writeable
    copies = None
    with pytest.raises(ValueError) as excinfo:
        copies = _call_with_out(op, x, out)
    assert copies is None
    msg = str(excinfo.value)
    assert msg.startswith(f"{op}(): "), msg
    _assert_names(excinfo, ["out", "stride 0", f"axis {zero_axis}",
                            f"length {shape[zero_axis]}"])
    assert (base == 7.0).all()
    np.testing.assert_array_equal(x, np.arange(20, dtype=np.float64).reshape(4, 5) / 7)


@pytest.mark.parametrize("op", ["softmax", "logsumexp_backward"])
def test_out_with_a_zero_stride_along_a_length_one_axis_is_accepted(op):
    """Stride 0 along an axis of one element (or of an empty array) shares nothing."""
    x = np.arange(5, dtype=np.float64).reshape(1, 5)
    out = np.lib.stride_tricks.as_strided(np.zeros(5), shape=(1, 5), strides=(0, 8))
    f = getattr(numbasoftmax, op)
    args = (x,) if op == "softmax" else (x, numbasoftmax.logsumexp(x), np.ones(1))
    np.testing.assert_array_equal(f(*args, out=out), f(*args))
    empty = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(3, 0), strides=(0, 8))
    e = np.zeros((3, 0))
    args = (e,) if op == "softmax" else (e, np.zeros(3), np.ones(3))
    assert f(*args, out=empty) is empty


def _overlapping_sign_outs(kind):
    """(value out, sign out, the memory they are views of) of 4 float64 elements each."""
    if kind == "same_array":
        base = np.full(4, 7.0)
        return base, base, base
    if kind == "same_memory":  # two array objects, one memory
        base = np.full(4, 7.0)
        return base[:], base.view(), base
    if kind == "partial":
        base = np.full(8, 7.0)
        return base[:4], base[3:7], base
    if kind == "byte_swapped":  # written through a native copy (store_out): still one array
        base = np.full(4, 7.0, ">f8")
        return base, base, base
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["same_array", "same_memory", "partial", "byte_swapped"])
def test_logsumexp_sign_out_overlapping_value_out_is_refused(kind):
    """logsumexp(return_sign=True, out=(o, o)) once returned the sign in both: the two outs
    must not overlap (ValueError naming both); nothing is written or modified."""
    x = np.arange(20, dtype=np.float64).reshape(4, 5) / 7
    value, sign, base = _overlapping_sign_outs(kind)
    with pytest.raises(ValueError) as excinfo:
        numbasoftmax.logsumexp(x, return_sign=True, out=(value, sign))
    msg = str(excinfo.value)
    assert msg.startswith("logsumexp(): "), msg
    assert "out[0]" in msg and "out[1]" in msg and "overlap" in msg, msg
    assert (base == 7.0).all()
    np.testing.assert_array_equal(x, np.arange(20, dtype=np.float64).reshape(4, 5) / 7)


def test_logsumexp_sign_outs_interleaved_in_one_buffer_are_accepted():
    """The value and sign columns of one (m, 2) buffer share no element (the Dask backend's
    tasks write them so): accepted, each holding its own result."""
    x = np.arange(20, dtype=np.float64).reshape(4, 5) / 7
    both = np.zeros((4, 2))
    value, sign = numbasoftmax.logsumexp(x, return_sign=True, out=(both[:, 0], both[:, 1]))
    want = numbasoftmax.logsumexp(x, return_sign=True)
    np.testing.assert_array_equal(both[:, 0], want[0])
    np.testing.assert_array_equal(both[:, 1], want[1])
    assert np.shares_memory(value, both) and np.shares_memory(sign, both)
