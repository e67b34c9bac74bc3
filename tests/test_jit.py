"""numbasoftmax.jit: the row kernels called from a user's own @njit code (serial and
prange) give the public API's results bit for bit (float32 and float64 rows)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from _helpers import assert_bitwise_equal, assert_matches_reference, inputs_for
from numba import njit, prange

import numbasoftmax
from numbasoftmax.jit import (
    log_softmax_backward_row,
    log_softmax_row,
    softmax_backward_row,
    softmax_row,
)


@njit
def user_softmax(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        softmax_row(x[i], out[i])
    return out


@njit
def user_log_softmax(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        log_softmax_row(x[i], out[i])
    return out


@njit
def user_softmax_backward(y, dy):
    out = np.empty_like(y)
    for i in range(y.shape[0]):
        softmax_backward_row(y[i], dy[i], out[i])
    return out


@njit
def user_log_softmax_backward(z, dz):
    out = np.empty_like(z)
    for i in range(z.shape[0]):
        log_softmax_backward_row(z[i], dz[i], out[i])
    return out


@njit(parallel=True)
def user_softmax_prange(x):
    out = np.empty_like(x)
    for i in prange(x.shape[0]):
        softmax_row(x[i], out[i])
    return out


@njit(parallel=True)
def user_log_softmax_prange(x):
    out = np.empty_like(x)
    for i in prange(x.shape[0]):
        log_softmax_row(x[i], out[i])
    return out


@njit(parallel=True)
def user_softmax_backward_prange(y, dy):
    out = np.empty_like(y)
    for i in prange(y.shape[0]):
        softmax_backward_row(y[i], dy[i], out[i])
    return out


@njit(parallel=True)
def user_log_softmax_backward_prange(z, dz):
    out = np.empty_like(z)
    for i in prange(z.shape[0]):
        log_softmax_backward_row(z[i], dz[i], out[i])
    return out


@njit
def user_attention(scores, values):
    """A fused user kernel: softmax of each row of scores, then weights @ values."""
    m, n = scores.shape
    w = np.empty(n, scores.dtype)
    out = np.zeros((m, values.shape[1]), scores.dtype)
    for i in range(m):
        softmax_row(scores[i], w)
        for j in range(n):
            out[i] += w[j] * values[j]
    return out


@njit
def user_softmax_inplace(x):
    for i in range(x.shape[0]):
        softmax_row(x[i], x[i])


USERS = {
    "softmax": (user_softmax, user_softmax_prange),
    "log_softmax": (user_log_softmax, user_log_softmax_prange),
    "softmax_backward": (user_softmax_backward, user_softmax_backward_prange),
    "log_softmax_backward": (user_log_softmax_backward, user_log_softmax_backward_prange),
}


# (5, 33): the serial driver; (2000, 32), (40, 1024), (40, 1025): the parallel one with rows
# below, at and above one block (the backward drivers' short-row path); then chunked rows
@pytest.mark.parametrize("shape", [(5, 33), (2000, 32), (40, 1024), (40, 1025), (3, 8193),
                                   (2, 40000)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("parallel", [False, True], ids=["njit", "prange"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", list(USERS))
def test_user_njit_matches_public_api(op, dtype, parallel, shape):
    rng = np.random.default_rng(99)
    inputs = inputs_for(op, rng, shape, dtype)
    got = USERS[op][parallel](*inputs)
    expected = getattr(numbasoftmax, op)(*inputs)
    assert_bitwise_equal(got, expected)
    assert_matches_reference(op, got, inputs)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=repr)
def test_jit_non_finite_rules(value):
    x = np.array([[0.0, 1.0, value], [-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]])
    np.testing.assert_array_equal(user_softmax(x), numbasoftmax.softmax(x))
    assert np.isnan(user_softmax(x)[1]).all()
    assert user_softmax(x)[2, 1] == 0.0


def test_user_fused_kernel():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((6, 50)).astype(np.float32)
    values = rng.standard_normal((50, 4)).astype(np.float32)
    expected = numbasoftmax.softmax(scores).astype(np.float64) @ values.astype(np.float64)
    np.testing.assert_allclose(user_attention(scores, values), expected, rtol=1e-5, atol=1e-6)


def test_row_function_in_place():
    x = np.random.default_rng(2).standard_normal((4, 100))
    original = x.copy()
    user_softmax_inplace(x)
    assert_matches_reference("softmax", x, (original,))


def test_jit_functions_are_numba_dispatchers():
    for f in (softmax_row, log_softmax_row, softmax_backward_row, log_softmax_backward_row):
        assert isinstance(f, numba.core.registry.CPUDispatcher)
    assert set(numbasoftmax.jit.__all__) == {"softmax_row", "log_softmax_row",
                                              "softmax_backward_row", "log_softmax_backward_row"}


@njit
def user_softmax_columns(x):
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        softmax_row(x[:, j], out[:, j])
    return out


@njit
def user_log_softmax_backward_columns(z, dz):
    out = np.empty_like(z)
    for j in range(z.shape[1]):
        log_softmax_backward_row(z[:, j], dz[:, j], out[:, j])
    return out


def test_strided_rows_give_the_api_bits():
    """Rows that are columns of a C-ordered matrix (non-contiguous 1-D views) take a slower
    load path in the row kernel, with the same bits as the API along axis 0."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 7)).astype(np.float32)
    assert_bitwise_equal(user_softmax_columns(x), numbasoftmax.softmax(x, axis=0))
    z = numbasoftmax.log_softmax(x, axis=0)
    assert_bitwise_equal(user_log_softmax_backward_columns(z, x),
                         numbasoftmax.log_softmax_backward(z, x, axis=0))


@pytest.mark.parametrize("func, arrays, message", [
    (softmax_row, (100, 2), "out must have the length of x"),
    (log_softmax_row, (100, 101), "out must have the length of x"),
    (softmax_backward_row, (100, 99, 100), "dy and out must have the length of y"),
    (softmax_backward_row, (100, 100, 3), "dy and out must have the length of y"),
    (log_softmax_backward_row, (100, 2, 100), "dz and out must have the length of z"),
], ids=["softmax-out", "log_softmax-out", "softmax_backward-dy", "softmax_backward-out",
        "log_softmax_backward-dz"])
def test_rows_of_other_lengths_are_refused(func, arrays, message):
    """The kernel reads and writes the first row's length: a shorter out or second row
    would be written or read past its end."""
    rows = [np.zeros(n) for n in arrays]
    before = [r.copy() for r in rows]
    with pytest.raises(ValueError, match=message):
        func(*rows)
    for r, b in zip(rows, before, strict=True):
        assert np.array_equal(r, b)


@njit
def user_mixed_dtypes(x):
    out = np.empty(x.shape, np.float64)
    softmax_row(x, out)
    return out


_F32, _F64 = np.zeros(8, np.float32), np.zeros(8)


@pytest.mark.parametrize("func, args, message", [
    (softmax_row, (_F32, _F64), r"softmax_row\(\): out must have the dtype of x \(float32\); "
                                r"got float64"),
    (log_softmax_row, (np.zeros((2, 4)), np.zeros((2, 4))),
     r"log_softmax_row\(\): x must be a 1-D float32 or float64 array; got array\(float64, 2d"),
    (softmax_backward_row, (_F64, _F32, _F64),
     r"softmax_backward_row\(\): dy must have the dtype of y \(float64\); got float32"),
    (log_softmax_backward_row, (np.arange(8), _F64, _F64),
     r"log_softmax_backward_row\(\): z must be a 1-D float32 or float64 array; got "
     r"array\(int64"),
], ids=["out-dtype", "2-d", "dy-dtype", "integer"])
def test_arguments_the_kernel_cannot_take_are_a_type_error(func, args, message):
    """What the row kernel takes is said by the function, not by a numba typing error from
    deep inside the kernel."""
    with pytest.raises(TypeError, match=message):
        func(*args)


def test_a_type_error_from_inside_users_njit_code():
    with pytest.raises(TypeError, match=r"out must have the dtype of x \(float32\)"):
        user_mixed_dtypes(np.zeros(8, np.float32))


def test_a_read_only_out_is_refused():
    """As the public functions' out=: a read-only buffer is never written."""
    out = np.frombuffer(bytes(40), np.float64)  # read-only: the bytes object's memory
    x = np.ones(5)
    with pytest.raises(ValueError, match=r"softmax_row\(\): out must be writeable; got a "
                                         r"read-only array"):
        softmax_row(x, out)
    assert not out.any()
    x.flags.writeable = False
    got = np.empty(5)
    softmax_row(x, got)  # a read-only row is read
    assert_bitwise_equal(got, numbasoftmax.softmax(x))


@pytest.mark.parametrize("func", [softmax_row, softmax_backward_row],
                         ids=["softmax_row", "softmax_backward_row"])
def test_an_out_of_shared_elements_is_refused(func):
    """As the public functions' out=: elements at stride 0 (one memory) are refused, from
    Python and from users' @njit code; a single element at stride 0 is a plain out."""
    x = np.linspace(-1.0, 1.0, 5)
    args = (x,) if func is softmax_row else (numbasoftmax.softmax(x), np.ones(5))
    memory = np.full(1, 7.0)
    out = np.lib.stride_tricks.as_strided(memory, shape=(5,), strides=(0,))
    name = func.py_func.__name__
    with pytest.raises(ValueError, match=rf"{name}\(\): out must not have elements that "
                                         r"share memory; got stride 0"):
        func(*args, out)
    assert memory[0] == 7.0

    @njit
    def users(*a):
        func(*a)

    with pytest.raises(ValueError, match="share memory"):
        users(*args, out)
    one = np.lib.stride_tricks.as_strided(memory, shape=(1,), strides=(0,))
    func(*(a[:1] for a in args), one)
    public = getattr(numbasoftmax, name.removesuffix("_row"))
    assert_bitwise_equal(memory, public(*(a[:1] for a in args)))
