"""Per-call latency of a tiny 8x128 float32 input (hot cache on purpose): what a caller
pays per call in a loop of small batches. Group ``op|8x128|float32|device``."""

from __future__ import annotations

import pytest
from conftest import check_result, impl_params, make_inputs, skip_unavailable

from numbasoftmax import registry
from numbasoftmax._bench.config import LATENCY_SHAPE

PARAMS = [pytest.param((impl, op, device), id=f"{op}|8x128|float32|{device}|{impl.name}")
          for device in ("cpu", "gpu") for op in registry.OPS
          for p in impl_params(op, device) for impl in p.values]


@pytest.mark.parametrize("cell", PARAMS)
def test_latency(benchmark, cell):
    impl, op, device = cell
    skip_unavailable(impl)
    inputs = make_inputs(op, LATENCY_SHAPE, "float32", seed=1)
    native = impl.prepare(*inputs)
    benchmark.group = f"{op}|{LATENCY_SHAPE[0]}x{LATENCY_SHAPE[1]}|float32|{device}|latency"

    def call():
        result = impl.call(*native, -1)
        impl.sync()
        return result

    result = benchmark(call)
    if benchmark.disabled:
        check_result(impl, op, inputs, result, "float32")
