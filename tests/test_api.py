"""The four public functions against the float64 reference (numbasoftmax.reference).

Shapes are chosen to hit every CPU code path (see tests/_helpers.py for the thresholds):
row lengths below, at and above each kernel threshold (SHORT_ROW_MAX: the lane kernel
below 10 or 32 elements; GROUPED_ROW_MAX: rows in groups below 64 or 8192; BLOCK=1024 lane
blocks, CHUNK=8192 chunks, ROW_TASK_MAX=32768: longer rows in batches of fewer than
ROW_TASK_MIN_ROWS=16 rows are split into (row, chunk) parallel tasks), and total sizes
below, at and above PARALLEL_MIN_ELEMENTS=32768 (serial vs parallel driver).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from _helpers import (
    CHUNK,
    FLOAT_DTYPES,
    GROUPED_ROW_MAX,
    LAYOUTS,
    OPS,
    PARALLEL_MIN_ELEMENTS,
    SHORT_ROW_BYTES,
    SHORT_ROW_MAX,
    assert_bitwise_equal,
    assert_matches_reference,
    bits,
    call,
    func,
    in_layout,
    inputs_for,
    num_threads,
    read_only_copy,
)

import numbasoftmax


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _dtype_id(d):
    return np.dtype(d).name


# ---------------------------------------------------------------------------------------
# row lengths around every threshold, each as one row, as a batch small enough for the
# serial driver, and as a batch just big enough for the parallel driver

ROW_LENGTHS = (1, 2, 8, 9, 10, 22, 23, 31, 32, 33, 63, 64, 1023, 1024, 1025, 8191, 8192,
               8193, 32767, 32768, 32769, 70000)


def _threshold_shapes():
    shapes = []
    for n in ROW_LENGTHS:
        candidates = [(n,)]
        if n < PARALLEL_MIN_ELEMENTS:
            candidates.append(((PARALLEL_MIN_ELEMENTS - 1) // n, n))  # serial driver
        candidates.append((PARALLEL_MIN_ELEMENTS // n + 1, n))  # parallel driver
        for s in candidates:
            if s not in shapes and not (len(s) == 2 and s[0] == 1):
                shapes.append(s)
    return shapes


THRESHOLD_SHAPES = _threshold_shapes()


def test_row_lengths_straddle_the_launchers_thresholds():
    """The thresholds restated in tests/_helpers.py are the launcher's and fit the lane
    kernel's tiles, and ROW_LENGTHS has a row on each side of every one; grouped rows are
    rows of one chunk."""
    from numbasoftmax import _cpu
    from numbasoftmax._lane_kernel import REGISTER_ROW_MAX, TILE_ROW_MAX

    assert (_cpu.SHORT_ROW_MAX, _cpu.GROUPED_ROW_MAX) == (SHORT_ROW_MAX, GROUPED_ROW_MAX)
    assert _cpu.SHORT_ROW_BYTES == SHORT_ROW_BYTES
    assert SHORT_ROW_BYTES // 8 in ROW_LENGTHS and SHORT_ROW_BYTES // 8 + 1 in ROW_LENGTHS
    # the lane kernel's tiles take the rows the launcher gives them, and no more
    assert SHORT_ROW_MAX == {"forward": TILE_ROW_MAX + 1, "backward": REGISTER_ROW_MAX + 1}
    assert (_cpu.PARALLEL_MIN_ELEMENTS, _cpu.ROW_TASK_MAX) == (PARALLEL_MIN_ELEMENTS, 32768)
    for t in (*SHORT_ROW_MAX.values(), *GROUPED_ROW_MAX.values(), CHUNK):
        assert t - 1 in ROW_LENGTHS and t in ROW_LENGTHS
    assert max(GROUPED_ROW_MAX.values()) <= CHUNK


@pytest.mark.parametrize("shape", THRESHOLD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_row_length_thresholds(op, dtype, shape, rng):
    inputs = inputs_for(op, rng, shape, dtype)
    assert_matches_reference(op, call(op, inputs), inputs)


# Non-temporal stores (large outputs): rows on each side of each operation's shortest
# streamed row (float64: 256, 512 and 1024 elements; float32: 512, 1024 and 2048; float16:
# 1024), serial and parallel, with every output streamed against none: the same bits.
STREAM_ROWS = [(40, 255), (40, 256), (40, 511), (40, 512), (40, 513), (40, 1023), (40, 1024),
               (12, 2047), (12, 2048), (100, 1000), (3, 40000)]
# (operation, item size, its shortest streamed row in bytes; None: it never streams)
STREAM_EDGES = [("softmax", 2, 2048), ("softmax", 4, 2048), ("softmax", 8, 2048),
                ("log_softmax", 2, None), ("log_softmax", 4, 8192), ("log_softmax", 8, 8192),
                ("softmax_backward", 2, None), ("softmax_backward", 4, 4096),
                ("softmax_backward", 8, 4096), ("log_softmax_backward", 2, None),
                ("log_softmax_backward", 4, None), ("log_softmax_backward", 8, None)]
_STREAM_EDGE = {(op, itemsize): edge for op, itemsize, edge in STREAM_EDGES}


def test_stream_rule_total_size():
    from numbasoftmax import _cpu

    assert _cpu.STREAM_MIN_ROW_BYTES == 2048
    big = _cpu.STREAM_MIN_BYTES
    assert big is None or not _cpu.streams(big // 2048 - 1, 512, 4)
    assert big is None or _cpu.streams(big // 2048, 512, 4)
    assert big is None or not _cpu.streams(big // 2044 + 1, 511, 4)


@pytest.mark.parametrize("op, itemsize, edge", STREAM_EDGES,
                         ids=lambda v: v if isinstance(v, str) else str(v))
def test_stream_rule_row_length(op, itemsize, edge, monkeypatch):
    from numbasoftmax import _cpu

    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", 32 << 20)
    m = 1 << 20  # every row length below makes an output of 32 MiB or more
    assert _cpu.stream_row_bytes(op, itemsize) == edge
    if edge is None:
        assert not _cpu.streams(m, 1 << 20, itemsize, op)
    else:
        assert _cpu.streams(m, edge // itemsize, itemsize, op)
        assert not _cpu.streams(m, edge // itemsize - 1, itemsize, op)


@pytest.mark.parametrize("shape", STREAM_ROWS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_streamed_outputs_have_the_plain_bits(op, dtype, shape, rng, monkeypatch):
    from numbasoftmax import _cpu

    inputs = inputs_for(op, rng, shape, dtype)
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", None)
    plain = call(op, inputs)
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", 0)
    n, size = shape[-1], np.dtype(dtype).itemsize
    edge = _STREAM_EDGE[op, size]
    assert _cpu.streams(shape[0], n, size, op) is (edge is not None and n * size >= edge)
    streamed = call(op, inputs)
    assert_bitwise_equal(streamed, plain)
    assert_matches_reference(op, streamed, inputs)


def _streamed_and_plain(op, inputs, offset, monkeypatch, **kw):
    """``op``'s result streamed into an ``out`` ``offset`` elements past an allocation,
    and its result with plain stores (``kw``: more arguments of both calls)."""
    from numbasoftmax import _cpu

    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", None)
    plain = func(op)(*inputs, **kw)
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", 0)
    out = np.full(plain.size + 8, np.nan, plain.dtype)[offset:offset + plain.size]
    streamed = func(op)(*inputs, out=out.reshape(plain.shape), **kw)
    assert streamed.base is out.base
    return streamed, plain


# log_softmax's and the gradients' rows stream as runs of whole vectors (``run_rows``): a
# vector may hold two rows' outputs, and only a run's first and last partial vectors are
# plain stores. Rows of 16 (the shortest a run takes; log_softmax's runs start where its
# short rows end) to a chunk and past it; the output at each offset from a cache line; 37
# rows run serially, 70 in parallel tasks where they make 32K elements or more (else
# serially too).
RUN_OPS = ["log_softmax", "softmax_backward", "log_softmax_backward"]


@pytest.mark.parametrize("offset", [0, 1, 5], ids=lambda k: f"out+{k}")
@pytest.mark.parametrize("n", [16, 17, 32, 40, 63, 64, 65, 100, 1000, 8192, 8193])
@pytest.mark.parametrize("m", [37, 70])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_dtype_id)
@pytest.mark.parametrize("op", RUN_OPS)
def test_rows_streamed_as_runs_have_the_plain_bits(op, dtype, m, n, offset, rng, monkeypatch):
    from numbasoftmax import _cpu

    streamed, plain = _streamed_and_plain(op, inputs_for(op, rng, (m, n), dtype), offset,
                                          monkeypatch)
    assert _cpu.streams(m, n, np.dtype(dtype).itemsize, op, runs=True)
    assert_bitwise_equal(streamed, plain)


@pytest.mark.parametrize(("op", "n", "taken"), [
    ("log_softmax", 32, False), ("log_softmax", 33, True), ("log_softmax", 8192, True),
    ("log_softmax", 8193, False), ("softmax", 1000, False), ("softmax_backward", 16, True)])
def test_which_rows_run(op, n, taken, rng, monkeypatch):
    """Large outputs of log_softmax's rows from the short rows' end (33 elements) to a
    chunk, and of the gradients' from 16, take the run driver; softmax's never (its exps
    kept in ``out``)."""
    from numbasoftmax import _cpu

    kernels = _cpu._load_kernels()
    seen = []
    real = _cpu._parallel
    monkeypatch.setattr(_cpu, "_parallel",
                        lambda kernel, args: (seen.append(kernel), real(kernel, args)))
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", 0)
    func(op)(*inputs_for(op, rng, (40000 // n + 4, n), np.float32))
    assert (seen == [kernels.run_rows_parallel]) is taken


@pytest.mark.parametrize(("op", "n", "dtype", "alone"), [
    ("softmax", 63, np.float32, False), ("softmax", 64, np.float32, True),
    ("softmax", 8191, np.float32, True), ("softmax", 31, np.float64, False),
    ("softmax", 32, np.float64, True), ("softmax", 127, np.float16, False),
    ("softmax", 128, np.float16, True), ("log_softmax", 64, np.float32, True),
    ("softmax_backward", 63, np.float32, False)], ids=str)
def test_large_outputs_rows_run_alone(op, n, dtype, alone, rng, monkeypatch):
    """Large outputs of softmax's and log_softmax's rows of 256 bytes or more run a row at a
    time, not in groups (``_cpu.ALONE_ROW_BYTES``), with the bits of the groups."""
    from numbasoftmax import _cpu

    kernels = _cpu._load_kernels()
    inputs = inputs_for(op, rng, (40000 // n + 4, n), dtype)  # too small to stream as runs
    grouped = func(op)(*inputs)
    seen = []
    real = _cpu._parallel
    monkeypatch.setattr(_cpu, "_parallel",
                        lambda kernel, args: (seen.append(kernel), real(kernel, args)))
    monkeypatch.setattr(_cpu, "ALONE_MIN_BYTES", 0)
    assert_bitwise_equal(func(op)(*inputs, out=np.empty_like(grouped)), grouped)
    assert (seen == [kernels.rows_parallel]) is alone, seen


@pytest.mark.parametrize(("dtype", "n", "tiles"), [
    (np.float64, 22, True), (np.float64, 23, False), (np.float32, 32, True),
    (np.float32, 33, False), (np.float16, 32, True), (np.float16, 33, False)], ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_short_rows_take_tiles_up_to_their_bytes(op, dtype, n, tiles, rng, monkeypatch):
    """The forward operations' rows of up to 32 elements run on the lane kernel's tiles
    where their outputs are at most SHORT_ROW_BYTES long (float64: 22 elements), else in
    the row kernel's groups."""
    from numbasoftmax import _cpu

    kernels = _cpu._load_kernels()
    seen = []
    real = _cpu._parallel
    monkeypatch.setattr(_cpu, "_parallel",
                        lambda kernel, args: (seen.append(kernel), real(kernel, args)))
    func(op)(*inputs_for("softmax", rng, (40000 // n + 4, n), dtype))
    driver = kernels.short_rows_parallel if tiles else kernels.grouped_rows_parallel
    assert seen == [driver]


# rows fetched ahead per float32 row length: softmax, log_softmax, softmax_backward,
# log_softmax_backward (rows of up to 2, 2, 4 and 16 KiB, 2 KiB ahead or the next row)
FETCHED = {3: (170, 170, 170, 170), 32: (16, 16, 16, 16), 100: (5, 5, 5, 5),
           512: (1, 1, 1, 1), 513: (0, 0, 1, 1), 1024: (0, 0, 1, 1), 1025: (0, 0, 0, 1),
           4096: (0, 0, 0, 1), 4097: (0, 0, 0, 0)}


def _rows_ahead_given(op, n, fetching, rng, monkeypatch):
    """The rows ahead the parallel driver got for a large float32 call of rows of n (after
    checking its bits against a call that fetches nothing), on a CPU that fetches or not."""
    from numbasoftmax import _cpu

    inputs = inputs_for(op, rng, (40000 // n + 4, n), np.float32)
    plain = func(op)(*inputs)
    seen = []
    real = _cpu._parallel
    monkeypatch.setattr(_cpu, "_parallel",
                        lambda kernel, args: (seen.append(args[12]), real(kernel, args)))
    monkeypatch.setattr(_cpu, "FETCH_MIN_BYTES", 0)
    monkeypatch.setattr(_cpu, "host_fetches", lambda: fetching)  # whatever this CPU does
    assert_bitwise_equal(func(op)(*inputs, out=np.empty_like(plain)), plain)
    return seen


@pytest.mark.parametrize("n", FETCHED)
@pytest.mark.parametrize("op", OPS)
def test_large_outputs_fetch_rows_ahead(op, n, rng, monkeypatch):
    """Large outputs' short rows are fetched into the cache ahead (``_cpu.ahead``), with
    the bits of the rows not fetched."""
    ahead = FETCHED[n][["softmax", "log_softmax", "softmax_backward",
                        "log_softmax_backward"].index(op)]
    assert _rows_ahead_given(op, n, True, rng, monkeypatch) == [ahead]


@pytest.mark.parametrize("op", OPS)
def test_rows_are_not_fetched_ahead_on_cpus_that_skip_it(op, rng, monkeypatch):
    """On the CPUs of ``_cpu.NO_FETCH_CPUS`` the drivers get 0 rows ahead (same bits)."""
    assert _rows_ahead_given(op, 32, False, rng, monkeypatch) == [0]


def test_which_cpus_fetch_rows_ahead():
    from numbasoftmax import _cpu

    assert not _cpu.fetches_on("znver4")
    assert not _cpu.fetches_on("znver3")
    assert _cpu.fetches_on("sapphirerapids")
    assert _cpu.fetches_on("skylake-avx512")
    from llvmlite import binding

    assert _cpu.host_fetches() == _cpu.fetches_on(binding.get_host_cpu_name())


# a run's rows that are NaN (a NaN, a +inf, every element -inf) beside finite ones: a
# vector across two rows takes each row's own values
@pytest.mark.parametrize("n", [32, 40, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_dtype_id)
def test_log_softmax_runs_with_nan_rows_have_the_plain_bits(dtype, n, rng, monkeypatch):
    """... and numpy's NaN, whichever NaN x held (-NaN in row 7: the runs' NaN rows are
    computed from x, where the plain drivers fill them)."""
    x = rng.standard_normal((70, n)).astype(dtype)
    x[3, 5] = np.nan
    x[4, -1] = np.inf
    x[5] = -np.inf
    x[6, :n // 2] = -np.inf
    x[7, :3] = -np.float64(np.nan)
    streamed, plain = _streamed_and_plain("log_softmax", (x,), 5, monkeypatch)
    assert_bitwise_equal(streamed, plain)
    assert (bits(streamed[np.r_[3:6, 7]]) == bits(np.array([np.nan], dtype))).all()
    assert np.isfinite(streamed[np.r_[0:3, 8:70]]).all()


# with a mask of x's shape (its rows laid out as x's: the same runs) or of one row's shape
# (every row's mask the same: the row drivers); a row without included elements
@pytest.mark.parametrize("mask_shape", ["x", "row"])
@pytest.mark.parametrize("n", [16, 40, 100, 1000])
@pytest.mark.parametrize("m", [37, 70])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_dtype_id)
@pytest.mark.parametrize("op", RUN_OPS)
def test_masked_rows_streamed_as_runs_have_the_plain_bits(op, dtype, m, n, mask_shape, rng,
                                                          monkeypatch):
    inputs = inputs_for(op, rng, (m, n), dtype)
    where = rng.random((m, n) if mask_shape == "x" else (n,)) < 0.7
    if mask_shape == "x":
        where[2] = False
    streamed, plain = _streamed_and_plain(op, inputs, 5, monkeypatch, where=where)
    assert_bitwise_equal(streamed, plain)
    excluded = np.broadcast_to(~where, streamed.shape)
    # excluded elements: -inf (log_softmax), 0 gradient
    assert (streamed[excluded] == (-np.inf if op == "log_softmax" else 0)).all()


# masked log_softmax reads x and the mask in every pass and leaves ``out`` alone until it
# writes, so its long rows stream as the unmasked ones do (rows of 8 KiB and more); a NaN
# row and a row whose valid elements are all -inf among them (plain stores)
@pytest.mark.parametrize("mask_shape", ["x", "row"])
@pytest.mark.parametrize("n", [2048, 3000, 8193])
@pytest.mark.parametrize("m", [5, 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_dtype_id)
def test_masked_log_softmax_streamed_has_the_plain_bits(dtype, m, n, mask_shape, rng,
                                                        monkeypatch):
    from numbasoftmax import _cpu

    x = rng.standard_normal((m, n)).astype(dtype)
    x[1, 7] = np.nan
    x[3] = -np.inf
    where = rng.random((m, n) if mask_shape == "x" else (n,)) < 0.7
    where[..., 7] = True  # the NaN is valid: its row NaN
    streamed, plain = _streamed_and_plain("log_softmax", (x,), 5, monkeypatch, where=where)
    assert _cpu.streams(m, n, np.dtype(dtype).itemsize, "log_softmax")
    assert_bitwise_equal(streamed, plain)
    excluded = np.broadcast_to(~where, x.shape)
    assert (streamed[excluded & ~np.isnan(streamed)] == -np.inf).all()
    assert np.isnan(streamed[1][~excluded[1]]).all()


def test_runs_stream_float32_and_float64():
    """Rows a run takes stream from their first element in float32 and float64 (float16
    keeps the row rule: never for the gradients), and only rows it takes."""
    from numbasoftmax import _cpu

    m, big = 1 << 20, _cpu.STREAM_MIN_BYTES
    if big is None:
        pytest.skip("streaming is off (NUMBASOFTMAX_STREAM_BYTES)")
    assert _cpu.streams(m, 16, 4, "softmax_backward", runs=True)
    assert _cpu.streams(m, 16, 8, "log_softmax_backward", runs=True)
    assert _cpu.streams(m, 32, 4, "log_softmax", runs=True)
    assert not _cpu.streams(m, 32, 4, "log_softmax")  # rows on their own: 8 KiB and more
    assert not _cpu.streams(m, 16, 2, "softmax_backward", runs=True)
    assert not _cpu.streams(m, 16, 4, "softmax_backward")


# along a strided axis read in place: runs of C contiguous outputs, every run placed alike
# against the cache lines (C x itemsize a multiple of 64 bytes) and from 2048 bytes long
# (every dtype at 1024, float32 and float64 at 640), serial and parallel
STREAM_COLUMNS = [((7, 1024), 0), ((40, 1024), 0), ((5, 17, 640), 1)]


@pytest.mark.parametrize("case", STREAM_COLUMNS, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_streamed_strided_axes_have_the_plain_bits(op, dtype, case, rng, monkeypatch):
    from numbasoftmax import _cpu, _cpu_kernels

    shape, axis = case
    inputs = inputs_for(op, rng, shape, dtype, axis)
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", None)
    plain = call(op, inputs, axis)
    leads = []
    lead = _cpu_kernels.column_lead
    monkeypatch.setattr(_cpu_kernels, "column_lead", lambda *a: leads.append(lead(*a)) or leads[-1])
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", 0)
    streamed = call(op, inputs, axis)
    runs = shape[-1] * np.dtype(dtype).itemsize
    assert [k >= 0 for k in leads] == ([True] if runs >= 2048 else [])
    assert_bitwise_equal(streamed, plain)
    assert_matches_reference(op, streamed, inputs, axis)


# total elements just below, at and just above the parallel-driver threshold
DRIVER_SHAPES = [(217, 151), (256, 128), (99, 331)]


def test_driver_shapes_straddle_threshold():
    sizes = [int(np.prod(s)) for s in DRIVER_SHAPES]
    assert sizes == [PARALLEL_MIN_ELEMENTS - 1, PARALLEL_MIN_ELEMENTS,
                     PARALLEL_MIN_ELEMENTS + 1]


@pytest.mark.parametrize("shape", DRIVER_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_driver_threshold(op, dtype, shape, rng):
    inputs = inputs_for(op, rng, shape, dtype)
    assert_matches_reference(op, call(op, inputs), inputs)


@pytest.mark.parametrize("shape", [(1, 32769), (3, 40000), (2, 70000), (1, 32768), (5, 8193)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_serial_driver_long_rows(op, dtype, shape, rng):
    """With one thread the serial driver runs every size, long rows included."""
    inputs = inputs_for(op, rng, shape, dtype)
    with num_threads(1):
        got = call(op, inputs)
    assert_matches_reference(op, got, inputs)


@pytest.mark.parametrize("axis", [-1, 0], ids=lambda a: f"axis{a}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_irregular_shape(op, dtype, axis, rng):
    inputs = inputs_for(op, rng, (1823, 781), dtype, axis=axis)
    assert_matches_reference(op, call(op, inputs, axis=axis), inputs, axis=axis)


# ---------------------------------------------------------------------------------------
# axes

AXES_4D = [0, 1, 2, 3, -1, -2, -4, (0,), (3,), (0, 2), (1, 3), (2, 0), (-1, 1), (0, 1, 2),
           (0, 1, 2, 3), None, (), np.int64(2), (np.int32(1), -1)]


@pytest.mark.parametrize("axis", AXES_4D, ids=lambda a: repr(a).replace(" ", ""))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_axes_4d(op, dtype, axis, rng):
    inputs = inputs_for(op, rng, (3, 4, 5, 6), dtype, axis=axis)
    assert_matches_reference(op, call(op, inputs, axis=axis), inputs, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, (0, 2), (1, 2), None],
                         ids=lambda a: repr(a).replace(" ", ""))
@pytest.mark.parametrize("op", OPS)
def test_axes_3d_parallel(op, axis, rng):
    """3-D, big enough for the parallel driver whatever the axes."""
    inputs = inputs_for(op, rng, (40, 33, 31), np.float32, axis=axis)
    assert_matches_reference(op, call(op, inputs, axis=axis), inputs, axis=axis)


@pytest.mark.parametrize("op", OPS)
def test_default_axis_is_last(op, rng):
    inputs = inputs_for(op, rng, (4, 5, 6), np.float64)
    assert_bitwise_equal(getattr(numbasoftmax, op)(*inputs),
                         call(op, inputs, axis=2))
    assert_matches_reference(op, call(op, inputs, axis=-1), inputs, axis=-1)


@pytest.mark.parametrize("op", OPS)
def test_axis_none_is_all_axes(op, rng):
    inputs = inputs_for(op, rng, (3, 4, 5), np.float64, axis=None)
    assert_bitwise_equal(call(op, inputs, axis=None), call(op, inputs, axis=(0, 1, 2)))


@pytest.mark.parametrize("op", OPS)
def test_axis_tuple_order_irrelevant(op, rng):
    inputs = inputs_for(op, rng, (6, 5, 4), np.float32, axis=(0, 2))
    assert_bitwise_equal(call(op, inputs, axis=(2, 0)), call(op, inputs, axis=(0, 2)))
    assert_bitwise_equal(call(op, inputs, axis=(-1, 0)), call(op, inputs, axis=(0, 2)))


# ---------------------------------------------------------------------------------------
# dtypes

@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int16, np.int32, np.int64,
                                   np.uint8, np.uint64], ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_integer_and_bool_promote_to_float64(op, dtype, rng):
    inputs = inputs_for(op, rng, (5, 7), dtype)
    got = call(op, inputs)
    assert got.dtype == np.float64
    assert_matches_reference(op, got, inputs)
    # promotion means computing on the float64 values
    assert_bitwise_equal(got, call(op, tuple(a.astype(np.float64) for a in inputs)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_float_dtype_kept(op, dtype, rng):
    inputs = inputs_for(op, rng, (3, 10), dtype)
    assert call(op, inputs).dtype == np.dtype(dtype)


# ---------------------------------------------------------------------------------------
# layouts

LAYOUT_CASES = [((7, 33), -1), ((300, 129), -1), ((300, 129), 0), ((5, 6, 7), (0, 2)),
                ((2, 40000), -1)]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-ax{c[1]}")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_layouts(op, dtype, layout, case, rng):
    shape, axis = case
    inputs = inputs_for(op, rng, shape, dtype, axis=axis)
    laid = tuple(in_layout(a, layout) for a in inputs)
    got = call(op, laid, axis=axis)
    assert_matches_reference(op, got, inputs, axis=axis)


@pytest.mark.parametrize("layouts", [("C", "F"), ("negative", "stepped"), ("offset", "C"),
                                     ("transposed", "negative")], ids="-".join)
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_backward_mixed_layouts(op, layouts, rng):
    """y and dy (z and dz) in different layouts."""
    inputs = inputs_for(op, rng, (50, 70), np.float32, axis=0)
    laid = tuple(in_layout(a, lay) for a, lay in zip(inputs, layouts, strict=True))
    assert_matches_reference(op, call(op, laid, axis=0), inputs, axis=0)


# ---------------------------------------------------------------------------------------
# out=

OUT_KINDS = ("fresh", "F", "stepped", "negative", "view_of_bigger", "inplace", "inplace_second",
             "inplace_stepped")


def _make_out(kind, inputs, dtype, shape):
    if kind == "fresh":
        return np.empty(shape, dtype)
    if kind == "F":
        return np.empty(shape, dtype, order="F")
    if kind == "stepped":
        return in_layout(np.zeros(shape, dtype), "stepped")
    if kind == "negative":
        return in_layout(np.zeros(shape, dtype), "negative")
    if kind == "view_of_bigger":
        return in_layout(np.zeros(shape, dtype), "offset")
    if kind == "inplace":
        return inputs[0]
    if kind == "inplace_second":
        return inputs[-1]
    if kind == "inplace_stepped":
        return inputs[0]
    raise ValueError(kind)


@pytest.mark.parametrize("shape", [(7, 33), (300, 129), (2, 40000)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", OUT_KINDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_out(op, dtype, kind, shape, rng):
    inputs = inputs_for(op, rng, shape, dtype)
    expected = call(op, inputs)
    if kind == "inplace_stepped":
        inputs = tuple(in_layout(a, "stepped") for a in inputs)
    work = tuple(a.copy() if kind == "fresh" else a for a in inputs)
    originals = tuple(a.copy() for a in work)
    out = _make_out(kind, work, dtype, shape)
    got = call(op, work, out=out)
    assert got is out
    assert_matches_reference(op, got, originals)
    if not kind.startswith("inplace"):
        # the same bits as without out=, whatever out's layout (in-place calls:
        # test_edge_cases.py::test_inplace_bitwise_equal_to_out_of_place)
        assert_bitwise_equal(np.asarray(got), expected)


@pytest.mark.parametrize("op", OPS)
def test_out_on_integer_input_is_float64(op, rng):
    inputs = inputs_for(op, rng, (4, 6), np.int32)
    out = np.empty((4, 6), np.float64)
    assert call(op, inputs, out=out) is out
    assert_matches_reference(op, out, inputs)


@pytest.mark.parametrize("axis", [0, (0, 1), None], ids=repr)
@pytest.mark.parametrize("op", OPS)
def test_out_with_axes(op, axis, rng):
    inputs = inputs_for(op, rng, (6, 7, 8), np.float64, axis=axis)
    out = in_layout(np.zeros((6, 7, 8)), "negative")
    assert call(op, inputs, axis=axis, out=out) is out
    assert_bitwise_equal(np.asarray(out), call(op, inputs, axis=axis))


# ---------------------------------------------------------------------------------------
# array-likes

@pytest.mark.parametrize("op", OPS)
def test_lists_accepted(op, rng):
    inputs = inputs_for(op, rng, (3, 4), np.float64)
    got = call(op, tuple(a.tolist() for a in inputs))
    assert type(got) is np.ndarray
    assert_bitwise_equal(got, call(op, inputs))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_python_scalars_accepted(op):
    got = call(op, (2.5,))
    assert type(got) is np.ndarray and got.shape == () and got.dtype == np.float64
    assert got == (1.0 if op == "softmax" else 0.0)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_numpy_scalar_keeps_dtype(op):
    got = call(op, (np.float32(-3.0),))
    assert got.dtype == np.float32 and got.shape == ()


def _compiled_count():
    """How many specializations numba holds for the CPU kernels' drivers and loops."""
    from numba.core.dispatcher import Dispatcher

    from numbasoftmax import _cpu_kernels

    return sum(len(d.signatures) for d in vars(_cpu_kernels).values()
               if isinstance(d, Dispatcher))


# (call, shape): a call through each way to the kernels: small rows (direct entries),
# a parallel call, a masked small call, a strided axis read in place, logsumexp's weights,
# its gradient's row values
READ_ONLY_CASES = {
    "rows": (lambda x, w: numbasoftmax.softmax(x), (64, 40)),
    "parallel": (lambda x, w: numbasoftmax.softmax_backward(x, x), (1024, 40)),
    "masked": (lambda x, w: numbasoftmax.log_softmax(x, where=w), (64, 40)),
    "strided axis": (lambda x, w: numbasoftmax.softmax(x, axis=0), (4096, 16)),
    "weights": (lambda x, w: numbasoftmax.logsumexp(x, b=x), (64, 40)),
    "row values": (lambda x, w: numbasoftmax.logsumexp_backward(x, x[0], x[1]), (40, 40)),
}


@pytest.mark.parametrize("case", READ_ONLY_CASES)
def test_read_only_inputs_share_the_compiled_kernels(case, rng):
    """Read-only inputs and masks run the specializations writable ones compiled (the
    launcher hands the kernels every input read-only), with the same bits."""
    call, shape = READ_ONLY_CASES[case]
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.random(shape) < 0.7
    expected = call(x, w)
    before = _compiled_count()
    assert_bitwise_equal(call(read_only_copy(x), read_only_copy(w)), expected)
    assert _compiled_count() == before
