"""``dtype=``: the result has that dtype and is computed as if the input had been cast to it
first, without a cast pass: bitwise the call on ``x.astype(dtype)``, for every pair of
float dtypes (the kernels' loads round and widen: float64 -> float16 goes through float32
rounded to odd, so it is rounded once), on the row kernel and the lane kernel (short rows,
a strided axis in place)."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest
from _helpers import assert_bitwise_equal, inputs_for

import numbasoftmax as nsm

FLOATS = ("float16", "float32", "float64")
PAIRS = [(a, b) for a in FLOATS for b in FLOATS if a != b]


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _x(rng, shape, dtype):
    x = rng.standard_normal(shape) * 5
    x.flat[::7] *= 1e3  # values that round differently in each dtype
    with np.errstate(over="ignore"):
        return x.astype(dtype)


@pytest.mark.parametrize("src, dst", PAIRS)
def test_softmax_as_if_cast(src, dst, rng):
    x = _x(rng, (30, 100), src)
    got = nsm.softmax(x, dtype=dst)
    assert got.dtype == dst
    assert_bitwise_equal(got, nsm.softmax(x.astype(dst)))


@pytest.mark.parametrize("shape, axis", [((50, 5), -1), ((40, 24), 0)], ids=["short", "axis0"])
def test_lane_kernel_as_if_cast(shape, axis, rng):
    """Short rows and a strided axis in place (the lane kernel) read as if cast too."""
    x = _x(rng, shape, np.float16)
    assert_bitwise_equal(nsm.softmax(x, axis=axis, dtype=np.float32),
                         nsm.softmax(x.astype(np.float32), axis=axis))


@pytest.mark.parametrize("op", ["log_softmax_backward"])
def test_gradient_float16_to_float32(op, rng):
    inputs = inputs_for(op, rng, (30, 100), np.float16)
    got = getattr(nsm, op)(*inputs, dtype=np.float32)
    assert_bitwise_equal(got, getattr(nsm, op)(*(a.astype(np.float32) for a in inputs)))


def test_logsumexp_as_if_cast(rng):
    x = _x(rng, (30, 100), np.float16)
    got = nsm.logsumexp(x, dtype=np.float32)
    assert got.dtype == np.float32
    assert_bitwise_equal(got, nsm.logsumexp(x.astype(np.float32)))
    x = _x(rng, (30, 100), np.float32)
    b = rng.standard_normal(100)
    v, s = nsm.logsumexp(x, b=b, dtype=np.float64, return_sign=True)
    want = nsm.logsumexp(x.astype(np.float64), b=b, return_sign=True)
    assert_bitwise_equal(v, want[0])
    assert_bitwise_equal(s, want[1])


def test_float64_to_float16_rounds_once():
    """Halfway cases where float64 -> float32 -> float16 would round twice."""
    h = np.float64(1.0) + 2.0 ** -11  # exactly between two float16 values
    x = np.array([[h + 2.0 ** -40, h - 2.0 ** -40, h, 1.0 + 3 * 2.0 ** -11]])
    assert_bitwise_equal(nsm.log_softmax(x, dtype=np.float16),
                         nsm.log_softmax(x.astype(np.float16)))


def test_integer_input_with_dtype(rng):
    x = rng.integers(-5, 5, (4, 90))
    got = nsm.softmax(x, dtype=np.float32)
    assert_bitwise_equal(got, nsm.softmax(x.astype(np.float32)))
    assert nsm.logsumexp(x, dtype="float16").dtype == np.float16


def test_masked_with_dtype(rng):
    x = _x(rng, (20, 50), np.float16)
    where = rng.random((20, 50)) < 0.5
    assert_bitwise_equal(nsm.softmax(x, where=where, dtype=np.float32),
                         nsm.softmax(x.astype(np.float32), where=where))


def test_out_must_have_the_dtype():
    x = np.zeros((3, 4), np.float16)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        nsm.softmax(x, dtype=np.float32, out=np.empty((3, 4), np.float16))
    out = np.empty((3, 4), np.float32)
    assert nsm.softmax(x, dtype=np.float32, out=out) is out


@pytest.mark.parametrize("bad", [np.int32, "int64", complex, "float128", object, "nope"])
def test_bad_dtype_raises_naming_it(bad):
    with pytest.raises(TypeError, match="dtype must be None, float16, float32 or float64"):
        nsm.softmax(np.zeros(3), dtype=bad)
    with pytest.raises(TypeError, match="dtype must be"):
        nsm.logsumexp(np.zeros(3), dtype=bad)


def test_no_cast_pass(rng):
    """float16 in, float32 out: the call allocates its result and nothing of x's size."""
    x = _x(rng, (1000, 1000), np.float16)
    out = np.empty(x.shape, np.float32)
    nsm.softmax(x, dtype=np.float32, out=out)
    tracemalloc.start()
    try:
        nsm.softmax(x, dtype=np.float32, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000, peak
