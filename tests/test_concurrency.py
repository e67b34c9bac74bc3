"""Thread safety: many Python threads calling at once never crash and get correct results
(bitwise the precomputed ones: the functions are deterministic), and dask's threaded
scheduler calling numbasoftmax inside map_blocks. Also numba's workqueue threading layer,
which aborts on concurrent parallel calls unless numbasoftmax serializes them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from _helpers import OPS, assert_matches_reference, bits, call, inputs_for

import numbasoftmax

ROOT = Path(__file__).resolve().parent.parent

N_THREADS = 8
CALLS_PER_THREAD = 200

# mixed shapes (serial and parallel drivers, long rows), dtypes, axes and ops
WORK_SHAPES = [((8, 128), -1), ((3, 5, 7), (0, 2)), ((300, 129), -1), ((64, 600), 0),
               ((1, 40000), -1), ((1000,), None), ((2, 33000), -1)]
WORK_DTYPES = (np.float16, np.float32, np.float64)


def _work_items():
    rng = np.random.default_rng(2024)
    items = []
    for op in OPS:
        for shape, axis in WORK_SHAPES:
            for dtype in WORK_DTYPES:
                inputs = inputs_for(op, rng, shape, dtype, axis=axis)
                expected = call(op, inputs, axis=axis)
                assert_matches_reference(op, expected, inputs, axis=axis)
                items.append((op, inputs, axis, expected))
    return items


@pytest.fixture(scope="module")
def work_items():
    return _work_items()


def test_threads_mixed_calls(work_items):
    errors = []
    done = [0] * N_THREADS
    start = threading.Barrier(N_THREADS)

    def worker(t):
        rng = np.random.default_rng(t)
        start.wait()
        for _ in range(CALLS_PER_THREAD):
            op, inputs, axis, expected = work_items[rng.integers(len(work_items))]
            try:
                if rng.random() < 0.3:
                    out = np.empty_like(expected)
                    got = call(op, inputs, axis=axis, out=out)
                else:
                    got = call(op, inputs, axis=axis)
                if not np.array_equal(bits(got), bits(expected)):
                    errors.append(f"thread {t}: wrong result for {op} {inputs[0].shape}")
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                errors.append(f"thread {t}: {op} raised {exc!r}")
            done[t] += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "threads hung"
    assert not errors, errors[:10]
    assert done == [CALLS_PER_THREAD] * N_THREADS


def test_threads_share_input_array():
    """All threads read the same input at once, each into its own output."""
    x = np.random.default_rng(0).standard_normal((200, 300)).astype(np.float32)
    expected = numbasoftmax.softmax(x)
    results = [None] * N_THREADS

    def worker(t):
        out = np.empty_like(x)
        for _ in range(20):
            numbasoftmax.softmax(x, out=out)
        results[t] = out

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r in results:
        np.testing.assert_array_equal(bits(r), bits(expected))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_dask_threaded_map_blocks(op, dtype):
    da = pytest.importorskip("dask.array")
    import dask

    x = np.random.default_rng(5).standard_normal((4000, 257)).astype(dtype)
    expected = call(op, (x,))
    lazy = da.from_array(x, chunks=(250, 257)).map_blocks(getattr(numbasoftmax, op),
                                                          dtype=x.dtype)
    with dask.config.set(scheduler="threads", num_workers=8):
        got = lazy.compute()
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(bits(got), bits(expected))


WORKQUEUE_SCRIPT = textwrap.dedent("""
    import threading
    import numba
    import numpy as np
    import numbasoftmax

    x = np.random.default_rng(1).standard_normal((400, 1000)).astype(np.float32)
    expected = numbasoftmax.softmax(x)
    assert numba.threading_layer() == "workqueue", numba.threading_layer()
    errors = []

    def worker():
        try:
            for _ in range(15):
                if not np.array_equal(numbasoftmax.softmax(x), expected):
                    errors.append("wrong result")
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    print("OK", numba.threading_layer())
""")


def test_workqueue_layer_concurrent_calls_do_not_crash():
    """Under NUMBA_THREADING_LAYER=workqueue, concurrent parallel calls are serialized."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "OK workqueue" in proc.stdout
