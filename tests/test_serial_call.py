"""The parallel drivers call the serial drivers' own machine code by address."""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
from _helpers import read_only_copy
from numba import typeof

from numbasoftmax import _cpu_kernels as K
from numbasoftmax import _serial_call as S


def _unaligned(n, dtype):
    """A writable 1-D array of ``dtype`` one byte past an aligned address."""
    raw = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    a = raw[1:].view(dtype)
    assert not a.flags.aligned
    return a


def _row_args(a, b, out, side=None, stream=False, ints=(64, 1, 64, 1, 64, 1, 4, 64, 1)):
    sa, an, sb, bn, so, on, m, n, c = ints
    return (K.OPS["softmax_backward"], a, sa, an, b, sb, bn, out, so, on, m, n, c, side,
            stream)


def _variants():
    f4 = np.zeros(256, np.float32)
    f8 = np.zeros(256, np.float64)
    mask = np.ones(256, np.uint8)
    dims = np.zeros((1, 2), np.int64)
    return {
        "plain": _row_args(f4, f4, f4),
        "float64": _row_args(f8, f8, f8),
        "read-only b": _row_args(f4, read_only_copy(f4), f4),
        "unaligned a": _row_args(_unaligned(256, np.float32), f4, f4),
        "strided out": _row_args(f4, f4, np.zeros(512, np.float32)[::2]),
        "2-D a": _row_args(f4.reshape(16, 16), f4, f4),
        "masked": _row_args(f4, f4, f4, side=(mask, dims, None)),
        "masked, read-only mask": _row_args(f4, f4, f4, side=(read_only_copy(mask), dims, None)),
        "masked, unaligned values": _row_args(f4, f4, f4, side=(mask, dims,
                                                                _unaligned(8, np.float64))),
        "streamed": _row_args(f4, f4, f4, stream=True),
        "numpy int strides": _row_args(f4, f4, f4, ints=(np.int32(64), 1, 64, 1, 64, 1, 4,
                                                        64, 1)),
        "other op": (K.OPS["log_softmax_backward"], *_row_args(f4, f4, f4)[1:]),
    }


@pytest.mark.parametrize("first, second", list(itertools.combinations(_variants(), 2)))
def test_type_keys_tell_numbas_types_apart(first, second):
    """Two argument lists share a key exactly when numba gives them the same types: a key
    shared by different types would call code compiled for other arguments."""
    v = _variants()
    types_equal = tuple(map(typeof, v[first])) == tuple(map(typeof, v[second]))
    assert types_equal == (S._type_key(v[first]) == S._type_key(v[second]))


def test_equal_arguments_share_a_key():
    a = np.zeros(256, np.float32)
    assert S._type_key(_row_args(a, a, a)) == S._type_key(_row_args(a.copy(), a[:128], a))


def test_the_tasks_loop_holds_none_of_the_serial_code():
    """The loop calls the serial driver through its address: numba did not link the
    driver's code into it (which cost ~1 s of LLVM per first large call). Compiled here
    afresh, so that its IR is at hand whatever the disk cache holds."""
    x = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    out = np.empty_like(x)
    head = (K.OPS["softmax"], x.ravel(), 512, 1, x.ravel(), 512, 1, out.ravel(), 512, 1)
    loop = numba.njit(**dict(K._PARALLEL, cache=False))(K._tasks.py_func)
    address = K.grouped_rows_parallel.address(*head, 64, 512, 1, None, False)
    loop(address, 64, 32, *head[1:], 64, 512, 1, None, False)
    (ir,) = loop.inspect_llvm().values()
    assert "inttoptr" in ir
    assert "grouped_rows" not in ir  # in the mangled name of a linked or called driver


@pytest.mark.parametrize("layout", ["unaligned", "read-only"])
def test_each_specialization_gets_its_own_serial_code(layout):
    """Arguments of other numba types reach the serial driver compiled for them, with the
    bits of the serial call."""
    rng = np.random.default_rng(1)
    m, n = 80, 512
    y = rng.random((m, n)).astype(np.float32)
    dy = rng.standard_normal((m, n)).astype(np.float32)
    if layout == "unaligned":
        flat = _unaligned(m * n, np.float32)
        flat[:] = y.ravel()
    else:
        flat = read_only_copy(y.ravel())
    expected = np.empty(m * n, np.float32)
    K.rows(K.OPS["softmax_backward"], y.ravel(), n, 1, dy.ravel(), n, 1, expected, n, 1, 0, m,
           n, 1, None, False)
    got = np.empty(m * n, np.float32)
    args = (K.OPS["softmax_backward"], flat, n, 1, dy.ravel(), n, 1, got, n, 1, m, n, 1, None,
            False)
    K.rows_parallel(*args)
    assert got.tobytes() == expected.tobytes()
    # numba types an unaligned array as an aligned one (and runs the same code on it)
    plain = (K.OPS["softmax_backward"], y.ravel(), *args[2:])
    same = K.rows_parallel.address(*args) == K.rows_parallel.address(*plain)
    assert same == (layout == "unaligned")


def test_one_loop_serves_every_operation():
    """The loops take no operation: log_softmax rows run on the loop softmax rows of the
    same arrays compiled, each operation with its own serial code."""
    x = np.random.default_rng(2).standard_normal((64, 512)).astype(np.float32)
    results, loops = {}, []
    for op in ("softmax", "log_softmax"):
        out = np.empty_like(x)
        K.grouped_rows_parallel(K.OPS[op], x.ravel(), 512, 1, x.ravel(), 512, 1, out.ravel(),
                                512, 1, 64, 512, 1, None, False)
        loops.append(set(K._tasks.signatures))
        expected = np.empty_like(x)
        K.grouped_rows(K.OPS[op], x.ravel(), 512, 1, x.ravel(), 512, 1, expected.ravel(), 512,
                       1, 0, 64, 512, 1, None, False)
        assert out.tobytes() == expected.tobytes()
        results[op] = out
    assert not np.array_equal(results["softmax"], results["log_softmax"])
    assert loops[1] == loops[0]


def test_the_loops_hand_out_their_tasks_one_at_a_time():
    """Inside a compiled function the chunk size is 1 between the two calls, then the
    caller's again; the caller's own setting outlives a parallel driver's call."""
    from numbasoftmax import _cpu

    _cpu._launch_pool()  # numba registers the chunk-size functions with its thread pool

    @numba.njit
    def sizes():
        previous = S.handed_out_one_at_a_time()
        during = numba.get_parallel_chunksize()
        S.chunk_size_back(previous)
        return previous, during, numba.get_parallel_chunksize()

    before = numba.set_parallel_chunksize(7)
    try:
        assert sizes() == (7, 1, 7)
        x = np.random.default_rng(3).standard_normal((64, 512)).astype(np.float32)
        out = np.empty_like(x)
        K.grouped_rows_parallel(K.OPS["softmax"], x.ravel(), 512, 1, x.ravel(), 512, 1,
                                out.ravel(), 512, 1, 64, 512, 1, None, False)
        assert numba.get_parallel_chunksize() == 7
    finally:
        numba.set_parallel_chunksize(before)


def test_later_calls_of_a_driver_run_the_code_for_their_own_types():
    """After its first call for given types, a parallel driver calls the loop's compiled
    entry for them directly: arguments of other types, alternating, still reach their own
    code and give the serial driver's bits."""
    rng = np.random.default_rng(4)
    m, n = 48, 512
    y = rng.random(m * n).astype(np.float32)
    dy = rng.standard_normal(m * n).astype(np.float32)
    expected = np.empty(m * n, np.float32)
    K.rows(K.OPS["softmax_backward"], y, n, 1, dy, n, 1, expected, n, 1, 0, m, n, 1, None,
           False)
    for a in (y, read_only_copy(y), y, read_only_copy(y), y[::-1].copy()[::-1]):
        got = np.empty(m * n, np.float32)
        K.rows_parallel(K.OPS["softmax_backward"], a, n, 1, dy, n, 1, got, n, 1, m, n, 1,
                        None, False)
        assert got.tobytes() == expected.tobytes()
