"""What a benchmark run measures: devices, operations, dtypes, row lengths, variants, the
feature cells (where=, dtype=) and the time budgets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .._ops import NAMES as OPS

OP_GROUPS = {
    "fwd": ("softmax",),
    "bwd": ("softmax_backward",),
    "log": ("log_softmax", "log_softmax_backward"),
    "lse": ("logsumexp", "logsumexp_backward"),
    "all": OPS,
}
DTYPES = ("float32", "float16", "float64")

# How a call gets its result memory. "new": the plain call users make (the result is
# allocated by the call and dropped before the next one); "pool": the same inside
# numbasoftmax.result_pool (numbasoftmax reuses the memory of the dropped result; peers are
# unaffected); "out": a preallocated out= for every implementation that has one.
VARIANTS = {"new": "result allocated per call",
            "pool": "result allocated per call, numbasoftmax result pool on",
            "out": "preallocated out="}
VARIANT_TAGS = {"new": "", "pool": " pool", "out": " out="}
POOL_BYTES = 1 << 30  # the result pool's limit in "pool" cells



class Feature(NamedTuple):
    """An optional argument timed in cells of its own: the registry form that calls it,
    the input dtype, the result dtype and the mask (None, "full": x's shape, "row": (N,)
    broadcast over the rows)."""
    form: str
    dtype: str
    result_dtype: str
    mask: str | None
    title: str


FEATURES = {
    "where-full": Feature("where", "float32", "float32", "full",
                          "where= mask of x's shape (random, 3 in 4 included)"),
    "where-row": Feature("where", "float32", "float32", "row",
                         "where= (N,) mask broadcast over the rows (padding: the first 3/4 "
                         "included)"),
    "dtype": Feature("dtype", "float16", "float32", None, "float16 in, float32 out (dtype=)"),
}
# The feature cells on full CPU runs ("auto"): softmax forward (and its gradient under the
# masks), a short, a medium and a long row, like-for-like only: 15 cells, about a sixth of
# the default run's cells.
FEATURE_OPS = ("softmax", "softmax_backward")
FEATURE_SIZES = (32, 1024, 16384)


class Cell(NamedTuple):
    """One table of the sweep: an operation, a dtype, how the result memory is got
    (a key of VARIANTS), an optional feature (a key of FEATURES, "" for none) and the row
    lengths it is timed at (None: all of the sweep's)."""
    op: str
    dtype: str
    variant: str
    feature: str = ""
    sizes: tuple | None = None


# Default sweeps: M·N elements per array and the row lengths N. GPU rows cover each kernel
# strategy's range and the sizes around its thresholds.
CPU_ELEMENTS = 1 << 24
# 3 and 10: a few classes per sample, the commonest short rows
CPU_SIZES = (3, 10, 32, 128, 1024, 4096, 16384, 262144)
GPU_ELEMENTS = 1 << 26
GPU_SIZES = (32, 128, 512, 1000, 1024, 2048, 4096, 8192, 12288, 16384, 32768, 65536, 262144)
QUICK_CPU_ELEMENTS = 1 << 22
QUICK_CPU_SIZES = (128, 4096, 65536)
QUICK_GPU_ELEMENTS = 1 << 24
QUICK_GPU_SIZES = (128, 4096, 65536)
# float16 beside float32 by default: forward on the CPU, forward and backward on the GPU
FLOAT16_OPS = {"cpu": ("softmax",), "gpu": ("softmax", "softmax_backward")}

LATENCY_SHAPE = (8, 128)
LATENCY_ROUNDS = 9  # rounds of ~3 ms per implementation, in turn
BUSY_WARNING = 15.0  # % of the machine used by other processes that makes a run unreliable
NOISY = 0.25  # a cell whose interquartile range exceeds this fraction of its median gets "~"

# (implementation, dtype) pairs left out of the timed sweep, with the reason shown in the
# report. scipy computes float16 through float64 temporaries: ~0.02 Gelem/s, 0.8 s per
# 2^24-element call, which alone would take most of the time budget.
SKIP = {("scipy", "float16"): "scipy float16 is ~50x slower than float32 (float64 temporaries); "
                              "left out of the sweep to keep it within its time budget"}


@dataclass
class Config:
    devices: tuple = ("cpu", "gpu")  # wanted; "gpu" is dropped when none is available
    ops: tuple = OPS
    dtypes: tuple | None = None  # None: float32 everywhere plus float16 per FLOAT16_OPS
    sizes: tuple | None = None  # row lengths N; None: the device's default sweep
    elements: int | None = None  # M·N; None: the device's default
    quick: bool = False
    prealloc: str = "auto"  # "auto", "none" or "all": also time calls with out=
    pool: str = "auto"  # "auto", "none" or "all": also time plain calls with the pool on
    latency: bool = True
    repeats: int = 11  # at most this many timed rounds per cell
    min_repeats: int = 3
    # time budget per cell after warm-up (all implementations): 0.5 s gives ~10 rounds of
    # the 2^24-element CPU cells; at 0.25 s a backward cell got 4, too few for a stable
    # median on a noisy 2-core VM. Where slow peers spend it, our calls and the copy may go
    # on for as long again (``sweep._Sweep._rounds``)
    cell_seconds: float = 0.5
    # budget for all throughput cells of a device: when a busy machine makes calls slow, a
    # cell gets at most its share of what is left (never fewer than min_repeats rounds)
    sweep_seconds: float = 150.0
    out: Path = Path("numbasoftmax-bench")
    progress: bool = True
    plot: bool = True
    device_required: bool = False  # --device gpu: fail if no GPU
    threads: int | None = None  # set numba's and torch's thread counts (None: leave them)
    startup: bool = True  # full runs: measure start-up (import + first calls) per op
    # "auto", "none" or "all": also time the where= and dtype= calls (FEATURES), out= on
    # both sides. auto: FEATURE_OPS at FEATURE_SIZES on full CPU runs; all: every
    # operation with those forms (registry.FORM_OPS), at every size, on the CPU
    features: str = "auto"

    def plan_for(self, device):
        """(elements, sizes, [Cell]) for one device."""
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
                dtypes = ("float32", "float16") if op in FLOAT16_OPS[device] else ("float32",)
            for dtype in dtypes:
                cells.append(Cell(op, dtype, "new"))
                # like-for-like (both sides write into a preallocated out=): on full CPU
                # runs for every cell, the headline comparison
                if self.prealloc == "all" or (
                        self.prealloc == "auto" and not self.quick and device == "cpu"):
                    cells.append(Cell(op, dtype, "out"))
                if device == "cpu" and (self.pool == "all" or (
                        self.pool == "auto" and not self.quick and dtype == "float32")):
                    cells.append(Cell(op, dtype, "pool"))
        return elements, tuple(sizes), cells + self._feature_cells(device, sizes)

    def _feature_cells(self, device, sizes):
        from ..registry import FORM_OPS, implementations

        if self.features == "none" or (self.features == "auto" and self.quick):
            return []
        ops, at = {op for form_ops in FORM_OPS.values() for op in form_ops}, None
        if self.features == "auto":
            ops, at = FEATURE_OPS, tuple(n for n in sizes if n in FEATURE_SIZES)
            if not at:
                return []
        # the features with an implementation of ours on this device
        return [Cell(op, f.dtype, "out", name, at) for op in self.ops if op in ops
                for name, f in FEATURES.items()
                if implementations(op, device, "numbasoftmax", False, form=f.form)]


def parse_size(part, option="--sizes"):
    """'4096', '4k', '1m', '2^18' -> int; ValueError naming ``option`` otherwise."""
    low = part.lower()
    try:
        if "^" in low:
            base, exp = low.split("^")
            value = int(base) ** int(exp)
        elif low.endswith("k"):
            value = int(float(low[:-1]) * 1024)
        elif low.endswith("m"):
            value = int(float(low[:-1]) * 1024 * 1024)
        else:
            value = int(low)
    except ValueError:
        raise ValueError(f"{option}: {part!r} is not a size; expected a positive integer "
                         "such as 4096, 4k, 1m or 2^12") from None
    if value < 1:
        raise ValueError(f"{option}: sizes must be positive; got {part!r}")
    return value


def parse_sizes(text, option="--sizes"):
    """'32,128,1k,4K,2^18' -> (32, 128, 1024, 4096, 262144)."""
    sizes = tuple(parse_size(part, option) for part in text.replace(" ", "").split(",")
                  if part)
    if not sizes:
        raise ValueError(f"{option}: no sizes given")
    return sizes
