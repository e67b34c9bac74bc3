"""The result pool (numbasoftmax/_pool.py), off by default: with it on, large results reuse
the memory of freed results, never the memory of a result (or a view of one) that is still
alive; turned off, it gives the memory back.

Most tests lower the pooling threshold to 1 MiB (results of 32 MiB and more are pooled in
use) so that they stay light; ``test_threshold_*`` check the real one."""

from __future__ import annotations

import gc
import json
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from _helpers import OPS, call, inputs_for

import numbasoftmax
from numbasoftmax import _pool

ROOT = Path(__file__).resolve().parent.parent

TEST_MIN_BYTES = 1 << 20
LIMIT = 512 << 20
# 1 MiB of float32: the smallest pooled result in these tests; one element less is not
POOLED = (256, 1024)
BELOW = (1, TEST_MIN_BYTES // 4 - 1)


@pytest.fixture(autouse=True)
def fresh_pool(monkeypatch):
    previous = numbasoftmax.set_result_pool_limit(0)  # empties the pool
    monkeypatch.setattr(_pool, "MIN_BYTES", TEST_MIN_BYTES)
    numbasoftmax.set_result_pool_limit(LIMIT)
    yield
    gc.collect()
    numbasoftmax.set_result_pool_limit(0)
    numbasoftmax.set_result_pool_limit(previous)


def _address(a):
    return a.__array_interface__["data"][0]


def _x(shape=POOLED, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("op", OPS)
def test_freed_result_is_reused(op):
    inputs = inputs_for(op, np.random.default_rng(1), POOLED, np.float32)
    first = call(op, inputs)
    address, expected = _address(first), first.copy()
    del first
    second = call(op, inputs)
    assert _address(second) == address
    np.testing.assert_array_equal(second, expected)


def test_live_result_is_never_reused():
    x = _x()
    results = [numbasoftmax.softmax(x) for _ in range(4)]
    assert len({_address(r) for r in results}) == 4
    for r in results[1:]:
        assert not np.shares_memory(r, results[0])


def test_live_view_keeps_the_memory():
    x = _x()
    first = numbasoftmax.softmax(x)
    address = _address(first)
    view = first[3:, ::2]
    kept = view.copy()
    del first
    gc.collect()
    second = numbasoftmax.softmax(_x(seed=1))
    assert not np.shares_memory(second, view)
    np.testing.assert_array_equal(view, kept)
    del view
    third = numbasoftmax.softmax(x)  # the first buffer is free now
    assert _address(third) == address


def test_small_results_are_not_pooled():
    r = numbasoftmax.softmax(_x(BELOW))
    assert r.base is None and r.flags.owndata
    del r
    assert _pool._POOL.held_bytes() == 0


def test_pooled_result_is_aligned_writeable_and_picklable():
    r = numbasoftmax.softmax(_x())
    assert _address(r) % 64 == 0
    assert r.flags.writeable and r.flags.c_contiguous
    r[0, 0] = 5.0
    back = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(back, r)


def test_limit_zero_disables_the_pool():
    numbasoftmax.set_result_pool_limit(0)
    r = numbasoftmax.softmax(_x())
    assert r.base is None and r.flags.owndata
    del r
    assert _pool._POOL.held_bytes() == 0


def test_limit_bounds_the_free_memory():
    numbasoftmax.set_result_pool_limit(3 << 20)
    results = [numbasoftmax.softmax(_x()) for _ in range(6)]  # six live 1 MiB results
    assert _pool._POOL.held_bytes() == 0
    del results
    gc.collect()
    assert 0 < _pool._POOL.held_bytes() <= 3 << 20


def test_result_larger_than_the_limit_is_not_kept():
    numbasoftmax.set_result_pool_limit(1 << 20)
    r = numbasoftmax.softmax(_x((512, 1024)))  # 2 MiB
    del r
    assert _pool._POOL.held_bytes() == 0


def test_lowering_the_limit_releases_memory():
    r = [numbasoftmax.softmax(_x()) for _ in range(3)]
    del r
    assert _pool._POOL.held_bytes() >= 3 << 20
    assert numbasoftmax.set_result_pool_limit(1 << 20) == LIMIT
    assert _pool._POOL.held_bytes() <= 1 << 20


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("1", TypeError),
                                        (None, TypeError), (True, TypeError)])
@pytest.mark.parametrize("func", ["set_result_pool_limit", "result_pool"])
def test_pool_settings_reject_bad_values(func, bad, error):
    with pytest.raises(error, match=rf"{func}\(\): nbytes"):
        getattr(numbasoftmax, func)(bad)


@pytest.mark.parametrize("make", [lambda a: np.asfortranarray(a), lambda a: a.T,
                                  lambda a: a[::-1]], ids=["fortran", "transposed", "reversed"])
def test_pooled_result_keeps_the_input_layout(make):
    """Like numpy's empty_like (order 'K'): a Fortran input gives a Fortran result."""
    x = make(_x((512, 1024)))
    r = numbasoftmax.softmax(x, axis=0)
    like = np.empty_like(x)
    assert r.strides == like.strides
    assert r.base is not None  # pooled
    np.testing.assert_array_equal(r, numbasoftmax.softmax(np.ascontiguousarray(x), axis=0))


def test_threads_never_share_live_results():
    """Threads allocate and free pooled results at once; each checks that its live results
    keep their values while other threads reuse freed buffers."""
    x = _x()
    expected = numbasoftmax.softmax(x).copy()
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        live = []
        try:
            for _ in range(40):
                live.append(numbasoftmax.softmax(x))
                if len(live) > 3:
                    live.pop(int(rng.integers(len(live))))
                for r in live:
                    if not np.array_equal(r, expected):
                        errors.append("a live result changed")
                        return
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_pool_works_in_a_forked_child():
    code = textwrap.dedent("""
        import multiprocessing as mp
        import numpy as np
        import numbasoftmax
        from numbasoftmax import _pool

        def child(q):
            x = np.ones((256, 1024), np.float32)
            r = [numbasoftmax.softmax(x) for _ in range(3)]
            q.put(float(sum(a.sum() for a in r)))

        if __name__ == "__main__":
            # the parent's pool holds a buffer at the fork
            _pool.MIN_BYTES = 1 << 20
            numbasoftmax.set_result_pool_limit(64 << 20)
            held = _pool.empty((256, 1024), np.float32)
            del held
            assert _pool._POOL.held_bytes() > 0
            ctx = mp.get_context("fork")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print(q.get(timeout=60))
            p.join(120)
            print(p.exitcode)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    total, exitcode = done.stdout.split()
    assert float(total) == pytest.approx(3 * 256.0)
    assert exitcode == "0"


# ---------------------------------------------------------------------------------------
# opt-in: off by default, a context manager, and memory given back

REAL_MIN_BYTES = 32 << 20


def _held():
    return _pool._POOL.held_bytes()


def test_pool_is_off_by_default():
    code = textwrap.dedent("""
        import numpy as np
        import numbasoftmax
        from numbasoftmax import _pool
        r = numbasoftmax.softmax(np.ones((64, 1 << 17), np.float32))  # 32 MiB
        pooled = r.base is not None
        del r
        print(numbasoftmax.set_result_pool_limit(0), pooled, _pool._POOL.held_bytes())
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False", "0"]


def test_result_pool_turns_the_pool_on_inside_the_block():
    numbasoftmax.set_result_pool_limit(0)
    x = _x()
    with numbasoftmax.result_pool(8 << 20):
        assert _pool._POOL.limit == 8 << 20
        first = numbasoftmax.softmax(x)
        address = _address(first)
        del first
        assert _held() > 0
        assert _address(numbasoftmax.softmax(x)) == address
    assert _pool._POOL.limit == 0
    assert _held() == 0  # released on exit
    r = numbasoftmax.softmax(x)
    assert r.base is None and r.flags.owndata


def test_result_pool_nests_and_restores_after_an_error():
    numbasoftmax.set_result_pool_limit(0)
    with pytest.raises(RuntimeError, match="inside"):
        with numbasoftmax.result_pool(4 << 20):
            with numbasoftmax.result_pool(16 << 20):
                assert _pool._POOL.limit == 16 << 20
            assert _pool._POOL.limit == 4 << 20
            raise RuntimeError("inside")
    assert _pool._POOL.limit == 0


def test_sizes_that_never_match_again_stay_within_the_limit():
    """Reuse needs the same byte size: a workload of ever new sizes reuses nothing, and
    the pool holds at most its limit, and nothing once it is turned off."""
    numbasoftmax.set_result_pool_limit(0)
    limit = 5 << 20
    with numbasoftmax.result_pool(limit):
        for k in range(12):
            r = numbasoftmax.softmax(_x((256 + 16 * k, 1024), seed=k))
            del r
            assert 0 < _held() <= limit
    assert _held() == 0


def test_threshold_real_size(monkeypatch):
    monkeypatch.setattr(_pool, "MIN_BYTES", REAL_MIN_BYTES)
    at = numbasoftmax.softmax(np.zeros(REAL_MIN_BYTES // 4, np.float32))
    below = numbasoftmax.softmax(np.zeros(REAL_MIN_BYTES // 4 - 1, np.float32))
    assert at.base is not None  # pooled
    assert below.base is None and below.flags.owndata


def test_memory_is_returned_to_the_os():
    """Resident memory, measured: a dropped result is returned at once with the pool off
    (the default), kept inside ``result_pool``, and returned when the block ends."""
    pytest.importorskip("psutil")
    code = textwrap.dedent("""
        import json
        import numpy as np
        import psutil
        import numbasoftmax

        rss = psutil.Process().memory_info
        x = np.ones((32, 1 << 20), np.float32)  # 128 MiB input, 128 MiB results
        numbasoftmax.softmax(x)  # compile / load outside the measurement
        base = rss().rss
        y = numbasoftmax.softmax(x)
        live = rss().rss - base
        del y
        off = rss().rss - base
        with numbasoftmax.result_pool(1 << 30):
            y = numbasoftmax.softmax(x)
            del y
            held = rss().rss - base
        after = rss().rss - base
        print(json.dumps({"live": live, "off": off, "held": held, "after": after}))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    mib = {k: v / (1 << 20) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}
    assert mib["live"] > 100, mib  # the measurement sees a live 128 MiB result
    assert mib["off"] < 32, mib
    assert mib["held"] > 100, mib
    assert mib["after"] < 32, mib


@pytest.mark.parametrize("axis", [0, -1], ids=["split-axis-0", "split-axis-last"])
def test_dask_two_pass_blocks_come_from_the_pool(axis):
    da = pytest.importorskip("dask.array")
    x = _x((512, 2048))
    d = da.from_array(x, chunks=(256, 1024))  # the softmax axis split: two passes
    first = numbasoftmax.softmax(d, axis=axis).to_delayed()[0, 0].compute(scheduler="sync")
    assert isinstance(first.base, _pool._Owner)
    address, expected = _address(first), first.copy()
    del first
    second = numbasoftmax.softmax(d, axis=axis).to_delayed()[0, 0].compute(scheduler="sync")
    assert _address(second) == address
    np.testing.assert_array_equal(second, expected)
    # chunk boundaries off the kernels' 8192-element chunks: equal within rounding
    np.testing.assert_allclose(second, numbasoftmax.softmax(x, axis=axis)[:256, :1024],
                               rtol=1e-5)
