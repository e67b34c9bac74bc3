"""The vector loads and stores of ``numbasoftmax._vmem`` move the elements numpy indexing
names: contiguous and strided arrays, a gather or scatter with a step, all W lanes (the
compile-time ``ALL`` marker or a run-time count) or fewer. Whole vectors of a strided
array are lane-wise scalar accesses, partial ones masked intrinsics: both are checked."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import assert_bitwise_equal
from numba import njit

from numbasoftmax import _vmem
from numbasoftmax._simd import ALL, W
from numbasoftmax._vmem import vgather, vload, vscatter, vstore

DTYPES = [np.float16, np.float32, np.float64]


def _storage(a):
    return a.view(np.uint16) if a.dtype == np.float16 else a


@njit
def _load_store(src, dst, i, k):
    """dst[:k] = src[i:i+k] (0 past k), a vector through a strided view for each."""
    vstore(dst, 0, W, vload(src, i, k, 0.0))


@njit
def _load_store_all(src, dst, i):
    vstore(dst, 0, ALL, vload(src, i, ALL, 0.0))


@njit
def _gather_scatter(src, i, step, k, dst, j, dstep):
    vscatter(dst, j, dstep, k, vgather(src, i, step, k, 0.0))


@njit
def _gather_scatter_all(src, i, step, dst, j, dstep):
    vscatter(dst, j, dstep, ALL, vgather(src, i, step, ALL, 0.0))


def _data(dtype, size, seed):
    return np.random.default_rng(seed).standard_normal(size).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [W, 5, "all"])
def test_strided_load_and_store_move_consecutive_elements(dtype, k):
    """vload / vstore on non-contiguous 1-D views (a column of a C-ordered matrix)."""
    base = _data(dtype, 7 * 40, 1).reshape(40, 7)
    src = _storage(base)[:, 3]  # elements 7 apart
    dst_base = np.zeros((W, 5), dtype)
    dst = _storage(dst_base)[:, 2]
    if k == "all":
        _load_store_all(src, dst, 4)
        n = W
    else:
        _load_store(src, dst, 4, k)
        n = k
    expected = np.zeros(W, dtype)
    expected[:n] = base[4:4 + n, 3]
    assert_bitwise_equal(dst_base[:, 2], expected)
    others = np.delete(dst_base, 2, axis=1)
    assert not others.any(), "a store wrote outside its lanes"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("k", [W, 11, "all"])
def test_gather_and_scatter_move_stepped_elements(dtype, strided, k):
    """vgather / vscatter: lane l reads src[i + l*step] and writes dst[j + l*dstep]."""
    src_base = _data(dtype, 400, 2)
    src = _storage(src_base)[::2] if strided else _storage(src_base)
    dst_base = np.zeros(600, dtype)
    dst = _storage(dst_base)[::3] if strided else _storage(dst_base)
    i, step, j, dstep = 5, 9, 3, 4
    if k == "all":
        _gather_scatter_all(src, i, step, dst, j, dstep)
        n = W
    else:
        _gather_scatter(src, i, step, k, dst, j, dstep)
        n = k
    src_view = src_base[::2] if strided else src_base
    dst_view = np.zeros_like(dst_base)
    dst_sub = dst_view[::3] if strided else dst_view
    dst_sub[j + dstep * np.arange(n)] = src_view[i + step * np.arange(n)]
    assert_bitwise_equal(dst_base, dst_view)


@njit
def _rows_round_trip(rows, index, stride, n, tile, out):
    """The shuffled tile forms for a whole tile: rows -> tile -> out; their two flags."""
    took = _vmem.vgather_rows(rows, index, stride, ALL, n, tile)
    put = _vmem.vscatter_rows(out, index, stride, ALL, n, tile)
    return took, put


@njit
def _rows_counted(rows, index, stride, n, tile, out):
    """The same with a run-time lane count of W: never the shuffled forms."""
    return (_vmem.vgather_rows(rows, index, stride, W, n, tile),
            _vmem.vscatter_rows(out, index, stride, W, n, tile))


# rows the picks take (up to TILE_SHUFFLE_MAX), the transposed blocks (one block up to W,
# two up to TILE_TRANSPOSE_MAX) and none (past it)
TILE_ROWS = [1, 2, 3, 5, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33]
# where the tile lies: between other rows, or the array's last W rows (whose last row's
# reach past its end would leave the array)
PLACES = {"inside": (1, 2), "at-the-end": (1, 0)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", TILE_ROWS)
@pytest.mark.parametrize("place", PLACES)
def test_shuffled_tile_moves_rows_to_lanes_and_back(dtype, n, place):
    """W rows of n consecutive elements: tile[j*W + l] is element j of row l, and the
    inverse writes exactly those rows (and nothing around them); rows longer than
    TILE_TRANSPOSE_MAX, and a run-time lane count, leave it to the gather (False)."""
    compute = np.float64 if dtype == np.float64 else np.float32
    before, after = PLACES[place]
    base = _data(dtype, (before + W + after) * n, 3)
    index = before * n
    tile = np.full(n * W, np.nan, compute)
    out_base = np.zeros_like(base)
    took, put = _rows_round_trip(_storage(base), index, n, n, tile, _storage(out_base))
    shuffled = n <= _vmem.TILE_TRANSPOSE_MAX
    assert (took, put) == (shuffled, shuffled)
    if not shuffled:
        assert np.isnan(tile).all() and not out_base.any()
        return
    rows = base[index:index + n * W].reshape(W, n)
    assert_bitwise_equal(tile, rows.T.reshape(-1).astype(compute))
    expected = np.zeros_like(base)
    expected[index:index + n * W] = base[index:index + n * W]
    assert_bitwise_equal(out_base, expected)


@njit
def _rows_round_trip_where(rows, index, stride, n, tile, out, mask, fill):
    """The masked tile forms: rows -> tile under ``mask`` (fill), tile -> out under it."""
    took = _vmem.vgather_rows_where(rows, index, stride, ALL, n, tile, mask, fill)
    put = _vmem.vscatter_rows_where(out, index, stride, ALL, n, tile, mask)
    return took, put


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", [0.0, -np.inf], ids=["fill-0", "fill-neginf"])
@pytest.mark.parametrize("n", [1, 3, 8, 9, 16, 17, 31, 32, 33])
@pytest.mark.parametrize("place", PLACES)
def test_masked_shuffled_tile_fills_excluded_elements(dtype, fill, n, place):
    """Under a mask, an excluded element enters the tile as the fill and leaves it as +0
    (over a -0 and a NaN in the tile too); included elements move as without a mask, and
    nothing outside the W rows is written. The masked gather takes rows up to
    TILE_TRANSPOSE_MAX, the masked scatter up to TILE_SHUFFLE_MAX (False past them)."""
    compute = np.float64 if dtype == np.float64 else np.float32
    before, after = PLACES[place]
    base = _data(dtype, (before + W + after) * n, 5)
    index = before * n
    rng = np.random.default_rng(6)
    mask = rng.random(n * W) < 0.6
    mask[:2] = False, True
    tile = np.full(n * W, np.nan, compute)
    out_base = np.full_like(base, 7.0)
    took, put = _rows_round_trip_where(_storage(base), index, n, n, tile,
                                       _storage(out_base), mask.view(np.uint8), fill)
    assert (took, put) == (n <= _vmem.TILE_TRANSPOSE_MAX, n <= _vmem.TILE_SHUFFLE_MAX)
    if not took:
        assert np.isnan(tile).all()
    if not put:
        assert (out_base == 7.0).all()
    if not took:
        return
    rows = base[index:index + n * W].astype(compute)
    expected_tile = np.where(mask, rows, compute(fill)).reshape(W, n).T.reshape(-1)
    assert_bitwise_equal(tile, expected_tile)
    if not put:
        return
    # the tile with a -0 and a NaN at excluded elements: +0 is stored there all the same
    excluded = np.flatnonzero(~mask.reshape(W, n).T.reshape(-1))
    tile[excluded[0]], tile[excluded[-1]] = -0.0, np.nan
    _rows_round_trip_where(_storage(base), index, n, n, tile, _storage(out_base),
                           mask.view(np.uint8), fill)
    expected = np.full_like(base, 7.0)
    expected[index:index + n * W] = np.where(mask, base[index:index + n * W], 0.0)
    assert_bitwise_equal(out_base, expected)


@pytest.mark.parametrize("stride", [3, 4], ids=["stride-n", "stride-other"])
def test_shuffled_tile_needs_the_marker_and_stride_n(stride):
    """Only a whole tile (the ``ALL`` marker) of rows whose stride is n takes the shuffled
    form; a strided view of the rows never does (it compiles to False)."""
    base = _data(np.float32, 8 * W, 4)
    tile, out = np.zeros(3 * W, np.float32), np.zeros(8 * W, np.float32)
    assert _rows_round_trip(base, 0, stride, 3, tile, out) == (stride == 3,) * 2
    assert _rows_counted(base, 0, 3, 3, tile, out) == (False, False)
    assert _rows_round_trip(base[::2], 0, 3, 3, tile, out[::2]) == (False, False)
