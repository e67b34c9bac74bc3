"""The result pool (numbasoftmax/_pool.py): large results reuse the memory of freed results,
never the memory of a result (or a view of one) that is still alive."""

from __future__ import annotations

import gc
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

# 1 MiB of float32: the smallest pooled result; one element less is not pooled
POOLED = (256, 1024)
BELOW = (1, _pool.MIN_BYTES // 4 - 1)


@pytest.fixture(autouse=True)
def fresh_pool():
    previous = numbasoftmax.set_result_pool_limit(0)  # empties the pool
    numbasoftmax.set_result_pool_limit(_pool.DEFAULT_LIMIT)
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
    assert numbasoftmax.set_result_pool_limit(1 << 20) == _pool.DEFAULT_LIMIT
    assert _pool._POOL.held_bytes() <= 1 << 20


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("1", TypeError),
                                        (None, TypeError), (True, TypeError)])
def test_set_result_pool_limit_rejects_bad_values(bad, error):
    with pytest.raises(error, match="nbytes"):
        numbasoftmax.set_result_pool_limit(bad)


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
            # the parent's pool holds a buffer at the fork (no kernel runs in the parent:
            # GNU OpenMP, numba's usual layer, does not survive a fork once started)
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
