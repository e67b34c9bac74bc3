"""The CPU drivers give a row the same bits whichever of them runs it.

The summation order is written in the kernels (``numbasoftmax._row_kernel``), so the row
kernel (a row at a time, or a group of rows through each phase), the lane kernel on
gathered short rows, the lane kernel on the
columns of a strided axis, the parallel row driver and the chunk-parallel driver must agree
bit for bit, NaN included. Shapes sit below, at and above the block (1024) and chunk (8192)
sizes and the lane width (16); inputs mix -inf, NaN and rows of -inf.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from _helpers import CHUNK, OPS, SHORT_ROW_MAX, assert_bitwise_equal, inputs_for
from numpy.lib.stride_tricks import as_strided

from numbasoftmax import _cpu_kernels as K
from numbasoftmax._cpu import COLUMN_OPS, TILE_MASK_OPS, read_only_inputs, read_only_side
from numbasoftmax._lane_kernel import REGISTER_ROW_MAX, TILE_ROW_MAX, fetches_ahead, rows_ahead

# (1030, 9): read as columns, rows 1030 elements apart, where the lane kernel fetches rows
# ahead (``fetches_ahead``), with a partial last tile; (21, 40): groups of rows, the last
# one partial
# rows of 11: a group of 8 and a partial one; 32/33, 64/65, 128/129: at and past the rows
# whose groups take their trees together (``_cpu_kernels.TREE_ROW_BYTES``: 256 bytes of
# float64, float32, float16)
SHAPES = [(5, 1), (20, 1), (33, 3), (48, 8), (17, 15), (20, 16), (18, 17), (9, 100),
          (4, 1024), (3, 1025), (2, 8192), (2, 8193), (2, 20000), (300, 7), (131, 12),
          (1030, 9), (21, 40), (11, 32), (11, 33), (11, 64), (11, 65), (11, 128), (11, 129)]


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _storage(a):
    return a.view(np.uint16) if a.dtype == np.float16 else a


# the drivers that take masks and given row values (``side``), and write with
# non-temporal stores on request (``stream``)
ROW_DRIVERS = (K.rows, K.rows_parallel, K.grouped_rows, K.grouped_rows_parallel,
               K.chunks_parallel, K.short_rows, K.short_rows_parallel, K.masked_short_rows,
               K.masked_short_rows_parallel, K.run_rows, K.run_rows_parallel)


def _drive(driver, *args):
    """Call ``driver`` with its inputs, masks and given values read-only, as the launcher
    passes them (``_cpu.read_only_inputs``): the compiles of the API's calls serve these."""
    a, b, _ = read_only_inputs(args[1], args[4], None)
    driver(args[0], a, *args[2:4], b,
           *(read_only_side(v) if isinstance(v, tuple) else v for v in args[5:]))


def _rows(driver, op, inputs, parallel, side=None, stream=False, out=None, ahead=0):
    """Run ``driver`` on (m, n) inputs read as rows in place, C-contiguous or rows of a
    wider array; ``side``: the row drivers' mask and given values (None: neither);
    ``stream`` and ``ahead`` (rows fetched ahead): theirs too."""
    a = inputs[0]
    m, n = a.shape
    out = np.empty_like(a) if out is None else out
    pitch = [x.strides[0] // x.itemsize for x in (*inputs, out)]
    # each array's rows as one flat buffer from its first element to its last
    flat = [as_strided(_storage(x), ((m - 1) * p + n,), (x.itemsize,))
            for x, p in zip((*inputs, out), pitch, strict=True)]
    b, pb = (flat[1], pitch[1]) if len(inputs) == 2 else (flat[0], pitch[0])
    head = (K.OPS[op], flat[0], pitch[0], 1, b, pb, 1, flat[-1], pitch[-1], 1)
    tail = (m, n, ahead) if parallel else (0, m, n, ahead)
    if driver in ROW_DRIVERS:
        tail += (side, stream)
    _drive(driver, *head, *tail)
    return out


def _columns(driver, op, inputs, parallel, stream=False, out=None, lead=None):
    """Run the lane kernel on the transposed (n, m) arrays: each row a column in place.
    ``stream``: whole tiles of ``out`` (an (n, m) C-ordered array) stored past the caches,
    the bands placed by ``column_lead``."""
    t = [np.ascontiguousarray(x.T) for x in inputs]
    n, m = t[0].shape
    out = np.empty_like(t[0]) if out is None else out  # its rows may lie farther apart
    flat = [_storage(x).reshape(-1) for x in t]
    b = flat[1] if len(flat) == 2 else flat[0]
    step = out.strides[0] // out.itemsize
    o = as_strided(_storage(out), shape=((n - 1) * step + m,), strides=(out.itemsize,))
    if lead is None:
        lead = K.column_lead(o, 0, step) if stream else 0
    assert lead >= 0
    assert lead == 0 or stream or m <= lead + 16  # a lead without streaming: no whole tiles
    head = (K.OPS[op], flat[0], 0, m, b, 0, m, o, 0, step)
    arg = lead if stream or lead else -1  # the drivers' lead: -1 for plain stores
    if parallel:
        _drive(driver, *head, 1, n, m, arg, None)
    else:
        tasks, _ = K.columns_tasks(head[0], 1, n, m, lead, flat[0].itemsize)
        _drive(driver, *head, 0, tasks, n, m, arg, None)
    return out.T


def test_prefetch_hint_changes_nothing_and_never_faults():
    """The hint takes any integer index, a strided array, and addresses past the end."""
    from numba import njit

    from numbasoftmax._vmem import vprefetch

    @njit
    def hinted(a, i):
        vprefetch(a, i)
        vprefetch(a[::3], np.int32(2))
        vprefetch(a, i + (1 << 40))
        return a.copy()

    a = np.arange(100.0)
    assert_bitwise_equal(hinted(a, np.int32(7)), a)
    assert_bitwise_equal(hinted(a, 99), a)


def test_a_shape_reaches_the_prefetch():
    # a band of the widest kind (the whole inner row up to its tiles) over rows further apart
    assert any(fetches_ahead.py_func(m, K.WIDE_BAND_TILES) for m, _ in SHAPES)


def test_narrower_bands_fetch_further_rows_ahead():
    """As many tiles' lines ahead as an 8-tile band's 8 rows, never fewer rows."""
    ahead = [rows_ahead.py_func(nt) for nt in (1, 2, 4, 8, 32)]
    assert ahead == sorted(ahead, reverse=True)
    assert rows_ahead.py_func(K.NARROW_BAND_TILES) * K.NARROW_BAND_TILES == \
        rows_ahead.py_func(K.BAND_TILES) * K.BAND_TILES
    assert rows_ahead.py_func(K.WIDE_BAND_TILES) == rows_ahead.py_func(K.BAND_TILES)


def test_bands_fetch_ahead_where_their_rows_leave_a_tile_between_them():
    assert fetches_ahead.py_func(256, 8)  # a band of 128 elements of rows 256 apart
    assert fetches_ahead.py_func((K.BAND_TILES + 1) * K.W, K.BAND_TILES)
    assert fetches_ahead.py_func(40, 1)  # the partial last tile of rows of 40
    assert not fetches_ahead.py_func(40, 2)  # the whole tiles of rows of 40
    assert not fetches_ahead.py_func((K.BAND_TILES + 1) * K.W - 1, K.BAND_TILES)
    assert not fetches_ahead.py_func(K.W, 1)


def test_shapes_reach_both_sides_of_the_group_trees():
    """Rows at and one past ``TREE_ROW_BYTES`` for each item size, in groups of 8 and less."""
    from numbasoftmax._cpu_kernels import GROUP, TREE_ROW_BYTES

    for itemsize in (2, 4, 8):
        n = TREE_ROW_BYTES // itemsize
        for shape in ((11, n), (11, n + 1)):
            assert shape in SHAPES and shape[0] % GROUP


def _inputs(op, rng, shape, dtype):
    inputs = inputs_for(op, rng, shape, dtype)
    if op in ("softmax", "log_softmax"):
        x = inputs[0].copy()
        m, n = shape
        x[0, n // 2] = -np.inf
        if m > 2:
            x[1, :] = -np.inf
            x[2, n - 1] = np.nan
        if m > 3:
            x[3, 0] = np.inf
        inputs = (x,)
    return inputs


# every operation in float32; float16 (kept exps vs recomputed ones, conversions) and
# float64 (the other compute type) on two operations each, to keep the compile time small
OP_DTYPES = ([(op, np.float32) for op in OPS]
             + [("softmax", np.float16), ("log_softmax_backward", np.float16),
                ("log_softmax", np.float64), ("softmax_backward", np.float64)])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("op", "dtype"), OP_DTYPES,
                         ids=[f"{op}-{np.dtype(d).name}" for op, d in OP_DTYPES])
def test_drivers_agree_bitwise(op, dtype, shape, rng):
    inputs = _inputs(op, rng, shape, dtype)
    expected = _rows(K.rows, op, inputs, parallel=False)
    if shape[1] < _short_max(op):  # the rows the lane kernel's tiles take
        assert_bitwise_equal(_rows(K.short_rows, op, inputs, parallel=False), expected)
        assert_bitwise_equal(_rows(K.short_rows_parallel, op, inputs, parallel=True),
                             expected)
    assert_bitwise_equal(_rows(K.rows_parallel, op, inputs, parallel=True), expected)
    assert_bitwise_equal(_rows(K.chunks_parallel, op, inputs, parallel=True), expected)
    if shape[1] <= CHUNK:  # the grouped drivers take rows of one chunk
        assert_bitwise_equal(_rows(K.grouped_rows, op, inputs, parallel=False), expected)
        assert_bitwise_equal(_rows(K.grouped_rows_parallel, op, inputs, parallel=True),
                             expected)
    # along a strided axis softmax runs as softmax_split (exps recomputed): both agree
    for kernel in {op, COLUMN_OPS.get(op, op)}:
        assert_bitwise_equal(_columns(K.columns, kernel, inputs, parallel=False), expected)
        assert_bitwise_equal(_columns(K.columns_parallel, kernel, inputs, parallel=True),
                             expected)


# rows fetched ahead: short rows (tiles, the last one partial), groups, a row at a time;
# ahead past a task's or the call's last row
FETCH_SHAPES = [(300, 7), (40, 24), (131, 32), (50, 100), (9, 600)]


def _padded(x, pad=3):
    """``x`` as the first columns of a wider array: rows ``pad`` elements apart."""
    wide = np.zeros((x.shape[0], x.shape[1] + pad), x.dtype)
    wide[:, :x.shape[1]] = x
    return wide[:, :x.shape[1]]


@pytest.mark.parametrize("ahead", [1, 5, 1000])
@pytest.mark.parametrize("layout", ["contiguous", "padded"])
@pytest.mark.parametrize("shape", FETCH_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", OPS)
def test_fetching_ahead_changes_nothing(op, shape, layout, ahead, rng):
    """Rows fetched ahead into the cache (``fetch_rows``; the drivers' ``ahead``) give the
    bits without, on every driver that fetches, rows contiguous or apart, with and without a
    mask and streamed writes, and write nothing outside ``out``."""
    inputs = _inputs(op, rng, shape, np.float32)
    if layout == "padded":
        inputs = tuple(_padded(x) for x in inputs)
    expected = _rows(K.rows, op, inputs, parallel=False)
    drivers = [(K.rows, False), (K.rows_parallel, True), (K.grouped_rows, False),
               (K.grouped_rows_parallel, True)]
    if shape[1] < _short_max(op):
        drivers += [(K.short_rows, False), (K.short_rows_parallel, True)]
    if op in K.RUN_OPS and layout == "contiguous" and shape[1] >= K.RUN_ROW_MIN:
        drivers += [(K.run_rows, False), (K.run_rows_parallel, True)]
    for driver, parallel in drivers:
        runs = driver in (K.run_rows, K.run_rows_parallel)  # rows end to end, streamed
        out = np.full_like(expected, 7.0) if runs else _padded(np.full_like(expected, 7.0))
        _rows(driver, op, inputs, parallel, stream=runs, out=out, ahead=ahead)
        assert_bitwise_equal(out, expected)
        assert runs or (out.base[:, shape[1]:] == 0).all()
    w = rng.random(shape) < 0.7
    side = (w.view(np.uint8).reshape(-1), np.array([[0, shape[1]]], np.int64), None)
    masked = _rows(K.rows, op, inputs, parallel=False, side=side)
    drivers = [(K.rows, False), (K.grouped_rows_parallel, True)]
    if shape[1] < _short_max(op) and op in TILE_MASK_OPS and layout == "contiguous":
        drivers += [(K.masked_short_rows, False), (K.masked_short_rows_parallel, True)]
    for driver, parallel in drivers:
        assert_bitwise_equal(_rows(driver, op, inputs, parallel, side=side, ahead=ahead),
                             masked)


@pytest.mark.parametrize("k", range(1, 17))
def test_write_order_keeps_neighbouring_rows_apart(k):
    """A group's rows shorter than a vector are written in an order that is a permutation
    of the group's rows, with no row written right after its predecessor (from 4 rows on:
    in smaller groups the first odd row follows the last even one)."""
    order = [K._write_order.py_func(q, k, K.W - 1) for q in range(k)]
    assert sorted(order) == list(range(k))
    if k >= 4:
        assert all(b != a + 1 for a, b in zip(order, order[1:], strict=False))
    assert [K._write_order.py_func(q, k, K.W) for q in range(k)] == list(range(k))


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_grouped_short_rows_in_place(op, rng):
    """Rows shorter than a vector written out of order, in place over either input: the
    bits of a separate ``out`` (a row's store reaches only its own elements)."""
    inputs = _inputs(op, rng, (37, 10), np.float32)
    expected = _rows(K.grouped_rows, op, inputs, parallel=False)
    for which in (0, 1):
        copies = [x.copy() for x in inputs]
        _rows(K.grouped_rows, op, copies, parallel=False, out=copies[which])
        assert_bitwise_equal(copies[which], expected)


STREAM_SHAPES = [(21, 40), (9, 100), (4, 1024), (3, 1025), (2, 8193), (2, 20000)]


def _placed(like, offset, guard=64):
    """An empty array like ``like`` starting ``offset`` elements past a cache line, inside
    a buffer whose other elements hold a sentinel; (array, buffer, sentinel)."""
    size = like.size + 2 * guard
    raw = np.empty(size * like.itemsize + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    buf = raw[start:start + size * like.itemsize].view(like.dtype)
    sentinel = like.dtype.type(-7.0)
    buf[:] = sentinel
    lo = guard + offset
    return buf[lo:lo + like.size].reshape(like.shape), buf, sentinel


@pytest.mark.parametrize("offset", [0, 1, 5], ids=lambda k: f"line+{k}")
@pytest.mark.parametrize("shape", STREAM_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("op", "dtype"), OP_DTYPES,
                         ids=[f"{op}-{np.dtype(d).name}" for op, d in OP_DTYPES])
def test_streamed_writes_agree_bitwise(op, dtype, shape, offset, rng):
    """Non-temporal stores (whole cache lines, the partial lines of each row stored plainly)
    give the same bits as plain stores, for every row driver and any placement of the
    output, and write nothing outside it."""
    inputs = _inputs(op, rng, shape, dtype)
    expected = _rows(K.rows, op, inputs, parallel=False)
    drivers = [(K.rows, False), (K.rows_parallel, True), (K.chunks_parallel, True)]
    if shape[1] <= CHUNK:
        drivers += [(K.grouped_rows, False), (K.grouped_rows_parallel, True)]
        if op in K.RUN_OPS:  # rows of RUN_ROW_MIN or more, contiguous: one run per task
            drivers += [(K.run_rows, False), (K.run_rows_parallel, True)]
    for driver, parallel in drivers:
        out, buf, sentinel = _placed(expected, offset)
        _rows(driver, op, inputs, parallel, stream=True, out=out)
        assert_bitwise_equal(out, expected)
        outside = np.ones(buf.size, bool)
        outside[64 + offset:64 + offset + out.size] = False
        assert (_storage(buf[outside]) == _storage(np.array([sentinel]))[0]).all()


# (rows along the axis, columns): a lead and whole bands; a lead and a partial band; rows
# 32 columns apart: a line per row for float16 tiles, half a line for float32, two lines
# (a tile) for float64
COLUMN_STREAM_SHAPES = [(300, 7), (40, 33), (1030, 9)]


@pytest.mark.parametrize("offset", [0, 1, 5], ids=lambda k: f"line+{k}")
@pytest.mark.parametrize("shape", COLUMN_STREAM_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("op", "dtype"), OP_DTYPES,
                         ids=[f"{op}-{np.dtype(d).name}" for op, d in OP_DTYPES])
def test_streamed_columns_agree_bitwise(op, dtype, shape, offset, rng):
    """Along a strided axis, whole tiles stored past the caches after a lead of partial
    tiles (its width from the output's placement) give the row kernel's bits, serial and
    parallel, and write nothing outside the output."""
    inputs = _inputs(op, rng, shape, dtype)
    expected = _rows(K.rows, op, inputs, parallel=False)
    m, n = shape
    width = 32 if np.dtype(dtype).itemsize == 2 else 16  # a tile of 16 from a line start
    for kernel in {op, COLUMN_OPS.get(op, op)}:
        for driver, parallel in ((K.columns, False), (K.columns_parallel, True)):
            # (n, m') rows of m' >= m columns, a line apart: every row placed alike
            cols = -(-m // width) * width
            big, buf, sentinel = _placed(np.empty((n, cols), dtype), offset)
            out = big[:, :m]
            _columns(driver, kernel, inputs, parallel, stream=True, out=out)
            assert_bitwise_equal(out.T, expected)
            outside = np.ones(buf.size, bool)
            inside = outside[64 + offset:64 + offset + big.size].reshape(big.shape)
            inside[:, :m] = False
            assert (_storage(buf[outside]) == _storage(np.array([sentinel]))[0]).all()


# (inner positions, rows along the axis) on both sides of ``band_tiles``' slab bound
# (float32): 1 MiB, wide bands (a whole inner row); one inner position more, bands of
# BAND_TILES (two whole, then a partial tile), log_softmax_backward's of NARROW_BAND_TILES
# (four whole, then a partial tile)
SLAB_SHAPES = [(256, 1024), (257, 1024)]


@pytest.mark.parametrize("op, slab", [("softmax", K.BAND_TILES),
                                      ("log_softmax_backward", K.NARROW_BAND_TILES)])
def test_slab_shapes_take_both_band_widths(op, slab):
    assert [K.band_tiles.py_func(K.OPS[op], n, m, 4) for m, n in SLAB_SHAPES] == [
        K.WIDE_BAND_TILES, slab]
    assert K.NARROW_BAND_TILES < K.BAND_TILES


@pytest.mark.parametrize("itemsize", [2, 4, 8])
def test_narrow_bands_up_to_their_bytes_along_the_axis(itemsize):
    """log_softmax_backward's narrow bands hold at most NARROW_BAND_BYTES along the axis;
    longer axes take BAND_TILES, as the other operations do."""
    op = K.OPS["log_softmax_backward"]
    n = K.NARROW_BAND_BYTES // (K.NARROW_BAND_TILES * K.W * itemsize)
    assert K.band_tiles.py_func(op, n, 4096, itemsize) == K.NARROW_BAND_TILES
    assert K.band_tiles.py_func(op, n + 1, 4096, itemsize) == K.BAND_TILES
    assert K.band_tiles.py_func(K.OPS["softmax_backward"], n, 4096, itemsize) == K.BAND_TILES


@pytest.mark.parametrize("shape", SLAB_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", ["softmax", "log_softmax_backward"])
def test_both_band_widths_give_the_row_kernels_bits(op, shape, rng):
    inputs = _inputs(op, rng, shape, np.float32)
    expected = _rows(K.rows, op, inputs, parallel=False)
    for kernel in {op, COLUMN_OPS.get(op, op)}:
        for driver, parallel in ((K.columns, False), (K.columns_parallel, True)):
            assert_bitwise_equal(_columns(driver, kernel, inputs, parallel), expected)


@pytest.mark.parametrize("lead", [3, 9, 15])
def test_a_lead_of_every_column_or_more(lead, rng):
    """A lead that reaches or passes the last column is a partial tile of every column."""
    inputs = _inputs("log_softmax", rng, (9, 30), np.float32)
    expected = _rows(K.rows, "log_softmax", inputs, parallel=False)
    for driver, parallel in ((K.columns, False), (K.columns_parallel, True)):
        out, buf, sentinel = _placed(np.empty((30, 9), np.float32), 0)
        _columns(driver, "log_softmax", inputs, parallel, out=out, lead=lead)
        assert_bitwise_equal(out.T, expected)
        outside = np.ones(buf.size, bool)
        outside[64:64 + out.size] = False
        assert (buf[outside] == sentinel).all()


def test_column_lead_places_whole_tiles_on_lines():
    for dtype in (np.float16, np.float32, np.float64):
        item = np.dtype(dtype).itemsize
        for offset in range(20):
            out, _, _ = _placed(np.empty(64 * 64, dtype), offset)
            lead = K.column_lead(out, 0, 64)
            assert 0 <= lead < K.W
            assert (out[lead:].ctypes.data) % min(64, K.W * item) == 0
        odd = np.empty(64 * 64 + 1, np.uint8)[1:].view(np.float32)[:64 * 63]
        assert K.column_lead(odd, 0, 64) == -1  # misaligned elements
        out, _, _ = _placed(np.empty(64 * 64, dtype), 0)
        assert K.column_lead(out, 0, 65) == -1  # runs placed differently


@pytest.mark.parametrize("shape", [(21, 40), (9, 100), (3, 1025)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "softmax_backward",
                                "log_softmax_backward"])
def test_masked_drivers_agree_bitwise(op, shape, rng):
    """A mask of x's shape (its rows n bytes apart), rows without valid elements included:
    rows in groups give the bits of a row at a time, and so do streamed writes."""
    inputs = _inputs(op, rng, shape, np.float32)
    m, n = shape
    w = rng.random(shape) < 0.7
    w[0] = False
    side = (w.view(np.uint8).reshape(-1), np.array([[0, n]], np.int64), None)
    expected = _rows(K.rows, op, inputs, parallel=False, side=side)
    for driver, parallel in ((K.grouped_rows, False), (K.grouped_rows_parallel, True),
                             (K.rows_parallel, True)):
        assert_bitwise_equal(_rows(driver, op, inputs, parallel, side=side), expected)
    # streamed (the gradients; forward rows keep the masked row in out and store plainly)
    for driver, parallel in ((K.rows, False), (K.grouped_rows, False),
                             (K.rows_parallel, True)):
        assert_bitwise_equal(_rows(driver, op, inputs, parallel, side=side, stream=True),
                             expected)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("shape", [(21, 40), (9, 100), (3, 1025)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_float16_softmax_staged_agrees_bitwise(shape, masked, rng):
    """float16 softmax keeps its exps in a float32 staging row on the row drivers; the
    chunk-parallel driver's tasks compute them again: the same bits, streamed or not."""
    inputs = _inputs("softmax", rng, shape, np.float16)
    side = None
    if masked:
        w = rng.random(shape) < 0.7
        w[0] = False
        side = (w.view(np.uint8).reshape(-1), np.array([[0, shape[1]]], np.int64), None)
    expected = _rows(K.chunks_parallel, "softmax", inputs, parallel=True, side=side)
    for driver, parallel in ((K.rows, False), (K.grouped_rows, False),
                             (K.rows_parallel, True), (K.grouped_rows_parallel, True)):
        for stream in (False, True):
            assert_bitwise_equal(_rows(driver, "softmax", inputs, parallel, side=side,
                                       stream=stream), expected)


def _short_max(op):
    return SHORT_ROW_MAX["backward" if op.endswith("backward") else "forward"]


# Short rows run a tile at a time without ``band``'s scratch (``tile``): in registers up to
# REGISTER_ROW_MAX elements, by loops up to TILE_ROW_MAX (the forward operations). Each n
# the tiles take, three whole tiles and a partial one, with the values where a shortcut
# would show: signed zeros in both gradient inputs (0 + -0 is +0 in a block lane),
# non-finite rows, and rows of exp(x - max) = 0 but one.
TILE_CASES = [(op, dtype, n) for op, dtype in OP_DTYPES for n in range(1, _short_max(op))]


@pytest.mark.parametrize(("op", "dtype", "n"), TILE_CASES,
                         ids=[f"{op}-{np.dtype(d).name}-{n}" for op, d, n in TILE_CASES])
def test_tile_agrees_bitwise(op, dtype, n, rng):
    inputs = [x.copy() for x in _inputs(op, rng, (3 * 16 + 5, n), dtype)]
    if op.endswith("backward"):
        for x in inputs:
            x[rng.random(x.shape) < 0.2] = 0.0
            x[rng.random(x.shape) < 0.2] = -0.0
        inputs[1][4, 0] = np.inf
        inputs[1][5, -1] = np.nan
        inputs[0][6, :] = -np.inf if op.startswith("log") else 0.0
    else:
        inputs[0][5, :] = -1e4
        inputs[0][5, 0] = 0.0
    assert_bitwise_equal(_rows(K.short_rows, op, inputs, parallel=False),
                         _rows(K.rows, op, inputs, parallel=False))


# masked short rows through the tiles: the rows and their masks one after the other
# ("rows"), one mask for every row ("one"; the row kernel's offsets: no dims, or a stride
# of 0; the tiles take it as ``(w, None, None)``, as the launcher passes it)
MASKED_TILE_CASES = [(op, dtype, n, layout) for op, dtype in OP_DTYPES
                     if op in TILE_MASK_OPS for n in (1, 3, 8, 9, 16, 31, 32)
                     if n < _short_max(op) for layout in ("rows", "one", "one-stride")]


@pytest.mark.parametrize(("op", "dtype", "n", "layout"), MASKED_TILE_CASES,
                         ids=[f"{op}-{np.dtype(d).name}-{n}-{lay}"
                              for op, d, n, lay in MASKED_TILE_CASES])
def test_masked_tile_agrees_bitwise(op, dtype, n, layout, rng):
    """A masked short row gives the row kernel's bits through the tiles, serial and
    parallel, whole tiles and a partial one: rows without included elements, included
    elements all -inf, a NaN or +inf among them or only among the excluded ones, and
    gradients with NaN and inf at excluded elements."""
    m = 3 * 16 + 5
    inputs = [x.copy() for x in _inputs(op, rng, (m, n), dtype)]
    if layout == "rows":
        w = rng.random((m, n)) < 0.7
        w[0] = False
        w[7] = True
        dims = np.array([[0, n]], np.int64)
    else:
        w = np.tile(rng.random(n) < 0.7, (m, 1))
        w[:, 0] = True  # every row has an included element (the others: rows of NaN)
        dims = np.empty((0, 2), np.int64) if layout == "one" else np.array([[0, 0]], np.int64)
    assert K.mask_takes_tiles(dims, n) == (n if layout == "rows" else 0)
    excluded = ~w
    for x in inputs:
        x[8][excluded[8]] = np.nan
        x[9][excluded[9]] = np.inf
    if op.endswith("backward"):
        inputs[1][excluded] = np.inf
        inputs[1][11][~excluded[11]] = np.inf  # a sum of inf: NaN at the valid elements
        inputs[1][12] = 0.0
        inputs[1][12][~excluded[12]] = -0.0  # a sum of -0
    else:
        inputs[0][10][~excluded[10]] = -np.inf
    bytes_ = w.view(np.uint8).reshape(-1) if layout == "rows" else w[0].view(np.uint8)
    side = (bytes_, dims, None)
    tiles = side if layout == "rows" else (bytes_, None, None)
    results = [_rows(driver, op, inputs, parallel, side=s, out=np.full((m, n), 7, dtype))
               for driver, parallel, s in ((K.rows, False, side),
                                           (K.masked_short_rows, False, tiles),
                                           (K.masked_short_rows_parallel, True, tiles))]
    assert not (results[0] == 7).any()
    assert_bitwise_equal(results[1], results[0])
    assert_bitwise_equal(results[2], results[0])


def test_mask_takes_tiles():
    """The masks the masked tiles take (the launcher sends the others to the row
    drivers): one mask for every row, or rows of masks one after the other."""
    assert K.mask_takes_tiles(np.empty((0, 2), np.int64), 5) == 0
    assert K.mask_takes_tiles(np.array([[0, 0]]), 5) == 0
    assert K.mask_takes_tiles(np.array([[0, 5]]), 5) == 5
    assert K.mask_takes_tiles(np.array([[0, 7]]), 5) == -1  # rows at a pitch
    assert K.mask_takes_tiles(np.array([[3, 5], [0, 20]]), 5) == -1  # two outer axes


@pytest.mark.parametrize("op", OPS)
def test_tile_rejects_longer_rows(op, rng):
    """Past the rows its tiles take, the lane kernel's drivers raise instead of leaving the
    output unwritten (the launcher never sends such rows)."""
    n = _short_max(op)
    assert n - 1 == (TILE_ROW_MAX if n > REGISTER_ROW_MAX + 1 else REGISTER_ROW_MAX)
    inputs = _inputs(op, rng, (20, n), np.float32)
    with pytest.raises(ValueError, match="tiles take rows of at most"):
        _rows(K.short_rows, op, inputs, parallel=False)
    with pytest.raises(ValueError, match=f"rows of at most {n - 1} elements for {op}"):
        _rows(K.short_rows_parallel, op, inputs, parallel=True)


def test_exp_of_zero_is_one():
    """The kernels skip exp(chunk max - row max) where it is exp(0): exactly 1."""
    from numba import njit

    from numbasoftmax._vmath import vexp, vexp_nonpos

    @njit
    def exps(x):
        return vexp(x), vexp_nonpos(x)

    for zero in (np.float32(0.0), 0.0):
        assert exps(zero) == (1.0, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_within_one_ulp(dtype):
    """exp (its minimax polynomial, README) is under 1 ulp from the exact value over the
    whole range of normal results, against numpy's exp in a wider type."""
    from numba import njit

    from numbasoftmax._vmath import vexp

    wide = np.float64 if dtype == np.float32 else np.longdouble
    if np.finfo(wide).nmant < np.finfo(dtype).nmant + 8:
        pytest.skip("no wider float type for the reference")

    @njit
    def exps(x, out):
        for i in range(x.shape[0]):
            out[i] = vexp(x[i])

    lo, hi = (-87.0, 88.0) if dtype == np.float32 else (-708.0, 709.0)
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(lo, hi, 1 << 18), rng.uniform(-1, 1, 1 << 16)])
    x = x.astype(dtype)
    got = np.empty_like(x)
    exps(x, got)
    exact = np.exp(x.astype(wide))
    ulps = np.abs(got.astype(wide) - exact) / np.spacing(exact.astype(dtype)).astype(wide)
    assert ulps.max() < 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_exp_lanes_are_the_scalar_exp(dtype):
    """A lane of a vector exp has the bits of the scalar exp of its element, over the whole
    exponent range (vectors scale by 2**k with vscalef where numba compiles for AVX-512,
    scalars multiply by the power of two built from its bits)."""
    from numba import njit

    from numbasoftmax._vmath import vexp, vexp_nonpos
    from numbasoftmax._vmem import vload, vstore

    @njit
    def both(x, vec, vec_nonpos, scal, scal_nonpos):
        for i in range(0, x.shape[0], 16):
            v = vload(x, i, 16, 0.0)
            vstore(vec, i, 16, vexp(v))
            vstore(vec_nonpos, i, 16, vexp_nonpos(v))
        for i in range(x.shape[0]):
            scal[i] = vexp(x[i])
            scal_nonpos[i] = vexp_nonpos(x[i])

    top = 720.0 if dtype == np.float64 else 90.0
    x = np.concatenate([np.linspace(-top, top, 1 << 18), np.linspace(-1, 1, 1 << 14),
                        [0.0, -0.0, np.inf, -np.inf, np.nan] * 16]).astype(dtype)
    x = x[: x.size // 16 * 16]
    vec, vec_nonpos, scal, scal_nonpos = (np.empty_like(x) for _ in range(4))
    both(x, vec, vec_nonpos, scal, scal_nonpos)
    assert_bitwise_equal(vec, scal)
    nonpos = ~(x > 0)  # vexp_nonpos promises nothing for positive arguments
    assert_bitwise_equal(vec_nonpos[nonpos], scal_nonpos[nonpos])
    assert np.isfinite(vec[np.abs(x) < top / 2]).all() and (vec[x > 0] >= 1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_trees_are_each_rows_own_tree(dtype):
    """``vsum_rows`` / ``vmax_rows`` (a group's trees taken together) give, in lane r, the
    bits of ``vsum`` / ``vmax_all`` of vector r: the same pairs in the same order. Values of
    very different sizes make a sum depend on its order (a left-to-right sum differs);
    signed zeros, infinities and NaN are mixed in."""
    from numba import njit

    from numbasoftmax._simd import TREE_ROWS, W, vmax_all, vmax_rows, vsum, vsum_rows
    from numbasoftmax._vmem import vload, vstore

    @njit
    def trees(lanes, each_sum, each_max, rows_sum, rows_max):
        for r in range(TREE_ROWS):
            v = vload(lanes, r * W, W, 0.0)
            each_sum[r] = vsum(v)
            each_max[r] = vmax_all(v)
        vstore(rows_sum, 0, W, vsum_rows(lanes))
        vstore(rows_max, 0, W, vmax_rows(lanes))

    rng = np.random.default_rng(11)
    for trial in range(200):
        lanes = (rng.standard_normal(TREE_ROWS * W)
                 * 10.0 ** rng.integers(-8, 9, TREE_ROWS * W)).astype(dtype)
        if trial % 4 == 1:
            lanes[rng.integers(0, lanes.size, 6)] = rng.choice([np.inf, -np.inf, np.nan, -0.0], 6)
        if trial % 4 == 2:
            lanes[:W] = -0.0  # a row of -0: its sum is -0
        each_sum, each_max = np.empty(TREE_ROWS, dtype), np.empty(TREE_ROWS, dtype)
        rows_sum, rows_max = np.full(W, 7, dtype), np.full(W, 7, dtype)
        trees(lanes, each_sum, each_max, rows_sum, rows_max)
        assert_bitwise_equal(rows_sum[:TREE_ROWS], each_sum)
        assert_bitwise_equal(rows_max[:TREE_ROWS], each_max)
        assert not rows_sum[TREE_ROWS:].any() and not rows_max[TREE_ROWS:].any()
    # the data tells orders apart: a left-to-right sum of the last trial's rows differs
    left = [dtype(0) for _ in range(TREE_ROWS)]
    for r in range(TREE_ROWS):
        for v in lanes[r * W:(r + 1) * W]:
            left[r] = dtype(left[r] + v)
    assert not np.array_equal(np.array(left, dtype), each_sum, equal_nan=True)


# ---------------------------------------------------------------------------------------
# logsumexp: the row kernel and the lane kernel (short rows) give the same bits per row,
# with and without weights, value alone or with the sign; non-finite values mixed in

LSE_SHAPES = [(5, 1), (33, 3), (20, 16), (18, 17), (9, 100), (3, 1025), (2, 8193)]


def _lse_rows(driver, op, x, b, parallel):
    m, n = x.shape
    width = 2 if op == "logsumexp_sign" else 1
    out = np.full((m + 16, width), 7.0, x.dtype)  # rows past m: nothing written there
    flat_b = None if b is None else _storage(b).reshape(-1)
    head = (K.OPS[op], _storage(x).reshape(-1), n, 1, flat_b, 0 if b is None else n, 1,
            _storage(out).reshape(-1), width, 1)
    tail = (m, n, 1) if parallel else (0, m, n, 1)
    if driver in ROW_DRIVERS:
        tail += (None, False)
    _drive(driver, *head, *tail)
    assert (out[m:] == 7.0).all()
    return out[:m]


@pytest.mark.parametrize("shape", LSE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op, weighted", [("logsumexp", False), ("logsumexp_sign", True)])
def test_logsumexp_drivers_agree_bitwise(op, weighted, shape, rng):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    m, n = shape
    x[0, n // 2] = np.inf
    if m > 2:
        x[1, :] = -np.inf
        x[2, n - 1] = np.nan
    b = None
    if weighted:
        b = rng.standard_normal(shape).astype(np.float32)
        b[:, 0] = 0.0
        if m > 3 and n > 2:
            x[3, :2] = np.inf
            b[3, 1] = -1.0
    expected = _lse_rows(K.rows, op, x, b, parallel=False)
    assert not (expected == 7.0).any()
    drivers = [(K.rows_parallel, True), (K.chunks_parallel, True)]
    if n <= TILE_ROW_MAX:
        drivers += [(K.short_rows, False), (K.short_rows_parallel, True)]
    if n <= CHUNK:
        drivers += [(K.grouped_rows, False), (K.grouped_rows_parallel, True)]
    for driver, parallel in drivers:
        assert_bitwise_equal(_lse_rows(driver, op, x, b, parallel), expected)


LSE_TILE_CASES = [(op, dtype, n) for op in ("logsumexp", "logsumexp_sign")
                  for dtype in (np.float16, np.float32, np.float64)
                  for n in range(1, TILE_ROW_MAX + 1)]


@pytest.mark.parametrize(("op", "dtype", "n"), LSE_TILE_CASES,
                         ids=[f"{op}-{np.dtype(d).name}-{n}" for op, d, n in LSE_TILE_CASES])
def test_logsumexp_tile_agrees_bitwise(op, dtype, n, rng):
    """logsumexp's short rows through the tiles (serial and parallel, whole tiles and a
    partial one) give the row kernel's bits, weighted and not: weights of 0 (left out of
    the max), negative weights on terms that underflow (-0 terms), +inf under weights of
    both signs, rows of -inf, NaN, and terms lifted from below the normal range."""
    m = 3 * 16 + 5
    x = (rng.standard_normal((m, n)) * 3).astype(dtype)
    b = rng.standard_normal((m, n)).astype(dtype)
    b[rng.random((m, n)) < 0.2] = 0.0
    x[0, n // 2] = np.inf
    x[1, :] = -np.inf
    x[2, n - 1] = np.nan
    x[3, :] = -1e4 if dtype == np.float64 else -1e3  # every term but one underflows
    x[3, 0] = 0.0
    b[3, :] = -1.0
    b[3, 0] = 1.0
    if n > 1:
        x[4, :2] = np.inf
        b[4, :2] = (1.0, -1.0)
        x[5, 1] = -200.0 if dtype != np.float64 else -1000.0
        b[5, 1] = np.finfo(dtype).max  # a lifted term
    for weights in (None, b):
        expected = _lse_rows(K.rows, op, x, weights, parallel=False)
        for driver, parallel in ((K.short_rows, False), (K.short_rows_parallel, True)):
            assert_bitwise_equal(_lse_rows(driver, op, x, weights, parallel), expected)


def _lse_masked(driver, op, x, b, side, parallel):
    """logsumexp of C-contiguous (m, n) rows x (weights b or None) under the mask in
    ``side`` (as the drivers take it), into an output with 16 rows more (asserted
    unwritten)."""
    m, n = x.shape
    width = 2 if op == "logsumexp_sign" else 1
    out = np.full((m + 16, width), 7.0, x.dtype)
    flat_b = None if b is None else _storage(b).reshape(-1)
    head = (K.OPS[op], _storage(x).reshape(-1), n, 1, flat_b, 0 if b is None else n, 1,
            _storage(out).reshape(-1), width, 1)
    tail = (m, n, 0) if parallel else (0, m, n, 0)
    _drive(driver, *head, *tail, side, False)
    assert (out[m:] == 7.0).all()
    return out[:m]


def _short_masked(rng, m, n, dtype, layout):
    """(x, weights with zeros, mask) of m rows of n elements: the mask of x's shape
    ("rows"; its first row all False, its second all True) or one row's mask repeated
    ("one"; its first element True)."""
    x = (rng.standard_normal((m, n)) * 3).astype(dtype)
    b = rng.standard_normal((m, n)).astype(dtype)
    b[rng.random((m, n)) < 0.2] = 0.0
    if layout == "rows":
        w = rng.random((m, n)) < 0.7
        w[0], w[1] = False, True
    else:
        w = np.tile(rng.random(n) < 0.7, (m, 1))
        w[:, 0] = True
    return x, b, w


LSE_MASK_CASES = [(dtype, n) for dtype in (np.float16, np.float32, np.float64)
                  for n in (1, 2, 3, 5, 8, 9, 16, 17, TILE_ROW_MAX)]


@pytest.mark.parametrize("layout", ["rows", "one"])
@pytest.mark.parametrize(("dtype", "n"), LSE_MASK_CASES,
                         ids=[f"{np.dtype(d).name}-{n}" for d, n in LSE_MASK_CASES])
def test_masked_logsumexp_tiles_agree_bitwise(dtype, n, layout, rng):
    """Masked logsumexp rows through the tiles (serial and parallel; whole tiles and a
    partial one; a mask of x's shape or one for every row) give the row kernel's bits,
    value and sign, weighted and not: rows with no included element, NaN, +inf and
    infinite or NaN weights where excluded, +inf and -inf where included, weights of 0."""
    m = 3 * 16 + 5
    x, b, w = _short_masked(rng, m, n, dtype, layout)
    dims = np.array([[0, n]], np.int64) if layout == "rows" else np.empty((0, 2), np.int64)
    excluded = ~w
    x[2][excluded[2]], x[3][excluded[3]] = np.nan, np.inf
    b[4][excluded[4]], b[5][excluded[5]] = np.inf, np.nan
    x[6][w[6]] = -np.inf
    x[7, 0], x[8, 0] = np.inf, -np.inf  # included in either layout
    if layout == "rows":
        w[7, 0] = w[8, 0] = True
    bytes_ = w.view(np.uint8).reshape(-1)
    side = (bytes_, np.array([[0, n]], np.int64), None)
    tiles = side if layout == "rows" else (w[0].view(np.uint8).copy(), None, None)
    assert K.mask_takes_tiles(dims if layout == "one" else side[1], n) == (
        n if layout == "rows" else 0)
    for op in ("logsumexp", "logsumexp_sign"):
        for weights in (None, b):
            expected = _lse_masked(K.rows, op, x, weights, side, parallel=False)
            for driver, parallel in ((K.masked_short_rows, False),
                                     (K.masked_short_rows_parallel, True)):
                assert_bitwise_equal(_lse_masked(driver, op, x, weights, tiles, parallel),
                                     expected)


def test_logsumexp_tile_rejects_longer_rows(rng):
    """logsumexp's tiles take rows of at most TILE_ROW_MAX elements (the launcher sends the
    longer ones to the row drivers), and say so instead of leaving the output unwritten."""
    x = rng.standard_normal((20, TILE_ROW_MAX + 1)).astype(np.float32)
    with pytest.raises(ValueError, match="tiles take rows of at most"):
        _lse_rows(K.short_rows, "logsumexp", x, None, parallel=False)
    with pytest.raises(ValueError, match=f"rows of at most {TILE_ROW_MAX} elements"):
        _lse_rows(K.short_rows_parallel, "logsumexp", x, None, parallel=True)


def _lse_grad_rows(driver, x, b, rv, parallel, mask=(None, None)):
    """logsumexp_backward of C-contiguous (m, n) rows x (weights b or None) given the rows'
    values rv (a pair of arrays: lse, gradient factor), under ``mask`` (the mask and its
    row offsets as the drivers take them, or None, None), into an output with 16 rows
    more (asserted unwritten)."""
    m, n = x.shape
    out = np.full((m + 16, n), 7.0, x.dtype)
    flat_b = None if b is None else _storage(b).reshape(-1)
    head = (K.OPS["logsumexp_backward"], _storage(x).reshape(-1), n, 1, flat_b, n, 1,
            _storage(out).reshape(-1), n, 1)
    tail = (m, n, 0) if parallel else (0, m, n, 0)
    _drive(driver, *head, *tail, (*mask, *rv), False)
    assert (out[m:] == 7.0).all()
    return out[:m]


LSE_GRAD_TILE_CASES = [(dtype, n) for dtype in (np.float16, np.float32, np.float64)
                       for n in range(1, REGISTER_ROW_MAX + 1)]


@pytest.mark.parametrize(("dtype", "n"), LSE_GRAD_TILE_CASES,
                         ids=[f"{np.dtype(d).name}-{n}" for d, n in LSE_GRAD_TILE_CASES])
def test_logsumexp_backward_tile_agrees_bitwise(dtype, n, rng):
    """logsumexp's gradient on short rows through the tiles (serial and parallel, whole
    tiles and a partial one) gives the row kernel's bits, weighted and not: weights of 0
    (0 even where exp is inf or NaN), terms lifted from below the normal range by a large
    weight, x above lse (exp > 1), non-finite x, lse and gradient factors."""
    m = 3 * 16 + 5
    x = (rng.standard_normal((m, n)) * 3).astype(dtype)
    b = rng.standard_normal((m, n)).astype(dtype)
    b[rng.random((m, n)) < 0.2] = 0.0
    x[0, 0], x[1, n - 1], x[2, 0] = np.inf, -np.inf, np.nan
    b[0, 0] = 0.0
    lse, g = rng.standard_normal(m) * 2, rng.standard_normal(m)
    lse[3], g[4], lse[5] = np.inf, np.nan, -np.inf
    x[6, :] = -200.0 if dtype != np.float64 else -1000.0
    lse[6] = 0.0
    b[6, :] = np.finfo(dtype).max  # lifted terms
    for rv in ((lse, g), (lse.astype(np.float32), g.astype(np.float32))):
        for weights in (None, b):
            expected = _lse_grad_rows(K.rows, x, weights, rv, parallel=False)
            for driver, parallel in ((K.short_rows, False), (K.short_rows_parallel, True)):
                assert_bitwise_equal(_lse_grad_rows(driver, x, weights, rv, parallel),
                                     expected)


@pytest.mark.parametrize("layout", ["rows", "one"])
@pytest.mark.parametrize(("dtype", "n"), LSE_GRAD_TILE_CASES,
                         ids=[f"{np.dtype(d).name}-{n}" for d, n in LSE_GRAD_TILE_CASES])
def test_masked_logsumexp_backward_tiles_agree_bitwise(dtype, n, layout, rng):
    """logsumexp's masked gradient on short rows through the masked tiles (serial and
    parallel, whole tiles and a partial one, a mask of x's shape or one for every row)
    gives the row kernel's bits, weighted and not: +0 where excluded whatever x, the
    weight or the row's values (NaN, inf), a row without an included element."""
    m = 3 * 16 + 5
    x, b, w = _short_masked(rng, m, n, dtype, layout)
    excluded = ~w
    x[2][excluded[2]], b[3][excluded[3]] = np.nan, np.inf
    lse, g = rng.standard_normal(m) * 2, rng.standard_normal(m)
    lse[4], g[5], lse[6], g[7] = np.inf, np.nan, -np.inf, np.inf
    side = (w.view(np.uint8).reshape(-1), np.array([[0, n]], np.int64))
    tiles = side if layout == "rows" else (w[0].view(np.uint8).copy(), None)
    for rv in ((lse, g), (lse.astype(np.float32), g.astype(np.float32))):
        for weights in (None, b):
            expected = _lse_grad_rows(K.rows, x, weights, rv, False, side)
            for driver, parallel in ((K.masked_short_rows, False),
                                     (K.masked_short_rows_parallel, True)):
                assert_bitwise_equal(_lse_grad_rows(driver, x, weights, rv, parallel, tiles),
                                     expected)


def test_logsumexp_backward_tile_rejects_longer_rows(rng):
    """logsumexp_backward's tiles take rows of at most REGISTER_ROW_MAX elements."""
    n = REGISTER_ROW_MAX + 1
    x = rng.standard_normal((20, n)).astype(np.float32)
    rv = (np.zeros(20), np.zeros(20))
    with pytest.raises(ValueError, match="tiles take rows of at most"):
        _lse_grad_rows(K.short_rows, x, None, rv, parallel=False)
    with pytest.raises(ValueError, match=f"rows of at most {n - 1} elements"):
        _lse_grad_rows(K.short_rows_parallel, x, None, rv, parallel=True)


def _lse_columns(driver, op, x, b, parallel, outer=2):
    """logsumexp along axis 1 of ``outer`` stacked copies of x (n, C) (weights b or None),
    each column read in place, into a buffer of 16 values (and signs) more than the
    columns' (asserted unwritten): (values, signs or None) as (outer, C)."""
    n, C = x.shape
    xs = np.ascontiguousarray(np.broadcast_to(x, (outer, n, C)))
    width = 2 if op == "logsumexp_sign" else 1
    m = outer * C
    planes = np.full(width * m + 16, 7.0, x.dtype)
    flat_b = None
    if b is not None:
        flat_b = _storage(np.ascontiguousarray(np.broadcast_to(b, (outer, n, C)))).reshape(-1)
    head = (K.OPS[op], _storage(xs).reshape(-1), n * C, C, flat_b, 0 if b is None else n * C,
            0 if b is None else C, _storage(planes), C, m)
    if parallel:
        _drive(driver, *head, outer, n, C, -1, None)
    else:
        tasks, _ = K.columns_tasks(head[0], outer, n, C, 0, x.itemsize)
        _drive(driver, *head, 0, tasks, n, C, -1, None)
    assert (planes[width * m:] == 7.0).all()
    values = planes[:m].reshape(outer, C)
    return values, planes[m:2 * m].reshape(outer, C) if width == 2 else None


LSE_COLUMN_SHAPES = [(2, 16), (3, 37), (20, 100), (9000, 24), (5, 300)]


@pytest.mark.parametrize("shape", LSE_COLUMN_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", ["logsumexp", "logsumexp_sign"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_logsumexp_columns_agree_bitwise(op, dtype, shape, rng):
    """logsumexp along a strided axis read in place (the lane kernel's bands; serial and
    parallel; whole and partial tiles, an axis longer than a chunk) gives the row kernel's
    bits for the same rows, weighted and not, with +inf, -inf columns and NaN."""
    n, C = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x[n // 2, 0], x[:, 1], x[n - 1, 2] = np.inf, -np.inf, np.nan
    b = rng.standard_normal(shape).astype(dtype)
    b[rng.random(shape) < 0.2] = 0.0
    for weights in (None, b):
        rows_b = None if weights is None else np.ascontiguousarray(weights.T)
        expected = _lse_rows(K.rows, op, np.ascontiguousarray(x.T), rows_b, parallel=False)
        for driver, parallel in ((K.columns, False), (K.columns_parallel, True)):
            values, signs = _lse_columns(driver, op, x, weights, parallel)
            for o in range(2):
                assert_bitwise_equal(values[o], expected[:, 0])
                if signs is not None:
                    assert_bitwise_equal(signs[o], expected[:, 1])


def _lse_grad_columns(driver, x, b, rv, parallel, outer=2, offset=None):
    """logsumexp_backward along axis 1 of ``outer`` stacked copies of x (n, C) (weights b
    or None), each column read in place, given the columns' values rv (a pair of arrays
    of C values, the same for each copy), into an output with a row between the copies
    and after them (asserted unwritten): (outer, n, C). ``offset``: the output placed that
    many elements past a cache line, its whole tiles stored past the caches after the
    lead ``column_lead`` gives (and nothing written outside it); None: plain stores."""
    n, C = x.shape
    xs = np.ascontiguousarray(np.broadcast_to(x, (outer, n, C)))
    out, buf, sentinel = _placed(np.empty((outer, n + 1, C), x.dtype), offset or 0)
    flat_b = None
    if b is not None:
        flat_b = _storage(np.ascontiguousarray(np.broadcast_to(b, (outer, n, C)))).reshape(-1)
    given = tuple(np.ascontiguousarray(np.broadcast_to(v, (outer, C))).reshape(-1) for v in rv)
    o = _storage(out).reshape(-1)
    lead = -1 if offset is None else K.column_lead(o, (n + 1) * C, C)
    assert offset is None or lead >= 0
    head = (K.OPS["logsumexp_backward"], _storage(xs).reshape(-1), n * C, C, flat_b,
            0 if b is None else n * C, 0 if b is None else C, o, (n + 1) * C, C)
    if parallel:
        _drive(driver, *head, outer, n, C, lead, (None, None, *given))
    else:
        tasks, _ = K.columns_tasks(head[0], outer, n, C, max(lead, 0), x.itemsize)
        _drive(driver, *head, 0, tasks, n, C, lead, (None, None, *given))
    outside = np.ones(buf.size, bool)
    outside[64 + (offset or 0):64 + (offset or 0) + out.size] = False
    assert (_storage(buf[outside]) == _storage(np.array([sentinel]))[0]).all()
    assert (_storage(out[:, n]) == _storage(np.array([sentinel]))[0]).all()
    return out[:, :n]


@pytest.mark.parametrize("shape", LSE_COLUMN_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_logsumexp_backward_columns_agree_bitwise(dtype, shape, rng):
    """logsumexp's gradient along a strided axis read in place (the lane kernel's bands,
    each lane given its column's values; serial and parallel; whole and partial tiles, an
    axis longer than a chunk) gives the row kernel's bits for the same rows, weighted and
    not, with float32 and float64 given values: weights of 0, x above lse, lifted terms,
    non-finite x, lse and gradient factors."""
    n, C = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    b[rng.random(shape) < 0.2] = 0.0
    x[0, 0], x[n - 1, 1], x[0, 2] = np.inf, -np.inf, np.nan
    b[0, 0] = 0.0
    lse, g = rng.standard_normal(C) * 2, rng.standard_normal(C)
    lse[3], g[4], lse[5] = np.inf, np.nan, -np.inf
    x[:, 6] = -200.0 if dtype != np.float64 else -1000.0
    lse[6] = 0.0
    b[:, 6] = np.finfo(dtype).max  # lifted terms
    for rv in ((lse, g), (lse.astype(np.float32), g.astype(np.float32))):
        for weights in (None, b):
            rows_b = None if weights is None else np.ascontiguousarray(weights.T)
            expected = _lse_grad_rows(K.rows, np.ascontiguousarray(x.T), rows_b, rv,
                                      parallel=False)
            for driver, parallel in ((K.columns, False), (K.columns_parallel, True)):
                got = _lse_grad_columns(driver, x, weights, rv, parallel)
                for o in range(2):
                    assert_bitwise_equal(got[o].T, expected)


@pytest.mark.parametrize("offset", [0, 5], ids=lambda k: f"line+{k}")
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_logsumexp_backward_streamed_columns_agree_bitwise(dtype, offset, rng):
    """The gradient's whole tiles stored past the caches after a lead of partial tiles
    give the row kernel's bits, serial and parallel, and write nothing outside the
    output."""
    n, C = 7, 96  # rows a whole number of lines apart in every dtype
    x = (rng.standard_normal((n, C)) * 3).astype(dtype)
    b = rng.standard_normal((n, C)).astype(dtype)
    lse, g = rng.standard_normal(C) * 2, rng.standard_normal(C)
    for weights in (None, b):
        rows_b = None if weights is None else np.ascontiguousarray(weights.T)
        expected = _lse_grad_rows(K.rows, np.ascontiguousarray(x.T), rows_b, (lse, g),
                                  parallel=False)
        for driver, parallel in ((K.columns, False), (K.columns_parallel, True)):
            got = _lse_grad_columns(driver, x, weights, (lse, g), parallel, offset=offset)
            for o in range(2):
                assert_bitwise_equal(got[o].T, expected)
