"""The machine a run measured: CPU and GPU model, caches, cores, library versions, and how
much CPU other processes took meanwhile."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def version(dist, module=None):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module and module in sys.modules:
        return getattr(sys.modules[module], "__version__", None)
    return None


def cupy_version():
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "cupy" or name.startswith("cupy-"):
            return f"{dist.version} ({name})"
    return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_bytes():
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


def physical_cores():
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


def threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return None


def environment(gpu=None):
    import numba

    import numbasoftmax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env = {
        "cpu": cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": physical_cores(),
        "cpu_usable": usable,
        "cache_bytes": l3_bytes(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": None,  # filled after the first parallel call
        "gpu": gpu.name if gpu else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "numbasoftmax": numbasoftmax.__version__,
            "numba": numba.__version__,
            "numba-cuda": version("numba-cuda"),
            "numpy": np.__version__,
            "torch": version("torch"),
            "cupy": cupy_version(),
            "scipy": version("scipy"),
        },
    }
    if "torch" in sys.modules:
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    return env


class CpuLoad:
    """How much CPU other processes took while we ran (from /proc/stat and os.times()):
    on a shared machine this is the first thing to read before trusting a number."""

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
