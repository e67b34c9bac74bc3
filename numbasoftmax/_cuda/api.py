"""GPU entry point: ``dispatch(func, arrays, axis, out)``, called by ``numbasoftmax._api`` for
inputs that live on a GPU.

Array kinds: ``cupy.ndarray`` (result: cupy), torch CUDA tensors (result: torch), numba
device arrays and any other object with ``__cuda_array_interface__`` (result: a numba
device array). The result lives on the input's device and is laid out like the input
(the softmax axes innermost), so its rows are contiguous.

Work is queued on the caller's current stream (cupy's or torch's current stream; for
other arrays the stream named in their ``__cuda_array_interface__``, else the default
stream) and the host never waits for it.

Layouts: rows whose elements are contiguous and evenly spaced are read and written in
place. Any other layout (transposed axes, steps, negative strides) is first gathered into
a contiguous temporary by a copy kernel (and ``out`` is written through one), on the same
stream: correct for every layout, at the cost of one extra pass. Integer and bool inputs
are converted to float64 the same way, as on the CPU.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from .._layout import normalize_axes, permutation

_NAMES = {
    "softmax": ("x",),
    "log_softmax": ("x",),
    "softmax_backward": ("y", "dy"),
    "log_softmax_backward": ("z", "dz"),
}

_KIND = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8", np.dtype(np.float16): "f2"}
BF16 = "bfloat16"


class CudaUnavailableError(RuntimeError):
    """A GPU array was passed but the GPU path cannot run (no numba-cuda, no GPU)."""


# ---------------------------------------------------------------------------------------
# describing arrays

class Desc:
    """What the GPU path needs to know about one array."""

    __slots__ = ("obj", "lib", "ptr", "shape", "strides", "dtype", "dev", "readonly",
                 "stream", "where")

    def __init__(self, obj, lib, ptr, shape, strides, dtype, dev, readonly=False,
                 stream=None, where=""):
        self.obj = obj
        self.lib = lib  # "cupy" | "torch" | "numba" | "cai" | "host"
        self.ptr = ptr
        self.shape = shape
        self.strides = strides  # bytes
        self.dtype = dtype  # numpy dtype, or BF16
        self.dev = dev
        self.readonly = readonly
        self.stream = stream
        self.where = where

    @property
    def itemsize(self):
        return 2 if self.dtype == BF16 else self.dtype.itemsize


def _c_strides(shape, itemsize):
    strides = []
    acc = itemsize
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def _typename(obj):
    t = type(obj)
    return f"{t.__module__.partition('.')[0]}.{t.__name__}"


def _is_sim_array(obj):
    return type(obj).__name__ == "FakeCUDAArray" and hasattr(obj, "_ary")


_TORCH_DTYPES = None


def _torch_dtype(t):
    global _TORCH_DTYPES
    if _TORCH_DTYPES is None:
        import torch

        _TORCH_DTYPES = {torch.bfloat16: BF16}
        for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                     "uint8", "bool"):
            _TORCH_DTYPES[getattr(torch, name)] = np.dtype(name)
    dt = _TORCH_DTYPES.get(t.dtype)
    if dt is None:
        raise TypeError(f"unsupported torch dtype {t.dtype}")
    return dt


def describe(obj):
    """Desc of a GPU array, or a Desc with lib == "host" for anything else."""
    module = type(obj).__module__.partition(".")[0]
    if module == "cupy":
        import cupy

        if isinstance(obj, cupy.ndarray):
            dev = obj.data.device_id
            return Desc(obj, "cupy", obj.data.ptr, obj.shape, obj.strides, obj.dtype, dev,
                        where=f"cupy.ndarray on cuda:{dev}")
    if module == "torch":
        import torch

        if isinstance(obj, torch.Tensor):
            if not obj.is_cuda:
                return Desc(obj, "host", 0, (), (), None, None,
                            where=f"torch.Tensor on {obj.device}")
            if obj.requires_grad and torch.is_grad_enabled():
                raise TypeError("numbasoftmax does not record autograd history; pass a "
                                "tensor that does not require grad (tensor.detach()) or "
                                "call it under torch.no_grad()")
            dtype = _torch_dtype(obj)
            item = 2 if dtype == BF16 else dtype.itemsize
            dev = obj.device.index
            return Desc(obj, "torch", obj.data_ptr(), tuple(obj.shape),
                        tuple(s * item for s in obj.stride()), dtype, dev,
                        where=f"torch.Tensor on cuda:{dev}")
    if _is_sim_array(obj):  # the CUDA simulator's device arrays (host memory)
        a = obj._ary
        return Desc(obj, "numba", a.__array_interface__["data"][0], a.shape, a.strides,
                    a.dtype, 0, where="numba device array")
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return _describe_cai(obj, cai)
    return Desc(obj, "host", 0, (), (), None, None, where=f"{_typename(obj)} (host memory)")


def _describe_cai(obj, cai):
    lib = "numba" if getattr(type(obj), "__cuda_ndarray__", False) else "cai"
    name = "numba device array" if lib == "numba" else _typename(obj)
    if cai.get("mask") is not None:
        raise TypeError(f"masked __cuda_array_interface__ arrays are not supported ({name})")
    shape = tuple(int(s) for s in cai["shape"])
    typestr = cai["typestr"]
    dtype = np.dtype(typestr)
    if dtype.kind == "V":
        raise TypeError(f"unsupported __cuda_array_interface__ typestr {typestr!r} ({name}); "
                        "bfloat16 is supported for torch tensors")
    ptr, readonly = cai["data"]
    strides = cai.get("strides")
    strides = _c_strides(shape, dtype.itemsize) if strides is None else tuple(strides)
    stream = cai.get("stream")
    # the device is looked up once the GPU path is known to be usable (_resolve_devices)
    return Desc(obj, lib, int(ptr or 0), shape, strides, dtype, None, bool(readonly),
                stream if isinstance(stream, int) and stream > 0 else None,
                where=f"{name} (GPU memory)")


def _resolve_devices(descs):
    for d in descs:
        if d is not None and d.dev is None:
            d.dev = _pointer_device(d.ptr) if d.ptr else 0
            d.where = d.where.replace("(GPU memory)", f"on cuda:{d.dev}")


def _pointer_device(ptr):
    from . import launch

    if launch.SIM:
        return 0
    from numba.cuda.cudadrv.driver import binding, driver

    attr = binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    return int(driver.cuPointerGetAttribute(attr, ptr))


# ---------------------------------------------------------------------------------------
# availability

_launch = None


def _load(func, desc, name):
    """The launch module, or a CudaUnavailableError that says why."""
    global _launch
    if _launch is not None:
        return _launch
    why = None
    try:
        # numba still ships a numba.cuda of its own, which is not what runs the kernels
        if importlib.util.find_spec("numba_cuda") is None:
            raise ImportError("no module named numba_cuda")
        from numba import cuda
    except ImportError as err:
        why = (f"numba-cuda is not installed ({err}); install numbasoftmax[cuda12] or "
               "numbasoftmax[cuda13] (the GPU extras), or numba-cuda for the CUDA simulator")
    else:
        try:
            ok = cuda.is_available()
        except Exception as err:  # noqa: BLE001 - any driver failure means no GPU
            ok, why = False, f"CUDA is not usable ({err})"
        if not ok and why is None:
            why = "numba-cuda finds no usable GPU or CUDA driver"
    if why is not None:
        raise CudaUnavailableError(f"{func}(): {name} is a GPU array ({desc.where}) but the "
                                   f"GPU path is unavailable: {why}. numpy arrays still "
                                   "work.")
    from . import launch

    _launch = launch
    return launch


# ---------------------------------------------------------------------------------------
# allocation, streams, devices

def _alloc(lib, shape, dtype, dev, stream=0):
    """A C-contiguous array of ``shape`` and ``dtype`` (numpy dtype or BF16) on ``dev``;
    a numba array is bound to ``stream`` (a raw handle), so that its ``copy_to_host()``
    waits for the work queued there."""
    if lib == "cupy":
        import cupy

        with cupy.cuda.Device(dev):
            return cupy.empty(shape, dtype=dtype)
    if lib == "torch":
        import torch

        tdt = torch.bfloat16 if dtype == BF16 else getattr(torch, np.dtype(dtype).name)
        return torch.empty(shape, dtype=tdt, device=f"cuda:{dev}")
    from numba import cuda

    s = _launch.numba_stream(stream)
    if _launch.SIM:
        return cuda.device_array(shape, dtype=dtype, stream=s)
    with cuda.gpus[dev]:
        return cuda.device_array(shape, dtype=dtype, stream=s)


def _transpose(lib, arr, axes):
    """``arr`` (C-contiguous) viewed with its axes permuted."""
    if lib == "cupy":
        return arr.transpose(axes)
    if lib == "torch":
        return arr.permute(axes)
    if _launch.SIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(arr._ary.transpose(axes), stream=arr.stream)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(tuple(arr.shape[a] for a in axes),
                         tuple(arr.strides[a] for a in axes), arr.dtype, stream=arr.stream,
                         gpu_data=arr.gpu_data)


def _data_ptr(lib, arr):
    if lib == "cupy":
        return arr.data.ptr
    if lib == "torch":
        return arr.data_ptr()
    if _launch.SIM:
        return arr._ary.__array_interface__["data"][0]
    return arr.__cuda_array_interface__["data"][0]


def _stream(desc):
    """Raw handle of the stream to launch on."""
    if desc.lib == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    if desc.lib == "torch":
        import torch

        return torch.cuda.current_stream(desc.dev).cuda_stream
    if desc.stream is not None:
        return desc.stream
    return 0


class _Device:
    """Makes ``dev`` current for the call when it is not (several GPUs)."""

    def __init__(self, desc):
        self.desc = desc
        self.cm = None

    def __enter__(self):
        d = self.desc
        if _launch.SIM:
            return self
        if d.lib == "cupy":
            import cupy

            if cupy.cuda.runtime.getDevice() != d.dev:
                self.cm = cupy.cuda.Device(d.dev)
        elif d.lib == "torch":
            import torch

            if torch.cuda.current_device() != d.dev:
                self.cm = torch.cuda.device(d.dev)
        else:
            from numba import cuda

            self.cm = cuda.gpus[d.dev]
        if self.cm is not None:
            self.cm.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cm is not None:
            self.cm.__exit__(*exc)


# ---------------------------------------------------------------------------------------
# layout

def _row_stride(shape, strides, itemsize, perm, naxes):
    """Row stride (elements) when the array, axes permuted by ``perm`` (softmax axes last),
    is M evenly spaced contiguous rows; None otherwise."""
    expect = itemsize
    for a in reversed(perm[len(perm) - naxes:]):
        if shape[a] != 1:
            if strides[a] != expect:
                return None
            expect *= shape[a]
    n_bytes = expect
    others = [a for a in perm[:len(perm) - naxes] if shape[a] != 1]
    if not others:
        return n_bytes // itemsize
    rs = strides[others[-1]]
    acc = rs
    for a in reversed(others):
        if strides[a] != acc:
            return None
        acc *= shape[a]
    if rs < 0 or rs % itemsize:
        return None
    return rs // itemsize


def _extent(d):
    """(lowest byte address, highest byte address + 1) touched by ``d``."""
    lo = hi = d.ptr
    for s, st in zip(d.shape, d.strides, strict=True):
        if s == 0:
            return d.ptr, d.ptr
        if st < 0:
            lo += (s - 1) * st
        else:
            hi += (s - 1) * st
    return lo, hi + d.itemsize


def _same_view(a, b):
    return a.ptr == b.ptr and a.shape == b.shape and a.strides == b.strides


def _overlap(a, b):
    alo, ahi = _extent(a)
    blo, bhi = _extent(b)
    return alo < bhi and blo < ahi


def _storage_dtype(kind):
    return _launch.STORAGE[kind]


# ---------------------------------------------------------------------------------------
# dispatch

def _validate(func, arrays, out):
    names = _NAMES[func]
    descs = [describe(a) for a in arrays]
    odesc = describe(out) if out is not None else None
    gpu = next((d for d in descs if d.lib != "host"), None)
    if gpu is None:
        raise TypeError(f"{func}(): the GPU path got no GPU array (types: "
                        f"{', '.join(_typename(a) for a in arrays)})")
    gname = names[descs.index(gpu)]
    for name, d in zip(names, descs, strict=True):
        if d.lib == "host":
            raise TypeError(f"{func}(): {gname} is a GPU array ({gpu.where}) but {name} is "
                            f"a host array ({d.where}); pass both on the same device")
    if odesc is not None and odesc.lib == "host":
        raise TypeError(f"{func}(): {gname} is a GPU array ({gpu.where}) but out is a host "
                        f"array ({odesc.where}); out must be a GPU array on the same device")
    launch = _load(func, gpu, gname)
    _resolve_devices(descs + [odesc])
    for name, d in zip(names, descs, strict=True):
        if d.dev != gpu.dev:
            raise ValueError(f"{func}(): {gname} is on cuda:{gpu.dev} but {name} is on "
                             f"cuda:{d.dev}")
    x = descs[0]
    if len(descs) == 2:
        a, b = descs
        if a.shape != b.shape:
            raise ValueError(f"{func}(): {names[0]} and {names[1]} must have the same "
                             f"shape; got {a.shape} and {b.shape}")
        if a.dtype != b.dtype:
            raise TypeError(f"{func}(): {names[0]} and {names[1]} must have the same dtype; "
                            f"got {a.dtype} and {b.dtype}")
    dt = x.dtype
    if dt == BF16:
        res = BF16
    elif dt in _KIND:
        res = dt
    elif dt.kind in "biu":
        res = np.dtype(np.float64)
    else:
        raise TypeError(f"{func}(): {names[0]} must have dtype float16, bfloat16, float32, "
                        f"float64, an integer or bool dtype; got {dt}")
    for name, d in zip(names, descs, strict=True):
        if any(st % d.itemsize for st in d.strides):
            raise ValueError(f"{func}(): {name} has strides {d.strides} that are not "
                             f"multiples of its itemsize {d.itemsize}")
    if odesc is not None:
        if odesc.dev != x.dev:
            raise ValueError(f"{func}(): out is on cuda:{odesc.dev} but {names[0]} is on "
                             f"cuda:{x.dev}; the result lives on the input's device")
        if odesc.dtype != res:
            raise TypeError(f"{func}(): out must have dtype {res} (the result's); got "
                            f"{odesc.dtype}")
        if tuple(odesc.shape) != tuple(x.shape):
            raise ValueError(f"{func}(): out must have shape {tuple(x.shape)} (the "
                             f"result's); got {tuple(odesc.shape)}")
        if odesc.readonly:
            raise ValueError(f"{func}(): out must be writeable; got a read-only array")
        if any(st % odesc.itemsize for st in odesc.strides):
            raise ValueError(f"{func}(): out has strides {odesc.strides} that are not "
                             f"multiples of its itemsize")
    return launch, descs, odesc, res


# ---------------------------------------------------------------------------------------
# the fast path: cupy / torch, C-contiguous, last axis, no out=. Validates what it relies
# on (type, dtype, contiguity, device) and falls through to the general path otherwise.

_fast_types = {}  # array type -> "cupy" | "torch" | None
_CUPY_KIND = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8",
              np.dtype(np.float16): "f2"}
_cp = None
_torch = None
_torch_kind = None
_torch_stream = None


def _fast_lib(t):
    lib = _fast_types.get(t, 0)
    if lib == 0:
        mod = t.__module__.partition(".")[0]
        lib = None
        if mod == "cupy":
            import cupy

            if t is cupy.ndarray:
                lib = "cupy"
        elif mod == "torch":
            import torch

            if issubclass(t, torch.Tensor) and t is torch.Tensor:
                lib = "torch"
        _fast_types[t] = lib
    return lib


def _fast(func, arrays, axis):
    """The result, or None when the general path must run."""
    global _cp, _torch, _torch_kind, _torch_stream
    x = arrays[0]
    lib = _fast_lib(type(x))
    if lib is None or _launch is None:
        return None
    for a in arrays[1:]:
        if type(a) is not type(x) or a.shape != x.shape or a.dtype != x.dtype:
            return None
    shape = x.shape
    nd = len(shape)
    if not nd or not (axis == -1 or axis == nd - 1):
        return None
    if lib == "cupy":
        if _cp is None:
            import cupy

            _cp = cupy
        kind = _CUPY_KIND.get(x.dtype)
        if kind is None:
            return None
        for a in arrays:
            if not a.flags.c_contiguous:
                return None
        dev = x.data.device_id
        if dev != _cp.cuda.runtime.getDevice():
            return None
        for a in arrays[1:]:
            if a.data.device_id != dev:
                return None
        size = x.size
        if not size:
            return None
        res = _cp.empty(shape, dtype=x.dtype)
        ptrs = [a.data.ptr for a in arrays]
        optr = res.data.ptr
        stream = _cp.cuda.get_current_stream().ptr
        item = x.dtype.itemsize
    else:
        if _torch is None:
            import torch

            _torch = torch
            _torch_kind = {torch.float32: "f4", torch.float64: "f8", torch.float16: "f2",
                           torch.bfloat16: "bf16"}
            raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            _torch_stream = raw if raw is not None else (
                lambda d: torch.cuda.current_stream(d).cuda_stream)
        if not x.is_cuda or x.requires_grad:
            return None
        kind = _torch_kind.get(x.dtype)
        if kind is None:
            return None
        for a in arrays:
            if not a.is_contiguous() or not a.is_cuda or a.requires_grad:
                return None
        dev = x.device.index
        if dev != _torch.cuda.current_device():
            return None
        for a in arrays[1:]:
            if a.device.index != dev:
                return None
        size = x.numel()
        if not size:
            return None
        res = _torch.empty(shape, dtype=x.dtype, device=x.device)
        ptrs = [a.data_ptr() for a in arrays]
        optr = res.data_ptr()
        stream = _torch_stream(dev)
        item = x.element_size()
    n = shape[-1]
    m = size // n
    vec_ok = (n * item) % 16 == 0 and optr % 16 == 0
    for p in ptrs:
        vec_ok = vec_ok and p % 16 == 0
    if _launch.fast_rows(func, kind, ptrs, optr, m, n, dev, stream, vec_ok):
        return res
    return None


def dispatch(func, arrays, axis, out):
    """Run ``func`` ("softmax", "log_softmax", "softmax_backward" or
    "log_softmax_backward") on GPU ``arrays`` (1 or 2) along ``axis``; see module doc."""
    if out is None and type(axis) is int:
        res = _fast(func, arrays, axis)
        if res is not None:
            return res
    launch, descs, odesc, res = _validate(func, arrays, out)
    x = descs[0]
    ndim = len(x.shape)
    axes = normalize_axes(axis, ndim)
    with _Device(x):
        return _run(launch, func, descs, odesc, res, axes)


def _run(launch, func, descs, odesc, res, axes):
    x = descs[0]
    shape = tuple(x.shape)
    ndim = len(shape)
    dev = x.dev
    lib = x.lib if x.lib in ("cupy", "torch") else "numba"
    perm = permutation(shape, x.strides, axes)
    inv = tuple(int(i) for i in np.argsort(perm))
    pshape = tuple(shape[p] for p in perm)
    naxes = len(axes)
    stream = _stream(x)

    if odesc is None:
        buf = _alloc(lib, pshape, res, dev, stream)
        result = _transpose(lib, buf, inv) if perm != tuple(range(ndim)) else buf
        odesc = describe(result)
        fresh = True
    else:
        result = odesc.obj
        fresh = False
    size = math.prod(shape)
    if size == 0:
        return result
    n = math.prod(shape[a] for a in axes)
    m = size // n
    kind = "bf16" if res == BF16 else _KIND[np.dtype(res)]
    storage = _storage_dtype(kind)
    item = storage.itemsize
    alloc = None
    if lib in ("cupy", "torch"):  # their pools release memory in stream order
        def alloc(nitems, dtype):
            arr = _alloc(lib, (nitems,), dtype, dev)
            return arr, _data_ptr(lib, arr)

    def strided_view(d):
        """(Buf covering d's extent, element offset of d[0...], element strides in perm
        order)."""
        st = [d.strides[p] // d.itemsize for p in perm]
        lo = sum((s - 1) * t for s, t in zip(pshape, st, strict=True) if t < 0)
        hi = sum((s - 1) * t for s, t in zip(pshape, st, strict=True) if t > 0)
        dt = storage if d.dtype == res else d.dtype
        return launch.Buf(d.ptr + lo * d.itemsize, hi - lo + 1, np.dtype(dt)), -lo, st

    with launch.Scratch(dev, stream, alloc) as scratch:
        inputs = []
        for d in descs:
            cast = d.dtype != res
            rs = None
            if not cast:
                rs = _row_stride(shape, d.strides, d.itemsize, perm, naxes)
                if rs is not None and not fresh and not _same_view(d, odesc) and _overlap(d, odesc):
                    rs = None  # partial overlap with out: read from a private copy
            if rs is not None:
                inputs.append((launch.Buf(d.ptr, (m - 1) * rs + n, storage), rs))
                continue
            src, soff, sst = strided_view(d)
            dst = scratch.buf(m * n, storage)
            launch.copy(src, soff, sst, dst, 0, _c_strides(pshape, 1), pshape, dev, stream,
                        cast=cast)
            inputs.append((dst, n))

        ors = _row_stride(shape, odesc.strides, item, perm, naxes)
        if ors is not None and m > 1 and ors < n:
            ors = None  # overlapping output rows
        if ors is not None:
            obuf = (launch.Buf(odesc.ptr, (m - 1) * ors + n, storage), ors)
            staged = False
        else:
            obuf = (scratch.buf(m * n, storage), n)
            staged = True

        vec_ok = all(b.ptr % 16 == 0 and (s * item) % 16 == 0 for b, s in inputs + [obuf])
        launch.run_rows(func, kind, inputs, obuf, m, n, dev, stream, vec_ok, scratch)
        if staged:
            dst, doff, dst_st = strided_view(odesc)
            launch.copy(obuf[0], 0, _c_strides(pshape, 1), dst, doff, dst_st, pshape, dev,
                        stream)
    return result
