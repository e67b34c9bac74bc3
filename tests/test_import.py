"""``import numbasoftmax`` compiles nothing, touches no GPU and imports no optional
dependency; kernels compile (or load from numba's cache) at their first call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = ["cupy", "cupyx", "numba.cuda", "dask", "distributed", "torch", "scipy",
             "matplotlib", "tqdm", "psutil", "numbasoftmax._cpu_kernels",
             "numbasoftmax._row_kernel", "numbasoftmax._lane_kernel", "numbasoftmax._simd",
             "numbasoftmax._vmem", "numbasoftmax._vmath", "numbasoftmax._markers",
             "numbasoftmax._cuda", "numbasoftmax._dask", "numbasoftmax.jit"]

# numba itself imports scipy when scipy is installed (for LowLevelCallable support); what
# is checked is what ``import numbasoftmax`` loads beyond ``import numpy, numba``
SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy, numba
    baseline = set(sys.modules)
    import numbasoftmax
    added = sorted(set(sys.modules) - baseline)
    print(json.dumps({"modules": added,
                      "numba_loads_scipy": "scipy" in baseline,
                      "api": sorted(numbasoftmax.__all__),
                      "version": numbasoftmax.__version__}))
""")


def _run(code, **env):
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    e.update(env)
    proc = subprocess.run([sys.executable, "-c", code], env=e, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def import_result():
    return _run(SCRIPT)


@pytest.mark.parametrize("module", FORBIDDEN)
def test_import_does_not_load(import_result, module):
    assert module not in import_result["modules"]


def test_import_loads_only_the_package(import_result):
    """Beyond numpy and numba, importing loads numbasoftmax's own light modules only
    (and standard-library modules)."""
    third_party = [m for m in import_result["modules"]
                   if not m.startswith("numbasoftmax") and m.split(".")[0] in
                   {"numba", "llvmlite", "cupy", "cupyx", "torch", "dask", "scipy",
                    "matplotlib", "distributed"}]
    assert third_party == [], third_party


def test_public_api(import_result):
    assert import_result["api"] == sorted(
        ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward", "logsumexp",
         "logsumexp_backward", "set_result_pool_limit", "result_pool", "__version__"])


def test_import_jit_compiles_nothing():
    """Importing numbasoftmax.jit defines dispatchers but compiles (or loads) none."""
    code = textwrap.dedent("""
        import json
        import numba
        import numbasoftmax.jit as j
        from numbasoftmax import _cpu_kernels as k, _lane_kernel as lk, _row_kernel as rk
        compiled = {}
        for mod in (j, k, lk, rk):
            for name, obj in vars(mod).items():
                if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.signatures:
                    compiled[mod.__name__ + "." + name] = [str(s) for s in obj.signatures]
        print(json.dumps({"compiled": compiled}))
    """)
    assert _run(code)["compiled"] == {}


def test_first_call_compiles_then_works():
    """The counterpart of the above: a call does compile (or load) the kernels it uses."""
    code = textwrap.dedent("""
        import json
        import numpy as np
        import numbasoftmax
        from numbasoftmax import _cpu_kernels as k
        y = numbasoftmax.softmax(np.array([[0.0, 0.0]], dtype=np.float32))
        print(json.dumps({"y": y.tolist(), "n": len(k.short_rows.signatures)}))
    """)
    res = _run(code)
    assert res["y"] == [[0.5, 0.5]] and res["n"] >= 1


def test_import_with_cuda_simulator_env_touches_no_gpu():
    """Even with the CUDA simulator requested, importing stays off numba.cuda."""
    res = _run(SCRIPT, NUMBA_ENABLE_CUDASIM="1")
    assert "numba.cuda" not in res["modules"]
