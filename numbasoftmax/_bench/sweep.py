"""The sweep: correctness checks, copy bandwidth, the timed cells and the latency rows.

For each device the run

1. checks every implementation against the reference on small shapes (this is also where
   numba compiles or loads its cached kernels; the time is reported as "JIT"),
2. measures the machine's copy bandwidth (CPU: numpy's copy and an all-threads copy;
   GPU: a device-to-device copy timed with CUDA events), before and after the sweep,
3. times each (operation, dtype, N, variant) cell, the implementations in round-robin
   order so that a noisy neighbour hits them alike: one warm-up call each, then the median
   of repeats, inputs rotated through enough copies that the working set between two uses
   of a buffer exceeds twice the last-level cache. A copy of the cell's first input (the
   kind fastest at the start) takes its turn in the same rounds: each cell's "% of copy"
   is against it,
4. times the per-call latency of a tiny 8x128 input (hot cache on purpose).

Every implementation comes from :mod:`numbasoftmax.registry` (ours, torch, scipy, cupyx;
the float64 reference is the oracle and is not timed).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import registry
from .._ops import OPS
from .._pool import result_pool
from .checks import CHECK_SHAPES, check_impl, feature_inputs, logits, op_inputs, out_shape
from .config import (
    DTYPES,
    FEATURES,
    LATENCY_ROUNDS,
    LATENCY_SHAPE,
    POOL_BYTES,
    SKIP,
    VARIANT_TAGS,
    Cell,
    Config,
)
from .environment import CpuLoad, environment, threading_layer
from .progress import Progress
from .records import Latency, Report, Result
from .timing import CpuDevice, GpuDevice, mapped

BASELINE = "numbasoftmax@float32"
COPY = "copy"  # the copy timed in each cell's rounds (not a Result of its own)


def _impls(device, cell):
    """Timed implementations for a cell: ours first, then the peers; not the oracle."""
    form = FEATURES[cell.feature].form if cell.feature else "plain"
    found = [i for i in registry.implementations(op=cell.op, device=device, form=form)
             if i.role != "oracle"]
    found.sort(key=lambda i: i.role != "ours")
    if cell.variant == "out":
        found = [i for i in found if i.call_out is not None]
    return found


def _caller(impl, variant):
    """fn(*inputs, out) for variant 'out', else fn(*inputs); axis -1."""
    if variant == "out":
        call_out = impl.call_out

        def fn(*args):
            return call_out(*args[:-1], axis=-1, out=args[-1])
    else:
        call = impl.call

        def fn(*args):
            return call(*args, -1)
    return fn


def _rotation(device, cell_bytes, input_bytes):
    """How many copies of the inputs to rotate through: enough that the bytes touched
    between two uses of one copy exceed twice the cache, within the memory cap."""
    want = math.ceil(2 * device.cache_bytes / max(1, cell_bytes))
    cap = max(1, device.memory_cap // max(1, input_bytes))
    return int(max(1, min(want, cap, 64)))


def _median(values):
    return float(np.median(values)) if values else None


@contextlib.contextmanager
def _gc_off():
    """No garbage collection pauses inside timed rounds."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Sweep:
    def __init__(self, config, report, progress):
        self.config = config
        self.report = report
        self.progress = progress
        self.failed = set()  # (device, impl name, Cell) whose check failed

    # -- checks (and JIT) ------------------------------------------------------------
    def check(self, device, impls_by_cell):
        for cell, impls in impls_by_cell.items():
            op, dtype, variant = cell.op, cell.dtype, cell.variant
            feature = FEATURES[cell.feature] if cell.feature else None
            for impl in impls:
                self.progress.describe(f"check {device.kind} {impl.name} {op} {dtype} "
                                       f"{cell.feature}")
                key = f"{device.kind}:{impl.name}:{op}:{dtype}:{variant}" + (
                    f":{cell.feature}" if cell.feature else "")
                t0 = time.perf_counter()
                try:
                    check_impl(impl, op, dtype, variant, CHECK_SHAPES, feature=feature)
                    self.report.checks[key] = "ok"
                except Exception as err:  # noqa: BLE001 - a peer's failure is reported
                    self.report.checks[key] = f"{type(err).__name__}: {err}"[:300]
                    self.failed.add((device.kind, impl.name, cell))
                seconds = time.perf_counter() - t0
                if impl.role == "ours" and not feature:
                    jkey = f"{device.kind}:{impl.name}:{op}:{dtype}"
                    self.report.jit[jkey] = self.report.jit.get(jkey, 0.0) + seconds
                self.progress.step()

    # -- throughput -----------------------------------------------------------------
    def sweep(self, device, elements, sizes, cells, impls_by_cell, start):
        """Time every cell; ``start``: the copy bandwidth measured before (its "gbps" is
        the fallback line for a cell whose own copy failed)."""
        copy_gbps = start["gbps"]
        self.copier = device.cell_copy(start)
        dtypes = sorted({c.dtype for c in cells}, key=DTYPES.index)
        if any(d != "float32" for d in dtypes) and "float32" not in dtypes:
            dtypes.insert(0, "float32")  # our float32 is timed beside other dtypes
        total = max(elements, max(sizes))  # at least one row of every size
        bases = {d: (logits(total, d, np.random.default_rng(11)),
                     logits(total, d, np.random.default_rng(12)) / np.asarray(3, dtype=d))
                 for d in dtypes}
        t0 = time.perf_counter()
        left = cell_count(sizes, cells)
        for n in sizes:
            m = max(1, elements // n)
            data = {d: (bx[:m * n].reshape(m, n), bdy[:m * n].reshape(m, n))
                    for d, (bx, bdy) in bases.items()}
            for cell in cells:
                if cell.sizes is not None and n not in cell.sizes:
                    continue
                self.progress.describe(f"{device.kind} {cell.op} {cell.dtype} N={n}"
                                       + VARIANT_TAGS[cell.variant]
                                       + (f" {cell.feature}" if cell.feature else ""))
                share = (self.config.sweep_seconds - (time.perf_counter() - t0)) / left
                # about half of a cell's share goes to warm-up calls and input preparation
                budget = min(self.config.cell_seconds, max(0.0, 0.5 * share))
                self._cell(device, cell, m, n, data, impls_by_cell[cell], copy_gbps, budget)
                left -= 1
                self.progress.step()
        del bases, data
        gc.collect()

    def _cell(self, device, cell, m, n, data, impls, copy_gbps, budget):
        """Time one cell at one shape. In a cell of another dtype than float32, our
        float32 kernel on the same shape is timed in the same rounds, so the elements/s
        ratio between the two does not depend on when each was measured. A feature cell
        (where=, dtype=) counts the bytes its inputs and its result take: every column
        (the unmasked call too) moves those bytes, so its ratios are ratios of time."""
        op, dtype, variant = cell.op, cell.dtype, cell.variant
        feature = FEATURES[cell.feature] if cell.feature else None
        out_dtype = feature.result_dtype if feature else dtype
        if feature:
            inputs = feature_inputs(op, feature, *data[dtype])
            nbytes = sum(a.nbytes for a in inputs) + m * n * np.dtype(out_dtype).itemsize
        else:
            nbytes = OPS[op].bytes_moved(m * n, np.dtype(dtype).itemsize)
        records = {}
        participants = []  # (key, impl, dtype)
        for impl in impls:
            rec = Result(device.kind, op, dtype, variant, m, n, impl.name, bytes=nbytes,
                         feature=cell.feature)
            records[impl.name] = rec
            self.report.results.append(rec)
            if (impl.name, dtype) in SKIP:
                rec.status = "skipped: " + SKIP[(impl.name, dtype)]
                continue
            if (device.kind, impl.name, cell) in self.failed:
                rec.status = "skipped: failed the correctness check"
                continue
            participants.append((impl.name, impl, dtype))
        if not participants:
            return
        ours = next((p for p in participants if p[1].role == "ours"), None)
        if ours is not None and dtype != "float32" and not feature:
            participants.append((BASELINE, ours[1], "float32"))
        state = {}
        for key, impl, pdtype in participants:
            try:
                numpy_inputs = inputs if feature else op_inputs(op, *data[pdtype])
                input_bytes = sum(a.nbytes for a in numpy_inputs)
                cell_bytes = nbytes if feature else OPS[op].bytes_moved(
                    m * n, np.dtype(pdtype).itemsize)
                copies = _rotation(device, cell_bytes, input_bytes)
                numpy_sets = [numpy_inputs] + [tuple(a.copy() for a in numpy_inputs)
                                               for _ in range(copies - 1)]
                sets = [tuple(impl.prepare(*s)) for s in numpy_sets]
                if variant == "out":
                    odtype = out_dtype if feature else pdtype
                    outs = [impl.prepare(mapped(out_shape(op, (m, n)), odtype))[0]
                            for _ in sets]
                    sets = [s + (o,) for s, o in zip(sets, outs, strict=True)]
                fn = _caller(impl, variant)
                device.sync()
                first = device.time_calls(fn, sets, 1)  # warm-up
                if first > 2.0:  # a first call that compiled (a driver the checks missed)
                    first = device.time_calls(fn, sets, 1)
                state[key] = (fn, sets, device.batch_for(first), [])
                if first > 2.0:  # far too slow to repeat within the budget
                    state[key][3].append(first)
            except Exception as err:  # noqa: BLE001
                if key in records:
                    records[key].status = f"error: {type(err).__name__}: {err}"[:300]
        self._add_copy(device, state, data[dtype][0])
        pool = result_pool(POOL_BYTES) if variant == "pool" else contextlib.nullcontext()
        with _gc_off(), pool:
            self._rounds(device, state, records, budget, {COPY} | {
                key for key, impl, _ in participants if impl.role in ("ours", "baseline")})
        _, copy_sets, _, copy_times = state.pop(COPY, (None, None, None, []))
        cell_copy = (2 * device.nbytes(copy_sets[0][0]) / _median(copy_times) / 1e9
                     if copy_times else None)
        for key, (_, _, _, times) in state.items():
            if key == BASELINE:
                rec = records[ours[0]]
                if times:
                    rec.f32_seconds = _median(times)
                continue
            rec = records[key]
            if rec.status != "ok" or not times:
                continue
            rec.seconds = _median(times)
            rec.seconds_min = float(min(times))
            q1, q3 = np.percentile(times, [25, 75])
            rec.spread = float((q3 - q1) / rec.seconds)
            rec.repeats = len(times)
            rec.gbps = nbytes / rec.seconds / 1e9
            rec.copy_gbps = cell_copy
            line = cell_copy or copy_gbps
            rec.pct_copy = 100 * rec.gbps / line if line else None
            rec.elements_per_s = m * n / rec.seconds
        del state

    def _add_copy(self, device, state, x):
        """A copy of x's bytes (``cell_copy``) into the cell's ``state``, warmed up, its
        inputs rotated as the implementations' are; nothing if it fails (the cell's "% of
        copy" then falls back to the start's copy)."""
        prepare, copy = self.copier
        try:
            sets = [prepare(x) for _ in range(_rotation(device, 2 * x.nbytes, x.nbytes))]
            device.sync()
            first = device.time_calls(copy, sets, 1)
            state[COPY] = (copy, sets, device.batch_for(first), [])
        except Exception as err:  # noqa: BLE001 - the cell is still timed
            note = f"the copy beside a cell failed: {type(err).__name__}: {err}"[:300]
            if note not in self.report.notes:
                self.report.notes.append(note)

    def _rounds(self, device, state, records, budget, ours):
        """Time the cell's implementations in turn, round after round, until the repeats
        or the budget run out (never fewer than min_repeats rounds). A slow peer (torch's
        rows of a few elements take 30x ours) can spend a cell's budget in min_repeats
        rounds: then ``ours`` (the keys of our calls and the copy), if their calls are
        short enough, go on together for up to the budget again, so that their ratios to
        each other rest on as many rounds as other cells' do; the peers stop."""
        cfg = self.config
        t_start = time.perf_counter()
        rounds = 0
        keep = None  # the keys still timed once the budget is spent (None: all)
        while rounds < cfg.repeats:
            now = time.perf_counter()
            if rounds >= cfg.min_repeats and now - t_start > budget:
                if keep is not None:
                    break
                timed = {key for key, (*_, times) in state.items() if times}
                # a round of ours: each call's median times its batch (GPU: several calls)
                round_s = sum(_median(times) * batch for key, (_, _, batch, times)
                              in state.items() if key in ours and key in timed)
                if timed <= ours or round_s * (cfg.repeats - rounds) > budget:
                    break
                t_start, keep = now, ours
            for key, (fn, sets, batch, times) in state.items():
                if (times and times[0] > 2.0) or (keep is not None and key not in keep):
                    continue
                # rotate: round r starts at copy r
                rot = sets[rounds % len(sets):] + sets[:rounds % len(sets)]
                try:
                    times.append(device.time_calls(fn, rot, batch))
                except Exception as err:  # noqa: BLE001
                    if key in records:
                        records[key].status = f"error: {type(err).__name__}: {err}"[:300]
            rounds += 1

    # -- latency --------------------------------------------------------------------
    def latency(self, device, ops):
        m, n = LATENCY_SHAPE
        rng = np.random.default_rng(3)
        x = logits((m, n), np.float32, rng)
        dy = rng.standard_normal((m, n), dtype=np.float32)
        for op in ops:
            self.progress.describe(f"{device.kind} latency {op} {m}x{n}")
            state = {}
            for impl in _impls(device.kind, Cell(op, "float32", "new")):
                rec = Latency(device.kind, op, "float32", (m, n), impl.name)
                self.report.latency.append(rec)
                if (device.kind, impl.name, Cell(op, "float32", "new")) in self.failed:
                    rec.status = "skipped: failed the correctness check"
                    continue
                try:
                    args = impl.prepare(*op_inputs(op, x, dy))
                    fn = _caller(impl, "new")
                    first = device.host_time(fn, args, 3)
                    inner = int(min(2000, max(5, 3e-3 / max(first, 1e-7))))
                    state[impl.name] = (fn, args, inner, [], rec)
                except Exception as err:  # noqa: BLE001
                    rec.status = f"error: {type(err).__name__}: {err}"[:300]
            with _gc_off():
                for _ in range(LATENCY_ROUNDS):
                    for fn, args, inner, samples, _rec in state.values():
                        samples += device.latency_samples(fn, args, inner)
            for *_, samples, rec in state.values():
                rec.us_per_call = _median(samples) * 1e6
                rec.us_p90 = float(np.percentile(samples, 90)) * 1e6
                rec.samples = len(samples)
            self.progress.step()


def cell_count(sizes, cells):
    """Timed (cell, N) pairs of a device's sweep."""
    return sum(len(sizes) if c.sizes is None else len([n for n in sizes if n in c.sizes])
               for c in cells)


def _devices(config):
    out = []
    notes = []
    if "cpu" in config.devices:
        out.append(CpuDevice())
    if "gpu" in config.devices:
        if GpuDevice.available():
            try:
                out.append(GpuDevice())
            except Exception as err:  # noqa: BLE001
                notes.append(f"GPU left out: {type(err).__name__}: {err}")
        else:
            notes.append("GPU left out: no CUDA device with cupy or torch found")
            if config.device_required:
                raise RuntimeError("--device gpu: no usable GPU (needs a CUDA device and cupy "
                                   "or a CUDA build of torch)")
    if "gpu" in config.devices and any(d.kind == "gpu" for d in out):
        if not registry.implementations(device="gpu", name="numbasoftmax"):
            notes.append("numbasoftmax's GPU path is not available here (needs "
                         "numbasoftmax._cuda, numba-cuda and cupy): GPU tables show peers only")
    return out, notes


def _set_threads(n):
    """numba's and torch's thread counts, the same for both (like for like): ``n``, or
    numba's pool size where that is smaller. Returns a note when it is."""
    import numba

    k = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(k)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(k)
    if k < n:
        return (f"--threads {n}: numba's thread pool has {k} threads (NUMBA_NUM_THREADS), so "
                f"both libraries ran on {k}")
    return None


# Host memory a CPU sweep holds at once, in arrays of M·N elements of its widest dtype,
# besides its two input bases per dtype: every participant's rotated inputs, its out= and
# its result, the copy's buffers (measured: 8.1 GB at 2^26 elements, float32 and float64)
HELD_ARRAYS = 12


def available_memory():
    """Bytes of host memory available to this process, or None: Linux's MemAvailable, less
    where the process's cgroup (a container's memory limit) leaves less."""
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
    except OSError:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    try:  # cgroup v2: the limit ("max" when none) and what the group uses now
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit != "max":
            left = max(0, int(limit) - used)
            found = left if found is None else min(found, left)
    except (OSError, ValueError):
        pass
    return found


def check_memory(device, elements, sizes, cells, available):
    """A RuntimeError naming --elements when the sweep's host arrays would not fit in
    ``available`` bytes (a run that allocates past it is killed by the system, or swaps)."""
    total = max(elements, max(sizes))
    items = [np.dtype(d).itemsize for d in {c.dtype for c in cells} | {"float32"}]
    need = 2 * total * sum(items)  # the input bases
    if device == "cpu":
        need += HELD_ARRAYS * total * max(items)
    if available is not None and need > available:
        raise RuntimeError(f"--elements {elements}: the {device} sweep holds about "
                           f"{need / 2**30:.1f} GiB of host memory at once, and "
                           f"{available / 2**30:.1f} GiB is available; choose a smaller "
                           "--elements")


def run(config: Config) -> Report:
    """Run the sweep described by ``config``; returns the :class:`Report` (not written)."""
    t_wall = time.perf_counter()
    load = CpuLoad()
    capped = _set_threads(config.threads) if config.threads else None
    devices, notes = _devices(config)
    if capped:
        notes.append(capped)
    gpu = next((d for d in devices if d.kind == "gpu"), None)
    cfg_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    report = Report(config=cfg_dict, env=environment(gpu), notes=notes)

    plans = {}
    total = 0
    for device in devices:
        elements, sizes, cells = config.plan_for(device.kind)
        check_memory(device.kind, elements, sizes, cells, available_memory())
        impls_by_cell = {c: _impls(device.kind, c) for c in cells}
        lat_ops = [op for op in config.ops if config.latency]
        n_checks = sum(len(v) for v in impls_by_cell.values())
        plans[device.kind] = (elements, sizes, cells, impls_by_cell, lat_ops)
        report.plans[device.kind] = {"elements": elements, "sizes": list(sizes),
                                     "cells": [c._asdict() for c in cells],
                                     "latency_shape": list(LATENCY_SHAPE) if lat_ops else None}
        total += n_checks + 2 + cell_count(sizes, cells) + len(lat_ops)
    for (name, dtype), why in SKIP.items():
        if any(any(c.dtype == dtype for c in p[2]) for p in plans.values()):
            report.notes.append(f"{name} {dtype}: {why}")

    progress = Progress(total, config.progress)
    sweep = _Sweep(config, report, progress)
    try:
        for device in devices:
            elements, sizes, cells, impls_by_cell, lat_ops = plans[device.kind]
            sweep.check(device, impls_by_cell)
            if device.kind == "cpu":
                report.env["numba_threading_layer"] = threading_layer()
            progress.describe(f"{device.kind} copy bandwidth")
            # larger than the cache (4x), else the copy runs from cache and flatters it
            copy_bytes = min(max(elements * 4, 4 * device.cache_bytes), device.memory_cap // 2)
            start = device.copy_bandwidth(copy_bytes, 9)
            progress.step()
            sweep.sweep(device, elements, sizes, cells, impls_by_cell, start)
            if lat_ops:
                sweep.latency(device, lat_ops)
            progress.describe(f"{device.kind} copy bandwidth")
            end = device.copy_bandwidth(copy_bytes, 9)
            progress.step()
            report.copy[device.kind] = {"start": start, "end": end, "gbps": start["gbps"]}
        if config.startup and not config.quick and any(d.kind == "cpu" for d in devices):
            from .startup import measure

            progress.describe("start-up (fresh processes, empty numba cache)")
            report.startup = measure(config.ops)
    finally:
        progress.close()
    if "torch" in sys.modules:
        report.env["torch_threads"] = sys.modules["torch"].get_num_threads()
    report.wall_seconds = time.perf_counter() - t_wall
    report.load = load.summary()
    return report


