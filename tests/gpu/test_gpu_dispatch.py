"""Dispatch rules, validation and errors, axes and layouts of the GPU path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from gpu_helpers import SIM, DevView, assert_close, cuda, guarded, to_host, view_of

import numbasoftmax as ns
from numbasoftmax import reference

pytestmark = pytest.mark.gpu


def _is_numba_device_array(obj):
    return type(obj).__name__ in ("DeviceNDArray", "FakeCUDAArray")


def _x(shape=(3, 6), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------
# array kinds and results

def test_numba_device_array_in_numba_out():
    x = _x()
    d = cuda().to_device(x)
    r = ns.softmax(d)
    assert _is_numba_device_array(r)
    assert r.shape == x.shape and r.dtype == x.dtype
    assert_close("softmax", to_host(r), [x.astype(np.float64)], -1, "float32")


def test_generic_cai_object_gives_numba_device_array():
    x = _x((4, 5), np.float64)
    v, _ = view_of(x)
    r = ns.log_softmax(v)
    assert _is_numba_device_array(r)
    assert_close("log_softmax", to_host(r), [x], -1, "float64")


def test_out_is_returned_and_written():
    x = _x()
    d = cuda().to_device(x)
    out = cuda().device_array_like(d)
    r = ns.softmax(d, out=out)
    assert r is out
    assert_close("softmax", to_host(out), [x.astype(np.float64)], -1, "float32")


def test_out_may_be_another_gpu_kind():
    x = _x((2, 8))
    v, _ = view_of(x)
    out = cuda().device_array(x.shape, dtype=x.dtype)
    assert ns.softmax(v, out=out) is out
    assert_close("softmax", to_host(out), [x.astype(np.float64)], -1, "float32")


def test_float16_and_float64_keep_dtype():
    for dt, name in ((np.float16, "float16"), (np.float64, "float64")):
        x = _x((3, 7), dt)
        r = ns.softmax(cuda().to_device(x))
        assert r.dtype == np.dtype(dt)
        assert_close("softmax", to_host(r).astype(np.float64), [x.astype(np.float64)], -1,
                     name)


@pytest.mark.parametrize("dt", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_give_float64(dt):
    x = (np.arange(12).reshape(3, 4) % 5).astype(dt)
    r = ns.softmax(cuda().to_device(x), axis=0)
    assert r.dtype == np.float64
    assert_close("softmax", to_host(r), [x.astype(np.float64)], 0, "float64")


def test_backward_kinds():
    x = _x((3, 9), np.float64)
    y = reference.softmax(x)
    dy = _x((3, 9), np.float64, 1)
    r = ns.softmax_backward(cuda().to_device(y), cuda().to_device(dy))
    assert _is_numba_device_array(r)
    assert_close("softmax_backward", to_host(r), [y, dy], -1, "float64")
    z = reference.log_softmax(x)
    v, _ = view_of(z)
    r = ns.log_softmax_backward(v, cuda().to_device(dy))
    assert_close("log_softmax_backward", to_host(r), [z, dy], -1, "float64")


# ---------------------------------------------------------------------------------------
# mixing host and device, validation

def test_device_x_host_out():
    d = cuda().to_device(_x())
    with pytest.raises(TypeError, match=r"x is a GPU array.*out is a host array"):
        ns.softmax(d, out=np.empty((3, 6), np.float32))


def test_device_y_host_dy():
    y = cuda().to_device(_x())
    with pytest.raises(TypeError, match=r"y is a GPU array.*dy is a host array"):
        ns.softmax_backward(y, _x())


def test_host_z_device_dz():
    dz = cuda().to_device(_x())
    with pytest.raises(TypeError, match=r"dz is a GPU array.*z is a host array"):
        ns.log_softmax_backward(_x(), dz)


@pytest.mark.parametrize("missing", [0, 1])
def test_missing_gradient_input(missing):
    arrays = [cuda().to_device(_x()), cuda().to_device(_x())]
    arrays[missing] = None
    with pytest.raises(TypeError, match=f"{('y', 'dy')[missing]} must be array-like; got None"):
        ns.softmax_backward(*arrays)


def test_host_x_device_out():
    out = cuda().to_device(_x())
    with pytest.raises(TypeError, match="out"):
        ns.softmax(_x(), out=out)


def test_out_wrong_dtype_shape_readonly():
    d = cuda().to_device(_x())
    with pytest.raises(TypeError, match="out must have dtype float32"):
        ns.softmax(d, out=cuda().device_array((3, 6), np.float64))
    with pytest.raises(ValueError, match=r"out must have shape \(3, 6\)"):
        ns.softmax(d, out=cuda().device_array((6, 3), np.float32))
    base = cuda().to_device(np.zeros(18, np.float32))
    ro = DevView(base, 0, (3, 6), (6, 1), readonly=True)
    with pytest.raises(ValueError, match="writeable"):
        ns.softmax(d, out=ro)


def test_out_with_a_zero_stride_is_refused():
    d = cuda().to_device(_x())
    base = cuda().to_device(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="stride 0 along axis 0 of length 3"):
        ns.softmax(d, out=DevView(base, 0, (3, 6), (0, 1)))
    with pytest.raises(ValueError, match="stride 0 along axis 0 of length 3"):
        ns.logsumexp(d, out=DevView(base, 0, (3,), (0,)))
    np.testing.assert_array_equal(base.copy_to_host(), 0)


def test_logsumexp_sign_out_on_the_value_out_is_refused():
    d = cuda().to_device(_x())
    o = cuda().to_device(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"out\[0\] \(the value\) and out\[1\]"):
        ns.logsumexp(d, return_sign=True, out=(o, o))
    np.testing.assert_array_equal(o.copy_to_host(), 0)
    both = cuda().to_device(np.zeros(6, np.float32))  # interleaved columns: apart
    ns.logsumexp(d, return_sign=True, out=(DevView(both, 0, (3,), (2,)),
                                           DevView(both, 1, (3,), (2,))))
    np.testing.assert_allclose(both.copy_to_host()[0::2], reference.logsumexp(_x(), axis=-1),
                               rtol=1e-6)
    np.testing.assert_array_equal(both.copy_to_host()[1::2], 1)


def test_backward_mismatches():
    a = cuda().to_device(_x())
    with pytest.raises(ValueError, match="y and dy must have the same shape"):
        ns.softmax_backward(a, cuda().to_device(_x((6, 3))))
    with pytest.raises(TypeError, match="z and dz must have the same dtype"):
        ns.log_softmax_backward(a, cuda().to_device(_x(dtype=np.float64)))


def test_unsupported_dtype():
    d = cuda().to_device(np.ones((2, 3), np.complex64))
    with pytest.raises(TypeError, match="x must have dtype"):
        ns.softmax(d)


def test_bad_axis():
    d = cuda().to_device(_x())
    with pytest.raises(np.exceptions.AxisError):
        ns.softmax(d, axis=2)
    with pytest.raises(ValueError):
        ns.softmax(d, axis=(0, 0))
    with pytest.raises(TypeError):
        ns.softmax(d, axis=1.5)


def test_masked_and_opaque_cai_rejected():
    class Masked:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                    "version": 3, "mask": object()}

    with pytest.raises(TypeError, match=r"softmax\(\): x is a masked"):
        ns.softmax(Masked())

    class Opaque:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<V2", "data": (0, False),
                                    "version": 3}

    with pytest.raises(TypeError, match=r"x must have dtype .*; got \|V2"):
        ns.softmax(Opaque())

    class Swapped:
        __cuda_array_interface__ = {"shape": (2,), "typestr": ">f4", "data": (0, False),
                                    "version": 3}

    with pytest.raises(TypeError, match=r"dy has a non-native byte order"):
        ns.softmax_backward(cuda().to_device(np.zeros(2, np.float32)), Swapped())


def test_swapped_device_array_rejected():
    try:
        swapped = cuda().to_device(np.zeros((2, 3), ">f4"))
    except Exception as err:  # noqa: BLE001 - numba-cuda may not make such an array
        pytest.skip(f"numba-cuda makes no '>f4' device array here: {err}")
    with pytest.raises(TypeError, match=r"softmax\(\): x has a non-native byte order "
                                        r"\(numba device array, dtype '>f4'\)"):
        ns.softmax(swapped)


# ---------------------------------------------------------------------------------------
# axes, layouts, edge shapes

@pytest.mark.parametrize("axis", [0, 1, -1, (0, 2), (1, 2), None, ()])
def test_axes(axis):
    x = _x((3, 4, 5), np.float64, 3)
    r = ns.softmax(cuda().to_device(x), axis=axis)
    assert_close("softmax", to_host(r), [x], axis, "float64")


@pytest.mark.parametrize("layout", [
    dict(order=(1, 0)),                      # Fortran / transposed
    dict(steps=(2, 3)),                      # stepped
    dict(flip=(True, False)),                # negative row stride
    dict(flip=(False, True)),                # negative element stride
    dict(order=(1, 0), flip=(True, True)),
])
@pytest.mark.parametrize("func", ["softmax", "log_softmax_backward"])
def test_layouts(layout, func):
    x = _x((4, 6), np.float32, 5)
    if func == "softmax":
        host = [x]
    else:
        host = [reference.log_softmax(x.astype(np.float64)).astype(np.float32), _x((4, 6))]
    views = [view_of(h, **layout)[0] for h in host]
    for axis in (-1, 0):
        r = getattr(ns, func)(*views, axis=axis)
        assert_close(func, to_host(r), [h.astype(np.float64) for h in host], axis, "float32")
        out, check = guarded((4, 6), np.float32, strides=[-1, 5], pad=3)  # scatter path
        assert getattr(ns, func)(*views, axis=axis, out=out) is out
        check()
        assert_close(func, to_host(out), [h.astype(np.float64) for h in host], axis,
                     "float32")


def test_strided_axis_is_gathered(monkeypatch):
    """The GPU has no column kernels: a strided softmax axis, which the CPU path reads in
    place as columns (axis 0 of a C-ordered matrix), is gathered into rows."""
    from numbasoftmax._cuda import api
    from numbasoftmax._layout import COLUMNS, GATHER, ROWS, Meta

    plans = []
    real = api.plan
    monkeypatch.setattr(api, "plan", lambda *a, **k: plans.append(real(*a, **k)) or plans[-1])
    x = _x((5, 16))
    r = ns.softmax(cuda().to_device(x), axis=0)
    assert_close("softmax", to_host(r), [x.astype(np.float64)], 0, "float32")
    (p,) = plans
    assert p.inputs[0].kind == GATHER and p.out.kind == ROWS
    host = [Meta(a.ctypes.data, a.strides, a.itemsize) for a in (x, np.empty_like(x))]
    assert real(x.shape, (0,), host[:1], host[1]).out.kind == COLUMNS  # the CPU's plan


def test_result_keeps_input_layout():
    x = np.asfortranarray(_x((5, 7)))
    v, _ = view_of(x, order=(1, 0))
    r = ns.softmax(v, axis=0)  # softmax axis contiguous in memory: result likewise
    h = to_host(r)
    assert_close("softmax", h, [x.astype(np.float64)], 0, "float32")
    assert r.strides[0] == 4


def test_zero_d_and_empty():
    s = cuda().to_device(np.array(2.5, np.float32))
    assert float(to_host(ns.softmax(s))) == 1.0
    assert float(to_host(ns.log_softmax(s))) == 0.0
    for shape, axis in (((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((0,), None)):
        e = cuda().to_device(np.zeros(shape, np.float32))
        r = ns.softmax(e, axis=axis)
        assert r.shape == shape
        r = ns.softmax_backward(e, e, axis=axis)
        assert r.shape == shape


def test_in_place_and_partial_overlap():
    x = _x((4, 8), np.float32, 9)
    d = cuda().to_device(x)
    assert ns.softmax(d, out=d) is d
    assert_close("softmax", to_host(d), [x.astype(np.float64)], -1, "float32")
    # out overlaps x shifted by one row: x must be read before it is overwritten
    buf = cuda().to_device(np.concatenate([x.ravel(), np.zeros(8, np.float32)]))
    xv = DevView(buf, 0, (4, 8), (8, 1))
    ov = DevView(buf, 8, (4, 8), (8, 1))
    ns.log_softmax(xv, out=ov)
    assert_close("log_softmax", to_host(ov), [x.astype(np.float64)], -1, "float32")


def test_deterministic():
    x = _x((3, 70), np.float32, 4)
    d = cuda().to_device(x)
    a = to_host(ns.softmax(d))
    b = to_host(ns.softmax(d))
    assert a.tobytes() == b.tobytes()


def test_threads():
    """Calls from several threads (the simulator serializes launches; caches and the
    compile lock are exercised)."""
    shapes = [(2, 5), (3, 8), (2, 40)]
    errors = []

    def work(k):
        try:
            for j in range(2):
                x = _x(shapes[(k + j) % 3], np.float32, k * 10 + j)
                r = ns.softmax(cuda().to_device(x))
                assert_close("softmax", to_host(r), [x.astype(np.float64)], -1, "float32")
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


# ---------------------------------------------------------------------------------------
# availability and laziness (subprocesses)

def _run(code, env_sim=None):
    """Run ``code`` in a fresh interpreter; env_sim: force the simulator on or off."""
    import os

    env = dict(os.environ)
    if env_sim is not None:
        env["NUMBA_ENABLE_CUDASIM"] = "1" if env_sim else "0"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_import_is_lazy():
    r = _run("""
        import sys
        import numpy as np
        import numbasoftmax
        numbasoftmax.softmax(np.ones((2, 3)))
        bad = [m for m in ("numba.cuda", "cupy", "torch") if m in sys.modules]
        assert not bad, bad
    """)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("sim", [False, True], ids=["gpu", "simulator"])
def test_clear_error_without_numba_cuda(sim):
    """numba still ships a numba.cuda of its own; without numba-cuda the error names the
    missing package and the extras, with or without the simulator."""
    r = _run("""
        import sys
        sys.modules["numba_cuda"] = None   # as if numba-cuda were not installed
        import warnings
        warnings.simplefilter("ignore")
        import numpy as np
        import numbasoftmax

        class G:
            __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4",
                                        "data": (1 << 20, False), "version": 3}
        try:
            numbasoftmax.softmax(G())
        except RuntimeError as err:
            msg = str(err)
            assert "numba-cuda is not installed" in msg and "x is a GPU array" in msg, msg
            assert "numbasoftmax[cuda12]" in msg, msg
        else:
            raise SystemExit("no error")
        print(numbasoftmax.softmax(np.zeros(2)))   # numpy still works
    """, env_sim=sim)
    assert r.returncode == 0, r.stderr + r.stdout


def test_clear_error_without_gpu(monkeypatch):
    from numbasoftmax._cuda import api

    monkeypatch.setattr(api, "_launch", None)
    monkeypatch.setattr(cuda(), "is_available", lambda: False)
    with pytest.raises(api.CudaUnavailableError, match="no usable GPU"):
        ns.softmax(cuda().to_device(_x()))


def test_simulator_flag_matches():
    from numbasoftmax._cuda import launch

    assert launch.SIM == SIM


def test_torch_cpu_tensor_is_a_host_array():
    torch = pytest.importorskip("torch")
    d = cuda().to_device(_x())
    with pytest.raises(TypeError, match=r"out is a host array \(torch.Tensor on cpu\)"):
        ns.softmax(d, out=torch.zeros(3, 6))
    with pytest.raises(TypeError, match="dy is a host array"):
        ns.softmax_backward(d, torch.zeros(3, 6))


@pytest.mark.parametrize("kind", ["f4", "f2"])
def test_plans(kind):
    """Strategy thresholds on a GPU-like device (132 SMs, 227 KB shared memory)."""
    from numbasoftmax._cuda import launch

    h100 = launch.DeviceProps(132, 232448)
    with launch.config.override(block=None, max_grid=None):
        def spec(n, op="softmax"):
            return launch.plan(op, kind, (1 << 26) // n, n, True, h100, sim=False).steps[0].spec

        got = {n: spec(n) for n in (32, 1024, 2048, 2056, 16384, 16392, 32768, 65536,
                                    262144)}
        bwd = {n: spec(n, "softmax_backward") for n in (2048, 2056, 8192, 8200, 16384)}
        grid = launch.plan("softmax", kind, 1 << 21, 32, True, h100, sim=False).steps[0].grid
    assert got[32].strategy == "rows" and got[32].V == 16 // launch.STORAGE[kind].itemsize
    # in registers: a warp a row up to 2048 elements, then (forward) several warps, up to
    # 1024 threads; the gradients' longer rows are cached in shared memory
    assert {got[n].strategy for n in (1024, 2048, 2056, 16384)} == {"rows"}
    assert got[2048].G == bwd[2048].G == 32 and got[2056].G > 32 and got[16384].G == 1024
    assert bwd[2048].strategy == "rows"
    assert got[16392].strategy == got[32768].strategy == "smem"
    assert {bwd[n].strategy for n in (2056, 8192, 8200, 16384)} == {"smem"}
    # blocks of a row cached in shared memory: 16 packs a thread forward, 4 for gradients,
    # at least 128 and 256 threads
    assert got[16392].B == (256 if kind == "f4" else 128) and bwd[2056].B == 256
    assert bwd[8192].B == (512 if kind == "f4" else 256)
    assert bwd[16384].B == (1024 if kind == "f4" else 512)
    assert got[32768].B == (512 if kind == "f4" else 256)
    assert got[262144].strategy.startswith("split")  # 256 rows < 2 x 132 SMs
    # rows are cached in the compute type (float32 for float16): 65536 do not fit
    assert got[65536].strategy == "long"
    assert grid == 132 * 32


def test_dispatch_without_gpu_array():
    from numbasoftmax._cuda import api
    from numbasoftmax._ops import SOFTMAX

    with pytest.raises(TypeError, match="no GPU array"):
        api.dispatch(SOFTMAX, (np.zeros(3),), -1, None)


# ---------------------------------------------------------------------------------------
# the array adapters (cupy and torch themselves need a GPU: test_gpu_frameworks.py)

def test_adapters_by_type():
    from numbasoftmax._cuda import arrays

    torch = pytest.importorskip("torch")
    assert arrays.fast_adapter(torch.Tensor) is arrays.TORCH
    assert arrays.fast_adapter(torch.nn.Parameter) is None  # subclasses: the general path
    assert arrays.fast_adapter(np.ndarray) is None
    assert arrays.describe(torch.zeros(2), "x", "softmax") is None  # a CPU tensor: host
    d = arrays.describe(cuda().to_device(np.zeros((2, 3), np.float32)), "x", "softmax")
    assert d.lib is arrays.NUMBA and d.shape == (2, 3) and d.strides == (12, 4)
    assert d.located().where == "numba device array on cuda:0"


def test_out_apart_from_the_inputs_or_one_of_them():
    from numbasoftmax._cuda.arrays import apart_or_same

    assert apart_or_same(100, 50, [(0, 100), (150, 10)])  # touching is not sharing
    assert apart_or_same(100, 50, [(100, 50), (0, 10)])  # in place
    assert not apart_or_same(100, 50, [(0, 101)])
    assert not apart_or_same(100, 50, [(149, 10)])
    assert not apart_or_same(100, 50, [(120, 4)])  # inside
    assert not apart_or_same(100, 50, [(0, 400)])  # around
    assert not apart_or_same(100, 50, [(100, 49)])  # the same start, not the same bytes


def test_torch_dtypes():
    from numbasoftmax._cuda import arrays

    torch = pytest.importorskip("torch")
    assert arrays.TORCH.dtype(torch.bfloat16) is arrays.BF16
    assert arrays.TORCH.dtype(torch.float16) == np.float16
    assert arrays.TORCH.dtype(torch.bool) == np.bool_
    # numpy has no float8: its torch name, or ml_dtypes' numpy dtype where that is imported
    f8 = arrays.TORCH.dtype(torch.float8_e4m3fn)
    assert str(f8) in ("torch.float8_e4m3fn", "float8_e4m3fn") and f8 not in arrays.KIND
    from numbasoftmax._inputs import result_dtype

    with pytest.raises(TypeError, match=r"x must have dtype .*bfloat16.*got (torch\.)?float8"):
        result_dtype(f8, "x", "softmax", extra=(arrays.BF16,))


def test_torch_fast_path_declines_cpu_tensors():
    from numbasoftmax._cuda import arrays, launch
    from numbasoftmax._ops import SOFTMAX

    torch = pytest.importorskip("torch")
    assert arrays.TORCH.fast(launch, SOFTMAX, (torch.zeros(2, 8),)) is None


# ---------------------------------------------------------------------------------------
# where=, dtype= and logsumexp on dask arrays of GPU blocks: not yet (refused by the shared
# API layer, naming the parameter or the operation, before anything is launched)

NOT_YET = "not supported on GPU arrays yet"


def _gpu_kinds():
    """A numba device array and a generic CAI object of the same (4, 6) float32 data."""
    x = _x((4, 6))
    return x, [cuda().to_device(x), view_of(x)[0]]


# where= cases: (strategy, 16-byte vector loads, dtype, mask), every strategy reading a mask
WHERE_CASES = [("rows", True, "float32", "full"), ("rows", False, "float16", "row"),
               ("smem", True, "float64", "col"), ("smem", False, "float32", "full"),
               ("long", True, "float32", "row"), ("split", False, "float32", "full")]


def _mask(kind, m, n, rng):
    if kind == "row":  # (N,): broadcast over the rows, read in place
        return rng.random(n) > 0.3
    if kind == "col":  # (M, 1): a value per row
        return np.array([[True], [False], [True], [True]])[:m]
    w = rng.random((m, n)) > 0.3
    w[2] = False  # a row without included elements
    return w


def _op_args(func, shape, dtype, rng, scale):
    """The arguments of ``func``: logits (x[0, 1] = -inf), or a gradient's pair."""
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    x[0, 1] = -np.inf
    if func.endswith("backward"):
        return [np.abs(x) / 8, rng.standard_normal(shape).astype(dtype)]
    return [x]


@pytest.mark.parametrize("strategy, vec, dtype, mask", WHERE_CASES,
                         ids=["-".join(map(str, c)) for c in WHERE_CASES])
def test_where_matches_the_reference(strategy, vec, dtype, mask):
    """Excluded elements leave the max and the sums and give 0 (log_softmax: -inf) and 0
    gradient; a row without included elements gives 0 / -inf."""
    from numbasoftmax._cuda import launch

    rng = np.random.default_rng(len(strategy) + len(mask))
    m, n = 4, 40 if vec else 37
    w = _mask(mask, m, n, rng)
    for func in FUNCS4:
        args = _op_args(func, (m, n), dtype, rng, 3)
        with launch.config.override(force=strategy, vector=vec):
            got = to_host(getattr(ns, func)(*[cuda().to_device(a) for a in args],
                                            where=cuda().to_device(w)))
        want = getattr(reference, func)(*[a.astype(np.float64) for a in args], where=w)
        assert got.dtype == np.dtype(dtype)
        assert_close(func, got.astype(np.float64), [a.astype(np.float64) for a in args], -1,
                     dtype, where=w)
        excluded = ~np.broadcast_to(w, (m, n))
        assert np.array_equal(got[excluded], want[excluded]), func  # exactly 0 / -inf


def test_where_all_true_is_the_unmasked_result_bitwise():
    rng = np.random.default_rng(2)
    for n in (37, 300):
        x = cuda().to_device((rng.standard_normal((3, n)) * 3).astype(np.float32))
        w = cuda().to_device(np.ones(n, bool))
        for func in ("softmax", "log_softmax"):
            a = to_host(getattr(ns, func)(x, where=w))
            b = to_host(getattr(ns, func)(x))
            assert a.tobytes() == b.tobytes(), (func, n)


def test_where_mask_layouts():
    """Masks the kernels read in place, a byte per row, and layouts gathered first: a
    transposed mask, a 3-D call along a middle axis, a transposed x along axis 0."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((4, 5, 6)) * 2).astype(np.float32)
    masks = [rng.random((4, 5, 6)) > 0.4, rng.random((5, 1)) > 0.4,
             rng.random((4, 1, 6)) > 0.4, np.asfortranarray(rng.random((4, 5, 6)) > 0.4)]
    for w in masks:
        for axis in (-1, 1):
            got = to_host(ns.log_softmax(cuda().to_device(x), axis=axis,
                                         where=cuda().to_device(w)))
            want = reference.log_softmax(x.astype(np.float64), axis=axis, where=w)
            assert np.array_equal(np.isinf(got), np.isinf(want)), (w.shape, axis)
            fin = np.isfinite(want)
            assert np.allclose(got[fin], want[fin], rtol=1e-5, atol=1e-5), (w.shape, axis)
    # outer dims the kernels cannot follow (four runs of alternating broadcast): gathered
    x5 = (rng.standard_normal((2, 3, 2, 3, 4)) * 2).astype(np.float32)
    w5 = rng.random((2, 1, 2, 1, 4)) > 0.4
    got = to_host(ns.softmax(cuda().to_device(x5), where=cuda().to_device(w5)))
    assert np.allclose(got, reference.softmax(x5.astype(np.float64), where=w5), rtol=1e-5,
                       atol=1e-7)
    x2 = _x((6, 8))
    w2 = rng.random((6, 8)) > 0.3
    got = to_host(ns.softmax(view_of(x2, order=(1, 0))[0], axis=0,
                             where=view_of(w2, order=(1, 0))[0]))
    assert np.allclose(got, reference.softmax(x2.astype(np.float64), axis=0, where=w2),
                       rtol=1e-5, atol=1e-7)


def test_where_bad_masks_on_gpu():
    x, kinds = _gpu_kinds()
    d = kinds[0]
    with pytest.raises(TypeError, match="where must be a boolean array; got dtype int32"):
        ns.softmax(d, where=cuda().to_device(np.ones(6, np.int32)))
    with pytest.raises(ValueError, match=r"where of shape \(5,\) does not broadcast to the "
                                         r"shape \(4, 6\) of x"):
        ns.softmax(d, where=cuda().to_device(np.ones(5, bool)))
    with pytest.raises(TypeError, match="where is a host array"):
        ns.softmax(d, where=np.ones(6, bool))
    with pytest.raises(TypeError, match="where is a numba.* but x is a host array"):
        ns.softmax(x, where=cuda().to_device(np.ones(6, bool)))
    # Python objects are named as what they are, not as host arrays
    with pytest.raises(TypeError, match=r"where is a builtins.bool, not an array"):
        ns.softmax(d, where=True)
    with pytest.raises(TypeError, match=r"out is a builtins.list, not an array"):
        ns.softmax(d, out=[1, 2])


FUNCS4 = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
# dtype= pairs (input, result), each on one strategy, so that every strategy reads
# converted inputs: upcasts, downcasts, and float64 -> float16 (rounded once, not through
# float32)
DTYPE_CASES = [("float16", "float32", "rows"), ("float32", "float64", "smem"),
               ("float64", "float32", "long"), ("float32", "float16", "split"),
               ("float64", "float16", "rows"), ("float16", "float64", "smem")]


@pytest.mark.parametrize("src, dst, strategy", DTYPE_CASES,
                         ids=[f"{a}-to-{b}-{c}" for a, b, c in DTYPE_CASES])
def test_dtype_is_the_cast_input_bitwise(src, dst, strategy):
    """dtype= reads the input as stored and converts as it reads: bitwise the result of
    casting first (with the scalar loads the converting kernels use), in the result's
    dtype."""
    from numbasoftmax._cuda import launch

    for func in FUNCS4:
        args = _op_args(func, (3, 37), src, np.random.default_rng(0), 4)
        with launch.config.override(force=strategy, vector=False):
            got = to_host(getattr(ns, func)(*[cuda().to_device(a) for a in args], dtype=dst))
            cast = to_host(getattr(ns, func)(*[cuda().to_device(a.astype(dst)) for a in args]))
        assert got.dtype == np.dtype(dst), func
        assert np.array_equal(got.view(np.uint8), cast.view(np.uint8)), func


def test_dtype_with_gathered_and_staged_layouts():
    """Inputs gathered (F order, strided) in their own dtype, results staged (axis 0), out=
    of the requested dtype; integers take the converting copy."""
    x = _x((4, 6), np.float16, 3)
    for view in (view_of(x, order=(1, 0))[0], view_of(x, steps=(1, 2))[0]):
        host = view.copy_to_host()
        for axis in (-1, 0):
            got = to_host(ns.log_softmax(view, axis=axis, dtype=np.float32))
            assert got.dtype == np.float32
            assert_close("log_softmax", got.astype(np.float64), [host.astype(np.float64)],
                         axis, "float32")
    out = cuda().device_array((4, 6), np.float64)
    assert ns.softmax(cuda().to_device(x), dtype="float64", out=out) is out
    assert_close("softmax", out.copy_to_host(), [x.astype(np.float64)], -1, "float64")
    with pytest.raises(TypeError, match="out"):
        ns.softmax(cuda().to_device(x), dtype="float64",
                   out=cuda().device_array((4, 6), np.float32))
    i = cuda().to_device(np.arange(12, dtype=np.int32).reshape(2, 6))
    got = to_host(ns.softmax(i, dtype="float32"))
    assert got.dtype == np.float32
    assert_close("softmax", got.astype(np.float64), [np.arange(12.0).reshape(2, 6)], -1,
                 "float32")


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("src", ["int32", "int64", "bool"])
def test_integer_and_bool_inputs_with_dtype_float16(op, src):
    """Integer and bool inputs converted to float16 values as numpy's astype does (they
    were stored as the integer's low bits: 1 became 6e-8 and -1 NaN), then bitwise the
    float16 call on those values."""
    host = (np.arange(-6, 6).reshape(2, 6) % 5 - 2).astype(src)
    got = to_host(getattr(ns, op)(cuda().to_device(host), dtype="float16"))
    want = to_host(getattr(ns, op)(cuda().to_device(host.astype(np.float16))))
    assert got.dtype == np.float16
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_dtype_bad_values_on_gpu():
    x, kinds = _gpu_kinds()
    for d in kinds:
        with pytest.raises(TypeError, match="dtype must be None, float16, float32 or float64"):
            ns.softmax(d, dtype="int32")
        assert to_host(ns.softmax(d, dtype=np.float32)).dtype == np.float32


def test_bfloat16_inputs_converted_as_read():
    """torch's bfloat16 (launcher level under the simulator): read as bfloat16, computed
    and written as float32, bitwise the float32 run on the (exactly) widened values."""
    from gpu_helpers import bf16_bits, bf16_values

    from numbasoftmax._cuda import launch

    rng = np.random.default_rng(4)
    m, n = 3, 37
    bits = bf16_bits(rng.standard_normal((m, n)) * 3)
    wide = bf16_values(bits).astype(np.float32)

    def run(host, src):
        out = np.zeros((m, n), np.float32)
        buf = launch.Buf(host.ctypes.data, m * n, launch.STORAGE[src])
        with launch.Scratch(0, 0) as scratch:
            launch.run_rows("softmax", "f4", [(buf, n)],
                            (launch.Buf(out.ctypes.data, m * n, np.dtype(np.float32)), n),
                            m, n, 0, 0, scratch, src)
        return out

    assert np.array_equal(run(bits, "bf16"), run(wide, "f4"))


def _dask_of_device(host, chunks):
    """A dask array of numba device arrays (the simulator's too)."""
    da = pytest.importorskip("dask.array")
    meta = cuda().to_device(np.empty((0,) * host.ndim, host.dtype))
    return da.from_array(host, chunks=chunks).map_blocks(
        lambda b: cuda().to_device(np.ascontiguousarray(b)), meta=meta)


def _computed(d):
    """A dask result on the host (dask joins numba device arrays' blocks into numpy)."""
    r = d.compute(scheduler="synchronous")
    return r if isinstance(r, np.ndarray) else to_host(r)


def test_dask_of_gpu_blocks_where_and_dtype():
    """where= and dtype= on dask arrays of GPU blocks: each task runs the GPU path on its
    blocks (rows whole in a block: numba device arrays cannot be concatenated)."""
    x = _x((4, 6))
    w = np.random.default_rng(1).random((4, 6)) > 0.3
    w[1] = False
    dx, dw = _dask_of_device(x, (2, 6)), _dask_of_device(w, (2, 6))
    got = ns.softmax(dx, where=dw)
    assert _is_numba_device_array(got._meta)
    assert_close("softmax", _computed(got), [x.astype(np.float64)], -1, "float32", where=w)
    got = ns.log_softmax(dx, dtype="float64")
    assert got.dtype == np.float64
    assert_close("log_softmax", _computed(got), [x.astype(np.float64)], -1, "float64")


def test_dask_of_gpu_blocks_logsumexp():
    x = _x((4, 6))
    v, sign = ns.logsumexp(_dask_of_device(x, (4, 3)), axis=0, return_sign=True)
    assert np.allclose(_computed(v), reference.logsumexp(x, axis=0), rtol=1e-5)
    assert np.array_equal(_computed(sign), np.ones(6, np.float32))
    lse = reference.logsumexp(x).astype(np.float32)
    g = ns.logsumexp_backward(_dask_of_device(x, (2, 6)), _dask_of_device(lse, 2),
                              _dask_of_device(lse, 2))
    assert np.allclose(_computed(g), reference.logsumexp_backward(x, lse, lse), rtol=1e-5)


def test_dask_of_gpu_blocks_host_mask_refused():
    """The mask lives where x does: a host mask for GPU blocks, and GPU blocks of a mask
    for numpy blocks of x, are TypeErrors naming where, at call time."""
    da = pytest.importorskip("dask.array")
    x = _x((4, 6))
    with pytest.raises(TypeError, match=r"x is a dask array of numba.\w+ blocks but where is "
                                        r"a host array \(numpy.ndarray\)"):
        ns.softmax(_dask_of_device(x, (2, 6)), where=np.ones(6, bool))
    dw = _dask_of_device(np.ones((4, 6), bool), (2, 6))
    with pytest.raises(TypeError, match=r"where is a dask array of numba.\w+ blocks but x is "
                                        r"a host array \(a dask array of numpy.ndarray"):
        ns.softmax(da.from_array(x, chunks=(2, 6)), where=dw)


@pytest.mark.parametrize("call", [
    lambda dx, _: ns.softmax(dx),
    lambda dx, _: ns.log_softmax(dx, axis=None),
    lambda dx, _: ns.softmax_backward(dx, dx),
    lambda dx, _: ns.logsumexp(dx),
    lambda dx, dw: ns.softmax(dx, where=dw),
    lambda dx, _: ns.log_softmax(dx, dtype="float64"),
], ids=["softmax", "axis-None", "gradient", "logsumexp", "where", "dtype"])
def test_dask_of_gpu_blocks_split_axis_refused_at_call_time(call):
    """numba device arrays as dask blocks can be neither merged nor reduced by dask: a
    softmax axis split across them is a TypeError naming x (y) and the axis when the call
    is made, not a failure (or a silent trip through the host) at compute time."""
    x = _x((4, 6))
    dx, dw = _dask_of_device(x, (4, 3)), _dask_of_device(x > 0, (4, 3))
    with pytest.raises(TypeError, match=r"[xy] is a dask array of numba.\w+ blocks in 2 chunks "
                                        r"along axis 1, which \w+\(\) reduces over"):
        call(dx, dw)


def test_dask_of_gpu_blocks_with_other_operands_refused_at_call_time():
    """Next to a dask array of GPU blocks: a numba device array (dask would chunk it on
    the host), a numpy array, and a mask that its blocks cannot broadcast are TypeErrors
    at call time, naming what was given."""
    x = _x((4, 6))
    dx = _dask_of_device(x, (2, 6))
    with pytest.raises(TypeError, match=r"dy is a numba.\w+ next to a dask array"):
        ns.softmax_backward(dx, cuda().to_device(x))
    with pytest.raises(TypeError, match=r"y is a dask array of numba.\w+ blocks but dy is a "
                                        r"host array \(numpy.ndarray\)"):
        ns.softmax_backward(dx, x)
    with pytest.raises(TypeError, match=r"where has shape \(6,\) and must be broadcast to "
                                        r"x's \(4, 6\)"):
        ns.softmax(dx, where=_dask_of_device(np.ones(6, bool), 6))


@pytest.mark.parametrize("call, name", [
    (lambda x: ns.softmax_backward(_dask_of_device(x, (4, 6)), _dask_of_device(x, (4, 3))),
     "dy"),
    (lambda x: ns.softmax(_dask_of_device(x, (4, 6)), where=_dask_of_device(x > 0, (2, 6))),
     "where"),
    (lambda x: ns.logsumexp(_dask_of_device(x, (4, 6)), b=_dask_of_device(x, (4, 3))), "b"),
], ids=["dy", "where", "b"])
def test_dask_of_gpu_blocks_other_chunks_refused_at_call_time(call, name):
    """An argument of numba device blocks in other chunks than x's would have to be
    rechunked, which dask does on the host: a TypeError naming it at call time."""
    with pytest.raises(TypeError, match=rf"{name} is a dask array of numba.\w+ blocks "
                                        r"chunked .*neither merge nor split"):
        call(_x((4, 6)))


def test_a_device_mask_next_to_a_dask_array_is_refused():
    dx = _dask_of_device(_x((4, 6)), (2, 6))
    with pytest.raises(TypeError, match=r"where is a numba.\w+ next to a dask array"):
        ns.softmax(dx, where=cuda().to_device(np.ones((4, 6), bool)))


@pytest.mark.parametrize("dtypes, dtype", [((np.int32, np.int64), None),
                                           ((np.float32, np.int32), np.float32)],
                         ids=["two-integers", "integer-with-dtype"])
def test_gradient_pair_takes_the_cpu_rule(dtypes, dtype):
    """The pair rule compares result dtypes, as on the CPU: two integer dtypes both compute
    in float64; with dtype=, an integer input is read as that dtype."""
    y = (np.arange(12).reshape(3, 4) % 3).astype(dtypes[0])
    dy = (np.arange(12).reshape(3, 4) % 5).astype(dtypes[1])
    got = ns.softmax_backward(cuda().to_device(y), cuda().to_device(dy), dtype=dtype)
    want = ns.softmax_backward(y, dy, dtype=dtype)
    np.testing.assert_allclose(to_host(got), want, rtol=1e-6, atol=1e-6)
