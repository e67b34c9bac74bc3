"""Smoke run of the pytest-benchmark suite in bench/: with benchmarking disabled (the
project default) every benchmark runs once on a small shape and is checked against the
float64 reference. bench/ has its own conftest, so it runs in its own pytest process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def test_bench_suite_smoke():
    pytest.importorskip("pytest_benchmark")
    if not (BENCH / "conftest.py").exists():
        pytest.skip("bench/ is not part of this checkout")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                                       [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH), "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-rs"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout, tail
    assert "failed" not in proc.stdout.splitlines()[-1], tail
