"""Throughput: every operation x dtype x row length x implementation.

Group ``op|MxN|dtype|device``; extra_info carries the bytes moved and, after a timed run,
pytest-benchmark's JSON (``--benchmark-json``) gives GB/s = bytes / mean or median.
"""

from __future__ import annotations

import pytest
from conftest import (
    DTYPES,
    benchmarking,
    check_result,
    impl_params,
    make_inputs,
    skip_unavailable,
    sweep_shapes,
)

from numbasoftmax import registry
from numbasoftmax._bench.config import SKIP
from numbasoftmax._ops import OPS


def pytest_generate_tests(metafunc):
    if "cell" not in metafunc.fixturenames:
        return
    config = metafunc.config
    dtypes = [d for d in config.getoption("bench_dtypes").split(",") if d]
    params = []
    for device in ("cpu", "gpu"):
        for op in registry.OPS:
            for dtype in dtypes:
                for shape in sweep_shapes(config, device):
                    for p in impl_params(op, device):
                        impl = p.values[0]
                        marks = []
                        if benchmarking(config) and (impl.name, dtype) in SKIP:
                            marks.append(pytest.mark.skip(reason=SKIP[(impl.name, dtype)]))
                        params.append(pytest.param(
                            (impl, op, dtype, shape), marks=marks,
                            id=f"{op}|{shape[0]}x{shape[1]}|{dtype}|{device}|{impl.name}"))
    metafunc.parametrize("cell", params)


def test_throughput(benchmark, cell):
    impl, op, dtype, shape = cell
    assert dtype in DTYPES
    skip_unavailable(impl)
    inputs = make_inputs(op, shape, dtype)
    native = impl.prepare(*inputs)
    benchmark.group = f"{op}|{shape[0]}x{shape[1]}|{dtype}|{impl.device}"
    benchmark.extra_info["bytes"] = OPS[op].bytes_moved(shape[0] * shape[1], inputs[0].itemsize)
    benchmark.extra_info["elements"] = shape[0] * shape[1]

    def call():
        result = impl.call(*native, -1)
        impl.sync()  # GPU: the clock stops after the kernel, not after the launch
        return result

    if not benchmark.disabled:
        call()  # warm-up outside the timed rounds (numba compile, torch/cupy plan caches)
    result = benchmark(call)
    if benchmark.disabled:
        check_result(impl, op, inputs, result, dtype)
