"""The CUDA simulator as these tests run it (``conftest.py``): a block's threads that reach
a static shared array's line together share one array."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from gpu_helpers import SIM

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not SIM, reason="the simulator's shared arrays")]

THREADS = 32


def _first_calls_together():
    """The arrays that THREADS threads get from one block's first call at one line, all
    released at once."""
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    shared = FakeCUDAShared(0)
    start = threading.Barrier(THREADS)
    got = []

    def thread():
        start.wait()
        got.append(shared.array(8, np.float64))

    threads = [threading.Thread(target=thread) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_static_shared_array_is_one_per_block():
    # a switch interval of a microsecond interleaves the threads at every step (without
    # the conftest's lock, ~6 % of such blocks split their array)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        split = 0
        for _ in range(100):
            got = _first_calls_together()
            assert len(got) == THREADS
            split += any(a is not got[0] for a in got)
    finally:
        sys.setswitchinterval(interval)
    assert split == 0


def test_unchecked_access_refuses_a_negative_index():
    """The GPU's ``at``/``put`` do not wrap a negative index around (they read before the
    array); the simulator's refuse one, so that a kernel that would is caught here."""
    from numbasoftmax._cuda import sim

    P = sim.make_primitives("f4")
    a = np.arange(4, dtype=np.float32)
    assert P.at(a, 3) == 3.0
    P.put(a, 0, 7.0)
    assert a[0] == 7.0
    with pytest.raises(AssertionError, match="negative index"):
        P.at(a, -1)
    with pytest.raises(AssertionError, match="negative index"):
        P.put(a, -1, 0.0)
