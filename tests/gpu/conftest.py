"""GPU tests: run under the CUDA simulator or on a real GPU, in their own pytest process.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/gpu     # simulator (CI)
    python -m pytest tests/gpu                            # a machine with a GPU

Without the simulator the files run only when a GPU is usable; otherwise every test is
reported as skipped (never as passed). A plain ``pytest`` over the whole tree does not
collect this folder unless it is named on the command line or NUMBASOFTMAX_GPU_TESTS=1,
so the CPU test process never imports numba.cuda.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def pytest_addoption(parser):
    try:
        parser.addoption("--fuzz-long", action="store_true", default=False,
                         help="run 100x more property-based examples")
    except (ValueError, argparse.ArgumentError):  # added by tests/conftest.py (the error
        pass  # raised for a second definition depends on the pytest version)


def _requested(config):
    if SIM or os.environ.get("NUMBASOFTMAX_GPU_TESTS") == "1":
        return True
    for arg in config.args:
        p = pathlib.Path(str(arg).split("::")[0]).resolve()
        if p == HERE or HERE in p.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if collection_path.resolve() == HERE:
        return None
    return None if _requested(config) else True


_GPU_REASON = None


def _gpu_reason():
    """None when the GPU path can run here, else why not."""
    global _GPU_REASON
    if _GPU_REASON is None:
        if SIM:
            try:
                import numba_cuda  # noqa: F401
                from numba import cuda  # noqa: F401

                _GPU_REASON = ""
            except ImportError as err:
                _GPU_REASON = f"numba-cuda is not installed ({err}): pip install numba-cuda"
        else:
            try:
                from numba import cuda

                _GPU_REASON = "" if cuda.is_available() else "no usable GPU (numba-cuda)"
            except Exception as err:  # noqa: BLE001
                _GPU_REASON = f"numba-cuda unavailable: {err}"
    return _GPU_REASON or None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU or the CUDA simulator")
    config.addinivalue_line("markers", "realgpu: needs a real GPU (skipped under the simulator)")
    config.addinivalue_line("markers", "simonly: stands host memory or a made-up stream in for "
                            "the device's, which only the simulator accepts (skipped on a GPU)")
    if SIM:
        # The simulator runs a Python thread per CUDA thread and a polling loop per block;
        # a short switch interval makes its barriers several times faster.
        sys.setswitchinterval(2e-4)
        _one_cpu()
        if not _gpu_reason():
            _lock_static_shared_arrays()


def _one_cpu():
    """Keep this process (and the threads it starts) on one CPU. The simulator's threads
    hand the interpreter lock to one another at every barrier: on one CPU a context switch,
    across CPUs a wake-up on another core, which waits wherever that core is busy. tests/gpu
    on a 2-core machine: 131-137 s on both cores, 89 s on one; beside two low-priority busy
    processes (as CI's machine-code check runs) 369 s and 105 s."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _lock_static_shared_arrays():
    """numba-cuda's simulator creates a block's static shared array on the first call at
    each source line, with an unlocked get-then-set on a dict: two of the block's threads
    that interleave there each get an array of their own, and a reduction through it then
    loses one thread's values (NaN or wrong results in a random test, rarely, more often
    with a short switch interval and a busy machine). The same allocation under a lock,
    keyed by the caller's file and line as the simulator keys it; dynamic shared memory
    (shape 0) and the error for an alignment stay the simulator's own."""
    import threading

    from numba.cuda.simulator import kernelapi

    cls = kernelapi.FakeCUDAShared
    try:
        keyed = isinstance(cls(0)._allocations, dict)
    except (AttributeError, TypeError):  # a simulator that keeps them otherwise
        keyed = False
    if not keyed or getattr(cls.array, "locked", False):
        return  # test_simulator then tells whether its own code shares one array per block
    original = cls.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return original(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                if isinstance(dtype, kernelapi.types.Type):  # as the simulator converts
                    dtype = kernelapi.numpy_support.as_dtype(dtype)
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    array.locked = True
    cls.array = array


def pytest_collection_modifyitems(config, items):
    mine = [it for it in items if HERE in pathlib.Path(str(it.fspath)).resolve().parents]
    if not mine:
        return  # e.g. the CPU suite: never import numba.cuda there
    reason = _gpu_reason()
    for item in mine:
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif SIM and item.get_closest_marker("realgpu"):
            item.add_marker(pytest.mark.skip(reason="needs a real GPU"))
        elif not SIM and item.get_closest_marker("simonly"):
            item.add_marker(pytest.mark.skip(reason="simulator only: host memory or a "
                                             "made-up stream stands in for the device's"))


@pytest.fixture(autouse=True)
def _fresh_config():
    """Every test starts from the default tunables."""
    if _gpu_reason():
        yield
        return
    from numbasoftmax._cuda import launch

    saved = {k: getattr(launch.config, k) for k in launch.config._fields}
    yield
    for k, v in saved.items():
        setattr(launch.config, k, v)
