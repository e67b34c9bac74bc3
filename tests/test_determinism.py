"""The same input gives the same bits after a restart: compiled fresh into an empty numba
cache, loaded from that cache by a second process, and in this test process, through every
CPU driver, for read-only, offset, Fortran-ordered, strided and in-place inputs, and for a
user's own cached ``@njit`` code that calls ``numbasoftmax.jit``.

Two subprocesses share an empty ``NUMBA_CACHE_DIR``: the first compiles every kernel and
saves its results, the second loads the kernels from the cache and must reproduce them bit
for bit; this process (whatever its cache held) must agree with both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# The cases: (op, dtype, shape, variant). Shapes pick the drivers: the lane kernel on short
# rows serial (33x3) and parallel (4000x10: the gradients' rows in groups, parallel), rows
# in groups serial (64x40) and for the forward operations 64x96 (serial) and 40x3000
# (parallel), where the gradients run a row at a time; few long rows in chunks (2x40000);
# the lane kernel on a strided axis (axis 0, Fortran order).
CASES_SOURCE = textwrap.dedent("""
    import zlib

    import numpy as np
    import numbasoftmax as nsm

    # shapes for every driver (see the comment above the cases)
    SHAPES = [(33, 3), (4000, 10), (64, 96), (40, 3000), (2, 40000), (64, 40)]
    OPS = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")

    def inputs(op, dtype, shape, seed):
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        if op in ("softmax", "log_softmax"):
            return (x,)
        y = nsm.softmax(x) if op == "softmax_backward" else nsm.log_softmax(x)
        return (y, rng.standard_normal(shape).astype(dtype))

    def cases():
        out = []
        for op in OPS:
            for shape in SHAPES:
                out.append((op, "float32", shape, "C"))
        for dtype in ("float16", "float64"):  # the other storage and compute types
            for shape in SHAPES[1::2]:
                out.append(("softmax", dtype, shape, "C"))
            out.append(("log_softmax_backward", dtype, SHAPES[3], "C"))
        for variant in ("readonly", "offset", "F", "stepped", "inplace", "axis0"):
            for op in ("softmax", "softmax_backward"):
                out.append((op, "float32", (300, 129), variant))
        return out

    def run(op, dtype, shape, variant):
        seed = zlib.crc32(repr((op, dtype, shape, variant)).encode())
        args = inputs(op, np.dtype(dtype), shape, seed)
        f = getattr(nsm, op)
        axis = 0 if variant == "axis0" else -1
        if variant == "readonly":
            for a in args:
                a.flags.writeable = False
        elif variant == "offset":  # one element past an aligned start
            args = tuple(np.concatenate([a.reshape(-1)[:1], a.reshape(-1)])[1:]
                         .reshape(a.shape) for a in args)
        elif variant == "F":
            args = tuple(np.asfortranarray(a) for a in args)
        elif variant == "stepped":
            args = tuple(np.repeat(a, 2, axis=1)[:, ::2] for a in args)
        elif variant == "inplace":
            return f(*args, axis=axis, out=args[0])
        return f(*args, axis=axis)
""")

USER_MODULE = textwrap.dedent("""
    import numba
    import numpy as np
    from numbasoftmax.jit import log_softmax_backward_row, softmax_row

    @numba.njit(parallel=True, cache=True)
    def attention(scores):
        out = np.empty_like(scores)
        for i in numba.prange(scores.shape[0]):
            softmax_row(scores[i], out[i])
        return out

    @numba.njit(cache=True)
    def grads(z, dz):
        out = np.empty_like(z)
        for i in range(z.shape[0]):
            log_softmax_backward_row(z[i], dz[i], out[i])
        return out
""")

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    import determinism_cases as dc
    import user_kernels
    results = {}
    for i, case in enumerate(dc.cases()):
        results[f"case{i}"] = dc.run(*case)
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((256, 512)).astype(np.float32)
    results["user_attention"] = user_kernels.attention(scores)
    z = np.log(np.abs(scores) / np.abs(scores).sum(axis=1, keepdims=True))
    results["user_grads"] = user_kernels.grads(z, scores)
    np.savez(sys.argv[1], **results)
""")


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.itemsize}"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("determinism")
    (base / "determinism_cases.py").write_text(CASES_SOURCE)
    user = base / "user"
    user.mkdir()
    (user / "user_kernels.py").write_text(USER_MODULE)
    cache = base / "numba-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    files = []
    for name in ("fresh", "cached"):
        path = base / f"{name}.npz"
        subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(base), str(user)],
                       env=env, cwd=base, check=True, timeout=900)
        files.append(dict(np.load(path)))
    sys.path.insert(0, str(base))
    try:
        import determinism_cases as dc
    finally:
        sys.path.remove(str(base))
    return dc, files, cache


def test_cache_was_used(runs):
    """The second process had kernels to load: the package's and the user's compiled
    functions are in the cache directory."""
    dc, (fresh, cached), cache = runs
    assert fresh.keys() == cached.keys()
    assert len(fresh) == len(dc.cases()) + 2
    index = [p.name for p in cache.rglob("*.nbi")]
    assert any(name.startswith("_cpu_kernels.") for name in index), index
    assert any(name.startswith("user_kernels.attention") for name in index), index


def test_fresh_compile_and_disk_cache_agree(runs):
    dc, (fresh, cached), _ = runs
    differ = [k for k in fresh if not np.array_equal(_bits(fresh[k]), _bits(cached[k]))]
    assert differ == []


def test_this_process_agrees(runs):
    """This process compiled or loaded its kernels on its own: same bits again."""
    dc, (fresh, _), _ = runs
    differ = []
    for i, case in enumerate(dc.cases()):
        if not np.array_equal(_bits(dc.run(*case)), _bits(fresh[f"case{i}"])):
            differ.append(case)
    assert differ == []


def test_user_njit_code_agrees_with_the_api(runs):
    """A user's cached @njit function calling numbasoftmax.jit gives the API's bits, in the
    process that compiled it and in the one that loaded it."""
    import numbasoftmax as nsm

    _, (fresh, cached), _ = runs
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((256, 512)).astype(np.float32)
    expected = nsm.softmax(scores)
    for results in (fresh, cached):
        assert np.array_equal(_bits(results["user_attention"]), _bits(expected))
    z = np.log(np.abs(scores) / np.abs(scores).sum(axis=1, keepdims=True))
    grads = nsm.log_softmax_backward(z, scores)
    for results in (fresh, cached):
        assert np.array_equal(_bits(results["user_grads"]), _bits(grads))
