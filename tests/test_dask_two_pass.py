"""Softmax axes split across chunks: the two passes of numbasoftmax/_dask.py.

* Bits: when every block holds runs of each row that are whole 8192-element kernel chunks
  (the row's last run excepted), the two passes combine the in-memory call's chunk
  statistics in its order: bitwise equal to it. Otherwise the results are held to the
  reference's error bounds (tests/_helpers.py), and the same graph gives the same bits on
  every scheduler.
* Non-finite values in different blocks of one row follow the in-memory rules.
* The graph: no task reads more than one block of each operand, nothing is rechunked, the
  output keeps the input's chunks.
* A LocalCluster whose workers' memory_limit is below one merged softmax axis computes
  axis=0 and axis=None (merging the axis there is refused by the scheduler).
* Blocks that are not numpy arrays (cupy) take array operations instead of the kernels:
  run here on numpy blocks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402
from _helpers import (  # noqa: E402
    CHUNK,
    OPS,
    assert_bitwise_equal,
    assert_matches_reference,
    call,
    inputs_for,
)
from dask.core import flatten  # noqa: E402

from numbasoftmax import _dask  # noqa: E402

# (shape, chunks, axis) where every block's runs of a row are whole kernel chunks
ALIGNED = [
    ((3, 5 * CHUNK - 960), (2, 2 * CHUNK), -1),                    # rows cut at 16384, 32768
    ((3, 5 * CHUNK - 960), ((1, 2), (CHUNK, 3 * CHUNK, CHUNK - 960)), -1),  # uneven chunks
    ((3 * CHUNK, 5), (CHUNK, 2), 0),                               # down the columns
    ((6, CHUNK // 2, 4), (2, CHUNK // 2, 4), None),                # runs of 4 chunks
    ((5, 3, CHUNK), (2, 1, CHUNK), (1, 2)),                        # one chunk per block
    # runs of a row in a block are not contiguous with each other: the statistics are put
    # in the row's order
    ((4, 3 * CHUNK), (2, CHUNK), None),                            # 2 runs per block
    ((3, 5, 2 * CHUNK), (2, (2, 3), (CHUNK, CHUNK)), (1, 2)),      # 2 and 3 runs per block
    ((3, 4, 3, CHUNK), (3, 3, 2, CHUNK), None),                    # 3, 2, 1 ... runs
]
# ... and where they are not
UNALIGNED = [
    ((3, 5 * CHUNK - 960), (2, 10000), -1),                        # cut at 10000, 20000, ...
    ((3, 5 * CHUNK - 960), ((2, 1), (20000, CHUNK, 11808)), -1),   # uneven, one cut on 8192k
    ((300, 7), (64, 3), 0),                                        # short runs
    ((6, 50, 40), (4, 20, 15), None),                              # runs not contiguous
    ((6, 50, 40), (6, 17, 40), (0, 1)),
]


def _ids(case):
    shape, chunks, axis = case
    return f"{'x'.join(map(str, shape))}-c{chunks}-axis{axis}".replace(" ", "")


def _dask_inputs(inputs, chunks):
    return [da.from_array(a, chunks=chunks) for a in inputs]


def _two_pass_layers(result):
    """Names of the statistics, finish and write layers (blockwise names: token-hash)."""
    steps = ("stats", "finish", "write")
    names = {name.split("-")[-2]: name for name in result.dask.layers
             if name.split("-")[-2] in steps}
    return [names[step] for step in steps]


def _axes(axis, ndim):
    from numbasoftmax._layout import normalize_axes

    return normalize_axes(axis, ndim)


# ---------------------------------------------------------------------------------------
# results


# float32 on every aligned case; float16 and float64 on row chunks, and on axis-0 blocks
# copied in panels (fewer than 8 columns: not read in place) big enough for the tiled
# transposing copies; float64 where the order of a row's statistics shows (float32 chunk
# sums add up exactly in float64 in almost any order)
BITWISE = [(case, np.float32) for case in ALIGNED] + [
    (case, dtype) for case in (ALIGNED[0], ((4 * CHUNK, 7), (2 * CHUNK, 7), 0))
    for dtype in (np.float16, np.float64)] + [(case, np.float64) for case in ALIGNED[-3:]]


@pytest.mark.parametrize("case, dtype", BITWISE,
                         ids=[f"{_ids(c)}-{np.dtype(d)}" for c, d in BITWISE])
@pytest.mark.parametrize("op", OPS)
def test_whole_kernel_chunks_give_the_in_memory_bits(op, case, dtype):
    shape, chunks, axis = case
    inputs = inputs_for(op, np.random.default_rng(0), shape, dtype, axis)
    result = call(op, _dask_inputs(inputs, chunks), axis)
    assert result.chunks == da.from_array(inputs[0], chunks=chunks).chunks
    assert_bitwise_equal(result.compute(scheduler="threads"), call(op, inputs, axis))


@pytest.mark.parametrize("case", UNALIGNED, ids=_ids)
@pytest.mark.parametrize("op", OPS)
def test_other_boundaries_within_the_error_bound(op, case):
    shape, chunks, axis = case
    inputs = inputs_for(op, np.random.default_rng(2), shape, np.float32, axis)
    result = call(op, _dask_inputs(inputs, chunks), axis)
    got = result.compute(scheduler="threads")
    assert_matches_reference(op, got, inputs, axis)
    # the order is the graph's, not the scheduler's
    assert_bitwise_equal(result.compute(scheduler="sync"), got)


@pytest.mark.parametrize("case", [
    ((2 * CHUNK, 20), (CHUNK, 5), 0),            # rows gathered into panels, bitwise
    ((6, 50, 40), (4, 20, 15), (0, 2)),          # axes that do not merge: whole copies
    ((6, 50, 40), (4, 20, 40), (1, 2)),          # rows in place
], ids=_ids)
@pytest.mark.parametrize("op", OPS)
def test_rows_copied_in_panels(op, case, monkeypatch):
    """Rows that are not evenly spaced in a block are copied in and out in panels: panels
    of a few rows give the bits of a single panel."""
    shape, chunks, axis = case
    inputs = inputs_for(op, np.random.default_rng(7), shape, np.float32, axis)
    whole = call(op, _dask_inputs(inputs, chunks), axis).compute(scheduler="sync")
    monkeypatch.setattr(_dask, "PANEL_BYTES", 3 * 15 * 4)  # 3 rows of 15 elements
    got = call(op, _dask_inputs(inputs, chunks), axis).compute(scheduler="sync")
    assert_bitwise_equal(got, whole)
    if axis == 0:
        assert_bitwise_equal(got, call(op, inputs, axis))
    else:
        assert_matches_reference(op, got, inputs, axis)


def _non_finite_rows(n):
    """Rows of n float32 logits (n > 2 * 16384) with special values in different blocks
    of chunks (.., 16384) and (.., 10000)."""
    x = np.random.default_rng(3).standard_normal((6, n)).astype(np.float32)
    x[0, n - 100] = np.nan                         # NaN in the last block: a NaN row
    x[1, 20000] = np.inf                           # +inf in a middle block: a NaN row
    x[2] = -np.inf                                 # only -inf: a NaN row
    x[3, [100, 17000, n - 5]] = -np.inf            # -inf among finite values, every block
    x[4, 2 * CHUNK:4 * CHUNK] = -np.inf            # a whole block of -inf
    x[5, 5], x[5, 30000] = -3e38, 3e38             # huge values in different blocks
    return x


@pytest.mark.parametrize("chunks", [(6, 2 * CHUNK), (4, 10000)], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_non_finite_values_in_different_blocks_of_a_row(op, chunks):
    x = _non_finite_rows(5 * CHUNK - 960)
    got = call(op, [da.from_array(x, chunks=chunks)]).compute(scheduler="threads")
    if chunks[1] % CHUNK == 0:
        assert_bitwise_equal(got, call(op, [x]))
    assert_matches_reference(op, got, (x,))
    assert np.isnan(got[:3]).all() and not np.isnan(got[3:]).any()
    zero = 0.0 if op == "softmax" else -np.inf
    assert (got[3:5] == -np.inf).sum() == (0 if op == "softmax" else 3 + 2 * CHUNK)
    assert (got[3, [100, 17000, x.shape[1] - 5]] == zero).all()
    assert (got[4, 2 * CHUNK:4 * CHUNK] == zero).all()
    if op == "softmax":
        np.testing.assert_allclose(got[3:].sum(axis=1, dtype=np.float64), 1.0, rtol=1e-5)
        assert got[5, 30000] == 1.0 and got[5, 5] == 0.0


@pytest.mark.parametrize("chunks", [(6, 2 * CHUNK), (4, 10000)], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_non_finite_gradients_in_different_blocks_of_a_row(op, chunks):
    n = 5 * CHUNK - 960
    y, dy = inputs_for(op, np.random.default_rng(4), (6, n), np.float32)
    dy[0, n - 100] = np.nan                        # the row's sum is NaN: a NaN row
    dy[1, 20000] = np.inf
    got = call(op, _dask_inputs((y, dy), chunks)).compute(scheduler="threads")
    if chunks[1] % CHUNK == 0:
        assert_bitwise_equal(got, call(op, (y, dy)))
    assert_matches_reference(op, got, (y, dy))
    assert np.isnan(got[0]).all() and np.isfinite(got[2:]).all()


# ---------------------------------------------------------------------------------------
# the graph


@pytest.mark.parametrize("case", [
    ((64, 48), (16, 12), 0),
    ((64, 48), (16, 12), None),
    ((4, 6, 8), (2, 3, 4), (0, 2)),
], ids=_ids)
@pytest.mark.parametrize("op", OPS)
def test_graph_no_task_holds_more_than_a_block_of_each_operand(op, case):
    shape, chunks, axis = case
    inputs = _dask_inputs(inputs_for(op, np.random.default_rng(5), shape, np.float32, axis),
                          chunks)
    result = call(op, inputs, axis)
    x = inputs[0]
    assert result.chunks == x.chunks
    assert not [name for name in result.dask.layers if "rechunk" in name]

    graph = result.__dask_graph__()
    deps = graph.get_all_dependencies()
    blocks = {key for a in inputs for key in flatten(a.__dask_keys__())}
    per_task = [len(d & blocks) for d in deps.values()]
    assert max(per_task) == len(inputs)  # the statistics and the write read one of each
    # three layers on top of the inputs: statistics and write one task per block, finish
    # one task per group of blocks along the softmax axes
    stats, finish, write = _two_pass_layers(result)
    groups = math.prod(n for ax, n in enumerate(x.numblocks)
                       if ax not in _axes(axis, x.ndim))
    sizes = {name: len(graph.layers[name]) for name in (stats, finish, write)}
    assert sizes == {stats: x.npartitions, finish: groups, write: x.npartitions}
    for key in graph.layers[finish]:
        assert not deps[key] & blocks  # the finish reads statistics only


# ---------------------------------------------------------------------------------------
# a cluster whose workers cannot hold a merged softmax axis


def test_local_cluster_memory_limit_below_a_merged_axis():
    """32 MiB of float32 in four 8 MiB blocks along axis 0; workers' memory_limit 24 MiB.
    The scheduler refuses a task whose inputs exceed the limit: merging axis 0 (32 MiB in
    one task) fails, the two passes (one block per task) compute, and so do logsumexp's
    and its gradient's tasks. Memory management
    (spill, pause) is off: in-process workers count the whole test process's memory."""
    distributed = pytest.importorskip("distributed")
    limit = 24 * 2**20
    x = da.random.default_rng(0).standard_normal((4 * CHUNK, 256), chunks=(CHUNK, 256),
                                                  dtype=np.float32)
    xn = x.compute(scheduler="threads")
    assert xn.nbytes > limit and x.blocks[0].nbytes < limit / 2
    import numbasoftmax as ns

    quiet = {"distributed.worker.memory.target": False,
             "distributed.worker.memory.spill": False,
             "distributed.worker.memory.pause": False}
    with dask.config.set(quiet), distributed.LocalCluster(
            n_workers=2, processes=False, threads_per_worker=1, memory_limit=limit,
            dashboard_address=None, silence_logs=50) as cluster, distributed.Client(
            cluster, set_as_default=False) as client:
        merged = ns.softmax(x.rechunk({0: -1}), axis=0)[:, :16]
        with pytest.raises(MemoryError, match="memory_limit"):
            client.compute(merged).result()

        by_column = ns.softmax(x, axis=0)
        whole = ns.softmax(x, axis=None)
        z = ns.log_softmax(x, axis=None)
        grad = ns.log_softmax_backward(z, x, axis=None)
        lse = ns.logsumexp(x, axis=None)
        lse_grad = ns.logsumexp_backward(x, lse, 1.0, axis=None)
        futures = client.compute([by_column[:, :16], by_column.sum(axis=0, dtype=np.float64),
                                  whole[:100], whole.sum(dtype=np.float64), grad[-3:],
                                  lse, ns.logsumexp(x, axis=0)[:16], lse_grad[:100]])
        cols, col_sums, head, total, grad_tail, lse, lse_cols, lse_head = client.gather(futures)

    # runs of 8192 elements of every row: the in-memory call's bits
    assert_bitwise_equal(cols, ns.softmax(xn, axis=0)[:, :16])
    assert_bitwise_equal(head, ns.softmax(xn, axis=None)[:100])
    zn = ns.log_softmax(xn, axis=None)
    assert_bitwise_equal(grad_tail, ns.log_softmax_backward(zn, xn, axis=None)[-3:])
    np.testing.assert_allclose(col_sums, 1.0, rtol=1e-5)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    assert_bitwise_equal(lse, ns.logsumexp(xn, axis=None))
    assert_bitwise_equal(lse_cols, ns.logsumexp(xn, axis=0)[:16])
    assert_bitwise_equal(lse_head, ns.logsumexp_backward(xn, lse, 1.0, axis=None)[:100])


# ---------------------------------------------------------------------------------------
# blocks the kernels do not take (cupy): array operations, run here on numpy blocks


@pytest.fixture
def array_operations(monkeypatch):
    """numpy blocks through the array operations; yields the list of blocks written."""
    written = []
    xp_write = _dask._xp_write

    def spy(key, rows, fin, dtype):
        written.append(rows[0].shape)
        return xp_write(key, rows, fin, dtype)

    monkeypatch.setattr(_dask, "KERNEL_BLOCKS", ())
    monkeypatch.setattr(_dask, "_xp_write", spy)
    return written


@pytest.mark.parametrize("case", [ALIGNED[0], UNALIGNED[2], UNALIGNED[3]], ids=_ids)
@pytest.mark.parametrize("op", OPS)
def test_array_operations_within_the_error_bound(op, case, array_operations):
    shape, chunks, axis = case
    inputs = inputs_for(op, np.random.default_rng(6), shape, np.float32, axis)
    result = call(op, _dask_inputs(inputs, chunks), axis)
    assert_matches_reference(op, result.compute(scheduler="threads"), inputs, axis)
    assert len(array_operations) == result.npartitions


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_array_operations_non_finite_rules(op, array_operations):
    x = _non_finite_rows(5 * CHUNK - 960)
    result = call(op, [da.from_array(x, chunks=(4, 10000))])
    got = result.compute(scheduler="threads")
    assert len(array_operations) == result.npartitions
    assert_matches_reference(op, got, (x,))
    assert np.isnan(got[:3]).all() and not np.isnan(got[3:]).any()


# ---------------------------------------------------------------------------------------
# runs read in place along a strided axis (a row per vector lane) against the runs copied
# into row order in panels: the same bits. Chunks off the kernel's chunk size (the panels
# are then the oracle, not the in-memory call) except where said.

IN_PLACE = [
    ((600, 150), ((250, 350), (128, 22)), 0),      # whole bands; one tile and a partial one
    ((2 * CHUNK + 100, 20), (2 * CHUNK, 20), 0),   # runs of two kernel chunks (aligned)
    ((6, 50, 40), (4, 20, 40), (0, 1)),            # runs of several rows, reordered
    ((40, 300), (16, 120), 1),                     # Fortran-ordered blocks
]


def _in_place_blocks(inputs, case):
    blocks = _dask_inputs(inputs, case[1])
    if case is IN_PLACE[-1]:  # the statistics read in place, the write copies in panels
        blocks = [b.map_blocks(np.asfortranarray) for b in blocks]
    return blocks


def _in_place_inputs(op, case, dtype):
    """Inputs with non-finite values: x with a NaN, a +inf, -inf scattered and -inf at
    index 1 of the last axis (a whole row for axis 0); dy or dz with a NaN."""
    shape, _, axis = case
    inputs = inputs_for(op, np.random.default_rng(8), shape, dtype, axis)
    if op in ("softmax", "log_softmax"):
        x = inputs[0]
        x.reshape(-1)[::97] = -np.inf
        x.reshape(-1)[[7, x.size // 2]] = np.nan, np.inf
        x[..., 1] = -np.inf
    else:
        inputs[1].reshape(-1)[7] = np.nan
    return inputs


# every operation in float32 and float16 (stored as its bits, no exps kept in the output);
# float64 once (each operation and dtype is a kernel to compile)
IN_PLACE_RUNS = [(op, case, dtype) for op in OPS for case in IN_PLACE
                 for dtype in (np.float32, np.float16)] + [("softmax", IN_PLACE[0], np.float64)]


def _spy_on_columns(monkeypatch):
    """A list that records, per task, whether its runs are read in place (``_columns``)."""
    in_place = []
    columns = _dask._columns

    def spy(*args):
        found = columns(*args)
        in_place.append(found is not None)
        return found

    monkeypatch.setattr(_dask, "_columns", spy)
    return in_place


@pytest.mark.parametrize("op, case, dtype", IN_PLACE_RUNS,
                         ids=[f"{op}-{_ids(c)}-{np.dtype(d)}" for op, c, d in IN_PLACE_RUNS])
def test_runs_read_in_place_give_the_bits_of_runs_in_row_order(op, case, dtype,
                                                               monkeypatch):
    shape, _, axis = case
    inputs = _in_place_inputs(op, case, dtype)
    in_place = _spy_on_columns(monkeypatch)
    got = call(op, _in_place_blocks(inputs, case), axis).compute(scheduler="sync")
    assert any(in_place)
    monkeypatch.setattr(_dask, "_columns", lambda *args: None)
    assert_bitwise_equal(got, call(op, _in_place_blocks(inputs, case), axis).compute(
        scheduler="sync"))
    if shape[0] == 2 * CHUNK + 100:
        assert_bitwise_equal(got, call(op, inputs, axis))
    assert_matches_reference(op, got, inputs, axis)


# runs of 64-byte multiples from 2048 bytes: along a strided axis (read in place, whole
# tiles streamed after a lead) and along the last axis (rows in place)
STREAMED = [(((600, 1040), ((250, 350), (1040,)), 0), "segment_columns_write"),
            (((6, 2 * CHUNK + 512), (3, (CHUNK, CHUNK + 512)), -1), "segment_write")]


@pytest.mark.parametrize("case, kernel", STREAMED, ids=[k for _, k in STREAMED])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", OPS)
def test_streamed_writes_have_the_plain_bits(op, dtype, case, kernel, monkeypatch):
    """Write tasks of large outputs store past the caches (forced here for small blocks):
    the bits of plain stores."""
    from numbasoftmax import _cpu, _cpu_kernels

    inputs = _in_place_inputs(op, case, dtype)
    streamed = []
    write = getattr(_cpu_kernels, kernel)

    def spy(*args):
        streamed.append(args[-1])
        return write(*args)

    monkeypatch.setattr(_cpu_kernels, kernel, spy)
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", None)
    plain = call(op, _dask_inputs(inputs, case[1]), case[2]).compute(scheduler="sync")
    writes = len(streamed)
    assert writes >= 2 and not any(streamed)
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", 0)
    got = call(op, _dask_inputs(inputs, case[1]), case[2]).compute(scheduler="sync")
    # rows (the last axis) by the operation's own rule, against their bytes (float16
    # never, float32 block rows of 32 KiB and more); strided runs by the runs' rule
    expected = (kernel == "segment_columns_write"
                or _cpu.stream_row_bytes(op, np.dtype(dtype).itemsize) is not None)
    assert streamed[writes:] == [expected] * writes
    assert_bitwise_equal(got, plain)
    assert_matches_reference(op, got, inputs, case[2])


# ---------------------------------------------------------------------------------------
# logsumexp over split axes: the statistics and the finish, which gives the rows' values;
# its gradient (element-wise given the rows' values) runs on the blocks as they are


def _lse_inputs(case, dtype=np.float32, seed=8):
    shape, chunks, axis = case
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[-1:]).astype(dtype)  # weights of both signs
    return x, b


def _lse_calls(x, b, axis):
    """(name, call) of logsumexp's forms: plain, with its sign, weighted with its sign,
    keepdims; each call takes x and b (dask or numpy) and returns a tuple of arrays."""
    import numbasoftmax as ns

    return [
        ("plain", lambda x, b: (ns.logsumexp(x, axis=axis),)),
        ("sign", lambda x, b: ns.logsumexp(x, axis=axis, return_sign=True)),
        ("weights", lambda x, b: ns.logsumexp(x, axis=axis, b=b, return_sign=True)),
        ("keepdims", lambda x, b: (ns.logsumexp(x, axis=axis, b=b, keepdims=True),)),
    ]


@pytest.mark.parametrize("case, dtype", BITWISE,
                         ids=[f"{_ids(c)}-{np.dtype(d)}" for c, d in BITWISE])
def test_logsumexp_whole_kernel_chunks_give_the_in_memory_bits(case, dtype):
    x, b = _lse_inputs(case, dtype)
    dx = da.from_array(x, chunks=case[1])
    for name, f in _lse_calls(x, b, case[2]):
        lazy = f(dx, b)
        assert not [n for r in lazy for n in r.dask.layers if "rechunk" in n], name
        got = dask.compute(*lazy, scheduler="threads")
        for g, want in zip(got, f(x, b), strict=True):
            assert isinstance(g, np.ndarray), name
            assert_bitwise_equal(g, want)


@pytest.mark.parametrize("case", UNALIGNED, ids=_ids)
def test_logsumexp_other_boundaries_within_the_error_bound(case):
    x, b = _lse_inputs(case)
    dx = da.from_array(x, chunks=case[1])
    for name, f in _lse_calls(x, b, case[2]):
        lazy = f(dx, b)
        got = dask.compute(*lazy, scheduler="threads")
        for g, want in zip(got, f(x, b), strict=True):
            assert g.shape == want.shape and g.dtype == want.dtype, name
            np.testing.assert_allclose(g, want, rtol=8 * np.finfo(np.float32).eps,
                                       err_msg=name)
        for g, again in zip(got, dask.compute(*lazy, scheduler="sync"), strict=True):
            assert_bitwise_equal(again, g)  # the order is the graph's


@pytest.mark.parametrize("chunks", [(6, 2 * CHUNK), (4, 10000)], ids=["aligned", "unaligned"])
def test_logsumexp_non_finite_values_in_different_blocks_of_a_row(chunks):
    import numbasoftmax as ns

    x = _non_finite_rows(5 * CHUNK - 960)
    x[1, 30000] = np.inf                           # two +inf: the row's value +inf
    b = np.ones(x.shape[1], np.float32)
    b[[20000, 30000]] = [1.0, -1.0]
    dx = da.from_array(x, chunks=chunks)
    got = ns.logsumexp(dx).compute(scheduler="threads")
    want = ns.logsumexp(x)
    value, sign = dask.compute(*ns.logsumexp(dx, b=b, return_sign=True), scheduler="threads")
    want_value, want_sign = ns.logsumexp(x, b=b, return_sign=True)
    if chunks[1] % CHUNK == 0:
        assert_bitwise_equal(got, want)
        assert_bitwise_equal(value, want_value)
        assert_bitwise_equal(sign, want_sign)
    # NaN row, +inf row (NaN with weights of both signs there), -inf row, finite rows
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf
    assert np.isfinite(got[3:]).all() and got[5] == np.float32(3e38)
    np.testing.assert_allclose(got[3:], want[3:], rtol=4 * np.finfo(np.float32).eps)
    assert np.isnan(value[:2]).all() and value[2] == -np.inf and sign[2] == 0
    np.testing.assert_array_equal(np.isnan(sign), np.isnan(want_sign))


@pytest.mark.parametrize("case", [
    ((64, 48), (16, 12), 0),
    ((64, 48), (16, 12), None),
    ((4, 6, 8), (2, 3, 4), (0, 2)),
], ids=_ids)
def test_logsumexp_graph_no_task_holds_more_than_a_block_of_each_operand(case):
    import numbasoftmax as ns

    shape, chunks, axis = case
    x, b = _lse_inputs(case)
    dx, db = da.from_array(x, chunks=chunks), da.from_array(np.broadcast_to(b, shape),
                                                            chunks=chunks)
    for weights in (None, db):
        result = ns.logsumexp(dx, axis=axis, b=weights)
        assert not [name for name in result.dask.layers if "rechunk" in name]
        graph = result.__dask_graph__()
        deps = graph.get_all_dependencies()
        blocks = {key for a in (dx, db) for key in flatten(a.__dask_keys__())}
        per_task = [len(d & blocks) for d in deps.values()]
        assert max(per_task) == (1 if weights is None else 2)
        stats = next(name for name in graph.layers if name.startswith("logsumexp-stats"))
        finish = next(name for name in graph.layers if name.startswith("logsumexp-finish"))
        groups = math.prod(n for ax, n in enumerate(dx.numblocks)
                           if ax not in _axes(axis, dx.ndim))
        assert len(graph.layers[stats]) == dx.npartitions
        assert len(graph.layers[finish]) == groups
        for key in graph.layers[finish]:
            assert not deps[key] & blocks  # the finish reads statistics only


@pytest.mark.parametrize("given, options", [
    (np.float16, {"dtype": np.float32}),           # computed as if cast
    (np.float32, {"b": np.float64}),               # weights of a wider dtype: float64
    (np.int16, {}),                                # integers: float64
], ids=["dtype", "wider-weights", "integers"])
def test_logsumexp_result_dtypes(given, options):
    import numbasoftmax as ns

    x = (np.random.default_rng(9).standard_normal((3, 3 * CHUNK)) * 3).astype(given)
    kw = dict(options)
    if "b" in kw:
        kw["b"] = np.random.default_rng(10).random(3 * CHUNK).astype(kw["b"])
    got = ns.logsumexp(da.from_array(x, chunks=(2, CHUNK)), **kw).compute(scheduler="threads")
    want = ns.logsumexp(x, **kw)
    assert got.dtype == want.dtype
    assert_bitwise_equal(got, want)


@pytest.mark.parametrize("chunks", [(4, 10000), (6, 2 * CHUNK)], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("options", ["plain", "weights-sign", "where"])
def test_logsumexp_backward_keeps_the_blocks(options, chunks):
    """Element-wise given its rows' values: any chunking gives the in-memory bits."""
    import numbasoftmax as ns

    x = _non_finite_rows(5 * CHUNK - 960)
    rng = np.random.default_rng(11)
    kw = {}
    if options == "weights-sign":
        kw = {"b": rng.standard_normal(x.shape[1]).astype(np.float32),
              "sign": np.sign(rng.standard_normal(6)).astype(np.float32)}
    elif options == "where":
        kw = {"where": rng.random(x.shape) < 0.7}
    lse = ns.logsumexp(x, b=kw.get("b"), where=kw.get("where"))
    g = rng.standard_normal(6).astype(np.float32)
    dx = da.from_array(x, chunks=chunks)
    result = ns.logsumexp_backward(dx, lse, g, **kw)
    assert result.chunks == dx.chunks
    graph = result.__dask_graph__()
    blocks = set(flatten(dx.__dask_keys__()))
    assert max(len(d & blocks) for d in graph.get_all_dependencies().values()) == 1
    assert_bitwise_equal(result.compute(scheduler="threads"),
                         ns.logsumexp_backward(x, lse, g, **kw))


# ---------------------------------------------------------------------------------------
# where= and dtype= over split axes: the same passes, the mask read with the blocks (rows
# in place or copied in panels, as the other operands), the blocks read as the result dtype

MASK_OPS = [*OPS, "logsumexp"]
# a mask of x's shape, one constant along the other axes (a row mask), one constant along
# the softmax axes (whole rows in or out)
MASK_FORMS = ["x", "along", "rows"]


def _mask_for(shape, axes, form, rng):
    if form == "x":
        return rng.random(shape) < 0.7
    keep = [s if (ax in axes) == (form == "along") else 1 for ax, s in enumerate(shape)]
    mask = rng.random(keep) < 0.7
    if form == "rows":
        mask.flat[0] = False  # a row without an included element, across its blocks
    return mask


def _masked_inputs(op, case, form, dtype=np.float32):
    shape, _, axis = case
    rng = np.random.default_rng(12)
    axes = _axes(axis, len(shape))
    inputs = list(inputs_for("softmax" if op == "logsumexp" else op, rng, shape, dtype, axis))
    where = _mask_for(shape, axes, form, rng)
    excluded = ~np.broadcast_to(where, shape)
    if excluded.any():  # non-finite values where excluded change nothing
        specials = np.resize(np.array([np.nan, np.inf, -np.inf], dtype), int(excluded.sum()))
        inputs[0] = inputs[0].copy()
        inputs[0][excluded] = specials
    return inputs, where


MASKED = [ALIGNED[0], ALIGNED[2], ALIGNED[5]]


@pytest.mark.parametrize("form", MASK_FORMS)
@pytest.mark.parametrize("case", MASKED, ids=_ids)
@pytest.mark.parametrize("op", MASK_OPS)
def test_masked_whole_kernel_chunks_give_the_in_memory_bits(op, case, form):
    import numbasoftmax as ns

    inputs, where = _masked_inputs(op, case, form)
    f = getattr(ns, op)
    result = f(*_dask_inputs(inputs, case[1]), axis=case[2], where=where)
    if op != "logsumexp":
        assert result.chunks == da.from_array(inputs[0], chunks=case[1]).chunks
    assert_bitwise_equal(result.compute(scheduler="threads"), f(*inputs, axis=case[2],
                                                                where=where))


@pytest.mark.parametrize("op", MASK_OPS)
def test_masked_other_boundaries_same_bits_on_every_scheduler(op):
    import numbasoftmax as ns

    case = UNALIGNED[3]
    inputs, where = _masked_inputs(op, case, "x")
    f = getattr(ns, op)
    result = f(*_dask_inputs(inputs, case[1]), axis=case[2], where=where)
    got = result.compute(scheduler="threads")
    want = f(*inputs, axis=case[2], where=where)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    scale = 1.0 if op in ("softmax", "logsumexp") else np.abs(want[fin]).max()
    np.testing.assert_allclose(got[fin], want[fin], rtol=0,
                               atol=64 * np.finfo(np.float32).eps * scale)
    assert_bitwise_equal(result.compute(scheduler="sync"), got)


@pytest.mark.parametrize("op", MASK_OPS)
def test_masked_graph_no_task_holds_more_than_a_block_of_each_operand(op):
    import numbasoftmax as ns

    shape, chunks, axis = ((64, 48), (16, 12), None)
    inputs, where = _masked_inputs(op, (shape, chunks, axis), "x")
    dinputs = _dask_inputs(inputs, chunks)
    dwhere = da.from_array(where, chunks=(32, 24))  # other chunks: rechunked to x's
    result = getattr(ns, op)(*dinputs, axis=axis, where=dwhere)
    graph = result.__dask_graph__()
    deps = graph.get_all_dependencies()
    for a in (*dinputs, dwhere):
        blocks = set(flatten(a.__dask_keys__()))
        assert max(len(d & blocks) for d in deps.values()) == 1
    stats = next(name for name in graph.layers if "-stats-" in name)
    assert len(graph.layers[stats]) == dinputs[0].npartitions


DTYPE_CASES = [(op, "float16") for op in MASK_OPS] + [
    (op, "integer-dy") for op in ("softmax_backward", "log_softmax_backward")]


@pytest.mark.parametrize("op, given", DTYPE_CASES, ids=[f"{o}-{g}" for o, g in DTYPE_CASES])
def test_dtype_reads_the_blocks_as_the_result_dtype(op, given):
    """dtype=: as if the input were cast, as the numpy call; an integer gradient is read
    as that dtype too."""
    import numbasoftmax as ns

    case = ALIGNED[0]
    inputs = list(inputs_for("softmax" if op == "logsumexp" else op,
                             np.random.default_rng(13), case[0],
                             np.float16 if given == "float16" else np.float32, case[2]))
    if given == "integer-dy":
        inputs[1] = np.arange(inputs[1].size, dtype=np.int32).reshape(case[0]) % 7 - 3
    f = getattr(ns, op)
    result = f(*_dask_inputs(inputs, case[1]), axis=case[2], dtype=np.float32)
    assert result.dtype == np.float32
    assert_bitwise_equal(result.compute(scheduler="threads"),
                         f(*inputs, axis=case[2], dtype=np.float32))


@pytest.mark.parametrize("form", ["x", "x-F", "rows"])
@pytest.mark.parametrize("case", IN_PLACE[:2], ids=_ids)
@pytest.mark.parametrize("op", MASK_OPS)
def test_masked_runs_read_in_place_along_a_strided_axis(op, case, form, monkeypatch):
    """A mask along a strided axis: its bytes read in place beside x (laid out as x, or
    copied once so); the bits of the panels, and of the numpy call where aligned."""
    import numbasoftmax as ns

    inputs, where = _masked_inputs(op, case, "x" if form.startswith("x") else form)
    if form == "x-F":
        where = np.asfortranarray(where)
    f = getattr(ns, op)
    in_place = _spy_on_columns(monkeypatch)
    got = f(*_dask_inputs(inputs, case[1]), axis=case[2], where=where).compute(scheduler="sync")
    assert in_place and all(in_place)
    monkeypatch.setattr(_dask, "_columns", lambda *args: None)
    assert_bitwise_equal(got, f(*_dask_inputs(inputs, case[1]), axis=case[2],
                                where=where).compute(scheduler="sync"))
    if case is IN_PLACE[1]:
        assert_bitwise_equal(got, f(*inputs, axis=case[2], where=where))
