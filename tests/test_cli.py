"""The main job: ``python -m numbasoftmax bench`` and its report, table and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numbasoftmax import registry
from numbasoftmax._bench import checks, config, progress, report, sweep, timing
from numbasoftmax._bench.cli import _ops, main
from numbasoftmax._bench.timing import GpuDevice
from numbasoftmax._ops import OPS

ROOT = Path(__file__).resolve().parent.parent


# The sweeps run in this process measure the copy line over 4x a pretend 1 MiB last-level
# cache: over 4x the real one they copied 512 MiB per measurement on a CPU with a 260 MiB
# L3, most of each sweep's time, and nothing checked here depends on the cache's size.
SMALL_CACHE = 1 << 20


def _pretend_small_cache(mp):
    mp.setattr(timing, "l3_bytes", lambda: SMALL_CACHE)


@pytest.fixture(autouse=True)
def _small_cache(monkeypatch):
    _pretend_small_cache(monkeypatch)


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
        assert all(r["gbps"] > 0 and r["pct_copy"] > 0 and r["copy_gbps"] > 0 for r in ok)
    ops = {r["op"] for r in data["results"]}
    assert ops == set(registry.OPS)
    assert data["schema"] == 2 and "targets" not in data
    assert data["copy_bandwidth"]["cpu"]["gbps"] > 0
    assert {r["op"] for r in data["latency"]} == set(registry.OPS)
    assert all(c == "ok" for c in data["checks"].values()), data["checks"]


def _tiny_config(tmp_path, **kw):
    args = dict(devices=("cpu",), ops=("softmax", "softmax_backward"),
                dtypes=("float32", "float16"), sizes=(64, 256), elements=1 << 12,
                repeats=3, min_repeats=2, cell_seconds=0.01, prealloc="all",
                out=tmp_path, progress=False, startup=False)
    args.update(kw)
    return config.Config(**args)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        _pretend_small_cache(mp)  # a module-scoped fixture: the autouse one is not active
        result = sweep.run(_tiny_config(out, pool="all", features="all"))
    text, messages = report.write_outputs(result, out)
    return result, text, out


def test_engine_tables_and_ratios(tiny_run):
    result, text, out = tiny_run
    tables = report.throughput_tables(result)
    titles = [t for t, _, _ in tables]
    assert any("float16" in t for t in titles)
    assert any("preallocated out=" in t for t in titles)
    assert any("result pool on" in t for t in titles)
    f16 = next(h for t, h, _ in tables if "float16" in t)
    assert any(h.startswith("elem/s vs our f32") for h in f16)
    if registry.implementations(device="cpu", name="torch"):
        assert "× torch" in text
    for r in result.results:
        if r.status == "ok" and not r.feature:
            moved = (2 if not OPS[r.op].backward else 3) * r.m * r.n * (
                2 if r.dtype == "float16" else 4)
            assert r.bytes == moved
            assert r.gbps == pytest.approx(moved / r.seconds / 1e9)
    assert (out / "results.json").exists() and (out / "report.md").exists()


def test_percent_of_copy_is_against_the_copy_timed_in_the_cells_rounds(tiny_run):
    """Every timed cell has its own copy, timed in the same rounds as the implementations,
    and "% copy" divides by it; the tables show it."""
    result, text, _ = tiny_run
    ok = [r for r in result.results if r.status == "ok" and r.gbps]
    assert ok
    for r in ok:
        assert r.copy_gbps and r.copy_gbps > 0, r
        assert r.pct_copy == pytest.approx(100 * r.gbps / r.copy_gbps)
    cells = {}
    for r in ok:  # one copy per cell, shared by its implementations
        cells.setdefault((r.op, r.dtype, r.variant, r.feature, r.n), set()).add(r.copy_gbps)
    assert all(len(v) == 1 for v in cells.values())
    assert all(h[2] == "copy GB/s" for _, h, _ in report.throughput_tables(result))
    assert "timed in the same rounds" in text
    start = result.copy["cpu"]["start"]
    assert start["gbps"] == start[start["best"]]


@pytest.mark.parametrize("broken", ["threaded", "streamed"])
def test_copy_line_checks_each_copy_kernel(monkeypatch, broken):
    """A copy kernel that writes nothing fails the measurement, whichever ran before it."""
    kernels = dict(timing._threaded_copies())
    kernels[broken] = lambda src, dst, parts: None
    monkeypatch.setattr(timing, "_threaded_copies", lambda: kernels)
    with pytest.raises(RuntimeError, match=f"the {broken} copy did not copy"):
        timing.CpuDevice().copy_bandwidth(1 << 16, 1)


@pytest.mark.parametrize("best", ["streamed", "threaded", "numpy"])
def test_cell_copy_copies_the_arrays_bytes(best):
    """The copy beside a cell copies the bytes of its input, whatever its dtype and size
    (the copy kernels take whole float64 words: at most 7 bytes fewer)."""
    prepare, copy = timing.CpuDevice().cell_copy({"best": best})
    a = np.arange(15, dtype=np.float16)  # 30 bytes
    src, dst = prepare(a)
    copy(src, dst)
    got = dst.view(np.uint8)
    assert 23 <= got.size <= 30 and (best == "numpy") == (got.size == 30)
    assert np.array_equal(got, a.view(np.uint8)[:got.size])
    assert not np.shares_memory(src, a)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="minor page faults as "
                    "getrusage counts them on Linux")
def test_mapped_buffers_take_no_page_fault_when_written():
    """A fresh 64 MiB buffer faults its pages in on the first write (what a timed round
    would pay for an untouched out= or copy destination); ``mapped`` does it beforehand."""
    import resource

    def faults_writing(a):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a.fill(1)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    shape = (1 << 14, 1 << 10)  # float32: 64 MiB, past malloc's reuse of freed blocks
    # at least one fault per 2 MiB (transparent huge pages), else one per 4 KiB
    fresh = faults_writing(np.empty(shape, np.float32))
    if fresh == 0:
        pytest.skip("this system reports no page faults for fresh memory")
    assert fresh >= 32
    prepared = timing.CpuDevice().cell_copy({"best": "streamed"})[0](np.ones(shape, np.float32))
    for a in (timing.mapped(shape, np.float32), prepared[1]):
        assert faults_writing(a) < fresh // 4, fresh


def test_every_rotated_out_buffer_is_mapped(tmp_path, monkeypatch):
    """The cells' out= buffers (one per rotated input set) are made by ``mapped``."""
    made = []

    def recording(shape, dtype):
        made.append((tuple(shape), np.dtype(dtype)))
        return np.full(shape, 0, dtype)

    monkeypatch.setattr(sweep, "mapped", recording)
    result = sweep.run(_tiny_config(tmp_path, ops=("softmax",), dtypes=("float32",),
                                    sizes=(64,), latency=False))
    out_cells = [r for r in result.results if r.variant == "out" and r.status == "ok"]
    assert out_cells and all(r.seconds for r in out_cells)
    # (m, n) = (elements // n, n), one buffer per rotated input set of each implementation
    sets = sweep._rotation(sweep.CpuDevice(), OPS["softmax"].bytes_moved(64 * 64, 4), 64 * 64 * 4)
    assert len(made) == sets * len({r.impl for r in out_cells})
    assert all(shape == (64, 64) and dtype == np.float32 for shape, dtype in made)


def _rounds_of(tmp_path, monkeypatch, seconds, ours, budget=0.5):
    """The rounds ``_Sweep._rounds`` gives each key whose calls take ``seconds[key]``
    (a fake clock), ``ours`` the keys of our calls and the copy."""
    now = [0.0]

    class Clocked:
        def time_calls(self, fn, args, count):
            now[0] += fn
            return fn

    monkeypatch.setattr(sweep.time, "perf_counter", lambda: now[0])
    run = sweep._Sweep(_tiny_config(tmp_path, repeats=11, min_repeats=3), None, None)
    state = {key: (s, [()], 1, []) for key, s in seconds.items()}
    run._rounds(Clocked(), state, {}, budget, set(ours))
    return {key: len(times) for key, (*_, times) in state.items()}


def test_our_calls_keep_their_rounds_past_a_slow_peers_budget(tmp_path, monkeypatch):
    """A peer whose calls spend the cell's budget in min_repeats rounds stops there; our
    calls and the copy keep going together up to the repeats."""
    rounds = _rounds_of(tmp_path, monkeypatch, {"slow": 0.4, "ours": 0.004, "copy": 0.002},
                        ours=("ours", "copy"))
    assert rounds == {"slow": 3, "ours": 11, "copy": 11}


def test_our_calls_stop_together_when_their_rounds_do_not_fit(tmp_path, monkeypatch):
    """Our calls go on as one group or not at all: one of them too slow for the rounds
    left stops the copy and the float32 baseline too (their ratios need the same rounds)."""
    rounds = _rounds_of(tmp_path, monkeypatch, {"slow": 0.4, "ours": 0.06, "f32": 0.002,
                                                "copy": 0.002}, ours=("ours", "f32", "copy"))
    assert set(rounds.values()) == {3}


def test_rounds_stop_at_the_budget_without_a_slow_peer(tmp_path, monkeypatch):
    """A cell of our calls only, or of calls all slow, ends at the budget as before."""
    assert _rounds_of(tmp_path, monkeypatch, {"ours": 0.2, "copy": 0.01},
                      ours=("ours", "copy")) == {"ours": 3, "copy": 3}
    assert _rounds_of(tmp_path, monkeypatch, {"a": 0.2, "b": 0.2},
                      ours=("a",)) == {"a": 3, "b": 3}


def test_percent_of_copy_falls_back_to_the_starts_copy(tmp_path, monkeypatch):
    def failing(self, start):
        def copy(src, dst):
            raise RuntimeError("no copy here")
        return (lambda a: (a, a)), copy

    monkeypatch.setattr(timing.CpuDevice, "cell_copy", failing)
    result = sweep.run(_tiny_config(tmp_path, ops=("softmax",), dtypes=("float32",),
                                    prealloc="none", latency=False))
    start = result.copy["cpu"]["gbps"]
    ok = [r for r in result.results if r.status == "ok" and r.gbps]
    assert ok and all(r.copy_gbps is None for r in ok)
    assert all(r.pct_copy == pytest.approx(100 * r.gbps / start) for r in ok)
    assert any("copy beside a cell failed" in note for note in result.notes)
    assert "against the start's" in "\n".join(report.header_lines(result))


def test_feature_tables_time_every_form_entry_like_for_like(tiny_run):
    """where= (both masks) and dtype= cells: out= on both sides, every registry entry of
    the form timed, GB/s over the bytes of the inputs (mask included) and the result."""
    result, text, _ = tiny_run
    cells = [r for r in result.results if r.feature]
    assert {r.variant for r in cells} == {"out"}
    # the gradients take where= cells (no dtype= entries)
    assert {(r.op, r.feature) for r in cells} == {
        (op, name) for op in ("softmax", "softmax_backward")
        for name, spec in config.FEATURES.items()
        if spec.mask or op == "softmax"}
    for (op, name) in {(r.op, r.feature) for r in cells}:
        assert f"· {config.FEATURES[name].title}" in text
        timed = {r.impl for r in cells if (r.op, r.feature) == (op, name) and r.status == "ok"}
        assert timed == {i.name for i in registry.implementations(
            op=op, device="cpu", form=config.FEATURES[name].form)}, (op, name, timed)
    for r in cells:
        mask = {"full": r.m * r.n, "row": r.n, None: 0}[config.FEATURES[r.feature].mask]
        inputs = 2 if OPS[r.op].backward else 1
        item = 2 if r.dtype == "float16" else 4
        assert r.bytes == inputs * r.m * r.n * item + mask + 4 * r.m * r.n
    assert "× unmasked" in text and "× np.where+numbasoftmax" in text
    assert "× astype+numbasoftmax" in text
    assert all(v == "ok" for v in result.checks.values()), result.checks


def test_feature_cells_by_default_only_on_full_runs():
    plan = config.Config().plan_for
    for device in ("cpu", "gpu"):  # where= and dtype= run on both
        features = [c for c in plan(device)[2] if c.feature]
        assert {(c.op, c.variant, c.sizes) for c in features} == {
            (op, "out", config.FEATURE_SIZES) for op in config.FEATURE_OPS}, device
        assert {c.feature for c in features} == set(config.FEATURES), device
    assert not [c for c in config.Config(quick=True).plan_for("cpu")[2] if c.feature]
    assert not [c for c in config.Config(quick=True).plan_for("gpu")[2] if c.feature]
    assert not [c for c in config.Config(features="none").plan_for("cpu")[2] if c.feature]
    assert not [c for c in config.Config(sizes=(64,)).plan_for("cpu")[2] if c.feature]


def _bench_targets():
    """bench/targets.py (outside the package: the project's targets, not a feature)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_targets", ROOT / "bench" / "targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_evaluated_from_results_json(tiny_run, capsys):
    result, _, out = tiny_run
    targets = _bench_targets()
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = {r["target"]: r for r in targets.evaluate(data)}
    if registry.implementations(device="cpu", name="torch"):
        # like-for-like: ours over torch's GB/s in the out= cells, worst over N >= 32
        target = next(t for t in targets.TARGETS if t.device == "cpu" and t.op == "softmax"
                      and t.dtype == "float32" and t.kind == "vs:torch" and t.rows == "long")
        cells = {}
        for r in result.results:
            if (r.op, r.dtype, r.variant, r.feature) == ("softmax", "float32", "out", "") and (
                    r.gbps):
                cells.setdefault(r.n, {})[r.impl] = r.gbps
        ratios = [c["numbasoftmax"] / c["torch"] for c in cells.values()
                  if "numbasoftmax" in c and "torch" in c]
        assert rows[target.text]["worst"] == pytest.approx(min(ratios))
        assert rows[target.text]["met"] == (min(ratios) >= target.threshold)
    # a "% of copy" target names the copy timed beside the worst cell
    pct = next(t for t in targets.TARGETS if t.device == "cpu" and t.op == "softmax"
               and t.kind == "pct" and t.rows == "long")
    worst = next(r for r in result.results
                 if (r.op, r.dtype, r.variant, r.feature, r.impl, r.n) == (
                     "softmax", "float32", "out", "", "numbasoftmax", rows[pct.text]["at"]))
    assert rows[pct.text]["worst"] == pytest.approx(worst.pct_copy)
    assert f"(copy {worst.copy_gbps:.1f} GB/s, same rounds)" in rows[pct.text]["text"]
    assert targets.main([str(out / "results.json")]) == 0
    assert "| CPU |" in capsys.readouterr().out


def test_time_targets_are_maxima():
    """"time:<peer>" targets (masked within 1.2× of unmasked) take the worst, largest, time
    ratio over N and are met at or below the threshold."""
    targets = _bench_targets()

    def rec(impl, n, seconds):
        return {"device": "cpu", "op": "softmax", "dtype": "float32", "variant": "out",
                "feature": "where-row", "n": n, "impl": impl, "seconds": seconds,
                "gbps": 1 / seconds, "pct_copy": None, "f32_seconds": None}

    data = {"latency": [], "results": [rec("numbasoftmax", 32, 1.3), rec("unmasked", 32, 1.0),
                                       rec("numbasoftmax", 1024, 1.1),
                                       rec("unmasked", 1024, 1.0)]}
    (row,) = [r for r in targets.evaluate(data) if "(N,) mask" in r["target"]
              and "unmasked" in r["target"]]
    assert row["worst"] == pytest.approx(1.3) and row["at"] == 32 and not row["met"]
    data["results"][0]["seconds"] = 1.2
    (row,) = [r for r in targets.evaluate(data) if "(N,) mask" in r["target"]
              and "unmasked" in r["target"]]
    assert row["met"]


def test_startup_targets_are_maxima():
    targets = _bench_targets()
    data = {"results": [], "latency": [], "startup": {
        "softmax": {"cold": {"total": 2.5}, "warm": {"total": 0.5}}}}
    rows = {r["target"]: r for r in targets.evaluate(data)}
    cold = next(r for t, r in rows.items() if "softmax:" in t and "empty" in t)
    warm = next(r for t, r in rows.items() if "softmax:" in t and "warm" in t)
    assert cold["met"] and cold["worst"] == 2.5
    assert not warm["met"] and warm["worst"] == 0.5


def test_startup_table_in_the_report(tiny_run):
    from numbasoftmax._bench import startup

    result, _, _ = tiny_run
    measured = {"softmax": {"cold": {"import": 0.3, "setup": 0.2, "small": 2.0, "large": 1.0,
                                     "total": 3.5, "cpu": 3.4, "llvm": 1.5,
                                     "compiled": {"rows": 1.9, "rows_parallel": 0.9}},
                            "warm": {"import": 0.3, "setup": 0.0, "small": 0.1, "large": 0.01,
                                     "total": 0.41, "cpu": 0.6, "llvm": 0.0, "compiled": {}}}}
    result.startup = measured
    try:
        text = report.render_markdown(result)
    finally:
        result.startup = {}
    assert startup.table(measured)[0] in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| softmax")]
    assert ["softmax", "0.30 s", "0.20 s", "2.00 s", "1.00 s", "3.50 s", "3.40 s", "1.50 s",
            "rows 1.9, rows_parallel 0.9", "0.41 s", "0.30 s"] in rows


def test_plot_skipped_with_message_without_matplotlib(tmp_path, monkeypatch):
    result = sweep.run(_tiny_config(tmp_path, ops=("softmax",), dtypes=("float32",),
                                    prealloc="none", latency=False))
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    text, messages = report.write_outputs(result, tmp_path / "out")
    assert not (tmp_path / "out" / "bench.png").exists()
    assert (tmp_path / "out" / "report.md").exists()
    assert any("matplotlib is not installed" in m for m in messages)
    assert "bench.png" not in text


def test_runs_without_tqdm(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert not progress.Progress(4, enabled=True).active
    result = sweep.run(_tiny_config(tmp_path, ops=("softmax",), dtypes=("float32",),
                                    prealloc="none", latency=False, progress=True))
    assert all(r.status == "ok" for r in result.results if r.impl == "numbasoftmax")
    assert capsys.readouterr().err == ""


def test_progress_bar_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    bar = progress.Progress(4, enabled=True)
    assert bar.active
    bar.describe("cell one")
    bar.step(2)
    bar.close()
    assert "cell one" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("32,128", (32, 128)), ("1k, 2^18", (1024, 262144)), ("4K,1m", (4096, 1 << 20)),
])
def test_parse_sizes(text, expected):
    assert config.parse_sizes(text) == expected


@pytest.mark.parametrize("argv, words", [
    (["bench", "--op", "sideways"], ["--op", "sideways"]),
    (["bench", "--dtype", "int8"], ["--dtype", "int8"]),
    (["bench", "--sizes", "0"], ["--sizes", "positive"]),
    (["bench", "--sizes", "abc"], ["--sizes", "'abc'", "4k"]),
    (["bench", "--sizes", "2^x"], ["--sizes", "'2^x'"]),
    (["bench", "--elements", "lots"], ["--elements", "'lots'"]),
    (["bench", "--threads", "0"], ["--threads"]),
    (["bench", "--repeats", "0"], ["--repeats", "0"]),
    (["bench", "--repeats", "-3"], ["--repeats", "-3"]),
    (["bench", "--device", "cpu", "--elements", "2^40", "--no-progress"],
     ["--elements", "GiB", "available"]),
])
def test_bad_options_exit_2_naming_the_option(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for word in words:
        assert word in err, err
    assert "invalid literal" not in err


def test_rows_longer_than_the_elements_get_one_row(tmp_path):
    result = sweep.run(_tiny_config(tmp_path, ops=("softmax",), dtypes=("float32",),
                                    sizes=(64, 256), elements=100, prealloc="none"))
    ok = [r for r in result.results if r.status == "ok"]
    assert {r.n for r in ok} == {64, 256}
    assert {r.m for r in ok if r.n == 256} == {1}


def test_threads_beyond_numbas_pool_run_both_libraries_on_the_pool(monkeypatch):
    import importlib.machinery
    import types

    import numba

    pool = numba.config.NUMBA_NUM_THREADS
    seen = {}
    monkeypatch.setattr(numba, "set_num_threads", lambda k: seen.setdefault("numba", k))
    torch = types.ModuleType("torch")  # a stand-in: torch need not be installed
    torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    torch.set_num_threads = lambda k: seen.setdefault("torch", k)
    monkeypatch.setitem(sys.modules, "torch", torch)
    note = sweep._set_threads(pool + 1)
    assert seen == {"numba": pool, "torch": pool}
    assert note and f"--threads {pool + 1}" in note


def test_gpu_requested_without_gpu_fails_clearly(tmp_path, capsys):
    if GpuDevice.available():
        pytest.skip("a GPU is available here")
    assert main(["bench", "--device", "gpu", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "no usable GPU" in capsys.readouterr().err


class _FakeGpu(GpuDevice):
    """GpuDevice's call-count logic over a clock where each call takes ``seconds``."""

    def __init__(self, seconds):  # no CUDA
        self.seconds = seconds
        self.batches = []

    def sync(self):
        pass

    def time_calls(self, fn, args, count):
        for _ in range(count):
            fn(*args[0])
        self.batches.append(count)
        return self.seconds


@pytest.mark.parametrize("seconds, rounds", [(1e-3, 2), (1e-2, 1), (1e-6, 2), (1e-4, 2)])
def test_gpu_per_call_grows_the_batch_to_the_time_budget(seconds, rounds):
    device = _FakeGpu(seconds)
    calls = []
    assert device.per_call(lambda: calls.append(1), min_seconds=0.02, max_calls=200) == seconds
    *short, last = device.batches
    assert len(device.batches) == rounds
    assert all(b * seconds < 0.02 for b in short)
    assert last * seconds >= 0.02 or last == 200
    assert len(calls) == 1 + sum(device.batches)  # the warm-up call, then the batches


def test_check_result_rejects_a_wrong_result():
    inputs = checks.make_inputs("softmax_backward", (4, 16), "float32")
    want = __import__("numbasoftmax").softmax_backward(*inputs)
    checks.check_result("softmax_backward", want, inputs, "float32")
    bad = want.copy()
    bad[1, 3] += 1e-2
    with pytest.raises(AssertionError, match="max abs error"):
        checks.check_result("softmax_backward", bad, inputs, "float32")
    with pytest.raises(AssertionError, match="float64"):
        checks.check_result("softmax_backward", want.astype(np.float64), inputs, "float32")


def test_op_groups():
    assert _ops("fwd") == ("softmax",)
    assert _ops("bwd") == ("softmax_backward",)
    assert _ops("log") == ("log_softmax", "log_softmax_backward")
    assert _ops("all") == registry.OPS
    assert _ops("softmax_backward,fwd") == ("softmax", "softmax_backward")


@pytest.mark.parametrize("command", ["bench", "warmup"])
def test_an_unknown_option_is_reported_with_its_commands_usage(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m numbasoftmax {command}: error: unrecognized arguments: --bogus" in err
    assert f"usage: python -m numbasoftmax {command}" in err


@pytest.mark.parametrize("available, fails", [(2**28, False), (2**27, True), (None, False)])
def test_the_sweep_refuses_more_elements_than_memory_holds(available, fails):
    cells = [config.Cell("softmax", "float32", "new"), config.Cell("softmax", "float16", "new")]
    # 2^22 float32 and float16 elements: bases 2 * 6 B, arrays 12 * 4 B, 60 B each in all
    if fails:
        with pytest.raises(RuntimeError, match=r"--elements 4194304: .*0\.2 GiB"):
            sweep.check_memory("cpu", 1 << 22, (32,), cells, available)
    else:
        sweep.check_memory("cpu", 1 << 22, (32,), cells, available)


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "bench" in capsys.readouterr().out


def test_a_first_call_that_compiles_is_not_reported_as_the_cells_time(tmp_path, monkeypatch):
    """A warm-up call slowed by compilation (over 2 s) is followed by a second warm-up;
    only a cell whose calls stay that slow is timed from its first call."""
    seen = set()
    real = timing.CpuDevice.time_calls

    def first_call_compiles(self, fn, args, count):
        if fn not in seen:  # each cell's caller is a fresh function
            seen.add(fn)
            return 3.0
        return real(self, fn, args, count)

    monkeypatch.setattr(timing.CpuDevice, "time_calls", first_call_compiles)
    result = sweep.run(_tiny_config(tmp_path, ops=("softmax",), dtypes=("float32",),
                                    prealloc="none", latency=False))
    timed = [r for r in result.results if r.status == "ok"]
    assert timed and all(r.seconds < 2.0 and r.repeats >= 2 for r in timed)


def test_available_memory_takes_the_cgroup_limit(monkeypatch):
    """In a container, the cgroup's limit less its use bounds what MemAvailable says."""
    import io

    files = {"/proc/meminfo": "MemTotal: 100 kB\nMemAvailable: 20971520 kB\n",
             "/sys/fs/cgroup/memory.max": f"{3 << 30}\n",
             "/sys/fs/cgroup/memory.current": f"{1 << 30}\n"}
    monkeypatch.setattr(sweep, "open", lambda path: io.StringIO(files[path]), raising=False)
    assert sweep.available_memory() == 2 << 30
    files["/sys/fs/cgroup/memory.max"] = "max\n"
    assert sweep.available_memory() == 20 << 30
