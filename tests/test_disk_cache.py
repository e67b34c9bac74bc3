"""numba's on-disk cache under concurrent processes (``numbasoftmax._disk_cache``): every
cached kernel of the package saves and loads under its cache directory's lock, so that two
processes compiling different specializations at once cannot pair one specialization's
index entry with the other's machine code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from _helpers import assert_bitwise_equal

from numbasoftmax import _disk_cache

ROOT = Path(__file__).resolve().parent.parent

fcntl = pytest.importorskip("fcntl")


def _dispatchers():
    from numba.core.registry import CPUDispatcher

    import numbasoftmax._cpu_kernels as cpu_kernels
    import numbasoftmax._lane_kernel as lane_kernel
    import numbasoftmax._row_kernel as row_kernel
    import numbasoftmax.jit as jit

    for module in (cpu_kernels, lane_kernel, row_kernel, jit):
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher):
                yield f"{module.__name__}.{name}", value


def test_every_cached_kernel_saves_and_loads_under_the_lock():
    from numbasoftmax._config import CACHE

    found = dict(_dispatchers())
    assert len(found) > 20
    locked = {name for name, d in found.items() if type(d._cache) is _disk_cache.LockedCache}
    assert locked == (set(found) if CACHE else set())


def test_the_lock_excludes_loads_while_a_save_holds_it(tmp_path):
    acquired = threading.Event()

    def load():
        with _disk_cache.locked(str(tmp_path), exclusive=False):
            acquired.set()

    with _disk_cache.locked(str(tmp_path), exclusive=True):
        reader = threading.Thread(target=load)
        reader.start()
        assert not acquired.wait(0.5)
    assert acquired.wait(30)
    reader.join()


def test_loads_share_the_lock(tmp_path):
    with _disk_cache.locked(str(tmp_path), exclusive=False):
        with _disk_cache.locked(str(tmp_path), exclusive=False):
            pass


def test_a_thread_does_not_wait_for_its_own_lock(tmp_path):
    with _disk_cache.locked(str(tmp_path), exclusive=False):
        with _disk_cache.locked(str(tmp_path), exclusive=True):
            pass


def test_no_directory_and_nothing_to_load(tmp_path):
    missing = tmp_path / "not-there"
    with _disk_cache.locked(str(missing), exclusive=False):
        pass
    assert not missing.exists()


# Two processes compile different specializations (float32, float64) of the same kernels
# into one empty cache directory at the same time; a third loads both from it and must
# reproduce their results bit for bit (and nobody waits forever). Without the lock the
# pair collides only when two saves of one function fall within about a millisecond, so
# this is the scenario end to end, not a reliable reproduction of the race: the lock's
# exclusion is tested above.
SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import numbasoftmax as nsm

    out, dtypes = sys.argv[1], sys.argv[2].split(",")
    results = {}
    for dt in dtypes:
        x = (np.random.default_rng(1).standard_normal((8, 128)) * 3).astype(dt)
        results[f"softmax-{dt}"] = nsm.softmax(x)
        results[f"axis0-{dt}"] = nsm.softmax(x, axis=0)
        results[f"lsm_bwd-{dt}"] = nsm.log_softmax_backward(x, x)
    np.savez(out, **results)
""")

def test_concurrent_processes_share_one_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    env.pop("NUMBASOFTMAX_CACHE", None)

    def start(name, dtypes):
        return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / name), dtypes],
                                env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

    def finish(proc):
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out.decode(errors="replace")

    pair = [start(f"{dt}.npz", dt) for dt in ("float32", "float64")]
    for proc in pair:
        finish(proc)
    finish(start("both.npz", "float32,float64"))
    assert list((tmp_path / "cache").rglob("*.nbi"))
    both = np.load(tmp_path / "both.npz")
    for dt in ("float32", "float64"):
        alone = np.load(tmp_path / f"{dt}.npz")
        for key in alone.files:
            assert_bitwise_equal(both[key], alone[key])


# A process that finds its kernels in the cache loads their machine code without numba's
# full set-up (its implementation registries, which import scipy.linalg where scipy is
# installed): that set-up is most of a warm start, and only a compile needs it. Nor does
# it import numba's array module (the kernels allocate without numba's np.empty, whose
# compiled code lives there): the calls below allocate a group's statistics, a float16
# row's staging and the short rows' scratch.
WARM_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import numbasoftmax as nsm

    x = (np.random.default_rng(2).standard_normal((8, 128)) * 3).astype(np.float32)
    y = nsm.log_softmax(x)
    h = nsm.softmax(x.astype(np.float16))
    s = nsm.softmax(x[:, :5])
    np.savez(sys.argv[1], y=y, h=h, s=s, set_up=np.array("numba.np.linalg" in sys.modules),
             arrays=np.array("numba.np.arrayobj" in sys.modules))
""")


def test_a_warm_process_loads_without_numbas_set_up(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    env.pop("NUMBASOFTMAX_CACHE", None)
    runs = []
    for name in ("cold.npz", "warm.npz"):
        proc = subprocess.run([sys.executable, "-c", WARM_SCRIPT, str(tmp_path / name)],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        runs.append(np.load(tmp_path / name))
    cold, warm = runs
    assert cold["set_up"] and not warm["set_up"]
    assert not warm["arrays"]
    for key in ("y", "h", "s"):
        assert_bitwise_equal(warm[key], cold[key])


# ---------------------------------------------------------------------------------------
# a kernel's cache entry is stale when any module of the package changed, not only its own
# file (numba's stamp): its machine code holds the functions it calls from the others

def test_sources_stamp_follows_every_module(tmp_path):
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not a module\n")
    first = _disk_cache.sources_stamp(str(tmp_path))
    (tmp_path / "notes.txt").write_text("changed, still not a module\n")
    os.utime(tmp_path / "a.py")  # touched, same contents
    assert _disk_cache.sources_stamp(str(tmp_path)) == first
    (tmp_path / "b.py").write_text("x = 2\n")
    assert _disk_cache.sources_stamp(str(tmp_path)) != first
    assert _disk_cache.sources_stamp(str(tmp_path / "missing")) is None


def test_every_cached_kernel_is_stamped_with_the_package():
    from numbasoftmax._config import CACHE

    if not CACHE:
        pytest.skip("the disk cache is off (NUMBASOFTMAX_CACHE=0)")
    stamp = _disk_cache.package_stamp()
    assert stamp is not None
    for name, d in _dispatchers():
        assert d._cache._cache_file._source_stamp[1] == stamp, name


# jit.softmax_row (jit.py) inlines the row kernel (_row_kernel.py): a process loads it from
# the cache, then the row kernel changes and the next process must compile it again
JIT_SCRIPT = textwrap.dedent("""
    import numpy as np
    from numbasoftmax import jit

    x = np.arange(8.0)
    out = np.empty(8)
    jit.softmax_row(x, out)
    stats = jit.softmax_row.stats
    print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
""")


def test_a_change_in_a_called_module_recompiles(tmp_path):
    import shutil

    package = tmp_path / "src" / "numbasoftmax"
    shutil.copytree(ROOT / "numbasoftmax", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(tmp_path / "src"))
    env.pop("NUMBASOFTMAX_CACHE", None)

    def hits_and_misses():
        proc = subprocess.run([sys.executable, "-c", JIT_SCRIPT], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return tuple(int(v) for v in proc.stdout.split())

    assert hits_and_misses() == (0, 1)  # compiled, saved
    assert hits_and_misses() == (1, 0)  # loaded
    kernel = package / "_row_kernel.py"
    kernel.write_text(kernel.read_text() + "\n# changed\n")
    assert hits_and_misses() == (0, 1)  # compiled again
