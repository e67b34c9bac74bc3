"""Soak test (marker ``soak``; skipped unless run with ``-m soak`` or ``--soak``): 10^5
mixed calls, after which the process's resident memory is within 1 % of what it was after
a warm-up."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from _helpers import OPS, call, inputs_for

pytestmark = pytest.mark.soak

N_CALLS = 100_000
WARMUP_CALLS = 5_000


def rss_bytes():
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _work():
    rng = np.random.default_rng(7)
    items = []
    for op in OPS:
        for shape, axis in [((8, 128), -1), ((3, 4, 5), (0, 2)), ((300, 129), -1),
                            ((1, 33000), -1), ((0, 4), -1), ((), None), ((50, 60), 0)]:
            for dtype in (np.float16, np.float32, np.float64, np.int32):
                inputs = inputs_for(op, rng, shape, dtype, axis=axis)
                out_kind = len(items) % 3  # none, fresh out, strided out
                items.append((op, inputs, axis, out_kind))
    return items


def _run(items, n_calls, rng):
    for _ in range(n_calls):
        op, inputs, axis, out_kind = items[rng.integers(len(items))]
        if out_kind == 0 or inputs[0].dtype.kind != "f":
            call(op, inputs, axis=axis)
        elif out_kind == 1:
            call(op, inputs, axis=axis, out=np.empty_like(inputs[0]))
        else:
            out = np.empty(inputs[0].shape[::-1], inputs[0].dtype).T
            call(op, inputs, axis=axis, out=out)


def test_soak_rss_stable():
    items = _work()
    rng = np.random.default_rng(0)
    _run(items, WARMUP_CALLS, rng)
    gc.collect()
    before = rss_bytes()
    _run(items, N_CALLS, rng)
    gc.collect()
    after = rss_bytes()
    growth = (after - before) / before
    assert growth <= 0.01, f"RSS grew {growth:.2%}: {before} -> {after} bytes"
