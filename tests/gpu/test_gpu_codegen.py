"""Real GPU: the compiled kernels use 16-byte vector loads/stores where the plan says so,
keep rows in registers (no local memory), and raise the shared-memory limit above 48 KB."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.realgpu]


@pytest.mark.parametrize("strategy,n", [("rows", 128), ("rows", 1024), ("smem", 4096),
                                        ("long", 65536)])
@pytest.mark.parametrize("kind", ["f4", "f2"])
def test_vector_loads_and_registers(strategy, n, kind):
    from numbasoftmax._cuda import launch

    with launch.config.override(force=strategy):
        p = launch.plan("softmax", kind, 64, n, True, 0)
    spec = p.steps[0].spec
    assert spec.V == 16 // launch.STORAGE[kind].itemsize
    c = launch.get_kernel(spec, 0)
    assert c.max_threads >= spec.B
    ptx = next(iter(c.dispatcher.inspect_asm().values()))
    assert re.search(r"ld\.global\.v4\.", ptx), "no 16-byte vector load"
    assert re.search(r"st\.global\.v4\.", ptx), "no 16-byte vector store"
    assert not re.search(r"\.local \.align", ptx), "local memory (register spill?)"


def test_large_shared_memory():
    from numba import cuda

    import numbasoftmax as ns
    from numbasoftmax._cuda import launch

    n = 40000  # 160 KB of float32 row cache, above the 48 KB default
    x = np.random.default_rng(0).standard_normal((3, n)).astype(np.float32)
    with launch.config.override(force="smem"):
        r = ns.softmax(cuda.to_device(x)).copy_to_host()
    ref = np.exp(x - x.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.allclose(r, ref, rtol=1e-5, atol=1e-9)
