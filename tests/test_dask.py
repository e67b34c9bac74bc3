"""Dask arrays through the four public functions (numbasoftmax/_dask.py).

Results are compared with the numpy path on the computed input. When every softmax axis is
one chunk, a block holds whole rows and runs the same kernels (one pass): bitwise equal.
When a softmax axis is split (two passes), these small arrays' row segments are not whole
8192-element kernel chunks: the results are held to the reference's error bounds instead
(tests/test_dask_two_pass.py checks the bitwise cases, the graph and the memory limits).
Arrays are small: the cost here is the schedulers (processes, a 2-worker LocalCluster),
kept to a few computes.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402
from _helpers import assert_matches_reference, fail_scheduler  # noqa: E402

import numbasoftmax as ns  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORWARD = [ns.softmax, ns.log_softmax]
BACKWARD = [ns.softmax_backward, ns.log_softmax_backward]

# (shape, chunks, axis): chunked along the softmax axes (two passes), across them (one
# pass), or both; 1-D to 4-D
CASES = [
    ((37,), 10, -1),
    ((37,), 37, None),
    ((12, 50), (5, 20), -1),
    ((12, 50), (5, 20), 0),
    ((12, 50), (5, 50), 1),          # only across the axis: no rechunk needed
    ((12, 50), (12, 7), (0, 1)),
    ((6, 7, 40), (2, 3, 16), 1),
    ((6, 7, 40), (4, 7, 9), (0, 2)),
    ((6, 7, 40), (6, 2, 40), None),
    ((3, 4, 5, 24), (2, 2, 3, 10), (1, 3)),
    ((3, 4, 5, 24), (1, 3, 2, 24), -2),
    ((3, 4, 5, 24), (2, 4, 5, 7), (-1, 0)),
]


def _ids(case):
    shape, chunks, axis = case
    return f"{'x'.join(map(str, shape))}-c{chunks}-axis{axis}".replace(" ", "")


def _data(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(dtype)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(a % ndim for a in axis))


def _one_pass(source, axes):
    return all(len(source.chunks[ax]) == 1 for ax in axes)


def _check_structure(result, source, axes, alone=True):
    """The output keeps the input's chunks. One pass (every softmax axis one chunk): a
    single layer of one task per block on top of the input (``alone``: no other input).
    Two passes: three layers (statistics, finish, write), no rechunk."""
    assert result.chunks == source.chunks
    layer = result.dask.layers[result.name]
    assert len(layer) == math.prod(result.numblocks)
    assert source.name in result.dask.dependencies[result.name]
    if _one_pass(source, axes):
        if alone:
            assert result.dask.dependencies[result.name] == {source.name}
            assert (len(result.__dask_graph__())
                    == len(source.__dask_graph__()) + result.npartitions)
    else:
        assert not any(name.startswith("rechunk") for name in result.dask.layers)
        if alone:
            assert len(result.dask.layers) == len(source.dask.layers) + 3
    assert type(result._meta) is np.ndarray and result._meta.dtype == result.dtype


def _check_result(got, func, inputs, axis, exact):
    """Bitwise the in-memory call's result, or (``exact`` False) within the reference's
    error bounds with the same non-finite values."""
    if exact:
        np.testing.assert_array_equal(got, func(*inputs, axis=axis))
    else:
        assert_matches_reference(func.__name__, got, inputs, axis)


# ---------------------------------------------------------------------------------------
# results


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("func", FORWARD, ids=lambda f: f.__name__)
def test_forward_matches_numpy(func, case):
    shape, chunks, axis = case
    x = _data(shape, np.float32 if len(shape) % 2 else np.float64)
    dx = da.from_array(x, chunks=chunks)
    with dask.config.set(scheduler=fail_scheduler):
        result = func(dx, axis=axis)
    assert isinstance(result, da.Array)
    assert result.shape == x.shape and result.dtype == x.dtype
    axes = _axes(axis, x.ndim)
    _check_structure(result, dx, axes)
    got = result.compute(scheduler="threads")
    _check_result(got, func, (x,), axis, _one_pass(dx, axes))


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("func", BACKWARD, ids=lambda f: f.__name__)
def test_backward_matches_numpy(func, case):
    shape, chunks, axis = case
    dtype = np.float64 if len(shape) % 2 else np.float32
    x = _data(shape, dtype)
    fwd = ns.softmax if func is ns.softmax_backward else ns.log_softmax
    y = fwd(x, axis=axis)
    dy = _data(shape, dtype, seed=1)
    expected = func(y, dy, axis=axis)
    dyd = da.from_array(y, chunks=chunks)
    # the gradient in other chunks than y: rechunked to y's
    ddy = da.from_array(dy, chunks=tuple(max(1, s // 2) for s in shape))
    with dask.config.set(scheduler=fail_scheduler):
        both = func(dyd, ddy, axis=axis)
        left = func(dyd, dy, axis=axis)              # dask y, numpy dy
        right = func(y, ddy, axis=axis)              # numpy y, dask dy
    axes = _axes(axis, x.ndim)
    _check_structure(left, dyd, axes, alone=False)
    assert right.chunks == ddy.chunks
    got = dask.compute(both, left, right, scheduler="threads")
    for r, source in zip(got, (dyd, dyd, ddy), strict=True):
        if _one_pass(source, axes):
            np.testing.assert_array_equal(r, expected)
        else:
            assert_matches_reference(func.__name__, r, (y, dy), axis)


@pytest.mark.parametrize("chunks", [(2, 6), 2], ids=["one-pass", "two-pass"])
def test_list_operand_and_int_dtypes(chunks):
    x = np.arange(24).reshape(4, 6) % 5
    dx = da.from_array(x, chunks=chunks)
    exact = chunks == (2, 6)
    r = ns.softmax(dx)
    assert r.dtype == np.float64 and r._meta.dtype == np.float64
    _check_result(r.compute(), ns.softmax, (x,), -1, exact)
    g = ns.softmax_backward(ns.softmax(dx), x.tolist())  # array_like next to a dask array
    _check_result(g.compute(), ns.softmax_backward, (ns.softmax(x), x), -1, exact)


@pytest.mark.parametrize("chunks", [(2, 6), (2, 4)], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("dtype, expected", [
    (np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
    (np.int8, np.float64), (np.uint32, np.float64), (np.int64, np.float64),
    (np.bool_, np.float64),
])
def test_dtypes(dtype, expected, chunks):
    x = (np.arange(30).reshape(5, 6) % 3).astype(dtype)
    dx = da.from_array(x, chunks=chunks)
    exact = chunks == (2, 6)
    for func in FORWARD:
        r = func(dx)
        assert r.dtype == expected
        got = r.compute(scheduler="sync")
        assert got.dtype == expected
        _check_result(got, func, (x,), -1, exact)
    y = ns.softmax(x)
    r = ns.softmax_backward(da.from_array(y, chunks=chunks),
                            da.from_array(x, chunks=3).astype(y.dtype))
    assert r.dtype == expected
    _check_result(r.compute(scheduler="sync"), ns.softmax_backward, (y, x.astype(y.dtype)),
                  -1, exact)


def test_zero_d_and_empty():
    s = da.from_array(np.array(2.5, dtype=np.float32))
    for axis in (None, 0, -1, ()):
        r = ns.softmax(s, axis=axis)
        assert r.shape == () and r.dtype == np.float32
        assert r.compute() == 1.0
    assert ns.log_softmax(s).compute() == 0.0
    for shape, axis in [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((0,), None)]:
        x = np.zeros(shape, np.float32)
        r = ns.log_softmax(da.from_array(x, chunks=2), axis=axis)
        assert r.shape == shape
        np.testing.assert_array_equal(r.compute(), ns.log_softmax(x, axis=axis))


@pytest.mark.parametrize("shape, chunks, axis", [((0, 5), (0, 2), -1),
                                                 ((4, 0, 6), (2, 0, 3), (0, 2)),
                                                 ((5, 0), (2, 0), None)], ids=str)
@pytest.mark.parametrize("func", ["softmax", "log_softmax_backward"])
def test_empty_keeps_its_chunks(func, shape, chunks, axis):
    x = da.zeros(shape, chunks=chunks, dtype=np.float32)
    r = getattr(ns, func)(*((x, x) if func.endswith("backward") else (x,)), axis=axis)
    assert r.chunks == x.chunks and r.dtype == np.float32
    assert r.compute().shape == shape


def test_lazy_nothing_computed():
    calls = []

    def source(block):
        calls.append(block.shape)
        return block

    x = _data((8, 30))
    dx = da.from_array(x, chunks=(2, 10)).map_blocks(source, meta=np.empty((0, 0)))
    r1 = ns.softmax(dx, axis=1)
    r2 = ns.log_softmax(dx, axis=None)
    r3 = ns.softmax_backward(r1, dx, axis=1)
    r4 = ns.log_softmax_backward(r2, x, axis=None)
    assert calls == []
    assert all(isinstance(r, da.Array) for r in (r1, r2, r3, r4))
    y = ns.softmax(x, axis=1)
    assert_matches_reference("softmax_backward", r3.compute(scheduler="sync"), (y, x), 1)
    assert len(calls) == dx.npartitions
    # deterministic names: the same call twice is the same graph
    assert ns.softmax(dx, axis=1).name == r1.name != ns.softmax(dx, axis=0).name


@pytest.mark.parametrize("chunks", [(3, 6), 3], ids=["one-pass", "two-pass"])
def test_unknown_chunks(chunks):
    """Unknown chunk sizes along the other axes are fine; along a split softmax axis
    they raise (the two passes size their statistics from them)."""
    x = _data((10, 6))
    dx = da.from_array(x, chunks=chunks)
    exact = chunks == (3, 6)
    keep = x[:, 0] > 0
    sub = dx[dx[:, 0] > 0]  # unknown row counts
    r = ns.softmax(sub, axis=1)
    _check_result(r.compute(), ns.softmax, (x[keep],), 1, exact)
    g = ns.softmax_backward(r, sub, axis=1)
    y = ns.softmax(x[keep], axis=1)
    got = g.compute()
    if exact:
        np.testing.assert_array_equal(got, ns.softmax_backward(y, x[keep]))
    else:  # r carries its own rounding into g: compared with the reference on r itself
        assert_matches_reference("softmax_backward", got, (r.compute(), x[keep]), 1)
    with pytest.raises(ValueError, match="unknown"):
        ns.softmax(sub, axis=0)
    with pytest.raises(ValueError, match="same shape.*compute_chunk_sizes"):
        ns.softmax_backward(sub, x, axis=1)


# ---------------------------------------------------------------------------------------
# errors: the core API's types and messages, raised at call time


def _core_error(call):
    with pytest.raises(Exception) as info:
        call()
    return info.type, str(info.value)


@pytest.mark.parametrize("name, dask_call, numpy_call", [
    ("complex", lambda d, n: ns.softmax(d.astype(np.complex64)),
     lambda d, n: ns.softmax(n.astype(np.complex64))),
    ("object", lambda d, n: ns.log_softmax(d.astype(object)),
     lambda d, n: ns.log_softmax(n.astype(object))),
    ("axis out of range", lambda d, n: ns.softmax(d, axis=2),
     lambda d, n: ns.softmax(n, axis=2)),
    ("axis repeated", lambda d, n: ns.softmax(d, axis=(1, -1)),
     lambda d, n: ns.softmax(n, axis=(1, -1))),
    ("axis float", lambda d, n: ns.log_softmax(d, axis=1.0),
     lambda d, n: ns.log_softmax(n, axis=1.0)),
    ("axis bool", lambda d, n: ns.softmax(d, axis=True),
     lambda d, n: ns.softmax(n, axis=True)),
    ("shape", lambda d, n: ns.softmax_backward(d, d[:, :3]),
     lambda d, n: ns.softmax_backward(n, n[:, :3])),
    ("shape mixed", lambda d, n: ns.log_softmax_backward(n[:2], d),
     lambda d, n: ns.log_softmax_backward(n[:2], n)),
    ("dtype", lambda d, n: ns.softmax_backward(d, d.astype(np.float32)),
     lambda d, n: ns.softmax_backward(n, n.astype(np.float32))),
    ("dtype mixed", lambda d, n: ns.log_softmax_backward(d.astype(np.float16), n),
     lambda d, n: ns.log_softmax_backward(n.astype(np.float16), n)),
    ("complex dz", lambda d, n: ns.log_softmax_backward(d, n.astype(complex)),
     lambda d, n: ns.log_softmax_backward(n, n.astype(complex))),
])
def test_errors_follow_core(name, dask_call, numpy_call, no_compute):
    x = _data((4, 6))
    dx = da.from_array(x, chunks=2)
    expected_type, expected_message = _core_error(lambda: numpy_call(None, x))
    with pytest.raises(expected_type) as info:
        dask_call(dx, x)
    assert str(info.value) == expected_message


@pytest.mark.parametrize("call", [
    lambda d: ns.softmax(d, out=np.empty(d.shape)),
    lambda d: ns.log_softmax(d, axis=0, out=d),
    lambda d: ns.softmax_backward(d, d, out=np.empty(d.shape)),
    lambda d: ns.log_softmax_backward(d, d, out=d),
])
def test_out_is_a_type_error(call, no_compute):
    dx = da.from_array(_data((4, 6)), chunks=2)
    with pytest.raises(TypeError, match="out is not supported for dask arrays.*immutable"):
        call(dx)


def test_import_does_not_import_dask():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import numbasoftmax
        numbasoftmax.softmax(np.ones((2, 3)), axis=(0, 1))
        numbasoftmax.softmax_backward([1.0, 2.0], [0.5, 0.5])
        assert not [m for m in sys.modules if m == "dask" or m.startswith("dask.")], "dask"
        assert "numbasoftmax._dask" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)


# ---------------------------------------------------------------------------------------
# schedulers


def test_threads_many_blocks_concurrently():
    """Blocks large enough for the parallel driver (one pass), and the two passes over
    8 blocks of a 262144-element row (each block a 32768-element run of it: bitwise), run
    from several dask threads."""
    x = _data((64, 4096), np.float32)
    rows, cols = da.from_array(x, chunks=(8, 4096)), da.from_array(x, chunks=(64, 512))
    rs = [ns.softmax(rows), ns.log_softmax(rows, axis=(0, 1)), ns.softmax(cols, axis=0)]
    got = dask.compute(*rs, scheduler="threads", num_workers=4)
    expected = [ns.softmax(x), ns.log_softmax(x, axis=(0, 1)), ns.softmax(x, axis=0)]
    for g, exp in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, exp)
    # the per-block thread count is thread-local and restored
    import numba

    before = numba.get_num_threads()
    ns.softmax(rows).compute(scheduler="sync")
    assert numba.get_num_threads() == before


def test_threads_on_workqueue_layer_do_not_abort():
    """numba's workqueue layer aborts the process if two threads enter parallel code at
    once; the CPU launcher serializes it. Run where that would happen: 4 numba threads,
    4 dask threads, blocks big enough for the parallel driver (2 blocks: 2 numba threads
    each; 8 blocks: 1 each), and plain map_blocks of the public function (4 each)."""
    code = textwrap.dedent("""
        import numba, numpy as np, dask, dask.array as da
        import numbasoftmax as ns
        x = np.random.default_rng(0).standard_normal((32, 8192)).astype(np.float32)
        exp = ns.softmax(x)
        for chunks in [(16, 8192), (4, 8192)]:
            dx = da.from_array(x, chunks=chunks)
            for _ in range(3):
                got = dask.compute(ns.softmax(dx), dx.map_blocks(ns.softmax),
                                   scheduler="threads", num_workers=4)
                for g in got:
                    assert np.array_equal(g, exp)
        assert numba.threading_layer() == "workqueue", numba.threading_layer()
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_THREADING_LAYER="workqueue",
               NUMBA_NUM_THREADS="4")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_processes_scheduler():
    """One pass: the in-memory call's bits. Two passes (axis 1 split): the bits the
    threaded scheduler gives, computed in other processes."""
    x = _data((5, 6, 40), np.float32)
    y = ns.log_softmax(x, axis=(0, 2))
    dy = _data((5, 6, 40), np.float32, seed=2)
    expected = [ns.softmax(x, axis=1), ns.log_softmax_backward(y, dy, axis=(0, 2))]
    two_pass = ns.softmax(da.from_array(x, chunks=(2, 3, 16)), axis=1)
    rs = [ns.softmax(da.from_array(x, chunks=(2, 6, 16)), axis=1),
          ns.log_softmax_backward(da.from_array(y, chunks=(5, 2, 40)), dy, axis=(0, 2)),
          two_pass]
    # first in this process: the worker processes load the compiled kernels from the cache
    expected.append(two_pass.compute(scheduler="threads"))
    got = dask.compute(*rs, scheduler="processes", num_workers=2)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert_matches_reference("softmax", got[2], (x,), 1)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None, worker_dashboard_address=None,
                                  silence_logs=40) as cluster:
        with distributed.Client(cluster, set_as_default=False) as c:
            yield c


def test_graph_pickles():
    dx = da.from_array(_data((4, 6)), chunks=2)
    r = ns.softmax_backward(ns.softmax(dx), dx)
    import cloudpickle

    for obj in (ns.softmax, ns.log_softmax_backward, dict(r.__dask_graph__())):
        pickle.loads(cloudpickle.dumps(obj))


def test_distributed_local_cluster(client):
    """One pass: the in-memory call's bits; two passes: the threaded scheduler's bits."""
    x4 = _data((3, 4, 5, 24), np.float32)
    x2 = _data((12, 50))
    y2 = ns.softmax(x2, axis=0)
    d2 = _data((12, 50), seed=3)
    z4 = ns.log_softmax(x4, axis=(1, 3))
    d4 = _data((3, 4, 5, 24), np.float32, seed=4)
    one_pass = [ns.log_softmax(da.from_array(x2, chunks=(5, 50))),
                ns.softmax_backward(da.from_array(y2, chunks=(12, 25)), d2, axis=0)]
    expected = [ns.log_softmax(x2, axis=-1), ns.softmax_backward(y2, d2, axis=0)]
    two_pass = [ns.softmax(da.from_array(x4, chunks=(2, 2, 3, 10)), axis=(1, 3)),
                ns.log_softmax_backward(da.from_array(z4, chunks=2),
                                        da.from_array(d4, chunks=3), axis=(1, 3))]
    # computed here first: kernels compiled and cached before the workers load them
    expected += dask.compute(*two_pass, scheduler="threads")
    got = client.gather(client.compute(one_pass + two_pass))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert_matches_reference("softmax", got[2], (x4,), (1, 3))
    assert_matches_reference("log_softmax_backward", got[3], (z4, d4), (1, 3))
    # the workers ran the kernels themselves
    loaded = client.run(lambda: "numbasoftmax._cpu_kernels" in sys.modules)
    assert len(loaded) == 2 and any(loaded.values())
