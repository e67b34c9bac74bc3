"""The launcher's contracts with the CUDA driver, checked without a GPU: plans that cannot
launch are errors at plan time, the fast launch has a current context on every thread,
results and temporaries live on the caller's stream, the shared-memory opt-in does not
hide errors. Where the real driver would be needed, ``driver.api()`` and ``cuda.core``
are replaced by fakes that record what the launcher asks of them."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from gpu_helpers import assert_close, cuda, guarded, view_of

import numbasoftmax as ns
from numbasoftmax._cuda import driver, launch

pytestmark = pytest.mark.gpu

H100 = launch.DeviceProps(132, 232448)


def _x(shape=(3, 40), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------
# plans

@pytest.mark.parametrize("block", [48, 16, 2048])
def test_block_size_must_be_whole_warps(block):
    with launch.config.override(block=block):
        with pytest.raises(ValueError, match=f"multiple of 32.*got {block}"):
            launch.plan("softmax", "f4", 4, 100, True, 0)
        with pytest.raises(ValueError, match="multiple of 32"):
            ns.softmax(cuda().to_device(_x()))


def test_unknown_forced_strategy():
    with launch.config.override(force="fast"), pytest.raises(ValueError, match="force"):
        launch.plan("softmax", "f4", 4, 100, True, 0)


def _rows_spec(op, kind, n, vec=True):
    p = launch.plan(op, kind, 1 << 16, n, vec, H100, sim=False)
    return p.steps[0].spec


@pytest.mark.parametrize("op, kind, n, G, K", [
    ("softmax", "f4", 2048, 32, 16),           # the longest row of a warp
    ("softmax", "f4", 2052, 256, 4),           # past it: 16 values a thread
    ("softmax", "f4", 16384, 1024, 4),         # the longest row of a block
    ("logsumexp_backward", "f4", 4096, 512, 2),  # two inputs: 8 values of each a thread
    ("log_softmax", "f8", 8192, 1024, 4),      # float64: half the values
    ("logsumexp", "f2", 4096, 256, 2),
])
def test_rows_longer_than_a_warp_take_several_warps(op, kind, n, G, K):
    s = _rows_spec(op, kind, n)
    assert (s.strategy, s.G, s.K, s.U) == ("rows", G, K, 1)
    assert s.B >= s.G and s.B % s.G == 0


@pytest.mark.parametrize("op, n", [("softmax", 16388), ("softmax_backward", 8196)])
def test_rows_past_a_block_of_registers_are_cached(op, n):
    assert _rows_spec(op, "f4", n).strategy == "smem"


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_softmax_gradients_keep_the_cache_past_a_warp_unless_forced(op):
    assert _rows_spec(op, "f4", 2056).strategy == "smem"
    with launch.config.override(force="rows"):
        s = _rows_spec(op, "f4", 4096)
    assert (s.strategy, s.G, s.K) == ("rows", 512, 2)


def test_block_holds_a_whole_row_group():
    with launch.config.override(block=64, reg_max=4, row_values=4):
        s = _rows_spec("softmax", "f4", 512)
    assert (s.G, s.K, s.B) == (128, 1, 128)
    with launch.config.override(block=512, reg_max=4, row_values=4):
        assert _rows_spec("softmax", "f4", 512).B == 512  # four rows a block


def test_forced_rows_longer_than_a_block_can_hold():
    with launch.config.override(force="rows", reg_max=0), \
            pytest.raises(ValueError, match="2048 threads.*1024"):
        _rows_spec("softmax", "f4", 1 << 15)


def test_kernel_that_cannot_run_the_planned_block_fails_at_plan_time(monkeypatch):
    """A compiled kernel reports how many threads a block may have (its registers); a
    plan that needs more is an error before anything is launched."""
    monkeypatch.setattr(launch, "_compiled", {})
    monkeypatch.setattr(launch, "_limits", lambda kernel: (32, launch.SHMEM_DEFAULT))
    launched = []
    monkeypatch.setattr(launch, "launch", lambda *a: launched.append(a))
    with launch.config.override(block=64, force="rows"):
        with pytest.raises(RuntimeError, match="at most 32 threads per block.*launches 64"):
            ns.softmax(cuda().to_device(_x()))
    assert not launched


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "softmax_backward",
                                "log_softmax_backward"])
@pytest.mark.parametrize("n", [100, 3000, 40000, 300000])
def test_kernel_arguments_match_the_signature(op, n):
    """The one place that orders launch arguments agrees with every kernel's signature:
    arrays where the kernel takes arrays, integers where it takes integers."""
    from numba import types

    for m in (1, 1000):
        p = launch.plan(op, "f4", m, n, True, H100, sim=False)
        b = launch.Buf(4096, m * n, np.dtype(np.float32))
        ins = [(b, n)] * (2 if op.endswith("backward") else 1)
        ws = launch.Buf(8192, p.ws_items, np.dtype(np.float64)) if p.ws_items else None
        for step in p.steps:
            args = launch._kernel_args(step, ins, (b, n), ws, m, n)
            sig = launch._signature(step.spec).args
            assert len(args) == len(sig), step.spec
            for a, t in zip(args, sig, strict=True):
                assert isinstance(t, types.Array) == (type(a) is launch.Buf), step.spec


def test_direct_launch_arguments():
    """The raw-int kernel arguments follow numba's flattened array layout: (meminfo,
    parent, nitems, itemsize, data, shape, strides) per 1-D array, ints as intptr."""
    b = launch.Buf(4096, 10, np.dtype(np.float32))
    assert launch._direct_args([b, 7, (1, 2)]) == [0, 0, 10, 4, 4096, 10, 4, 7, 1, 2]


# ---------------------------------------------------------------------------------------
# the fast launch path with a fake driver and a fake cuda.core

class FakeDriver:
    """Per-thread current contexts, as the CUDA driver keeps them."""

    def __init__(self):
        self.tls = threading.local()
        self.calls = []

    def current(self):
        return getattr(self.tls, "ctx", 0)

    def cuCtxGetCurrent(self):
        self.calls.append(("get", threading.get_ident()))
        return self.current()

    def cuDeviceGet(self, dev):
        return 100 + dev

    def cuDevicePrimaryCtxRetain(self, device):
        self.calls.append(("retain", device))
        return 7000 + device

    def cuCtxSetCurrent(self, ctx):
        self.calls.append(("set", ctx))
        self.tls.ctx = ctx


class FakeCore:
    def __init__(self, drv):
        self.drv = drv
        self.launches = []
        core = self

        class Stream:
            @staticmethod
            def from_handle(h):
                return ("stream", h)

        class LaunchConfig:
            def __init__(self, grid, block, shmem_size):
                self.shape = (grid, block, shmem_size)

        self.Stream, self.LaunchConfig = Stream, LaunchConfig

        def launch_(stream, cfg, kernel, *args):
            core.launches.append(dict(stream=stream, cfg=cfg.shape, kernel=kernel, args=args,
                                      ctx=core.drv.current()))

        self.launch = launch_


class FakeKernel:
    kernel = "the CUkernel"
    handle = "handle"


@pytest.fixture
def fake_gpu(monkeypatch):
    """The launcher as on a GPU (device 3, an H100), with fake driver, cuda.core and
    compiled kernels."""
    drv = FakeDriver()
    core = FakeCore(drv)
    monkeypatch.setattr(driver, "api", lambda: (None, drv))
    monkeypatch.setattr(launch, "SIM", False)
    monkeypatch.setattr(launch, "_core", core)
    monkeypatch.setattr(launch, "_tls", threading.local())
    monkeypatch.setattr(launch.config, "launch", "direct")
    monkeypatch.setitem(launch._props, 3, H100)
    compiled = object.__new__(launch.Compiled)
    compiled.kernel, compiled.dev, compiled.max_shmem = FakeKernel(), 3, launch.SHMEM_DEFAULT
    monkeypatch.setattr(launch, "get_kernel", lambda spec, dev: compiled)
    caches = (launch.ready, launch._core_stream, launch._core_config)
    for cache in caches:
        cache.cache_clear()
    yield drv, core
    for cache in caches:
        cache.cache_clear()


def _fast(m=8, n=128):
    return launch.fast_rows("softmax", "f4", [0x1000], 0x2000, m, n, 3, 0)


def test_fast_launch_makes_a_context_current_once_per_thread(fake_gpu):
    drv, core = fake_gpu
    assert _fast() and _fast()
    t = threading.Thread(target=_fast)
    t.start()
    t.join()
    assert [c for c in drv.calls if c[0] != "get"] == [("retain", 103), ("set", 7103)] * 2
    assert len([c for c in drv.calls if c[0] == "get"]) == 2  # once per thread
    assert [launch_["ctx"] for launch_ in core.launches] == [7103] * 3


def test_fast_launch_keeps_a_current_context(fake_gpu):
    drv, core = fake_gpu
    drv.tls.ctx = 5555  # e.g. cupy's
    assert _fast()
    assert [c for c in drv.calls if c[0] != "get"] == []
    assert core.launches[0]["ctx"] == 5555


def test_fast_launch_arguments(fake_gpu):
    _, core = fake_gpu
    m, n = 8, 128
    assert _fast(m, n)
    (only,) = core.launches
    total = m * n
    x = (0, 0, total, 4, 0x1000, total, 4, n)  # the input, as a and as b
    no_ws = (0, 0, 0, 8, 0, 0, 8)  # the placeholder workspace
    assert only["args"] == (*x, *x, 0, 0, total, 4, 0x2000, total, 4, n, *no_ws,
                            m, n, 1, n)
    assert only["kernel"] == "the CUkernel" and only["stream"] == ("stream", 0)


def test_fast_path_declines_plans_with_a_workspace(fake_gpu):
    _, core = fake_gpu
    assert not launch.fast_rows("softmax", "f4", [0x1000], 0x2000, 1, 1 << 20, 3, 0)
    assert not core.launches


def test_incompatible_cuda_core_falls_back_to_numba_launch(fake_gpu, monkeypatch):
    """A cuda.core whose launch rejects the arguments: the fast path launches nothing,
    warns once and hands the call to the general path, which uses numba's launch."""
    _, core = fake_gpu

    def reject(*args):
        raise TypeError("launch() got an unexpected argument")

    monkeypatch.setattr(core, "launch", reject)
    monkeypatch.setattr(launch, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match="direct kernel launch unavailable"):
        assert not _fast()
    assert launch.config.launch == "numba"
    assert not _fast()  # numba's launch path is the general path's


# ---------------------------------------------------------------------------------------
# dynamic shared memory above 48 KB

class FakeBinding:
    class CUkernel:
        pass

    class CUfunction:
        pass

    class CUfunction_attribute:
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = "MAX_DYN_SMEM"


class FailingDriver:
    def __init__(self):
        self.calls = []

    def cuKernelSetAttribute(self, *args):
        self.calls.append(("kernel", args))
        raise RuntimeError("CUDA_ERROR_INVALID_VALUE")

    def cuFuncSetAttribute(self, *args):
        self.calls.append(("func", args))


def _compiled_with(handle):
    c = object.__new__(launch.Compiled)
    c.kernel = type("K", (), {"handle": handle})()
    c.dev, c.max_shmem = 1, launch.SHMEM_DEFAULT
    return c


def test_shared_memory_opt_in_reports_the_driver_error(monkeypatch):
    drv = FailingDriver()
    monkeypatch.setattr(driver, "api", lambda: (FakeBinding, drv))
    c = _compiled_with(FakeBinding.CUkernel())
    with pytest.raises(RuntimeError, match="INVALID_VALUE"):
        c.ensure_shmem(100_000)
    assert [k for k, _ in drv.calls] == ["kernel"]  # no silent second attempt
    assert c.max_shmem == launch.SHMEM_DEFAULT  # not recorded as raised


def test_static_shared_memory_counts_against_the_default_limit(monkeypatch):
    """A block has 48 KB of shared memory before the opt-in, the kernel's static arrays
    included: a kernel with 1 KB of them opts in for a 48 KB row cache (a 12288-element
    float32 row), else its launch fails with CUDA_ERROR_INVALID_VALUE."""
    monkeypatch.setattr(launch, "SIM", False)
    attrs = SimpleNamespace(regs=40, shared=1024, local=0, const=0, maxthreads=1024)
    kernel = SimpleNamespace(attrs=attrs)  # numba-cuda's compiled function: its attributes
    assert launch._limits(kernel) == (1024, launch.SHMEM_DEFAULT - 1024)
    drv = FailingDriver()
    monkeypatch.setattr(driver, "api", lambda: (FakeBinding, drv))
    h = FakeBinding.CUfunction()
    c = _compiled_with(h)
    c.max_shmem = launch._limits(kernel)[1]
    c.ensure_shmem(launch.SHMEM_DEFAULT - 1024)  # fits beside the static arrays: no call
    assert drv.calls == []
    c.ensure_shmem(launch.SHMEM_DEFAULT)
    assert drv.calls == [("func", (h, "MAX_DYN_SMEM", launch.SHMEM_DEFAULT))]


def test_shared_memory_opt_in_by_handle_kind(monkeypatch):
    drv = FailingDriver()
    monkeypatch.setattr(driver, "api", lambda: (FakeBinding, drv))
    h = FakeBinding.CUfunction()
    c = _compiled_with(h)
    c.ensure_shmem(100_000)
    c.ensure_shmem(90_000)  # below what is set: no call
    assert drv.calls == [("func", (h, "MAX_DYN_SMEM", 100_000))]
    assert c.max_shmem == 100_000


# ---------------------------------------------------------------------------------------
# streams: results and temporaries of numba / __cuda_array_interface__ calls

class Marker:
    def __init__(self, handle):
        self.handle = handle


@pytest.mark.simonly
@pytest.mark.parametrize("axis", [-1, 0], ids=["rows", "gathered"])
def test_numba_result_is_bound_to_the_input_stream(monkeypatch, axis):
    """A numba result's copy_to_host() runs on the stream its kernels were queued on."""
    seen = []

    def numba_stream(handle):
        seen.append(handle)
        return Marker(handle)

    monkeypatch.setattr(launch, "numba_stream", numba_stream)
    x = _x((4, 6))
    v, _ = view_of(x)
    v.stream = 0x5151
    r = ns.softmax(v, axis=axis)
    assert isinstance(r.stream, Marker) and r.stream.handle == 0x5151
    assert_close("softmax", r.copy_to_host(), [x.astype(np.float64)], axis, "float32")


def test_numba_stream_of_a_raw_handle(monkeypatch, request):
    monkeypatch.setattr(launch, "SIM", False)
    monkeypatch.setattr(cuda(), "external_stream", Marker)
    launch.numba_stream.cache_clear()
    request.addfinalizer(launch.numba_stream.cache_clear)
    assert launch.numba_stream(0x77).handle == 0x77
    assert launch.numba_stream(0x77) is launch.numba_stream(0x77)


class RecordingMemory:
    """Device memory as the simulator has it (host memory), recording each call."""

    def __init__(self):
        self.arrays, self.events = {}, []

    def alloc(self, nbytes, stream):
        a = np.empty(max(nbytes, 1), np.uint8)
        self.arrays[a.ctypes.data] = a
        self.events.append(("alloc", a.ctypes.data, stream))
        return a.ctypes.data

    def free(self, ptr, stream):
        self.events.append(("free", ptr, stream))


@pytest.mark.simonly
@pytest.mark.parametrize("case", ["gather-scatter", "split-workspace"])
def test_numba_temporaries_are_released_in_stream_order(monkeypatch, case):
    """Temporaries of numba / CAI calls come from stream-ordered memory on the caller's
    stream and go back to it after the last launch, not through numba's deferred (device
    synchronizing) cuMemFree."""
    mem = RecordingMemory()
    monkeypatch.setattr(launch, "device_memory", lambda dev: mem)
    order = []
    real_launch = launch.launch
    monkeypatch.setattr(launch, "launch", lambda *a: (order.append("launch"), real_launch(*a)))
    stream = 0x3131
    x = _x((2, 70 * 4), seed=4)
    if case == "gather-scatter":
        v, _ = view_of(x, order=(1, 0))
        out, check = guarded(x.shape, np.float32, strides=[-1, 300], pad=3)
        v.stream = out.stream = stream
        assert ns.softmax(v, out=out) is out
        check()
        got = out.copy_to_host()
    else:
        v, _ = view_of(x)
        v.stream = stream
        with launch.config.override(force="split"):
            got = ns.softmax(v).copy_to_host()
    assert_close("softmax", got, [x.astype(np.float64)], -1, "float32")
    allocs = [e for e in mem.events if e[0] == "alloc"]
    frees = [e for e in mem.events if e[0] == "free"]
    assert allocs and sorted(p for _, p, _ in allocs) == sorted(p for _, p, _ in frees)
    assert {s for _, _, s in mem.events} == {stream}
    assert mem.events.index(frees[0]) == len(allocs)  # all frees after all allocations
    assert order.count("launch") >= 1


def test_stream_ordered_memory_uses_the_async_driver_calls(monkeypatch):
    calls = []

    class B:
        CUstream = staticmethod(lambda h: ("stream", h))
        CUdeviceptr = staticmethod(lambda p: ("ptr", p))

    class D:
        def cuMemAllocAsync(self, nbytes, stream):
            calls.append(("alloc", nbytes, stream))
            return 0xABC

        def cuMemFreeAsync(self, ptr, stream):
            calls.append(("free", ptr, stream))

    monkeypatch.setattr(driver, "api", lambda: (B, D()))
    ptr = driver.alloc_async(4096, 9)
    driver.free_async(ptr, 9)
    assert calls == [("alloc", 4096, ("stream", 9)), ("free", ("ptr", 0xABC), ("stream", 9))]


@pytest.mark.parametrize("pools", [True, False])
def test_device_memory_is_stream_ordered_where_the_device_has_pools(monkeypatch, request,
                                                                    pools):
    monkeypatch.setattr(launch, "SIM", False)
    monkeypatch.setattr(driver, "memory_pools_supported", lambda dev: pools)
    launch.device_memory.cache_clear()
    request.addfinalizer(launch.device_memory.cache_clear)
    mem = launch.device_memory(0)
    assert isinstance(mem, launch._AsyncMemory if pools else launch.ArrayMemory)
    if pools:
        assert mem.alloc is driver.alloc_async and mem.free is driver.free_async


# ---------------------------------------------------------------------------------------
# bench/gpu_ptx.py

def _bench_script(name):
    """bench/<name>.py as a module (the bench folder is no package)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ptx_check_enumerates_every_kernel_the_plan_can_choose():
    """The compile check covers every kernel plan() can return on an H100: its bisection
    over row lengths finds every kernel that a scan of row lengths finds (CI's set, and
    logsumexp's)."""
    gpu_ptx = _bench_script("gpu_ptx")
    ns_ = list(range(1, 5000)) + list(range(5000, 300000, 97))
    for kinds, op, flags in (("same", "softmax", {}), ("same", "log_softmax_backward", {}),
                             ("lse", "logsumexp", dict(weights=True, signed=True)),
                             ("lse", "logsumexp_backward", {})):
        found = gpu_ptx.enumerate_specs(kinds)
        for kind in ("f4", "f2"):
            for m in (1, 1 << 20):
                for vec in (True, False):
                    for n in ns_:
                        for step in launch.plan(op, kind, m, n, vec, H100, sim=False,
                                                **flags).steps:
                            assert step.spec in found, (op, kind, m, n, vec)


# ---------------------------------------------------------------------------------------
# bench/gpu_sanitize.py

def test_sanitizer_reports_by_kind_leave_out_the_drivers_entry_point_probes():
    """memcheck reports every CUDA API call that returned an error: cuda-bindings' probes
    of entry points the driver lacks are not errors of the program, a failed launch is."""
    san = _bench_script("gpu_sanitize")
    out = "\n".join([
        "========= Program hit CUDA_ERROR_INVALID_VALUE (error 1) due to \"invalid argument\" "
        "on CUDA API call to cuGetProcAddress_v2.",
        "=========     Saved host backtrace up to driver entry point at error",
        "========= Program hit CUDA_ERROR_INVALID_VALUE (error 1) due to \"invalid argument\" "
        "on CUDA API call to cuGetProcAddress_v2.",
        "========= Program hit CUDA_ERROR_INVALID_VALUE (error 1) due to \"invalid argument\" "
        "on CUDA API call to cuLaunchKernelEx.",
        "========= Invalid __global__ read of size 16 bytes",
        "=========     at smem_softmax+0x1d0",
    ])
    kinds = san.error_kinds(out)
    assert kinds == {
        "Program hit CUDA_ERROR_INVALID_VALUE on cuGetProcAddress_v2": 2,
        "Program hit CUDA_ERROR_INVALID_VALUE on cuLaunchKernelEx": 1,
        "Invalid __global__ read of size 16 bytes": 1}
    assert san.probes(kinds) == 2
