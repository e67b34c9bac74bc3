"""Clocks and copy bandwidth, one timing device per kind of hardware.

``CpuDevice`` times with ``perf_counter``; ``GpuDevice`` with CUDA events (through cupy when
it is installed, else torch), so GPU figures are device time, not launch time. Both give
seconds per call of a callable over rotated argument sets, a per-call host latency, and the
machine's copy bandwidth: the line every GB/s figure is compared with. That copy is timed
before and after the sweep, and again in the rounds of each cell (``cell_copy``): the
machine's memory bandwidth can move by half between the start and the end of a run, and a
cell's "% of copy" is only as good as the copy it is divided by.
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

from .environment import cpu_model, l3_bytes

_copy_kernels = None


def _threaded_copies():
    """All-threads copies (numba prange), plain and with non-temporal stores (as the
    kernels write large outputs): the CPU roofline a parallel kernel can reach is the
    faster of the two."""
    global _copy_kernels
    if _copy_kernels is None:
        from numba import njit, prange

        from .._config import CACHE
        from .._row_kernel import stream_copy
        from .._vmem import vfence

        @njit(inline="always")
        def part(n, parts, t):
            """Elements lo..hi-1 of n, part t of ``parts`` equal parts."""
            step = (n + parts - 1) // parts
            lo = min(n, t * step)
            return lo, min(n, lo + step)

        @njit(parallel=True, cache=CACHE, nogil=True)
        def copy(src, dst, parts):
            for t in prange(parts):
                lo, hi = part(src.shape[0], parts, t)
                dst[lo:hi] = src[lo:hi]

        @njit(parallel=True, cache=CACHE, nogil=True)
        def streamed_copy(src, dst, parts):
            for t in prange(parts):
                lo, hi = part(src.shape[0], parts, t)
                stream_copy(dst[lo:hi], src[lo:hi])
                vfence()

        _copy_kernels = {"threaded": copy, "streamed": streamed_copy}
    return _copy_kernels


def mapped(shape, dtype):
    """A new array with every page written once. A fresh allocation of 32 MiB or more is
    new pages from the kernel, each faulted in by its first write: an output buffer (or a
    copy's destination) left untouched would charge those faults to the first timed call
    that writes it, and the rounds rotate through several buffers."""
    a = np.empty(shape, dtype)
    a.fill(0)
    return a


def _median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class CpuDevice:
    name = "cpu"
    kind = "cpu"

    def __init__(self):
        self.cache_bytes = l3_bytes()
        self.memory_cap = 1 << 30  # bytes of rotated input copies per cell, at most

    def describe(self):
        return cpu_model()

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
        """{'numpy': GB/s, 'threaded': GB/s, 'streamed': GB/s, 'gbps': roofline} for an
        nbytes source."""
        import numba

        n = max(1, nbytes // 8)
        # distinct values, so that a copy that skips or repeats words shows in the check;
        # any values time alike (numpy's random numbers took seconds at 512 MiB)
        src = np.arange(n, dtype=np.float64)
        dst = np.empty_like(src)
        threads = numba.get_num_threads()
        out = {"numpy": 2 * src.nbytes / _median_seconds(lambda: np.copyto(dst, src),
                                                         repeats) / 1e9}
        for name, kernel in _threaded_copies().items():
            kernel(src[:64], dst[:64], threads)  # compile (or load) outside the clock
            dst.fill(0)  # what the previous copy left would hide a kernel that copies nothing
            out[name] = 2 * src.nbytes / _median_seconds(lambda k=kernel: k(src, dst, threads),
                                                         repeats) / 1e9
            # np.array_equal, not numpy.testing's assertion (6 s at 512 MiB)
            if not np.array_equal(dst, src):
                raise RuntimeError(f"numbasoftmax bench: the {name} copy did not copy its "
                                   "source")
        kinds = ("numpy", "threaded", "streamed")
        out["gbps"] = max(out[k] for k in kinds)
        out["best"] = max(kinds, key=out.get)
        out["threads"] = threads
        out["bytes"] = 2 * src.nbytes
        return out

    @staticmethod
    def nbytes(a):
        return a.nbytes

    def cell_copy(self, start):
        """(prepare, copy) of the copy timed in each cell's rounds: the kind that was
        fastest at the start (``copy_bandwidth``'s "best"). prepare(a) gives a source
        holding the bytes of numpy array ``a`` and a destination; copy(src, dst) copies."""
        import numba

        kernel = _threaded_copies().get(start.get("best"))

        def prepare(a):
            raw = np.array(a, copy=True).reshape(-1).view(np.uint8)
            # whole float64 words (the kernels' one compiled type): a few bytes short of
            # a, at most
            src = raw[:raw.size // 8 * 8].view(np.float64) if kernel else raw
            return src, mapped(src.shape, src.dtype)

        def copy(src, dst):
            if kernel is None:
                np.copyto(dst, src)
            else:
                kernel(src, dst, numba.get_num_threads())

        return prepare, copy


class GpuDevice:
    """CUDA timing through cupy's events when cupy is there, else torch's.

    Both libraries' default streams are the legacy default stream, so an event recorded by
    either orders against the kernels of both (and numbasoftmax launches on cupy's current
    stream): one device times numbasoftmax, cupyx and torch alike."""

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
        from .. import registry

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
        end.synchronize()
        if self.backend == "cupy":
            return self._cp.cuda.get_elapsed_time(start, end) / 1e3
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

    def per_call(self, fn, min_seconds=0.02, max_calls=200):
        """Device seconds per call of ``fn()`` after a warm-up: the number of calls grows
        until they take ``min_seconds`` (or reach ``max_calls``)."""
        fn()
        self.sync()
        calls = 3
        while True:
            seconds = self.time_calls(fn, [()], calls)
            if seconds * calls >= min_seconds or calls >= max_calls:
                return seconds
            calls = min(max_calls, max(calls * 2, int(calls * min_seconds
                                                      / max(seconds * calls, 1e-6)) + 1))

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

    @staticmethod
    def nbytes(a):
        """Bytes of a cupy array or a torch tensor."""
        return a.numel() * a.element_size() if hasattr(a, "element_size") else a.nbytes

    def cell_copy(self, start):
        """(prepare, copy) of the device-to-device copy timed in each cell's rounds (see
        ``CpuDevice.cell_copy``)."""
        if self.backend == "cupy":
            cp = self._cp

            def prepare(a):
                src = cp.asarray(a).reshape(-1)
                return src, cp.empty_like(src)

            return prepare, lambda src, dst: cp.copyto(dst, src)
        torch = self._torch

        def prepare(a):
            src = torch.as_tensor(np.ascontiguousarray(a), device="cuda").reshape(-1)
            return src, torch.empty_like(src)

        return prepare, lambda src, dst: dst.copy_(src)

    def copy_bandwidth(self, nbytes, repeats, dtype="float32"):
        itemsize = np.dtype(dtype).itemsize
        n = max(1, nbytes // itemsize)
        if self.backend == "cupy":
            cp = self._cp
            src = cp.ones(n, dtype=dtype)
            dst = cp.empty_like(src)

            def fn():
                cp.copyto(dst, src)
        else:
            torch = self._torch
            src = torch.ones(n, dtype=getattr(torch, dtype), device="cuda")
            dst = torch.empty_like(src)

            def fn():
                dst.copy_(src)
        fn()
        self.sync()
        times = [self.time_calls(fn, [()], 10) for _ in range(repeats)]
        gbps = 2 * n * itemsize / float(np.median(times)) / 1e9
        return {"d2d": gbps, "gbps": gbps, "bytes": 2 * n * itemsize, "backend": self.backend}
