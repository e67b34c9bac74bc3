"""What a run records: one Result per timed cell and implementation, one Latency per tiny
call, and the Report that holds them with the machine, the copy bandwidth and the notes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Result:
    device: str
    op: str
    dtype: str
    variant: str  # a key of config.VARIANTS
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
    pct_copy: float | None = None  # of copy_gbps (else of the start's copy)
    copy_gbps: float | None = None  # the device's copy, timed in this cell's rounds
    elements_per_s: float | None = None
    # dtypes other than float32, ours only: our float32 kernel's median on the same shape,
    # timed in the same rounds (for the elements/s ratio)
    f32_seconds: float | None = None
    feature: str = ""  # a key of config.FEATURES: where= or dtype= calls; "" for none


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
    load: dict = field(default_factory=dict)
    startup: dict = field(default_factory=dict)  # op -> {"cold": {...}, "warm": {...}} s

    def to_json(self):
        return {
            "schema": 2,
            "config": self.config,
            "environment": self.env,
            "copy_bandwidth": self.copy,
            "plans": self.plans,
            "jit_seconds": self.jit,
            "checks": self.checks,
            "results": [asdict(r) for r in self.results],
            "latency": [asdict(r) for r in self.latency],
            "notes": self.notes,
            "load": self.load,
            "startup": self.startup,
            "wall_seconds": self.wall_seconds,
        }
