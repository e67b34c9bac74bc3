"""``python -m numbasoftmax warmup`` reaches every CPU driver for every operation and dtype.

The drivers are replaced by recorders, so nothing compiles: what is checked is that the
warm-up's calls cover what real calls use."""

from __future__ import annotations

import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from numbasoftmax import _cpu, _warmup
from numbasoftmax._ops import OPS, SOFTMAX_NAMES

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ("rows", "grouped_rows", "short_rows", "columns", "rows_parallel",
           "grouped_rows_parallel", "short_rows_parallel", "columns_parallel", "chunks_parallel")
# the drivers of large outputs' rows (streamed as runs); the parallel one compiles the serial
# one it calls, which only a large output without the thread pool would call itself
RUN_DRIVERS = ("run_rows", "run_rows_parallel")
# the phases a dask array's split softmax axis runs, one at a time
SEGMENT_DRIVERS = ("segment_stats", "segment_write", "segment_columns_stats",
                   "segment_columns_write")


@pytest.fixture
def recorded(monkeypatch):
    from numbasoftmax import _cpu_kernels as real

    calls = []

    def recorder(name):
        def record(*args):
            op = args[0].key if hasattr(args[0], "key") else None
            dtype = next((a.dtype for a in args if isinstance(a, np.ndarray)), None)
            calls.append((name, op, dtype))

        # as numba's dispatchers, which small contiguous calls ask for a compiled entry
        record.typeof_pyval = lambda value: type(value)
        record.overloads = {}
        return record

    fake = types.SimpleNamespace(OPS=real.OPS, W=real.W, columns_tasks=real.columns_tasks,
                                 RUN_OPS=real.RUN_OPS, RUN_ROW_MIN=real.RUN_ROW_MIN,
                                 CHUNK=real.CHUNK, REDUCED=real.REDUCED,
                                 copy2d=recorder("copy2d"),
                                 **{name: recorder(name) for name in DRIVERS + RUN_DRIVERS})
    monkeypatch.setattr(_cpu, "_kernels", fake)
    monkeypatch.setattr(_cpu, "_routes", {})  # routes cached with the fake do not outlive it
    monkeypatch.setattr(_cpu, "_layer_checked", True)
    for name in SEGMENT_DRIVERS:  # the dask tasks' kernels, which they import themselves
        monkeypatch.setattr(real, name, recorder(name))
    _warmup.warmup(progress=False)
    return calls


ROW_DRIVERS = ("rows", "rows_parallel", "chunks_parallel")


def _usable(op):
    """The drivers ``op`` can run on: logsumexp's gradient not the groups; it and
    logsumexp read a strided axis in place in parallel calls only (a small call gathers
    its rows); the others all."""
    if op in _cpu.UNGROUPED_OPS:
        return (*ROW_DRIVERS, "short_rows", "short_rows_parallel", "columns_parallel")
    if OPS[op].reduces:
        return tuple(d for d in DRIVERS if d != "columns")
    return DRIVERS


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_driver_for_every_op_and_dtype(recorded, driver):
    """Every driver an operation can use, for every storage dtype."""
    storage = {np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.float64)}
    for op in OPS:
        # along a strided axis an operation may run as another kernel (softmax's exps
        # recomputed: softmax_split)
        ran = _cpu.COLUMN_OPS.get(op, op) if driver.startswith("columns") else op
        dtypes = {d for name, o, d in recorded if name == driver and o == ran}
        assert dtypes == (storage if driver in _usable(op) else set()), (driver, op, dtypes)


def test_large_outputs_reach_the_run_driver(recorded):
    """The operations whose large outputs stream as runs, in the dtypes that do."""
    from numbasoftmax._cpu_kernels import RUN_OPS

    runs = {(op, d.itemsize) for name, op, d in recorded if name == "run_rows_parallel"}
    assert runs == {(op, item) for op in RUN_OPS for item in _cpu.RUN_ITEMSIZES}


@pytest.mark.parametrize("driver", SEGMENT_DRIVERS)
def test_split_dask_axes_reach_the_phases(recorded, driver):
    """The four softmax functions' phases on a dask array's split axis, rows and a strided
    axis, for every storage dtype; softmax runs as softmax_split (its exps computed again
    in the write), and log_softmax's statistics are that kernel's too; logsumexp's
    statistics (it writes no blocks)."""
    _dask = pytest.importorskip("numbasoftmax._dask")
    storage = {np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.float64)}
    keys = {"softmax_split" if op == "softmax" else op for op in SOFTMAX_NAMES}
    if "stats" in driver:
        keys = {_dask._STATS_KEYS.get(key, key) for key in keys} | {"logsumexp"}
    ran = {(o, d) for name, o, d in recorded if name == driver}
    assert ran == {(key, d) for key in keys for d in storage}


def test_no_large_output_when_outputs_never_stream(monkeypatch):
    monkeypatch.setattr(_cpu, "STREAM_MIN_BYTES", None)
    assert all(math.prod(case.shape) < 1 << 20 for case in _warmup.cases())


def test_gathered_layouts_use_the_tiled_copy(recorded):
    assert any(name == "copy2d" for name, _, _ in recorded)


def test_command_line():
    proc = subprocess.run([sys.executable, "-m", "numbasoftmax", "warmup", "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "disk cache" in proc.stdout


@pytest.fixture
def public_calls(monkeypatch):
    """The warm-up's calls of the public functions with ``features``, recorded as (op,
    dtype, shape, axis, array library, options) instead of made."""
    import numbasoftmax

    calls = []

    def recorder(op):
        def call(*arrays, axis, **options):
            x = arrays[0]
            calls.append((op, np.dtype(x.dtype), x.shape, axis,
                          type(x).__module__.partition(".")[0], options))
            return types.SimpleNamespace(compute=lambda **_: None)
        return call

    for op in OPS:
        monkeypatch.setattr(numbasoftmax, op, recorder(op))
    count, _ = _warmup.warmup(progress=False, features=True)
    assert count == len(calls)
    return calls


def test_features_mask_every_call_along_its_rows(public_calls):
    plain = {c[:5] for c in public_calls if not c[5]}
    masked = [c for c in public_calls if "where" in c[5]]
    assert {c[:5] for c in masked} == plain
    for op, _, shape, axis, _, options in masked:
        w = np.asarray(options["where"])
        assert w.dtype == bool and w.shape == shape
        # a mask constant along the rows would run the unmasked kernels
        assert (w.min(axis=axis) != w.max(axis=axis)).all(), (op, shape, axis)


def test_features_widen_every_numpy_call(public_calls):
    plain = {c[:5] for c in public_calls if not c[5] and c[4] == "numpy"}
    widened = {(c[:5], np.dtype(c[5]["dtype"])) for c in public_calls if "dtype" in c[5]}
    assert widened == {(c, np.dtype(d)) for c in plain for d in _warmup.DTYPES
                       if np.dtype(d).itemsize > c[1].itemsize}


@pytest.mark.parametrize("op, sign", [("logsumexp", "return_sign"),
                                      ("logsumexp_backward", "sign")])
def test_features_weigh_and_sign_logsumexp(public_calls, op, sign):
    plain = {c[:5] for c in public_calls if not c[5] and c[0] == op}
    for name in ("b", sign):
        given = [c for c in public_calls if c[0] == op and name in c[5]]
        # each alone and the two together
        assert sorted(c[:5] for c in given) == sorted(2 * list(plain))
        for _, _, shape, axis, _, options in given:
            if name == "return_sign":
                assert options[name] is True
            else:
                want = shape if name == "b" else tuple(np.delete(shape, axis))
                assert np.asarray(options[name]).shape == want
