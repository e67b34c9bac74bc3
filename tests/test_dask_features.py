"""Dask arrays with the options (numbasoftmax/_dask_features.py): ``where=``, ``dtype=``,
logsumexp and its gradient. A task holds whole rows and calls the in-memory function, so
results are bitwise those of the numpy call on the computed inputs (logsumexp over split
axes and its gradient's blocks as they are: tests/test_dask_two_pass.py); nothing is
computed at call time. float32, small arrays: the threaded scheduler (the schedulers themselves are
tested in tests/test_dask.py)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import assert_bitwise_equal, fail_scheduler

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import numbasoftmax as nsm  # noqa: E402


def _data(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)


def _whole_along(axis, chunks):
    """``chunks`` with the softmax axes whole: the one-pass tasks of this module (split
    axes: tests/test_dask_two_pass.py)."""
    axes = range(len(chunks)) if axis is None else np.atleast_1d(axis) % len(chunks)
    return tuple(-1 if ax in axes else c for ax, c in enumerate(chunks))


def _compute(*arrays):
    with dask.config.set(scheduler="threads"):
        return dask.compute(*arrays)


@pytest.mark.parametrize("axis", [-1, 0, (0, 2)])
@pytest.mark.parametrize("op", ["softmax", "log_softmax_backward"])
def test_where(op, axis):
    x = _data((6, 8, 40))
    where = np.random.default_rng(1).random((8, 40)) < 0.6
    args = (x,) if op == "softmax" else (x, _data((6, 8, 40), 2))
    dargs = tuple(da.from_array(a, chunks=_whole_along(axis, (2, 3, 16))) for a in args)
    with dask.config.set(scheduler=fail_scheduler):
        lazy_result = getattr(nsm, op)(*dargs, axis=axis, where=where)
    (got,) = _compute(lazy_result)
    assert_bitwise_equal(got, getattr(nsm, op)(*args, axis=axis, where=where))


def test_where_as_dask_array_and_dtype(no_compute):
    x = _data((10, 30)).astype(np.float16)
    where = np.random.default_rng(3).random((10, 30)) < 0.5
    res = nsm.softmax(da.from_array(x, chunks=(4, 30)), where=da.from_array(where, chunks=5),
                      dtype=np.float32)
    assert res.dtype == np.float32
    with dask.config.set(scheduler="threads"):
        got = res.compute()
    assert_bitwise_equal(got, nsm.softmax(x, where=where, dtype=np.float32))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [-1, 0, None])
def test_logsumexp(axis, keepdims):
    x = _data((12, 50))
    b = np.random.default_rng(4).standard_normal(50).astype(np.float32)
    dx = da.from_array(x, chunks=_whole_along(axis, (5, 20)))
    with dask.config.set(scheduler=fail_scheduler):
        plain = nsm.logsumexp(dx, axis=axis, keepdims=keepdims)
        v, s = nsm.logsumexp(dx, axis=axis, keepdims=keepdims, b=b, return_sign=True)
    got_plain, got_v, got_s = _compute(plain, v, s)
    assert_bitwise_equal(got_plain, nsm.logsumexp(x, axis=axis, keepdims=keepdims))
    want_v, want_s = nsm.logsumexp(x, axis=axis, keepdims=keepdims, b=b, return_sign=True)
    assert_bitwise_equal(got_v, want_v)
    assert_bitwise_equal(got_s, want_s)


def test_logsumexp_backward():
    x = _data((12, 50))
    lse = nsm.logsumexp(x, axis=0)
    g = _data((50,), 5)
    with dask.config.set(scheduler=fail_scheduler):
        res = nsm.logsumexp_backward(da.from_array(x, chunks=(5, 20)), lse, g, axis=0)
    (got,) = _compute(res)
    assert_bitwise_equal(got, nsm.logsumexp_backward(x, lse, g, axis=0))


def test_errors_at_call_time(no_compute):
    dx = da.from_array(_data((4, 6)), chunks=2)
    with pytest.raises(TypeError, match="where must be a boolean array"):
        nsm.softmax(dx, where=np.ones((4, 6)))
    with pytest.raises(ValueError, match=r"where of shape \(5,\).*\(4, 6\)"):
        nsm.softmax(dx, where=np.ones(5, bool))
    with pytest.raises(TypeError, match="dtype must be"):
        nsm.log_softmax(dx, dtype=np.int16)
    with pytest.raises(TypeError, match="out is not supported"):
        nsm.logsumexp(dx, out=np.empty(4))
    with pytest.raises(ValueError, match="b of shape"):
        nsm.logsumexp(dx, b=np.ones(4))


def test_backward_per_row_values_checked_at_call_time(no_compute):
    dx = da.from_array(_data((4, 6)), chunks=2)
    with pytest.raises(TypeError, match="lse must have dtype.*complex128"):
        nsm.logsumexp_backward(dx, np.ones(4, complex), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="dlse must have dtype.*object"):
        nsm.logsumexp_backward(dx, np.ones(4), np.ones(4, object))
    with pytest.raises(TypeError, match="dlse must be array-like; got None"):
        nsm.logsumexp_backward(dx, np.ones(4), None)


@pytest.mark.parametrize("return_sign", [False, True])
def test_logsumexp_of_a_0d_array(return_sign):
    s = np.array(2.0, np.float32)
    got = nsm.logsumexp(da.from_array(s), return_sign=return_sign)
    want = nsm.logsumexp(s, return_sign=return_sign)
    for g, w in zip(*((got, want) if return_sign else ((got,), (want,))), strict=True):
        (value,) = _compute(g)
        assert value.shape == () and value.dtype == np.float32
        assert isinstance(value, np.ndarray)  # a 0-d array, as the numpy call's
        assert_bitwise_equal(value, w)


@pytest.mark.parametrize("op", ["softmax", "log_softmax_backward", "logsumexp"])
def test_a_dask_mask_with_a_numpy_x_is_lazy(op, no_compute):
    """Any dask array argument makes the call lazy, whichever argument it is."""
    x = _data((6, 8))
    w = np.random.default_rng(3).random((6, 8)) < 0.7
    args = (x, x) if op.endswith("backward") else (x,)
    f = getattr(nsm, op)
    res = f(*args, where=da.from_array(w, chunks=(3, 4)))
    assert isinstance(res, da.Array)
    (got,) = _compute(res)
    assert_bitwise_equal(got, f(*args, where=w))



@pytest.mark.parametrize("call", [
    lambda u: nsm.logsumexp(u),
    lambda u: nsm.softmax(u, where=np.ones(6, bool)),
    lambda u: nsm.log_softmax(u, dtype=np.float64, axis=0),
], ids=["logsumexp", "where", "dtype-axis0"])
def test_unknown_chunk_sizes_name_the_remedy(call, no_compute):
    """logsumexp's reduced shape, a broadcast mask and a merged softmax axis need the chunk
    sizes: unknown ones (after boolean indexing) are the package's ValueError at call
    time, not dask's or Python's."""
    x = _data((10, 6))
    dx = da.from_array(x, chunks=(3, 6))
    with pytest.raises(ValueError, match=r"axis 0 are unknown \(nan\).*compute_chunk_sizes"):
        call(dx[dx[:, 0] > 0])


@pytest.mark.parametrize("name", ["where", "b", "lse"])
@pytest.mark.parametrize("x_kind", ["numpy", "dask"])
def test_an_option_of_unknown_chunk_sizes_names_the_remedy(name, x_kind, no_compute):
    """A mask, weights or a per-row argument of unknown chunk sizes cannot be broadcast or
    matched to x's rows: the package's ValueError naming it (numpy's broadcast raised a
    TypeError about a float)."""
    x = _data((10, 6))
    keep = da.from_array(np.ones(10, bool), chunks=5)
    given = x if x_kind == "numpy" else da.from_array(x, chunks=(5, 3))
    full = da.from_array(x, chunks=(5, 3))[keep]  # all rows kept, their count unknown
    shape = r"\(nan,\)" if name == "lse" else r"\(nan, 6\)"
    with pytest.raises(ValueError, match=rf"{name} has unknown chunk sizes \(shape "
                                         rf"{shape}\); call {name}.compute_chunk_sizes"):
        if name == "where":
            nsm.softmax(given, where=full > 0)
        elif name == "b":
            nsm.logsumexp(given, b=full)
        else:
            nsm.logsumexp_backward(given, full[:, 0], np.ones(10))


def test_unknown_row_chunks_with_dtype_compute():
    """dtype= along a whole axis needs no other chunk size, as the plain call."""
    x = _data((10, 6))
    dx = da.from_array(x, chunks=(3, 6))
    keep = x[:, 0] > 0
    (got,) = _compute(nsm.log_softmax(dx[dx[:, 0] > 0], dtype=np.float64))
    assert_bitwise_equal(got, nsm.log_softmax(x[keep], dtype=np.float64))


def test_integer_second_input_takes_the_requested_dtype():
    """As on the CPU: with dtype=, an integer dy is read as that dtype, so it pairs with a
    y of that dtype."""
    y, dy = _data((4, 6)), np.arange(24, dtype=np.int32).reshape(4, 6)
    got = nsm.softmax_backward(da.from_array(y, chunks=(2, -1)), dy, dtype=np.float32)
    (value,) = _compute(got)
    assert_bitwise_equal(value, nsm.softmax_backward(y, dy, dtype=np.float32))


@pytest.mark.parametrize("b", [2.0, 3], ids=["float", "int"])
def test_logsumexp_python_scalar_weights_are_weak(b):
    x = np.random.default_rng(3).standard_normal((6, 10)).astype(np.float32)
    got = nsm.logsumexp(da.from_array(x, chunks=(3, 10)), b=b)
    assert got.dtype == np.float32
    assert_bitwise_equal(got.compute(), nsm.logsumexp(x, b=b))
