"""Guard bands: every CPU kernel path writes exactly its output and nothing else.

The output is a view inside a larger buffer filled with a sentinel; afterwards every
element outside the view still holds the sentinel's exact bits, and every element inside
holds the result (no sentinel left). Inputs are views inside NaN-filled buffers: a kernel
that read past its rows would turn results into NaN; the input buffers, padding included,
must be bit-for-bit unchanged.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from _helpers import FLOAT_DTYPES, OPS, assert_bitwise_equal, bits, call, inputs_for, num_threads

PAD = 37  # odd, so that padding is not a multiple of any vector width
SENTINEL = 1234.5

# (id, shape, numba threads or None for the default): each CPU path
PATHS = [
    ("serial_short_rows", (7, 8), None),  # below every operation's SHORT_ROW_MAX
    ("serial_one_row_chunks", (1, 8193), None),
    ("serial_grouped_rows", (7, 41), None),  # groups of rows, the last one partial
    ("parallel_grouped_rows", (1000, 41), None),
    ("parallel_rows", (5, 8193), None),  # above every operation's GROUPED_ROW_MAX
    ("parallel_f16_scratch_limit", (2, 32768), None),  # float16: last scratch-row length
    ("parallel_long_rows", (2, 40000), None),  # (row, chunk) tasks; float16 keeps exp in out
    ("serial_long_rows", (2, 40000), 1),
]

# where the output lives inside the poisoned buffer
PLACEMENTS = ("contiguous", "strided_rows", "staged")


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _sentinel(dtype):
    return np.asarray(SENTINEL).astype(dtype)


def _poisoned_out(placement, shape, dtype):
    """(whole buffer, output view)."""
    m, n = shape
    s = _sentinel(dtype)
    if placement == "contiguous":
        buf = np.full(m * n + 2 * PAD, s, dtype)
        return buf, buf[PAD:PAD + m * n].reshape(m, n)
    if placement == "strided_rows":  # rows written in place, padding between rows
        buf = np.full((m + 2, n + 2 * PAD), s, dtype)
        return buf, buf[1:1 + m, PAD:PAD + n]
    if placement == "staged":  # every other element: the result is copied back
        buf = np.full((m + 2, 2 * n + 2 * PAD), s, dtype)
        return buf, buf[1:1 + m, PAD:PAD + 2 * n:2]
    raise ValueError(placement)


def _nan_padded(a):
    """(whole buffer, view equal to ``a``) with NaN around and between the rows."""
    m, n = a.shape
    buf = np.full((m + 2, n + 2 * PAD), np.nan, a.dtype)
    view = buf[1:1 + m, PAD:PAD + n]
    view[...] = a
    return buf, view


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p[0])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", OPS)
def test_guard_bands(op, dtype, path, placement, rng):
    _, shape, threads = path
    inputs = inputs_for(op, rng, shape, dtype)
    with num_threads(threads or 2):
        expected = call(op, inputs)
    sentinel_bits = bits(_sentinel(dtype).reshape(1))[0]
    assert not (bits(expected) == sentinel_bits).any(), "pick another sentinel"

    padded = [_nan_padded(a) for a in inputs]
    before = [bits(buf).copy() for buf, _ in padded]
    buf, out = _poisoned_out(placement, shape, dtype)
    mask_buf, mask_view = _poisoned_out(placement, shape, np.bool_)
    mask_buf[...] = False
    mask_view[...] = True

    with num_threads(threads or 2):
        got = call(op, tuple(v for _, v in padded), out=out)
    assert got is out

    # outside the view: untouched sentinel bits
    outside = bits(buf)[~mask_buf]
    assert (outside == sentinel_bits).all(), (
        f"{int((outside != sentinel_bits).sum())} elements written outside the output")
    # inside: every element written, with the expected result
    assert not (bits(out) == sentinel_bits).any(), "output elements left unwritten"
    assert_bitwise_equal(np.ascontiguousarray(out), expected)
    # inputs and their padding unchanged
    for (ibuf, _), b in zip(padded, before, strict=True):
        np.testing.assert_array_equal(bits(ibuf), b)
