"""The benchmark sweep behind ``python -m numbasoftmax bench``.

Every implementation comes from :mod:`numbasoftmax.registry` (ours, torch, scipy, cupyx;
the float64 reference is the correctness oracle and is not timed). For each device the run

1. checks every implementation against the reference on small shapes (this is also where
   numba compiles or loads its cached kernels; the time is reported as "JIT"),
2. measures the machine's copy bandwidth (CPU: numpy's copy and an all-threads copy;
   GPU: a device-to-device copy timed with CUDA events), before and after the sweep,
3. times each (operation, dtype, N) cell, the implementations in round-robin order so
   that a noisy neighbour hits them alike: one warm-up call each, then the median of
   repeats, inputs rotated through enough copies that the working set between two uses of
   a buffer exceeds twice the last-level cache,
4. times the per-call latency of a tiny 8×128 input (hot cache on purpose), and
5. writes ``report.md``, ``results.json`` and ``bench.png`` into the output folder.

Bandwidth counts the bytes an ideal kernel moves: forward = read X + write Y, backward =
read Y, dY + write dX. Ratios ("× torch") are our GB/s over the peer's (= its time over
ours; > 1 means numbasoftmax is faster).
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import registry
from ._pool import set_result_pool_limit

FORWARD = ("softmax", "log_softmax")
OP_GROUPS = {
    "fwd": ("softmax",),
    "bwd": ("softmax_backward",),
    "log": ("log_softmax", "log_softmax_backward"),
    "all": registry.OPS,
}
OP_TITLES = {
    "softmax": "softmax forward",
    "log_softmax": "log_softmax forward",
    "softmax_backward": "softmax backward",
    "log_softmax_backward": "log_softmax backward",
}
DTYPES = ("float32", "float16", "float64")
VARIANT_TITLES = {"new": "result allocated per call",
                  "nopool": "result allocated per call, result pool off",
                  "out": "preallocated out="}
VARIANT_TAGS = {"new": "", "nopool": " pool off", "out": " out="}

# Sweeps. CPU: issue 2's sizes; GPU: issue 3's.
CPU_ELEMENTS = 1 << 24
CPU_SIZES = (32, 128, 1024, 4096, 16384, 262144)
GPU_ELEMENTS = 1 << 26
GPU_SIZES = (32, 128, 512, 1000, 1024, 2048, 4096, 8192, 12288, 16384, 32768, 65536, 262144)
QUICK_CPU_ELEMENTS = 1 << 22
QUICK_CPU_SIZES = (128, 4096, 65536)
QUICK_GPU_ELEMENTS = 1 << 24
QUICK_GPU_SIZES = (128, 4096, 65536)
LATENCY_SHAPE = (8, 128)
LATENCY_ROUNDS = 9  # rounds of ~3 ms per implementation, in turn
BASELINE = "numbasoftmax@float32"
BUSY_WARNING = 15.0  # % of the machine used by other processes that makes a run unreliable
NOISY = 0.25  # a cell whose interquartile range exceeds this fraction of its median gets "~"

# (implementation, dtype) pairs left out of the timed sweep, with the reason shown in the
# report. scipy computes float16 through float64 temporaries: ~0.02 Gelem/s, 0.8 s per
# 2^24-element call, which alone would take most of the time budget.
SKIP = {("scipy", "float16"): "scipy float16 is ~50x slower than float32 (float64 temporaries); "
                              "left out of the sweep to keep it within its time budget"}

# Targets from the issues, checked against the measured table (variant "new" = the plain
# call that allocates its result, as users call it).
TARGETS = (
    # device, op, dtype, kind, threshold, text
    ("cpu", "softmax", "float32", "vs:torch", 2.5, "softmax forward ≥ 2.5× torch at every N"),
    ("cpu", "softmax_backward", "float32", "vs:torch", 3.0,
     "softmax backward ≥ 3× torch at every N"),
    ("cpu", "log_softmax", "float32", "vs:torch", 2.0, "log_softmax forward ≥ 2× torch at every N"),
    ("cpu", "softmax", "float32", "pct", 60.0, "(stretch) softmax forward ≥ 60 % of copy"),
    ("cpu", "softmax", "float32", "latency:torch", 1 / 1.5,
     "8×128 softmax call within 1.5× of torch's time"),
    ("cpu", "softmax", "float16", "f16", 0.6,
     "float16 forward ≥ 0.6× our float32 (elements/s) at every N"),
    ("gpu", "softmax", "float32", "pct", 90.0, "softmax forward ≥ 90 % of copy at every N"),
    ("gpu", "softmax_backward", "float32", "pct", 85.0, "softmax backward ≥ 85 % of copy"),
    ("gpu", "log_softmax", "float32", "pct", 90.0, "log_softmax forward ≥ 90 % of copy"),
    ("gpu", "softmax", "float16", "pct", 80.0, "float16 forward ≥ 80 % of copy"),
    ("gpu", "softmax_backward", "float16", "pct", 80.0, "float16 backward ≥ 80 % of copy"),
    ("gpu", "softmax", "float32", "vs:torch", 1.0, "softmax forward never slower than torch"),
    ("gpu", "softmax_backward", "float32", "vs:torch", 1.0,
     "softmax backward never slower than torch"),
)


# ---------------------------------------------------------------------------------------
# configuration

@dataclass
class Config:
    devices: tuple = ("cpu", "gpu")  # wanted; "gpu" is dropped when none is available
    ops: tuple = registry.OPS
    dtypes: tuple | None = None  # None: float32 everywhere plus float16 where the issues ask
    sizes: tuple | None = None  # row lengths N; None: the device's default sweep
    elements: int | None = None  # M·N; None: the device's default
    quick: bool = False
    prealloc: str = "auto"  # "auto", "none" or "all": also time calls with out=
    # "auto", "none" or "all": also time plain calls with numbasoftmax's result pool off
    pool_off: str = "auto"
    latency: bool = True
    repeats: int = 11  # at most this many timed rounds per cell
    min_repeats: int = 3
    # time budget per cell after warm-up (all implementations): 0.5 s gives ~10 rounds of
    # the 2^24-element CPU cells; at 0.25 s a backward cell got 4, too few for a stable
    # median on a noisy 2-core VM
    cell_seconds: float = 0.5
    # budget for all throughput cells of a device: when a busy machine makes calls slow, a
    # cell gets at most its share of what is left (never fewer than min_repeats rounds)
    sweep_seconds: float = 150.0
    out: Path = Path("numbasoftmax-bench")
    progress: bool = True
    plot: bool = True
    device_required: bool = False  # --device gpu: fail if no GPU
    threads: int | None = None  # set numba's and torch's thread counts (None: leave them)

    def plan_for(self, device):
        """(elements, sizes, [(op, dtype, variant)]) for one device."""
        if device == "cpu":
            elements = self.elements or (QUICK_CPU_ELEMENTS if self.quick else CPU_ELEMENTS)
            sizes = self.sizes or (QUICK_CPU_SIZES if self.quick else CPU_SIZES)
        else:
            elements = self.elements or (QUICK_GPU_ELEMENTS if self.quick else GPU_ELEMENTS)
            sizes = self.sizes or (QUICK_GPU_SIZES if self.quick else GPU_SIZES)
        cells = []
        for op in self.ops:
            if self.dtypes is not None:
                dtypes = self.dtypes
            elif self.quick:
                dtypes = ("float32",)
            else:
                # issue 2: float16 forward vs our float32; issue 3: float16 fwd and bwd
                f16 = {"cpu": ("softmax",), "gpu": ("softmax", "softmax_backward")}[device]
                dtypes = ("float32", "float16") if op in f16 else ("float32",)
            for dtype in dtypes:
                cells.append((op, dtype, "new"))
                if self.prealloc == "all" or (
                        self.prealloc == "auto" and not self.quick and device == "cpu"
                        and op == "softmax" and dtype == "float32"):
                    cells.append((op, dtype, "out"))
                if device == "cpu" and (self.pool_off == "all" or (
                        self.pool_off == "auto" and not self.quick and dtype == "float32")):
                    cells.append((op, dtype, "nopool"))
        return elements, tuple(sizes), cells


def parse_sizes(text):
    """'32,128,1k,4K,2^18' -> (32, 128, 1024, 4096, 262144)."""
    sizes = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low = part.lower()
        if "^" in low:
            base, exp = low.split("^")
            value = int(base) ** int(exp)
        elif low.endswith("k"):
            value = int(float(low[:-1]) * 1024)
        elif low.endswith("m"):
            value = int(float(low[:-1]) * 1024 * 1024)
        else:
            value = int(low)
        if value < 1:
            raise ValueError(f"sizes must be positive; got {part!r}")
        sizes.append(value)
    if not sizes:
        raise ValueError("no sizes given")
    return tuple(sizes)


def nbytes_moved(op, m, n, itemsize):
    """Bytes an ideal kernel moves: forward X + Y, backward Y + dY + dX."""
    return (2 if op in FORWARD else 3) * m * n * itemsize


# ---------------------------------------------------------------------------------------
# environment

def _version(dist, module=None):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module and module in sys.modules:
        return getattr(sys.modules[module], "__version__", None)
    return None


def _cupy_version():
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "cupy" or name.startswith("cupy-"):
            return f"{dist.version} ({name})"
    return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _l3_bytes():
    """Size of the largest CPU cache in bytes (sysfs), or 32 MiB if unknown."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in base.glob("index*"):
            text = (index / "size").read_text().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or (32 << 20)


def _physical_cores():
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        return len(cores) or None
    except OSError:
        return None


def environment(gpu=None):
    import numba

    import numbasoftmax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env = {
        "cpu": _cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": _physical_cores(),
        "cpu_usable": usable,
        "cache_bytes": _l3_bytes(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": None,  # filled after the first parallel call
        "gpu": gpu.name if gpu else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "numbasoftmax": numbasoftmax.__version__,
            "numba": numba.__version__,
            "numba-cuda": _version("numba-cuda"),
            "numpy": np.__version__,
            "torch": _version("torch"),
            "cupy": _cupy_version(),
            "scipy": _version("scipy"),
        },
    }
    if "torch" in sys.modules:
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    return env


def _threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return None


class CpuLoad:
    """How much CPU other processes took while we ran (from /proc/stat and os.times()):
    on a shared 2-core machine this is the first thing to read before trusting a number."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.busy0 = self._busy()
        self.self0 = self._self()
        try:
            self.loadavg0 = float(Path("/proc/loadavg").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.loadavg0 = None

    @staticmethod
    def _busy():
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
            return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"), \
                steal / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _self():
        t = os.times()
        return t.user + t.system

    def summary(self):
        wall = time.perf_counter() - self.t0
        cpus = os.cpu_count() or 1
        out = {"wall_seconds": wall, "cpus": cpus, "loadavg_start": self.loadavg0}
        busy1 = self._busy()
        if self.busy0 is not None and busy1 is not None and wall > 0:
            total = busy1[0] - self.busy0[0]
            mine = self._self() - self.self0
            out["self_cpu_seconds"] = mine
            out["others_cpu_seconds"] = max(0.0, total - mine)
            out["others_pct_of_machine"] = 100 * max(0.0, total - mine) / (wall * cpus)
            out["steal_pct_of_machine"] = 100 * (busy1[1] - self.busy0[1]) / (wall * cpus)
        return out


# ---------------------------------------------------------------------------------------
# devices: clocks and copy bandwidth

_copy_kernel = None


def _threaded_copy():
    """An all-threads copy (numba prange): the CPU roofline a parallel kernel can reach."""
    global _copy_kernel
    if _copy_kernel is None:
        from numba import njit, prange

        @njit(parallel=True, cache=True, nogil=True)
        def copy(src, dst, parts):
            n = src.shape[0]
            step = (n + parts - 1) // parts
            for t in prange(parts):
                lo = min(n, t * step)
                hi = min(n, lo + step)
                dst[lo:hi] = src[lo:hi]

        _copy_kernel = copy
    return _copy_kernel


class CpuDevice:
    name = "cpu"
    kind = "cpu"

    def __init__(self):
        self.cache_bytes = _l3_bytes()
        self.memory_cap = 1 << 30  # bytes of rotated input copies per cell, at most

    def describe(self):
        return _cpu_model()

    def sync(self):
        pass

    def time_calls(self, fn, args, count):
        """Seconds per call of ``count`` calls on ``args`` (a list, rotated)."""
        t0 = time.perf_counter()
        for i in range(count):
            fn(*args[i % len(args)])
        return (time.perf_counter() - t0) / count

    def batch_for(self, first_seconds):
        return 1  # CPU calls at sweep sizes take milliseconds: time each call

    def host_time(self, fn, args, count):
        t0 = time.perf_counter()
        for _ in range(count):
            fn(*args)
        return (time.perf_counter() - t0) / count

    def latency_samples(self, fn, args, count):
        """Each call timed on its own: the median then ignores the calls that a busy
        machine stalls (a thread pool waiting a scheduler tick for its workers)."""
        clock = time.perf_counter
        out = []
        for _ in range(count):
            t0 = clock()
            fn(*args)
            out.append(clock() - t0)
        return out

    def copy_bandwidth(self, nbytes, repeats):
        """{'numpy': GB/s, 'threaded': GB/s, 'gbps': roofline} for an nbytes source."""
        import numba

        n = max(1, nbytes // 8)
        src = np.random.default_rng(1).random(n)
        dst = np.empty_like(src)
        threads = numba.get_num_threads()
        kernel = _threaded_copy()
        kernel(src[:64], dst[:64], threads)  # compile (or load) outside the clock
        out = {}
        for key, fn in (("numpy", lambda: np.copyto(dst, src)),
                        ("threaded", lambda: kernel(src, dst, threads))):
            fn()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[key] = 2 * src.nbytes / float(np.median(times)) / 1e9
        out["gbps"] = max(out["numpy"], out["threaded"])
        out["threads"] = threads
        out["bytes"] = 2 * src.nbytes
        return out


class GpuDevice:
    """CUDA timing through cupy's events when cupy is there, else torch's.

    Both libraries' default streams are the legacy default stream, so an event recorded by
    either orders against the kernels of both (and numbasoftmax launches on cupy's current
    stream)."""

    kind = "gpu"

    def __init__(self):
        self.memory_cap = 4 << 30
        if importlib.util.find_spec("cupy") is not None:
            import cupy

            self.backend = "cupy"
            self._cp = cupy
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props["name"]
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self.cache_bytes = int(props.get("l2CacheSize", 0)) or (64 << 20)
        else:
            import torch

            self.backend = "torch"
            self._torch = torch
            self.name = torch.cuda.get_device_name()
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            self.cache_bytes = int(getattr(props, "L2_cache_size", 0)) or (64 << 20)

    @staticmethod
    def available():
        return any(i.available() for i in registry.implementations(device="gpu",
                                                                   available_only=False))

    def describe(self):
        return self.name

    def sync(self):
        if self.backend == "cupy":
            self._cp.cuda.Device().synchronize()
        else:
            self._torch.cuda.synchronize()

    def _events(self):
        if self.backend == "cupy":
            return self._cp.cuda.Event(), self._cp.cuda.Event()
        return (self._torch.cuda.Event(enable_timing=True),
                self._torch.cuda.Event(enable_timing=True))

    def _elapsed(self, start, end):
        if self.backend == "cupy":
            end.synchronize()
            return self._cp.cuda.get_elapsed_time(start, end) / 1e3
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def time_calls(self, fn, args, count):
        """Device seconds per call: one untimed call keeps the GPU busy while the start
        event and the timed calls are queued, so launch overhead is hidden when a kernel
        outlasts it; then ``count`` back-to-back calls between two CUDA events."""
        start, end = self._events()
        fn(*args[-1])
        start.record()
        for i in range(count):
            fn(*args[i % len(args)])
        end.record()
        return self._elapsed(start, end) / count

    def batch_for(self, first_seconds):
        return int(min(50, max(1, math.ceil(2e-3 / max(first_seconds, 1e-6)))))

    def host_time(self, fn, args, count):
        """Host seconds per call of back-to-back calls, the device drained at both ends."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(count):
            fn(*args)
        self.sync()
        return (time.perf_counter() - t0) / count

    def latency_samples(self, fn, args, count):
        """One sample: host seconds per call over ``count`` back-to-back calls (launches
        are asynchronous, so single calls would time only the launch)."""
        return [self.host_time(fn, args, count)]

    def copy_bandwidth(self, nbytes, repeats):
        n = max(1, nbytes // 4)
        if self.backend == "cupy":
            cp = self._cp
            src = cp.arange(n, dtype=cp.float32)
            dst = cp.empty_like(src)

            def fn():
                cp.copyto(dst, src)
        else:
            torch = self._torch
            src = torch.arange(n, dtype=torch.float32, device="cuda")
            dst = torch.empty_like(src)

            def fn():
                dst.copy_(src)
        fn()
        self.sync()
        times = [self.time_calls(lambda: fn(), [()], 10) for _ in range(repeats)]
        gbps = 2 * n * 4 / float(np.median(times)) / 1e9
        return {"d2d": gbps, "gbps": gbps, "bytes": 2 * n * 4, "backend": self.backend}


# ---------------------------------------------------------------------------------------
# data

_TOL = {"float16": (2e-3, 2e-2), "float32": (1e-6, 2e-4), "float64": (1e-12, 1e-9)}


def _base(elements, dtype, seed):
    """Flat logits / gradients, generated once per dtype and reshaped for every N."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(elements, dtype=np.float32)
    data *= 3
    return data if dtype == "float32" else data.astype(dtype)


def _inputs(op, x, dy):
    """numpy inputs of ``op`` for logits ``x`` and upstream gradient ``dy``."""
    import numbasoftmax

    if op in FORWARD:
        return (x,)
    if op == "softmax_backward":
        return (numbasoftmax.softmax(x), dy)
    return (numbasoftmax.log_softmax(x), dy)


def _check(impl, op, dtype, variant, shapes, seed=7):
    """Compare ``impl`` with the float64 reference; raise AssertionError on a mismatch.
    With variant 'out' the output buffer is poisoned with NaN first."""
    from . import reference

    atol, rtol = _TOL[dtype]
    rng = np.random.default_rng(seed)
    for m, n in shapes:
        x = (rng.standard_normal((m, n)) * 3).astype(dtype)
        dy = rng.standard_normal((m, n)).astype(dtype)
        if op in FORWARD:
            args = (x,)
        else:
            fwd = "softmax" if op == "softmax_backward" else "log_softmax"
            args = (getattr(reference, fwd)(x).astype(dtype), dy)
        want = getattr(reference, op)(*args)
        native = impl.prepare(*args)
        if variant == "out":
            out = impl.prepare(np.full((m, n), np.nan, dtype=dtype))[0]
            got = impl.to_numpy(impl.call_out(*native, axis=-1, out=out))
        else:
            got = impl.to_numpy(impl.call(*native, -1))
        impl.sync()
        got = np.asarray(got)
        if got.shape != (m, n) or got.dtype != np.dtype(dtype):
            raise AssertionError(f"{impl.key} {op}: got {got.shape} {got.dtype}, "
                                 f"expected {(m, n)} {dtype}")
        if op == "log_softmax_backward" or op == "softmax_backward":
            scale = np.abs(want).max() or 1.0  # gradients: absolute error relative to scale
            ok = np.allclose(got, want, atol=atol * 10 * scale + atol, rtol=rtol)
        else:
            ok = np.allclose(got, want, atol=atol, rtol=rtol)
        if not ok:
            err = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
            raise AssertionError(f"{impl.key} {op} {dtype} {m}x{n}: max abs error {err:.3g}")


# ---------------------------------------------------------------------------------------
# progress

class _Progress:
    """tqdm when installed, else a one-line bar on stderr."""

    def __init__(self, total, enabled):
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self._bar = None
        self._t0 = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True,
                         leave=False, mininterval=0.25,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def describe(self, text):
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=True)
        elif self.enabled:
            self._draw(text)

    def step(self, n=1):
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            self._draw("")

    def _draw(self, text):
        width = 30
        filled = int(width * min(self.done, self.total) / self.total)
        elapsed = time.perf_counter() - self._t0
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{elapsed:5.1f}s {text[:40]:<40}")
        sys.stderr.flush()

    def close(self):
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------
# the sweep

@dataclass
class Result:
    device: str
    op: str
    dtype: str
    # "new": the result is allocated by the call; "out": preallocated out=; "nopool": as
    # "new" with numbasoftmax's result pool off (each result is fresh memory)
    variant: str
    m: int
    n: int
    impl: str
    status: str = "ok"  # "ok", "error: ...", "skipped: ..."
    seconds: float | None = None  # median per call
    seconds_min: float | None = None
    spread: float | None = None  # interquartile range / median of the timed calls
    repeats: int = 0
    bytes: int = 0
    gbps: float | None = None
    pct_copy: float | None = None
    elements_per_s: float | None = None
    # dtypes other than float32, ours only: our float32 kernel's median on the same shape,
    # timed in the same rounds (for the elements/s ratio)
    f32_seconds: float | None = None


@dataclass
class Latency:
    device: str
    op: str
    dtype: str
    shape: tuple
    impl: str
    status: str = "ok"
    us_per_call: float | None = None  # median
    us_p90: float | None = None
    samples: int = 0


@dataclass
class Report:
    config: dict
    env: dict
    copy: dict = field(default_factory=dict)  # device -> {"start":..., "end":..., "gbps":...}
    jit: dict = field(default_factory=dict)  # "device:impl:op:dtype" -> seconds of first calls
    checks: dict = field(default_factory=dict)  # "device:impl:op:dtype:variant" -> "ok"/error
    results: list = field(default_factory=list)
    latency: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    plans: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    targets: list = field(default_factory=list)
    load: dict = field(default_factory=dict)

    def to_json(self):
        return {
            "schema": 1,
            "config": self.config,
            "environment": self.env,
            "copy_bandwidth": self.copy,
            "plans": self.plans,
            "jit_seconds": self.jit,
            "checks": self.checks,
            "results": [asdict(r) for r in self.results],
            "latency": [asdict(r) for r in self.latency],
            "targets": self.targets,
            "notes": self.notes,
            "load": self.load,
            "wall_seconds": self.wall_seconds,
        }


def _impls(device, op, dtype, variant):
    """Timed implementations for a cell: ours first, then the peers; not the oracle."""
    found = [i for i in registry.implementations(op=op, device=device) if i.role != "oracle"]
    found.sort(key=lambda i: i.role != "ours")
    if variant == "out":
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


class _Sweep:
    def __init__(self, config, report, progress):
        self.config = config
        self.report = report
        self.progress = progress
        self.failed = set()  # (device, impl name, op, dtype, variant) whose check failed

    # -- checks (and JIT) ------------------------------------------------------------
    def check(self, device, impls_by_cell):
        for (op, dtype, variant), impls in impls_by_cell.items():
            for impl in impls:
                self.progress.describe(f"check {device.kind} {impl.name} {op} {dtype}")
                key = f"{device.kind}:{impl.name}:{op}:{dtype}:{variant}"
                shapes = [LATENCY_SHAPE, (16, 4096), (2, 40000)]
                t0 = time.perf_counter()
                try:
                    _check(impl, op, dtype, variant, shapes)
                    self.report.checks[key] = "ok"
                except Exception as err:  # noqa: BLE001 - a peer's failure is reported
                    self.report.checks[key] = f"{type(err).__name__}: {err}"[:300]
                    self.failed.add((device.kind, impl.name, op, dtype, variant))
                seconds = time.perf_counter() - t0
                if impl.role == "ours":
                    jkey = f"{device.kind}:{impl.name}:{op}:{dtype}"
                    self.report.jit[jkey] = self.report.jit.get(jkey, 0.0) + seconds
                self.progress.step()

    # -- throughput -----------------------------------------------------------------
    def sweep(self, device, elements, sizes, cells, impls_by_cell, copy_gbps):
        dtypes = sorted({d for _, d, _ in cells}, key=DTYPES.index)
        if any(d != "float32" for d in dtypes) and "float32" not in dtypes:
            dtypes.insert(0, "float32")  # our float32 is timed beside other dtypes
        bases = {d: (_base(elements, d, 11), _base(elements, d, 12) / np.asarray(3, dtype=d))
                 for d in dtypes}
        t0 = time.perf_counter()
        left = len(sizes) * len(cells)
        for n in sizes:
            m = max(1, elements // n)
            data = {d: (bx[:m * n].reshape(m, n), bdy[:m * n].reshape(m, n))
                    for d, (bx, bdy) in bases.items()}
            for op, dtype, variant in cells:
                impls = impls_by_cell[(op, dtype, variant)]
                self.progress.describe(f"{device.kind} {op} {dtype} N={n}"
                                       + VARIANT_TAGS[variant])
                share = (self.config.sweep_seconds - (time.perf_counter() - t0)) / left
                # about half of a cell's share goes to warm-up calls and input preparation
                budget = min(self.config.cell_seconds, max(0.0, 0.5 * share))
                self._cell(device, op, dtype, variant, m, n, data, impls, copy_gbps, budget)
                left -= 1
                self.progress.step()
        del bases, data
        gc.collect()

    def _cell(self, device, op, dtype, variant, m, n, data, impls, copy_gbps, budget):
        """Time one (op, dtype, variant, shape) cell. In a cell of another dtype than
        float32, our float32 kernel on the same shape is timed in the same rounds, so the
        elements/s ratio between the two does not depend on when each was measured."""
        cfg = self.config
        nbytes = nbytes_moved(op, m, n, np.dtype(dtype).itemsize)
        records = {}
        participants = []  # (key, impl, dtype)
        for impl in impls:
            rec = Result(device.kind, op, dtype, variant, m, n, impl.name, bytes=nbytes)
            records[impl.name] = rec
            self.report.results.append(rec)
            if (impl.name, dtype) in SKIP:
                rec.status = "skipped: " + SKIP[(impl.name, dtype)]
                continue
            if (device.kind, impl.name, op, dtype, variant) in self.failed:
                rec.status = "skipped: failed the correctness check"
                continue
            participants.append((impl.name, impl, dtype))
        if not participants:
            return
        ours = next((p for p in participants if p[1].role == "ours"), None)
        if ours is not None and dtype != "float32":
            participants.append((BASELINE, ours[1], "float32"))
        state = {}
        for key, impl, pdtype in participants:
            try:
                numpy_inputs = _inputs(op, *data[pdtype])
                input_bytes = sum(a.nbytes for a in numpy_inputs)
                copies = _rotation(device, nbytes_moved(op, m, n, np.dtype(pdtype).itemsize),
                                   input_bytes)
                numpy_sets = [numpy_inputs] + [tuple(a.copy() for a in numpy_inputs)
                                               for _ in range(copies - 1)]
                sets = [tuple(impl.prepare(*s)) for s in numpy_sets]
                if variant == "out":
                    outs = [impl.prepare(np.empty((m, n), pdtype))[0] for _ in sets]
                    sets = [s + (o,) for s, o in zip(sets, outs, strict=True)]
                fn = _caller(impl, variant)
                device.sync()
                first = device.time_calls(fn, sets, 1)  # warm-up
                state[key] = (fn, sets, device.batch_for(first), [])
                if first > 2.0:  # far too slow to repeat within the budget
                    state[key][3].append(first)
            except Exception as err:  # noqa: BLE001
                if key in records:
                    records[key].status = f"error: {type(err).__name__}: {err}"[:300]
        gc_was = gc.isenabled()
        gc.disable()
        pool_limit = set_result_pool_limit(0) if variant == "nopool" else None
        try:
            t_start = time.perf_counter()
            rounds = 0
            while rounds < cfg.repeats:
                if rounds >= cfg.min_repeats and time.perf_counter() - t_start > budget:
                    break
                for key, (fn, sets, batch, times) in state.items():
                    if times and times[0] > 2.0:
                        continue
                    # rotate: round r starts at copy r
                    rot = sets[rounds % len(sets):] + sets[:rounds % len(sets)]
                    try:
                        times.append(device.time_calls(fn, rot, batch))
                    except Exception as err:  # noqa: BLE001
                        if key in records:
                            records[key].status = f"error: {type(err).__name__}: {err}"[:300]
                rounds += 1
        finally:
            if gc_was:
                gc.enable()
            if pool_limit is not None:
                set_result_pool_limit(pool_limit)
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
            rec.pct_copy = 100 * rec.gbps / copy_gbps if copy_gbps else None
            rec.elements_per_s = m * n / rec.seconds
        del state

    # -- latency --------------------------------------------------------------------
    def latency(self, device, ops):
        m, n = LATENCY_SHAPE
        rng = np.random.default_rng(3)
        x = (rng.standard_normal((m, n)) * 3).astype(np.float32)
        dy = rng.standard_normal((m, n)).astype(np.float32)
        for op in ops:
            self.progress.describe(f"{device.kind} latency {op} {m}x{n}")
            state = {}
            for impl in _impls(device.kind, op, "float32", "new"):
                rec = Latency(device.kind, op, "float32", (m, n), impl.name)
                self.report.latency.append(rec)
                if (device.kind, impl.name, op, "float32", "new") in self.failed:
                    rec.status = "skipped: failed the correctness check"
                    continue
                try:
                    args = impl.prepare(*_inputs(op, x, dy))
                    fn = _caller(impl, "new")
                    first = device.host_time(fn, args, 3)
                    inner = int(min(2000, max(5, 3e-3 / max(first, 1e-7))))
                    state[impl.name] = (fn, args, inner, [], rec)
                except Exception as err:  # noqa: BLE001
                    rec.status = f"error: {type(err).__name__}: {err}"[:300]
            gc_was = gc.isenabled()
            gc.disable()
            try:
                for _ in range(LATENCY_ROUNDS):
                    for fn, args, inner, samples, _rec in state.values():
                        samples += device.latency_samples(fn, args, inner)
            finally:
                if gc_was:
                    gc.enable()
            for *_, samples, rec in state.values():
                rec.us_per_call = _median(samples) * 1e6
                rec.us_p90 = float(np.percentile(samples, 90)) * 1e6
                rec.samples = len(samples)
            self.progress.step()


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
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(n)


def run(config: Config) -> Report:
    """Run the sweep described by ``config``; returns the :class:`Report` (not written)."""
    t_wall = time.perf_counter()
    load = CpuLoad()
    if config.threads:
        _set_threads(config.threads)
    devices, notes = _devices(config)
    gpu = next((d for d in devices if d.kind == "gpu"), None)
    cfg_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    report = Report(config=cfg_dict, env=environment(gpu), notes=notes)

    plans = {}
    total = 0
    for device in devices:
        elements, sizes, cells = config.plan_for(device.kind)
        impls_by_cell = {c: _impls(device.kind, *c) for c in cells}
        lat_ops = [op for op in config.ops if config.latency]
        n_checks = sum(len(v) for v in impls_by_cell.values())
        plans[device.kind] = (elements, sizes, cells, impls_by_cell, lat_ops)
        report.plans[device.kind] = {"elements": elements, "sizes": list(sizes),
                                     "cells": [list(c) for c in cells],
                                     "latency_shape": list(LATENCY_SHAPE) if lat_ops else None}
        total += n_checks + 2 + len(sizes) * len(cells) + len(lat_ops)
    for (name, dtype), why in SKIP.items():
        if any(any(d == dtype for _, d, _ in p[2]) for p in plans.values()):
            report.notes.append(f"{name} {dtype}: {why}")

    progress = _Progress(total, config.progress)
    sweep = _Sweep(config, report, progress)
    try:
        for device in devices:
            elements, sizes, cells, impls_by_cell, lat_ops = plans[device.kind]
            sweep.check(device, impls_by_cell)
            if device.kind == "cpu":
                report.env["numba_threading_layer"] = _threading_layer()
            progress.describe(f"{device.kind} copy bandwidth")
            # larger than the cache (4x), else the copy runs from cache and flatters it
            copy_bytes = min(max(elements * 4, 4 * device.cache_bytes), device.memory_cap // 2)
            start = device.copy_bandwidth(copy_bytes, 9)
            progress.step()
            sweep.sweep(device, elements, sizes, cells, impls_by_cell, start["gbps"])
            if lat_ops:
                sweep.latency(device, lat_ops)
            progress.describe(f"{device.kind} copy bandwidth")
            end = device.copy_bandwidth(copy_bytes, 9)
            progress.step()
            report.copy[device.kind] = {"start": start, "end": end, "gbps": start["gbps"]}
    finally:
        progress.close()
    if "torch" in sys.modules:
        report.env["torch_threads"] = sys.modules["torch"].get_num_threads()
    report.targets = evaluate_targets(report)
    report.wall_seconds = time.perf_counter() - t_wall
    report.load = load.summary()
    return report


# ---------------------------------------------------------------------------------------
# tables

def _fmt(value, digits=None):
    if value is None:
        return "–"
    if digits is None:
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:.{digits}f}"


def _size_label(n):
    for exp in range(31):
        if n == 1 << exp and exp >= 10:
            return f"{n} (2^{exp})"
    return str(n)


def _lookup(report):
    table = {}
    for r in report.results:
        table[(r.device, r.op, r.dtype, r.variant, r.n, r.impl)] = r
    return table


def _status_cell(rec):
    if rec is None:
        return "–"
    if rec.status.startswith("skipped"):
        return "skip"
    if rec.status != "ok":
        return "error"
    noisy = rec.spread is not None and rec.spread > NOISY
    return _fmt(rec.gbps) + ("~" if noisy else "")


def throughput_tables(report):
    """[(title, header, rows)] — one table per device, op, dtype and variant."""
    look = _lookup(report)
    keys = []
    for r in report.results:
        k = (r.device, r.op, r.dtype, r.variant)
        if k not in keys:
            keys.append(k)
    tables = []
    for device, op, dtype, variant in keys:
        recs = [r for r in report.results if (r.device, r.op, r.dtype, r.variant)
                == (device, op, dtype, variant)]
        names = list(dict.fromkeys(r.impl for r in recs))
        ours = "numbasoftmax" if "numbasoftmax" in names else None
        peers = [n for n in names if n != ours]
        sizes = list(dict.fromkeys(r.n for r in recs))
        m_of = {r.n: r.m for r in recs}
        f32 = ours and dtype != "float32" and any(
            r.f32_seconds for r in recs if r.impl == ours)
        header = ["N", "M"]
        for name in names:
            header += [f"{name} GB/s", "% copy"]
        if dtype != "float32" and ours:
            header += ["Gelem/s"]
            if f32:
                header += ["elem/s vs our f32 (same rounds)"]
        header += [f"× {p}" for p in peers] if ours else []
        rows = []
        for n in sizes:
            row = [_size_label(n), str(m_of[n])]
            for name in names:
                rec = look.get((device, op, dtype, variant, n, name))
                row += [_status_cell(rec),
                        _fmt(rec.pct_copy, 0) if rec is not None and rec.gbps else "–"]
            if dtype != "float32" and ours:
                rec = look.get((device, op, dtype, variant, n, ours))
                eps = rec.elements_per_s if rec is not None else None
                row.append(_fmt(eps / 1e9 if eps else None))
                if f32:
                    if eps and rec.f32_seconds:
                        row.append(_fmt(rec.seconds and rec.f32_seconds / rec.seconds) + "×")
                    else:
                        row.append("–")
            if ours:
                mine = look.get((device, op, dtype, variant, n, ours))
                for p in peers:
                    theirs = look.get((device, op, dtype, variant, n, p))
                    if mine is not None and theirs is not None and mine.gbps and theirs.gbps:
                        row.append(_fmt(mine.gbps / theirs.gbps) + "×")
                    else:
                        row.append("–")
            rows.append(row)
        elements = report.plans.get(device, {}).get("elements")
        what = VARIANT_TITLES[variant]
        title = (f"{device.upper()} · {OP_TITLES[op]} · {dtype} · M·N = "
                 f"{_pow2(elements)} · {what}")
        tables.append((title, header, rows))
    return tables


def _short(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}k"
    return str(n)


def _pow2(n):
    if n and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def latency_table(report):
    if not report.latency:
        return None
    names = list(dict.fromkeys(r.impl for r in report.latency))
    peers = [n for n in names if n != "numbasoftmax"]
    header = ["device", "op", "shape"] + [f"{n} µs" for n in names]
    if "numbasoftmax" in names:
        header += [f"× {p}" for p in peers]
    rows = []
    keys = list(dict.fromkeys((r.device, r.op) for r in report.latency))
    for device, op in keys:
        recs = {r.impl: r for r in report.latency if (r.device, r.op) == (device, op)}
        shape = next(iter(recs.values())).shape
        row = [device.upper(), op, f"{shape[0]}×{shape[1]} float32"]
        for n in names:
            r = recs.get(n)
            row.append(_fmt(r.us_per_call) if r is not None and r.us_per_call else
                       ("–" if r is None else "error" if r.status.startswith("error") else "skip"))
        if "numbasoftmax" in names:
            mine = recs.get("numbasoftmax")
            for p in peers:
                theirs = recs.get(p)
                if mine and theirs and mine.us_per_call and theirs.us_per_call:
                    row.append(_fmt(theirs.us_per_call / mine.us_per_call) + "×")
                else:
                    row.append("–")
        rows.append(row)
    return ("Per-call latency (hot cache; CPU: median over individually timed calls, "
            f"{LATENCY_ROUNDS} rounds of ~3 ms per implementation in turn; GPU: host time of "
            "back-to-back calls)", header, rows)


def evaluate_targets(report):
    look = _lookup(report)
    out = []
    for device, op, dtype, kind, threshold, text in TARGETS:
        values = []  # (value, n)
        if kind.startswith("latency:"):
            peer = kind.split(":")[1]
            recs = {r.impl: r for r in report.latency if (r.device, r.op) == (device, op)}
            mine, theirs = recs.get("numbasoftmax"), recs.get(peer)
            if mine and theirs and mine.us_per_call and theirs.us_per_call:
                values.append((theirs.us_per_call / mine.us_per_call, "8×128"))
        else:
            for (d, o, dt, v, n, impl), rec in look.items():
                if (d, o, dt, v, impl) != (device, op, dtype, "new", "numbasoftmax"):
                    continue
                if not rec.gbps:
                    continue
                if kind == "pct" and rec.pct_copy is not None:
                    values.append((rec.pct_copy, n))
                elif kind.startswith("vs:"):
                    peer = look.get((d, o, dt, v, n, kind.split(":")[1]))
                    if peer is not None and peer.gbps:
                        values.append((rec.gbps / peer.gbps, n))
                elif kind == "f16" and rec.f32_seconds:
                    values.append((rec.f32_seconds / rec.seconds, n))
        if not values:
            continue
        worst, at = min(values, key=lambda t: t[0])
        unit = " %" if kind == "pct" else "×"
        out.append({"device": device, "target": text, "threshold": threshold,
                    "worst": worst, "at": at, "met": worst >= threshold,
                    "text": f"{_fmt(worst)}{unit} at N = {at}" if at != "8×128"
                    else f"{_fmt(worst)}× (torch µs / ours µs)"})
    return out


def markdown_table(header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    def numeric(cell):
        text = str(cell)
        return text[:1].isdigit() or text in ("–", "error", "skip")

    right = [bool(rows) and all(numeric(r[i]) for r in rows) for i in range(len(header))]

    def line(cells):
        parts = []
        for i, c in enumerate(cells):
            parts.append(str(c).rjust(widths[i]) if right[i] else str(c).ljust(widths[i]))
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if right[i] else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def header_lines(report):
    env = report.env
    v = env["versions"]
    cores = env["cpu_physical"]
    lines = [
        f"- CPU: {env['cpu']}, {cores or '?'} cores / {env['cpu_logical']} logical "
        f"({env['cpu_usable']} usable), last-level cache {env['cache_bytes'] >> 20} MiB; "
        f"numba {env['numba_threads']} threads ({env.get('numba_threading_layer') or '?'})"
        + (f", torch {env['torch_threads']} threads" if env.get("torch_threads") else ""),
        f"- GPU: {env['gpu'] or 'none'}",
        "- Versions: " + ", ".join(f"{k} {v[k] or '—'}" for k in
                                   ("numbasoftmax", "numba", "numba-cuda", "numpy", "torch",
                                    "cupy", "scipy")) + f", Python {env['python']}",
    ]
    for device, c in report.copy.items():
        if device == "cpu":
            s, e = c["start"], c["end"]
            lines.append(
                f"- CPU copy bandwidth (read + write, {s['bytes'] >> 21} MiB copied): "
                f"numpy 1 thread {_fmt(s['numpy'])} GB/s, all {s['threads']} threads "
                f"{_fmt(s['threaded'])} GB/s at the start; {_fmt(e['numpy'])} / "
                f"{_fmt(e['threaded'])} GB/s at the end. \"% copy\" is against "
                f"{_fmt(c['gbps'])} GB/s (the start's best).")
        else:
            s, e = c["start"], c["end"]
            lines.append(f"- GPU device-to-device copy (read + write, {s['bytes'] >> 21} MiB "
                         f"copied, CUDA events): {_fmt(s['d2d'])} GB/s at the start, "
                         f"{_fmt(e['d2d'])} GB/s at the end; \"% copy\" is against the start.")
    if report.jit:
        per = {}
        for key, sec in report.jit.items():
            dev = key.split(":")[0]
            per[dev] = per.get(dev, 0.0) + sec
        lines.append("- numbasoftmax first calls (numba compile, or load from its disk cache, "
                     "+ correctness checks): " + ", ".join(f"{d.upper()} {s:.1f} s"
                                                           for d, s in per.items()))
    for device, plan in report.plans.items():
        lines.append(f"- {device.upper()} sweep: M·N = {_pow2(plan['elements'])}, "
                     f"N ∈ {{{', '.join(map(str, plan['sizes']))}}}")
    load = report.load
    if load.get("others_pct_of_machine") is not None:
        lines.append(f"- Load: other processes used {load['others_pct_of_machine']:.0f} % of the "
                     f"machine's {load['cpus']} CPUs during this run (steal "
                     f"{load['steal_pct_of_machine']:.0f} %; load average at start "
                     f"{load['loadavg_start']}). Figures marked ~ varied by more than "
                     f"{NOISY:.0%} (interquartile range / median) across repeats.")
    cfg = report.config
    lines.append(f"- Method: one warm-up call per implementation, then up to {cfg['repeats']} "
                 f"rounds (at least {cfg['min_repeats']}, ~{cfg['cell_seconds']} s per cell, "
                 f"{cfg['sweep_seconds']:.0f} s for all cells of a device) "
                 f"timing the implementations in turn; median reported; inputs rotated through "
                 f"copies so each cell's working set exceeds 2× the last-level cache; GPU "
                 f"timed with CUDA events. Wall time {report.wall_seconds:.1f} s.")
    return lines


def render_markdown(report, plot_name=None):
    out = ["# numbasoftmax benchmark", ""]
    out += header_lines(report)
    out.append("")
    busy = report.load.get("others_pct_of_machine")
    if busy is not None and busy > BUSY_WARNING:
        out += [f"**Warning: other processes used {busy:.0f} % of the CPUs during this run.** "
                "Multi-threaded calls (numbasoftmax's parallel kernels, torch) then wait for "
                "descheduled threads, in steps of the scheduler's tick: these figures, and "
                "torch's small-call latency most of all, are unreliable. Rerun on a quiet "
                "machine.", ""]
    bad = {k: v for k, v in report.checks.items() if v != "ok"}
    if bad:
        out.append("**Correctness check failures** (these cells are not timed):")
        out += [f"- `{k}`: {v}" for k, v in bad.items()]
        out.append("")
    for title, header, rows in throughput_tables(report):
        out += [f"## {title}", "", markdown_table(header, rows), ""]
    lat = latency_table(report)
    if lat:
        title, header, rows = lat
        out += [f"## {title}", "", markdown_table(header, rows), ""]
    if report.targets:
        out += ["## Targets (issues 2 and 3)", ""]
        rows = [[t["device"].upper(), t["target"], t["text"], "met" if t["met"] else "NOT met"]
                for t in report.targets]
        out += [markdown_table(["device", "target", "worst measured", "status"], rows), ""]
    if plot_name:
        out += [f"![GB/s over N]({plot_name})", ""]
    notes = list(report.notes)
    errors = [r for r in report.results if r.status.startswith("error")]
    errors += [r for r in report.latency if r.status.startswith("error")]
    for r in errors:
        notes.append(f"{r.device} {r.impl} {r.op} {r.dtype}: {r.status}")
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    out += ["GB/s counts the bytes an ideal kernel moves (forward: read X + write Y; backward: "
            "read Y and dY + write dX). \"× peer\" = our GB/s ÷ the peer's (> 1: numbasoftmax "
            "is faster). \"result allocated per call\" is the plain call users make "
            "(`softmax(x)`, `torch.softmax(t, -1)`), each result dropped before the next call; "
            "numbasoftmax then carves its result from the memory of the previous one (its "
            "result pool, like cupy's memory pool), while torch's fresh result pays a page "
            "fault per page. \"result pool off\" times the same calls with "
            "`numbasoftmax.set_result_pool_limit(0)`: every result is fresh memory for both "
            "(numpy asks the kernel for huge pages on large arrays; torch's CPU allocator does "
            "not). \"preallocated out=\" passes an output buffer (numbasoftmax `out=`, torch's "
            "`out=` overloads): no allocation at all."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# plot

def write_plot(report, path):
    """GB/s over N (log2), one line per implementation (float16 dashed), the copy
    bandwidth as a roofline. Returns the path, or None with a reason if matplotlib is
    missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None, ("matplotlib is not installed: no plot written "
                      "(pip install 'numbasoftmax[bench]' or matplotlib)")
    panels = list(dict.fromkeys((r.device, r.op) for r in report.results
                                if r.variant == "new"))
    if not panels:
        return None, "nothing to plot"
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    colors = {"numbasoftmax": "C0", "torch": "C3", "scipy": "C2", "cupyx": "C4"}
    for ax, (device, op) in zip(axes.flat, panels, strict=False):
        lines = {}
        for r in report.results:
            if (r.device, r.op, r.variant) == (device, op, "new") and r.gbps:
                lines.setdefault((r.impl, r.dtype), []).append((r.n, r.gbps))
        for (impl, dtype), pts in lines.items():
            pts.sort()
            style = {"float32": "-", "float16": "--", "float64": ":"}[dtype]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=4,
                    color=colors.get(impl), label=f"{impl} {dtype}")
        copy = report.copy.get(device)
        if copy:
            what = "copy, all threads" if device == "cpu" else "device-to-device copy"
            ax.axhline(copy["gbps"], color="k", lw=1.2, ls="-.",
                       label=f"{what} {copy['gbps']:.0f} GB/s")
            if device == "cpu" and copy["start"]["numpy"] < copy["gbps"] * 0.95:
                ax.axhline(copy["start"]["numpy"], color="0.5", lw=1, ls=":",
                           label=f"numpy copy (1 thread) {copy['start']['numpy']:.0f} GB/s")
        ax.set_xscale("log", base=2)
        sizes = sorted({r.n for r in report.results if (r.device, r.op) == (device, op)})
        ax.set_xticks(sizes, [_short(n) for n in sizes], fontsize=8)
        ax.minorticks_off()
        elements = report.plans.get(device, {}).get("elements")
        ax.set_xlabel(f"row length N (M·N = {_pow2(elements)})")
        ax.set_ylabel("GB/s (bytes an ideal kernel moves)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{device.upper()} · {OP_TITLES[op]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    env = report.env
    sub = env["cpu"] if not env["gpu"] else f"{env['cpu']} / {env['gpu']}"
    title = f"numbasoftmax {env['versions']['numbasoftmax']} — {sub}"
    busy = report.load.get("others_pct_of_machine")
    if busy is not None and busy > BUSY_WARNING:
        title += f" — other processes used {busy:.0f} % of the CPUs: noisy run"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, None


def write_outputs(report, out_dir, plot=True):
    """Write report.md, results.json and bench.png; returns (markdown, messages)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    messages = []
    plot_name = None
    if plot:
        path, why = write_plot(report, out_dir / "bench.png")
        if path is not None:
            plot_name = path.name
        else:
            messages.append(why)
    text = render_markdown(report, plot_name)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(report.to_json(), indent=1,
                                                     default=_json_default),
                                          encoding="utf-8")
    return text, messages


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    raise TypeError(type(obj).__name__)
