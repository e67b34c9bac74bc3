"""ndarray subclasses: masked arrays as ``out=`` are refused (the mask would be ignored; masked
inputs act as ``where=~mask``: tests/test_where.py), and so are dask arrays of masked
blocks; every other subclass is computed on its ndarray data and gives a plain ndarray,
bitwise the result for the same data as a plain array. As ``out=``, a subclass is written
through and returned."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import OPS, assert_bitwise_equal, call, inputs_for

import numbasoftmax

# np.matrix is pending deprecation; it is tested because users still pass it
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


class Tagged(np.ndarray):
    """A user's subclass with extra state."""

    def __array_finalize__(self, obj):
        self.tag = getattr(obj, "tag", "tagged")


def _inputs(op, shape=(4, 8), dtype=np.float32):
    return inputs_for(op, np.random.default_rng(5), shape, dtype)


# ---------------------------------------------------------------------------------------
# masked arrays

@pytest.mark.parametrize("op", ["softmax", "softmax_backward"])
def test_masked_out_raises(op):
    inputs = _inputs(op)
    out = np.ma.masked_array(np.zeros((4, 8), np.float32))
    with pytest.raises(TypeError, match="out must not be a masked array"):
        call(op, inputs, out=out)
    assert (out.data == 0).all()


def test_masked_dask_array_raises_at_call_time():
    da = pytest.importorskip("dask.array")
    x = np.ma.masked_array(np.ones((4, 6)), mask=np.eye(4, 6, dtype=bool))
    dx = da.from_array(x, chunks=2, asarray=False)
    with pytest.raises(TypeError, match="x must not be a masked array"):
        numbasoftmax.softmax(dx)


@pytest.mark.parametrize("case", ["x", "dy"])
def test_masked_array_next_to_a_dask_argument_says_what_to_pass(case):
    da = pytest.importorskip("dask.array")
    data = np.ones((4, 6))
    masked = np.ma.masked_array(data, mask=np.eye(4, 6, dtype=bool))
    if case == "x":
        f, args, kw = numbasoftmax.softmax, (masked,), {"where": da.ones((4, 6), dtype=bool)}
    else:
        f, args, kw = numbasoftmax.softmax_backward, (da.from_array(data), masked), {}
    with pytest.raises(TypeError, match=rf"{case} is a masked array next to a dask argument"
                                        rf".*where=~{case}\.mask"):
        f(*args, **kw)


# ---------------------------------------------------------------------------------------
# other subclasses: computed on the data

@pytest.mark.parametrize("axis", [-1, 0, None])
@pytest.mark.parametrize("op", OPS)
def test_memmap_input_gives_plain_ndarray(op, axis, tmp_path):
    inputs = _inputs(op, (64, 48))
    maps = []
    for k, a in enumerate(inputs):
        mm = np.memmap(tmp_path / f"a{k}.dat", dtype=a.dtype, mode="w+", shape=a.shape)
        mm[...] = a
        mm.flush()
        maps.append(np.memmap(tmp_path / f"a{k}.dat", dtype=a.dtype, mode="r", shape=a.shape))
    got = call(op, tuple(maps), axis=axis)
    assert type(got) is np.ndarray
    assert_bitwise_equal(got, call(op, inputs, axis=axis))


@pytest.mark.parametrize("op", OPS)
def test_memmap_out_is_written_and_returned(op, tmp_path):
    inputs = _inputs(op, (16, 40))
    out = np.memmap(tmp_path / "out.dat", dtype=np.float32, mode="w+", shape=(16, 40))
    got = call(op, inputs, axis=0, out=out)
    assert got is out
    assert_bitwise_equal(np.asarray(out), call(op, inputs, axis=0))


@pytest.mark.parametrize("axis", [-1, 0, (0, 1)])
def test_matrix_input_gives_plain_ndarray(axis):
    data = np.random.default_rng(1).standard_normal((5, 7))
    got = numbasoftmax.softmax(np.asmatrix(data), axis=axis)
    assert type(got) is np.ndarray and got.shape == (5, 7)
    assert_bitwise_equal(got, numbasoftmax.softmax(data, axis=axis))


def test_matrix_out_is_written_and_returned():
    data = np.random.default_rng(2).standard_normal((5, 7))
    out = np.asmatrix(np.zeros((5, 7)))
    got = numbasoftmax.log_softmax(data, axis=0, out=out)
    assert got is out and type(got) is np.matrix
    assert_bitwise_equal(np.asarray(out), numbasoftmax.log_softmax(data, axis=0))


@pytest.mark.parametrize("op", OPS)
def test_user_subclass_input_gives_plain_ndarray(op):
    inputs = _inputs(op, (6, 300), np.float64)
    tagged = tuple(a.view(Tagged) for a in inputs)
    got = call(op, tagged)
    assert type(got) is np.ndarray
    assert_bitwise_equal(got, call(op, inputs))
    assert all(type(t) is Tagged for t in tagged)  # the inputs are left alone
