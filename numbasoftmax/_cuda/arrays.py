"""GPU arrays: one adapter per array library. ``CUPY`` (cupy's current stream and memory
pool), ``TORCH`` (CUDA tensors, bfloat16 included; torch's current stream and allocator),
``NUMBA`` (numba device arrays, the simulator's too, and any other
``__cuda_array_interface__`` object: results bound to the stream the interface names,
temporaries from ``launch.device_memory``).

An adapter ``describe``s an array (an ``Array``; None for a host object), allocates
(``empty``; ``memory``: temporaries released in stream order), views (``permute``), makes a
device current (``device``) and names the stream to launch on (``stream``). cupy's and
torch's ``fast`` path takes C-contiguous arrays on the current device along their last
axis, checked for only what it relies on (else None).
"""

from __future__ import annotations

import contextlib
import importlib
import math
from typing import NamedTuple

import numpy as np

from .._inputs import typename
from .._layout import Meta

BF16 = "bfloat16"  # the dtype of torch's bfloat16 tensors (numpy has none)

# the kernels' storage kind of each result dtype
KIND = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8", np.dtype(np.float16): "f2",
        BF16: "bf16"}


class Array(NamedTuple):
    """What the GPU path needs to know about one array."""

    lib: object  # its adapter
    obj: object
    ptr: int  # address of element (0, ..., 0)
    shape: tuple
    strides: tuple  # bytes
    dtype: object  # numpy dtype, BF16, or the name of a torch dtype numpy lacks
    itemsize: int
    dev: int | None  # None: not looked up yet (see ``located``)
    name: str  # for error messages
    readonly: bool = False
    stream: int = 0  # the stream named in __cuda_array_interface__ (0: the default)

    @property
    def where(self):
        return self.name + (" (GPU memory)" if self.dev is None else f" on cuda:{self.dev}")

    def meta(self, cast=False):
        return Meta(self.ptr, self.strides, self.itemsize, cast)

    def located(self):
        """With its device, asked of the driver once the GPU path is known to be usable."""
        if self.dev is not None:
            return self
        from . import driver, launch

        return self._replace(dev=driver.pointer_device(self.ptr) if self.ptr and not
                             launch.SIM else 0)


def c_strides(shape, itemsize):
    return tuple(itemsize * math.prod(max(s, 1) for s in shape[k + 1:])
                 for k in range(len(shape)))


def host_where(obj):
    """Where a host array lives, for error messages."""
    device = getattr(obj, "device", None) if typename(obj).startswith("torch.") else None
    return f"{typename(obj)} " + ("(host memory)" if device is None else f"on {device}")


def describe(obj, name, func):
    """The Array of GPU array ``obj`` (argument ``name`` of ``func``), None for a host one."""
    lib = _library(type(obj))
    if lib is not None and isinstance(obj, lib.array_type):
        return lib.describe(obj, name, func)
    if _is_sim_array(obj) or hasattr(obj, "__cuda_array_interface__"):
        return NUMBA.describe(obj, name, func)
    return None


def fast_adapter(t):
    """The adapter with a fast path for arrays of type ``t`` (exactly), or None."""
    lib = _library(t)
    return lib if lib is not None and t is lib.array_type else None


def _library(t):
    """cupy's or torch's adapter for a type of that library (known by its module, so that
    neither is imported for anything else), else None."""
    return {"cupy": CUPY, "torch": TORCH}.get(t.__module__.partition(".")[0])


def _is_sim_array(obj):
    return type(obj).__name__ == "FakeCUDAArray" and hasattr(obj, "_ary")


def apart_or_same(ptr, nbytes, spans):
    """Whether the bytes [ptr, ptr + nbytes) are each of the (ptr, nbytes) ``spans`` or
    share none with it: the fast path writes ``out=`` directly into memory that is no input
    or exactly one (in place, element by element, as the general path does); a partial
    overlap takes the general path, which gathers the input first."""
    return all(ptr + nbytes <= p or p + n <= ptr or (p, n) == (ptr, nbytes) for p, n in spans)


class _Library:
    """An array library, imported at first use."""

    module_name = ""
    type_name = ""  # of its array type
    _mod = None

    @property
    def mod(self):
        if self._mod is None:
            self._mod = importlib.import_module(self.module_name)
        return self._mod

    @property
    def array_type(self):
        return getattr(self.mod, self.type_name)

    def memory(self, dev, stream):
        """Temporaries from the library's pool (stream-ordered; see ``empty``)."""
        from . import launch

        return launch.ArrayMemory(lambda nbytes: self.empty((nbytes,), np.dtype(np.uint8), dev,
                                                            stream), self.pointer)


class _Cupy(_Library):
    module_name, type_name = "cupy", "ndarray"

    def describe(self, obj, name, func):
        return Array(self, obj, obj.data.ptr, obj.shape, obj.strides, obj.dtype, obj.itemsize,
                     obj.data.device_id, "cupy.ndarray")

    def empty(self, shape, dtype, dev, stream):
        return self.mod.empty(shape, dtype=dtype)  # on the current device: ``dev``

    def pointer(self, arr):
        return arr.data.ptr

    def permute(self, arr, axes):
        return arr.transpose(axes)

    def device(self, dev):
        return self.mod.cuda.Device(dev)

    def stream(self, a):
        return self.mod.cuda.get_current_stream().ptr

    def fast(self, launch, op, arrays, out=None):
        cp = self.mod
        x = arrays[0]
        kind = KIND.get(x.dtype)
        dev = x.data.device_id
        if kind is None or not x.size or dev != cp.cuda.runtime.getDevice():
            return None
        for a in arrays:
            if not a.flags.c_contiguous or a.data.device_id != dev:
                return None
        if out is None:
            res = cp.empty(x.shape, dtype=x.dtype)
        elif out.flags.c_contiguous and out.data.device_id == dev and apart_or_same(
                out.data.ptr, out.nbytes, [(a.data.ptr, a.nbytes) for a in arrays]):
            res = out
        else:
            return None
        n = x.shape[-1]
        if launch.fast_rows(op.name, kind, [a.data.ptr for a in arrays], res.data.ptr,
                            x.size // n, n, dev, cp.cuda.get_current_stream().ptr):
            return res
        return None


class _Torch(_Library):
    module_name, type_name = "torch", "Tensor"

    def __init__(self):
        self._dtypes = {}
        self._raw_stream = None

    def dtype(self, tdt):
        """numpy dtype of a torch dtype; BF16; the torch name of one numpy lacks."""
        d = self._dtypes.get(tdt)
        if d is None:
            name = str(tdt).removeprefix("torch.")
            try:
                d = BF16 if name == BF16 else np.dtype(name)
            except TypeError:
                d = str(tdt)
            self._dtypes[tdt] = d
        return d

    def describe(self, obj, name, func):
        if not obj.is_cuda:
            return None
        if obj.requires_grad and self.mod.is_grad_enabled():
            raise TypeError(f"{func}(): {name} requires grad, but numbasoftmax does not record "
                            f"autograd history; pass {name}.detach() or call it under "
                            "torch.no_grad()")
        item = obj.element_size()
        return Array(self, obj, obj.data_ptr(), tuple(obj.shape),
                     tuple(s * item for s in obj.stride()), self.dtype(obj.dtype), item,
                     obj.device.index, "torch.Tensor")

    def empty(self, shape, dtype, dev, stream):
        torch = self.mod
        tdt = torch.bfloat16 if dtype == BF16 else getattr(torch, np.dtype(dtype).name)
        return torch.empty(shape, dtype=tdt, device=f"cuda:{dev}")

    def pointer(self, arr):
        return arr.data_ptr()

    def permute(self, arr, axes):
        return arr.permute(axes)

    def device(self, dev):
        return self.mod.cuda.device(dev)

    def stream(self, a):
        return self.mod.cuda.current_stream(a.dev).cuda_stream

    def fast(self, launch, op, arrays, out=None):
        torch = self.mod
        x = arrays[0]
        kind = KIND.get(self.dtype(x.dtype))
        if kind is None or not x.is_cuda:
            return None
        dev = x.device.index
        if dev != torch.cuda.current_device():
            return None
        for a in arrays:
            if not (a.is_cuda and a.is_contiguous()) or a.requires_grad or a.device.index != dev:
                return None
        size = x.numel()
        if not size:
            return None
        if self._raw_stream is None:
            raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            self._raw_stream = raw or (lambda d: torch.cuda.current_stream(d).cuda_stream)
        nbytes = size * x.element_size()  # of each array: one shape, one dtype
        if out is None:
            res = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        elif (out.is_cuda and out.is_contiguous() and not out.requires_grad
              and out.device.index == dev and apart_or_same(
                  out.data_ptr(), nbytes, [(a.data_ptr(), nbytes) for a in arrays])):
            res = out
        else:
            return None
        n = x.shape[-1]
        if launch.fast_rows(op.name, kind, [a.data_ptr() for a in arrays], res.data_ptr(),
                            size // n, n, dev, self._raw_stream(dev)):
            return res
        return None


def _native(dtype, name, func, label):
    """TypeError for a device array of non-native byte order."""
    if not dtype.isnative:
        raise TypeError(f"{func}(): {name} has a non-native byte order ({label}, dtype "
                        f"{dtype.str!r}); the GPU path reads native byte order")


class _Numba(_Library):
    """numba device arrays, and any other ``__cuda_array_interface__`` object."""

    module_name = "numba.cuda"

    def describe(self, obj, name, func):
        if _is_sim_array(obj):  # the CUDA simulator's device arrays (host memory)
            a, label = obj._ary, "numba device array"
            _native(a.dtype, name, func, label)
            return Array(self, obj, a.ctypes.data, a.shape, a.strides, a.dtype, a.itemsize, 0,
                         label)
        cai = obj.__cuda_array_interface__
        label = ("numba device array" if getattr(type(obj), "__cuda_ndarray__", False)
                 else typename(obj))
        if cai.get("mask") is not None:
            raise TypeError(f"{func}(): {name} is a masked __cuda_array_interface__ array "
                            f"({label}); masks are not supported")
        dtype = np.dtype(cai["typestr"])
        _native(dtype, name, func, label)
        shape = tuple(int(s) for s in cai["shape"])
        strides = cai.get("strides")
        ptr, readonly = cai["data"]
        stream = cai.get("stream")
        return Array(self, obj, int(ptr or 0), shape,
                     c_strides(shape, dtype.itemsize) if strides is None else tuple(strides),
                     dtype, dtype.itemsize, None, label, bool(readonly),
                     stream if isinstance(stream, int) and stream > 0 else 0)

    def empty(self, shape, dtype, dev, stream):
        """Bound to ``stream``, so that its ``copy_to_host()`` waits for the work queued
        there."""
        from . import launch

        return self.mod.device_array(shape, dtype=dtype, stream=launch.numba_stream(stream))

    def permute(self, arr, axes):
        from . import launch

        if launch.SIM:
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

            return FakeCUDAArray(arr._ary.transpose(axes), stream=arr.stream)
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        return DeviceNDArray(tuple(arr.shape[a] for a in axes),
                             tuple(arr.strides[a] for a in axes), arr.dtype, stream=arr.stream,
                             gpu_data=arr.gpu_data)

    def device(self, dev):
        from . import launch

        return contextlib.nullcontext() if launch.SIM else self.mod.gpus[dev]

    def stream(self, a):
        return a.stream

    def memory(self, dev, stream):
        return None  # launch.device_memory: stream-ordered where the device has pools


CUPY, TORCH, NUMBA = _Cupy(), _Torch(), _Numba()
