"""cupy and torch on a real GPU: result kinds, the caller's stream, bfloat16, threads with
several streams. Skipped under the simulator and where cupy/torch cannot use a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from gpu_helpers import assert_close, bf16_bits, bf16_values

import numbasoftmax as ns
from numbasoftmax import reference

pytestmark = [pytest.mark.gpu, pytest.mark.realgpu]


def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy sees no GPU")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"cupy cannot use a GPU: {err}")
    return cp


def _torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    return torch


def _x(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("func", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(8, 128), (3, 1000), (2, 5000), (2, 70000), (5, 33)])
def test_cupy_forward(func, shape):
    cp = _cupy()
    x = _x(shape)
    r = getattr(ns, func)(cp.asarray(x))
    assert isinstance(r, cp.ndarray) and r.dtype == np.float32
    assert_close(func, r.get().astype(np.float64), [x.astype(np.float64)], -1, "float32")


@pytest.mark.parametrize("func", ["softmax_backward", "log_softmax_backward"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_cupy_backward(func, dtype):
    cp = _cupy()
    x = _x((4, 3000), np.float64)
    a = reference.softmax(x) if func == "softmax_backward" else reference.log_softmax(x)
    a = a.astype(dtype)
    g = _x((4, 3000), dtype, 1)
    r = getattr(ns, func)(cp.asarray(a), cp.asarray(g))
    assert isinstance(r, cp.ndarray) and r.dtype == np.dtype(dtype)
    assert_close(func, r.get().astype(np.float64), [a.astype(np.float64),
                                                    g.astype(np.float64)], -1, dtype)


def test_cupy_layouts_and_out():
    cp = _cupy()
    x = _x((64, 48))
    d = cp.asarray(x)
    for view, host in ((d.T, x.T), (d[::2, ::3], x[::2, ::3]), (d[::-1], x[::-1])):
        for axis in (-1, 0, None):
            r = ns.softmax(view, axis=axis)
            assert_close("softmax", r.get(), [np.asarray(host, np.float64)], axis, "float32")
    out = cp.empty_like(d)
    assert ns.log_softmax(d, out=out) is out
    assert_close("log_softmax", out.get(), [x.astype(np.float64)], -1, "float32")
    with pytest.raises(TypeError, match="out is a host array"):
        ns.softmax(d, out=np.empty_like(x))


@pytest.mark.parametrize("lib", ["cupy", "torch"])
def test_out_takes_the_fast_path_unless_it_overlaps_an_input_in_part(lib, monkeypatch):
    """A contiguous ``out=`` of the input's type, shape and dtype is written by the fast
    path's one launch, also in place (out is x); one that overlaps x in part goes the
    general way (x gathered first); all three give the right values."""
    from numbasoftmax._cuda import launch

    fast = []
    real = launch.fast_rows
    monkeypatch.setattr(launch, "fast_rows", lambda *a: fast.append(a[0]) or real(*a))
    x = _x((17, 256))
    if lib == "cupy":
        cp = _cupy()
        dev, host = cp.asarray, lambda a: a.get()
    else:
        torch = _torch()
        dev, host = (lambda a: torch.as_tensor(a, device="cuda")), lambda a: a.cpu().numpy()
    ref = [x[1:].astype(np.float64)]
    out = dev(np.zeros((16, 256), np.float32))
    assert ns.softmax(dev(x[1:]), out=out) is out and fast == ["softmax"]
    assert_close("softmax", host(out), ref, -1, "float32")
    buf = dev(x)
    shifted = buf[:16]  # the input: rows 1-16 of buf; out: rows 0-15
    assert ns.log_softmax(buf[1:], out=shifted) is shifted and fast == ["softmax"]
    assert_close("log_softmax", host(shifted), ref, -1, "float32")
    d = dev(x[1:])
    assert ns.softmax(d, out=d) is d and fast == ["softmax", "softmax"]  # in place
    assert_close("softmax", host(d), ref, -1, "float32")


def test_cupy_nondefault_stream():
    cp = _cupy()
    x = _x((256, 1024))
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        d = cp.asarray(x)
        r = ns.softmax(d)
        r2 = ns.softmax_backward(r, d)
    s.synchronize()
    assert_close("softmax", r.get(), [x.astype(np.float64)], -1, "float32")
    y = r.get().astype(np.float64)
    assert_close("softmax_backward", r2.get(), [y, x.astype(np.float64)], -1, "float32")


def test_cupy_threads_streams():
    """8 threads, each on its own non-blocking stream, mixed shapes and dtypes."""
    cp = _cupy()
    errors = []
    shapes = [(8, 128), (3, 1000), (2, 4096), (16, 32), (2, 20000)]

    def work(k):
        try:
            s = cp.cuda.Stream(non_blocking=True)
            with s:
                for j in range(25):
                    shape = shapes[(k + j) % len(shapes)]
                    dt = (np.float32, np.float16, np.float64)[(k * 7 + j) % 3]
                    x = _x(shape, dt, k * 100 + j)
                    r = ns.log_softmax(cp.asarray(x))
                    s.synchronize()
                    assert_close("log_softmax", r.get().astype(np.float64),
                                 [x.astype(np.float64)], -1, np.dtype(dt).name)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]


def test_torch_kinds_and_stream():
    torch = _torch()
    x = _x((16, 512))
    t = torch.from_numpy(x).cuda()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        r = ns.softmax(t)
        g = ns.log_softmax_backward(ns.log_softmax(t), t)
    s.synchronize()
    assert isinstance(r, torch.Tensor) and r.is_cuda and r.dtype == torch.float32
    assert_close("softmax", r.cpu().numpy(), [x.astype(np.float64)], -1, "float32")
    z = reference.log_softmax(x.astype(np.float64)).astype(np.float32)
    assert_close("log_softmax_backward", g.cpu().numpy(), [z.astype(np.float64),
                                                           x.astype(np.float64)], -1,
                 "float32")
    with pytest.raises(TypeError, match="host array"):
        ns.softmax(t, out=torch.empty(16, 512))
    with pytest.raises(TypeError, match=r"softmax\(\): x requires grad"):
        ns.softmax(t.clone().requires_grad_())


def test_torch_bfloat16():
    torch = _torch()
    x = _x((4, 4096))
    t = torch.from_numpy(x).cuda().to(torch.bfloat16)
    for func in ("softmax", "log_softmax"):
        r = getattr(ns, func)(t)
        assert r.dtype == torch.bfloat16
        got = bf16_values(r.view(torch.int16).cpu().numpy().view(np.uint16))
        xin = bf16_values(bf16_bits(x)).astype(np.float64)
        assert_close(func, got.astype(np.float64), [xin], -1, "bfloat16")
    tt = t.t()  # non-contiguous
    r = ns.softmax(tt, axis=0)
    got = bf16_values(r.contiguous().view(torch.int16).cpu().numpy().view(np.uint16))
    assert_close("softmax", got.astype(np.float64),
                 [bf16_values(bf16_bits(x)).astype(np.float64).T], 0, "bfloat16")


def test_cupy_thread_without_a_context():
    """A thread that only reuses pooled memory has no current CUDA context; the direct
    launch makes the device's primary context current there (else the launch fails with
    CUDA_ERROR_INVALID_CONTEXT)."""
    cp = _cupy()
    x = _x((8, 128))
    d = cp.asarray(x)
    ns.softmax(d)  # compiles, and leaves a block of the result's size in cupy's pool
    cp.cuda.Device().synchronize()
    got, errors = [], []

    def work():
        try:
            got.append(ns.softmax(d))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors, errors
    assert_close("softmax", got[0].get(), [x.astype(np.float64)], -1, "float32")


def test_numba_result_on_a_nonblocking_stream():
    """A numba result of an input on a non-blocking stream: copy_to_host() waits for the
    kernel (the result is bound to the input's stream)."""
    cp = _cupy()
    from gpu_helpers import DevView, cuda

    x = _x((2048, 8192), seed=3)
    base = cuda().to_device(x.ravel())
    s = cp.cuda.Stream(non_blocking=True)
    v = DevView(base, 0, x.shape, (x.shape[1], 1), stream=s.ptr)
    r = ns.softmax(v)
    assert_close("softmax", r.copy_to_host(), [x.astype(np.float64)], -1, "float32")


@pytest.mark.parametrize("lib", ["cupy", "torch"])
def test_options_on_gpu_arrays(lib):
    """logsumexp (with a sign), its gradient, where= (a mask of the same library) and
    dtype= run, into arrays of the library."""
    x = _x((4, 6))
    d = _cupy().asarray(x) if lib == "cupy" else _torch().from_numpy(x).cuda()
    v, sign = ns.logsumexp(d, return_sign=True)
    assert type(v) is type(d) and type(sign) is type(d)
    ref = reference.logsumexp(x)
    lse = v.get() if lib == "cupy" else v.cpu().numpy()
    assert np.allclose(lse, ref, rtol=1e-5)
    g = ns.logsumexp_backward(d, v, sign)
    host = g.get() if lib == "cupy" else g.cpu().numpy()
    assert np.allclose(host, reference.logsumexp_backward(x, ref, np.ones(4)), rtol=1e-5)
    w = np.array([True, False, True, True, False, True])
    dw = _cupy().asarray(w) if lib == "cupy" else _torch().from_numpy(w).cuda()
    r = ns.softmax(d, where=dw)
    host = r.get() if lib == "cupy" else r.cpu().numpy()
    assert_close("softmax", host.astype(np.float64), [x.astype(np.float64)], -1, "float32",
                 where=w)
    for dt in ("float32", "float64", "float16"):
        r = ns.softmax(d, dtype=dt)
        host = r.get() if lib == "cupy" else r.cpu().numpy()
        assert host.dtype == np.dtype(dt)
        assert_close("softmax", host.astype(np.float64), [x.astype(dt).astype(np.float64)],
                     -1, dt)
