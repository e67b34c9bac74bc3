"""Processes forked after a parallel call: multiprocessing's "fork" start method (Linux's
default before Python 3.14) and ProcessPoolExecutor. With GNU OpenMP (numba's "omp" layer)
a child of a parent that started OpenMP threads runs the serial drivers; with TBB the
children keep the parallel ones. Either way the child's results are the parent's bits.

Each scenario runs in its own interpreter under a timeout: a regression kills children and
leaves a pool waiting forever, which must fail the test, not hang the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")

SCRIPT = textwrap.dedent("""
    import json, multiprocessing as mp, sys
    from concurrent.futures import ProcessPoolExecutor
    import numba
    import numpy as np
    import numbasoftmax
    from numbasoftmax import _cpu

    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)

    def child(axis):
        # axis -1: rows in place; axis 0: rows gathered by a (parallel) 2-D copy first
        return (numbasoftmax.softmax(x, axis=axis).tobytes(), _cpu.parallel_allowed(),
                numba.threading_layer())

    if __name__ == "__main__":
        want = sys.argv[1]
        ctx = mp.get_context("fork")
        if want == "fork-before-parallel":
            with ctx.Pool(1) as pool:
                early = pool.apply_async(child, (-1,)).get(timeout=120)
        parent = {a: numbasoftmax.softmax(x, axis=a).tobytes() for a in (-1, 0)}
        layer = numba.threading_layer()
        with ctx.Pool(2) as pool:
            got = pool.map_async(child, [-1, 0, -1, 0]).get(timeout=120)
        with ProcessPoolExecutor(2, mp_context=ctx) as ex:
            got += list(ex.map(child, [-1, 0], timeout=120))
        res = {"layer": layer,
               "same_bits": [g[0] == parent[a] for g, a in zip(got, [-1, 0, -1, 0, -1, 0])],
               "child_parallel": sorted({g[1] for g in got}),
               "child_layers": sorted({g[2] for g in got})}
        if want == "fork-before-parallel":
            res["early_parallel"] = early[1]
            res["early_same_bits"] = early[0] == parent[-1]
        print(json.dumps(res))
""")


def _run(layer, scenario="fork-after-parallel"):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, scenario], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"forked children hung ({layer}): {str(err.stderr)[-2000:]}")
    if "No threading layer could be loaded" in done.stderr:
        pytest.skip(f"numba's {layer} threading layer cannot be loaded here"
                    + (" (pip install numbasoftmax[tbb])" if layer == "tbb" else ""))
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_children_of_an_openmp_parent_run_serial_and_match():
    res = _run("omp")
    assert res["layer"] == "omp"
    assert all(res["same_bits"]), res
    from numba.np.ufunc import omppool

    if omppool.openmp_vendor == "GNU":
        assert res["child_parallel"] == [False]  # GNU OpenMP: serial drivers in the child
    else:
        assert res["child_parallel"] == [True]


def test_child_forked_before_any_parallel_call_keeps_parallel_drivers():
    res = _run("omp", "fork-before-parallel")
    assert res["early_parallel"] is True and res["early_same_bits"] is True
    assert all(res["same_bits"]), res


def test_children_of_a_tbb_parent_stay_parallel():
    res = _run("tbb")
    assert res["layer"] == "tbb"
    assert res["child_parallel"] == [True] and res["child_layers"] == ["tbb"]
    assert all(res["same_bits"]), res
