"""pytest-benchmark suite: every implementation in numbasoftmax.registry, side by side.

    pytest bench/ --benchmark-enable                    # full sweep, tables grouped by cell
    pytest bench/ --benchmark-enable -k "softmax and float32 and cpu"
    pytest bench/ --benchmark-enable --bench-sizes 1024 --bench-elements 2^22
    pytest bench/                                       # smoke: each benchmark once, small shape

Groups are named ``op|MxN|dtype|device`` so pytest-benchmark prints the implementations of
one cell next to each other. With benchmarking disabled (the project default,
``--benchmark-disable`` in pyproject) every benchmark runs once on a small shape and its
result is checked against the float64 reference: a smoke test of the registry and the
suite. Peers that are not installed, and the GPU without a GPU, are skipped.
"""

from __future__ import annotations

import pytest

from numbasoftmax import registry
from numbasoftmax._bench import checks
from numbasoftmax._bench.config import (
    CPU_ELEMENTS,
    CPU_SIZES,
    GPU_ELEMENTS,
    GPU_SIZES,
    parse_size,
    parse_sizes,
)

DTYPES = ("float32", "float64", "float16")
SMOKE_SHAPE = (16, 256)


def pytest_addoption(parser):
    group = parser.getgroup("numbasoftmax bench")
    group.addoption("--bench-sizes", default=None,
                    help="row lengths N for the sweep (comma list, e.g. 32,1k,2^18); default: "
                         "python -m numbasoftmax bench's sizes for each device")
    group.addoption("--bench-elements", default=None,
                    help="M*N of each array (default CPU 2^24, GPU 2^26)")
    group.addoption("--bench-dtypes", default=",".join(DTYPES),
                    help="comma list of dtypes (default float32,float64,float16)")


def benchmarking(config):
    """True when pytest-benchmark will time (not just run once)."""
    return bool(config.getoption("benchmark_enable")
                or not config.getoption("benchmark_disable"))


def sweep_shapes(config, device):
    if not benchmarking(config):
        return [SMOKE_SHAPE]
    elements = config.getoption("bench_elements")
    elements = parse_size(elements, "--bench-elements") if elements else (
        CPU_ELEMENTS if device == "cpu" else GPU_ELEMENTS)
    sizes = config.getoption("bench_sizes")
    sizes = (parse_sizes(sizes, "--bench-sizes") if sizes else
             CPU_SIZES if device == "cpu" else GPU_SIZES)
    return [(max(1, elements // n), n) for n in sizes]


def impl_params(op, device):
    """Every registry entry for (op, device) but the oracle, as pytest params; entries whose
    library is missing are kept and skipped at run time, so the report says why."""
    return [pytest.param(i, id=i.name) for i in
            registry.implementations(op=op, device=device, available_only=False)
            if i.role != "oracle"]


_DATA = {}


def make_inputs(op, shape, dtype, seed=0):
    """numpy inputs for ``op``, cached for the last (op, shape, dtype) so that the
    implementations of one cell share them."""
    key = (op, shape, dtype, seed)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = checks.make_inputs(op, shape, dtype, seed)
    return _DATA[key]


def check_result(impl, op, inputs, result, dtype):
    """Compare a result with the float64 reference (smoke runs only: cheap shapes)."""
    checks.check_result(op, impl.to_numpy(result), inputs, dtype)


def skip_unavailable(impl):
    if not impl.available():
        what = "no usable GPU or library" if impl.device == "gpu" else "not installed"
        pytest.skip(f"{impl.name} ({impl.device}): {what}")
