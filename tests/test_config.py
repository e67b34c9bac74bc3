"""numba's disk cache: switchable by environment variable, and a package that still works
(compiling without the cache, with one warning) where numba has nowhere to write it: a
read-only install and no writable home directory."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from numbasoftmax import _config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value, expected", [("", True), ("1", True), ("true", True),
                                             ("0", False), ("OFF", False), ("no", False)])
def test_env_var_values(monkeypatch, value, expected):
    monkeypatch.setenv(_config.ENV_VAR, value)
    assert _config._from_env() is expected


def test_env_var_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(_config.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=r"NUMBASOFTMAX_CACHE must be 0 or 1.*'maybe'"):
        _config._from_env()


@pytest.mark.parametrize("value, expected", [("", _config.STREAM_DEFAULT_BYTES), ("0", 0),
                                             ("1048576", 1 << 20), ("off", None),
                                             ("Never", None)])
def test_stream_env_var_values(monkeypatch, value, expected):
    monkeypatch.setenv(_config.STREAM_ENV_VAR, value)
    assert _config._stream_setting() == expected


@pytest.mark.parametrize("value", ["-1", "lots", "1.5"])
def test_stream_env_var_bad_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(_config.STREAM_ENV_VAR, value)
    with pytest.raises(ValueError, match=rf"NUMBASOFTMAX_STREAM_BYTES must be .*'{value}'"):
        _config._stream_setting()


# ---------------------------------------------------------------------------------------
# a read-only install, in subprocesses

# Run as root, permission bits do not stop writes (CAP_DAC_OVERRIDE); the sandbox then
# drops those capabilities for the child, which makes root obey the bits like any user.
_DROP = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]

CALL = textwrap.dedent("""
    import json, warnings
    import numpy as np
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numbasoftmax
        y = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
        dx = numbasoftmax.softmax_backward(y, np.eye(2, dtype=np.float32))
        z = numbasoftmax.log_softmax_backward(y, np.ones_like(y))
    from numbasoftmax import _config
    print(json.dumps({"dx": dx.tolist(), "z_finite": bool(np.isfinite(z).all()),
                      "cache": _config.CACHE, "file": numbasoftmax.__file__,
                      "warnings": [str(w.message) for w in caught
                                   if issubclass(w.category, RuntimeWarning)]}))
""")


def _read_only_tree(tmp_path):
    """A copy of the package in a directory nobody may write, and an unwritable home."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "numbasoftmax", site / "numbasoftmax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # the failing case itself: a cached njit function in the read-only directory
    (site / "cached_probe.py").write_text(
        "from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    home = tmp_path / "home"
    home.mkdir()
    for path in [home, *site.rglob("*"), site]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site, home


def _sandbox(site, home, cwd, **env):
    """(prefix, env) running a command that cannot write ``site`` or ``home``."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("NUMBA_CACHE_DIR", "NUMBASOFTMAX_", "XDG_CACHE_HOME"))}
    e.update(HOME=str(home), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", **env)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a directory "
                        "unwritable for the child process")
        prefix = _DROP
    return prefix, e


def _run(prefix, env, cwd, code):
    return subprocess.run([*prefix, sys.executable, "-c", code], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readonly")
    site, home = _read_only_tree(tmp)
    cwd = tmp / "cwd"  # not the repository: its numbasoftmax must not shadow the copy
    cwd.mkdir()
    prefix, env = _sandbox(site, home, cwd)
    # the sandbox really cannot write there ...
    done = _run(prefix, env, cwd, f"open({str(site / 'numbasoftmax' / 'w')!r}, 'w')")
    if done.returncode == 0:
        pytest.skip("cannot make a directory unwritable here (file permissions not enforced)")
    if "PermissionError" not in done.stderr:  # e.g. setpriv may not drop capabilities here
        pytest.skip(f"cannot run a child without write access: {done.stderr.strip()[-300:]}")
    # ... and plain numba caching fails there, which is the case under test
    done = _run(prefix, env, cwd, "import cached_probe")
    assert done.returncode != 0 and "no locator available" in done.stderr, done.stderr
    yield site, home, cwd
    for path in [site, *site.rglob("*"), home]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _call(read_only, **env):
    site, home, cwd = read_only
    prefix, e = _sandbox(site, home, cwd, **env)
    done = _run(prefix, e, cwd, CALL)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res["file"].startswith(str(site))
    assert res["dx"] == [[0.1875, -0.1875], [-0.25, 0.25]]  # exact in float32
    assert res["z_finite"]
    return res


def test_read_only_install_compiles_without_cache_and_warns_once(read_only):
    res = _call(read_only)
    assert res["cache"] is False
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "NUMBA_CACHE_DIR" in res["warnings"][0]
    assert "NUMBASOFTMAX_CACHE=0" in res["warnings"][0]


def test_read_only_install_env_var_off_is_silent(read_only):
    res = _call(read_only, NUMBASOFTMAX_CACHE="0")
    assert res["cache"] is False and res["warnings"] == []


def test_read_only_install_caches_in_numba_cache_dir(read_only, tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    res = _call(read_only, NUMBA_CACHE_DIR=str(cache))
    assert res["cache"] is True and res["warnings"] == []
    assert list(cache.rglob("*.nbi")), "nothing was cached in NUMBA_CACHE_DIR"


def test_env_var_off_writes_no_cache(read_only, tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    res = _call(read_only, NUMBA_CACHE_DIR=str(cache), NUMBASOFTMAX_CACHE="0")
    assert res["cache"] is False and res["warnings"] == []
    assert not list(cache.rglob("*.nbi")), "cache files written with caching switched off"
