"""Smoke run of the pytest-benchmark suite in bench/: with benchmarking disabled (the
project default) every benchmark runs once on a small shape and is checked against the
float64 reference. bench/ has its own conftest, so it runs in its own pytest process; its
JUnit report says which cells ran, passed and were skipped, and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from numbasoftmax import registry

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DTYPES = 3  # bench/conftest.py's default --bench-dtypes


def _expected_cases():
    """(test id suffix -> available) for every registry entry the suite parametrizes."""
    cases = {}
    for device in ("cpu", "gpu"):
        for impl in registry.implementations(device=device, available_only=False):
            if impl.role != "oracle":
                cases[(impl.op, device, impl.name)] = impl.available()
    return cases


def _bench_env():
    """The environment of a pytest run of bench/ (skipped without pytest-benchmark or
    bench/): this checkout first on the path, and none of a pytest-xdist worker's
    variables, which would tell the child's pytest-benchmark that xdist runs it (it then
    times nothing)."""
    pytest.importorskip("pytest_benchmark")
    if not (BENCH / "conftest.py").exists():
        pytest.skip("bench/ is not part of this checkout")
    return _child_env()


def _child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                                       [env.get("PYTHONPATH")] if p])
    return env


def test_bench_suite_smoke(tmp_path):
    env = _bench_env()
    junit = tmp_path / "bench.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH), "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-rs", f"--junitxml={junit}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail

    outcome = {}  # (file, test id) -> "passed" | "skipped: reason" | "failed"
    for case in ET.parse(junit).getroot().iter("testcase"):
        skipped = case.find("skipped")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        state = ("failed" if bad is not None else
                 f"skipped: {skipped.get('message', '')}" if skipped is not None else "passed")
        outcome[(case.get("classname"), case.get("name"))] = state
    assert outcome and not [k for k, v in outcome.items() if v == "failed"]

    expected = _expected_cases()
    throughput = {k[1]: v for k, v in outcome.items() if k[1].startswith("test_throughput")}
    latency = {k[1]: v for k, v in outcome.items() if k[1].startswith("test_latency")}
    # one throughput case per (op, device, implementation, dtype), one latency case per
    # (op, device, implementation): none missing, none extra
    assert len(throughput) == DTYPES * len(expected), sorted(throughput)
    assert len(latency) == len(expected), sorted(latency)
    for (op, device, name), available in expected.items():
        mine = [v for k, v in {**throughput, **latency}.items()
                if f"[{op}|" in k and f"|{device}|{name}]" in k]
        assert len(mine) == DTYPES + 1, (op, device, name, mine)
        if available:
            assert all(v == "passed" for v in mine), (op, device, name, mine)
        else:  # skipped, saying why (peer not installed, or no GPU)
            assert all(v.startswith("skipped") and name in v for v in mine), (name, mine)
    ours_cpu = [v for k, v in throughput.items() if k.endswith("|cpu|numbasoftmax]")]
    assert ours_cpu and all(v == "passed" for v in ours_cpu)


def test_benchmark_enable_measures(tmp_path):
    """README's `pytest bench/ --benchmark-enable` times the cells (pytest-benchmark turns
    itself off when the project's options set pytest-xdist's --dist)."""
    env = _bench_env()
    saved = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH), "-q", "-p", "no:cacheprovider",
         "--benchmark-enable", "-k", "softmax and float32 and cpu and numbasoftmax",
         "--bench-sizes", "32", "--bench-elements", "2^10", "--benchmark-max-time", "0.01",
         f"--benchmark-json={saved}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "disabled" not in proc.stdout + proc.stderr, tail
    timed = json.loads(saved.read_text())["benchmarks"]
    assert timed and all(b["stats"]["rounds"] >= 1 for b in timed), tail


def _bench_axes_path():
    """bench/bench_axes.py (skipped where bench/ is not part of the checkout)."""
    path = BENCH / "bench_axes.py"
    if not path.exists():
        pytest.skip("bench/ is not part of this checkout")
    return path


def _bench_axes():
    """bench/bench_axes.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_axes", _bench_axes_path())
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_axes_runs_and_checks_bits():
    # a strided axis of a 2-D and of a 3-D array, a forward and a backward operation: each
    # row reports the bits of the strided call against the contiguous rows' as the same
    proc = subprocess.run(
        [sys.executable, str(_bench_axes_path()), "--cases", "96x40:0,3x40x24:1",
         "--ops", "softmax,log_softmax_backward", "--trials", "2", "--calls", "1",
         "--threads", "1"],
        cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| (")]
    assert len(rows) == 4, proc.stdout
    for case in ("(96, 40) axis 0", "(3, 40, 24) axis 1"):
        for op in ("softmax", "log_softmax_backward"):
            row = [r for r in rows if r.startswith(f"| {case} | {op} |")]
            assert len(row) == 1 and "| same |" in row[0], (case, op, rows)


@pytest.mark.parametrize("argv, expected", [
    (["--cases", "64x"], "--cases"),
    (["--cases", "64x32:2"], "out of range"),
    (["--ops", "softmax,tanh"], "--ops"),
    (["--trials", "0"], "--trials"),
])
def test_bench_axes_bad_arguments(argv, expected):
    with pytest.raises(SystemExit, match=expected):
        _bench_axes().main(argv)
