"""The main job: ``python -m numbasoftmax bench`` and its report, table and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from numbasoftmax import _bench, registry
from numbasoftmax.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                                       [env.get("PYTHONPATH")] if p])
    return env


def _timed_cpu_impls():
    return sorted({i.name for i in registry.implementations(device="cpu")
                   if i.role != "oracle"})


def test_quick_cpu_run_writes_report_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "numbasoftmax", "bench", "--quick", "--device", "cpu",
         "--out", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text(encoding="utf-8")
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the terminal gets the same Markdown report
    assert "numbasoftmax GB/s" in proc.stdout and "% copy" in proc.stdout
    assert "CPU copy bandwidth" in report and "Versions:" in report
    # every available implementation (the oracle excepted) is in the table, with numbers
    for name in _timed_cpu_impls():
        assert f"{name} GB/s" in report, name
        ok = [r for r in data["results"] if r["impl"] == name and r["status"] == "ok"]
        assert ok, f"no measurement for {name}"
        assert all(r["gbps"] > 0 and r["pct_copy"] > 0 for r in ok)
    ops = {r["op"] for r in data["results"]}
    assert ops == set(registry.OPS)
    assert data["copy_bandwidth"]["cpu"]["gbps"] > 0
    assert {r["op"] for r in data["latency"]} == set(registry.OPS)
    assert all(c == "ok" for c in data["checks"].values()), data["checks"]


def _tiny_config(tmp_path, **kw):
    args = dict(devices=("cpu",), ops=("softmax", "softmax_backward"),
                dtypes=("float32", "float16"), sizes=(64, 256), elements=1 << 12,
                repeats=3, min_repeats=2, cell_seconds=0.01, prealloc="all",
                out=tmp_path, progress=False)
    args.update(kw)
    return _bench.Config(**args)


def test_engine_tables_ratios_and_targets(tmp_path):
    report = _bench.run(_tiny_config(tmp_path))
    text, messages = _bench.write_outputs(report, tmp_path)
    titles = [t for t, _, _ in _bench.throughput_tables(report)]
    assert any("float16" in t for t in titles)
    assert any("preallocated out=" in t for t in titles)
    f16 = next(h for t, h, _ in _bench.throughput_tables(report) if "float16" in t)
    assert any(h.startswith("elem/s vs our f32") for h in f16)
    if registry.implementations(device="cpu", name="torch"):
        assert "× torch" in text
        assert any(t["target"].startswith("softmax forward") for t in report.targets)
    for r in report.results:
        if r.status == "ok":
            moved = (2 if r.op in _bench.FORWARD else 3) * r.m * r.n * (
                2 if r.dtype == "float16" else 4)
            assert r.bytes == moved
            assert r.gbps == pytest.approx(moved / r.seconds / 1e9)
    assert (tmp_path / "results.json").exists() and (tmp_path / "report.md").exists()


def test_plot_skipped_with_message_without_matplotlib(tmp_path, monkeypatch):
    report = _bench.run(_tiny_config(tmp_path, ops=("softmax",), dtypes=("float32",),
                                     prealloc="none", latency=False))
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    text, messages = _bench.write_outputs(report, tmp_path / "out")
    assert not (tmp_path / "out" / "bench.png").exists()
    assert (tmp_path / "out" / "report.md").exists()
    assert any("matplotlib is not installed" in m for m in messages)
    assert "bench.png" not in text


def test_progress_bar_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    bar = _bench._Progress(4, enabled=True)
    bar.describe("cell one")
    bar.step(2)
    bar.close()
    err = capsys.readouterr().err
    assert "2/4" in err and "cell one" in err


@pytest.mark.parametrize("text, expected", [
    ("32,128", (32, 128)), ("1k, 2^18", (1024, 262144)), ("4K,1m", (4096, 1 << 20)),
])
def test_parse_sizes(text, expected):
    assert _bench.parse_sizes(text) == expected


@pytest.mark.parametrize("argv", [
    ["bench", "--op", "sideways"], ["bench", "--dtype", "int8"], ["bench", "--sizes", "0"],
])
def test_bad_options_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_gpu_requested_without_gpu_fails_clearly(tmp_path, capsys):
    if _bench.GpuDevice.available():
        pytest.skip("a GPU is available here")
    assert main(["bench", "--device", "gpu", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "no usable GPU" in capsys.readouterr().err


def test_op_groups():
    from numbasoftmax.__main__ import _ops

    assert _ops("fwd") == ("softmax",)
    assert _ops("bwd") == ("softmax_backward",)
    assert _ops("log") == ("log_softmax", "log_softmax_backward")
    assert _ops("all") == registry.OPS
    assert _ops("softmax_backward,fwd") == ("softmax", "softmax_backward")


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "bench" in capsys.readouterr().out
