"""Strategy choice, lazy compilation and low-overhead launching of the kernels.

Buffers are described by ``Buf(ptr, nitems, dtype)``: device pointers on a GPU, host
addresses under the simulator (whose "device" arrays are numpy arrays). Kernels take flat
1-D contiguous arrays; on a GPU such an argument is passed as numba's flattened array
struct ``(meminfo, parent, nitems, itemsize, data, shape, stride)`` of raw ints, straight
to ``cuda.core.launch`` with the compiled overload's kernel handle: no numba typing, no
``__cuda_array_interface__`` round trip per call (numba's generic dispatch costs 35-81 us
per launch; shared FACTS.md). Everything is validated before it gets here (api.py).

``config`` holds the tunables; tests use ``config.override(...)`` to force strategies and
small blocks under the simulator.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
import warnings
from collections import namedtuple

import numpy as np
from numba import cuda, types
from numba.cuda.core import config as _numba_config

from . import kernels as K

SIM = bool(_numba_config.ENABLE_CUDASIM)

Buf = namedtuple("Buf", "ptr nitems dtype")  # dtype: numpy dtype of the kernel's view

# numpy dtype each storage kind is viewed as inside the kernels
STORAGE = {"f4": np.dtype(np.float32), "f8": np.dtype(np.float64),
           "f2": np.dtype(np.uint16), "bf16": np.dtype(np.uint16)}
_NB = {np.dtype(np.float32): types.float32, np.dtype(np.float64): types.float64,
       np.dtype(np.uint16): types.uint16, np.dtype(np.uint8): types.uint8,
       np.dtype(np.uint32): types.uint32, np.dtype(np.uint64): types.uint64,
       np.dtype(np.int8): types.int8, np.dtype(np.int16): types.int16,
       np.dtype(np.int32): types.int32, np.dtype(np.int64): types.int64,
       np.dtype(np.bool_): types.boolean}
_I64 = types.int64


class _Config:
    """Tunables. ``None`` means the built-in default (which differs under the simulator).

    block      threads per block for every kernel (simulator default 32)
    max_grid   cap on the number of blocks (grid-stride loops cover the rest)
    reg_max    longest row (elements) handled by the register strategy
    smem_max   bytes of dynamic shared memory the ``smem`` strategy may use
    split_rows a long-row call with fewer rows than this is split into chunks
    force      "rows" | "smem" | "smem16" | "long" | "split": use that strategy ("smem16":
               the shared-memory row cache in the 2-byte storage type; float16/bfloat16)
    vector     False: never use 16-byte vector loads (for tests)
    launch     "direct" (cuda.core launch of the compiled kernel) or "numba" (numba's own
               launch path; slower, kept as a cross-check and as the fallback)
    """

    _fields = ("block", "max_grid", "reg_max", "smem_max", "split_rows", "force", "vector",
               "launch")

    def __init__(self):
        self.block = None
        self.max_grid = None
        self.reg_max = None
        self.smem_max = None
        self.split_rows = None
        self.force = None
        self.vector = True
        self.launch = os.environ.get("NUMBASOFTMAX_CUDA_LAUNCH", "direct")
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def override(self, **kwargs):
        """Temporarily set tunables (not thread-safe against concurrent calls)."""
        for k in kwargs:
            if k not in self._fields:
                raise TypeError(f"unknown tunable {k!r}")
        with self._lock:
            old = {k: getattr(self, k) for k in kwargs}
            for k, v in kwargs.items():
                setattr(self, k, v)
            _fast.clear()
            try:
                yield self
            finally:
                for k, v in old.items():
                    setattr(self, k, v)
                _fast.clear()


config = _Config()

# ---------------------------------------------------------------------------------------
# devices

# what plans depend on: multiprocessor count, max dynamic shared memory per block (opt-in)
DeviceProps = namedtuple("DeviceProps", "sms smem_optin")
_props = {}


def device_props(dev):
    """DeviceProps of device ordinal ``dev`` (a DeviceProps is returned as is)."""
    if isinstance(dev, DeviceProps):
        return dev
    p = _props.get(dev)
    if p is None:
        if SIM:
            p = DeviceProps(1, 48 * 1024)
        else:
            with cuda.gpus[dev]:
                d = cuda.get_current_device()
                p = DeviceProps(int(d.MULTIPROCESSOR_COUNT),
                                int(d.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN))
        _props[dev] = p
    return p


# ---------------------------------------------------------------------------------------
# plans

Step = namedtuple("Step", "spec grid block shmem extra")
Plan = namedtuple("Plan", "steps ws_items")  # ws_items: float64 workspace length (split)

SHMEM_DEFAULT = 48 * 1024
_STATIC_SMEM = 1024  # reduction scratch and friends, below the opt-in limit


def _pow2ceil(v):
    return 1 << max(0, (int(v) - 1).bit_length())


def _ctsize(kind):
    return 8 if kind == "f8" else 4


def plan(op, kind, m, n, vec_ok, dev, sim=None):
    """Kernels, launch shapes and workspace for an (m, n) call; see kernels.py. ``sim``
    (default: whether the simulator runs) picks the simulator's small defaults."""
    SIM_ = SIM if sim is None else sim
    sms, optin = device_props(dev)
    bwd = op in K.BACKWARD
    itemsize = STORAGE[kind].itemsize
    V = 16 // itemsize if (vec_ok and config.vector and n % (16 // itemsize) == 0) else 1
    npk = n // V
    ct = _ctsize(kind)
    narr = 2 if bwd else 1
    sim_block = config.block or 32
    max_grid = config.max_grid or (2 if SIM_ else sms * 32)

    reg_max = config.reg_max
    if reg_max is None:
        reg_max = (512 if bwd else 1024) * 4 // ct  # <= 32 float32 registers per thread
    smem_cap = config.smem_max if config.smem_max is not None else optin - _STATIC_SMEM

    def rows():
        packs = max(npk, 1)
        if packs <= 32:
            g, k = _pow2ceil(packs), 1
        else:
            g, k = 32, _pow2ceil(-(-packs // 32))
        b = max(sim_block if SIM_ else (config.block or 128), g)
        # rows per group and step: two when a row is at most 8 values per thread, so
        # that each thread keeps two loads in flight
        r = 2 if k * V <= 8 else 1
        rpb = b // g * r
        grid = min(-(-m // rpb), max_grid)
        return Plan([Step(K.Spec("rows", op, kind, V, g, k, b, r), grid, b, 0, ())], 0)

    def smem_block():
        if SIM_ or config.block:
            return sim_block if SIM_ else config.block
        # two block sizes only (each is a separate compilation): 1-8 packs per thread
        return 512 if npk <= 4096 else 1024

    def smem_bytes(b, cache="c"):
        per = itemsize if cache == "s" else ct
        return -(-npk // b) * b * V * per * narr

    def smem_cache():
        """"c" (compute type) when the row fits, else "s" (2-byte storage) if that fits."""
        b = smem_block()
        if smem_bytes(b) <= smem_cap or itemsize != 2:
            return "c"
        return "s" if smem_bytes(b, "s") <= smem_cap else "c"

    def smem(cache=None):
        b = smem_block()
        cache = cache or smem_cache()
        grid = min(m, max_grid)
        # packs per thread loaded before they go to shared memory (loads in flight); the
        # scalar gradients load two arrays: 8 each, or a 1024-thread block spills
        ul = 2 if SIM_ else max(1, (8 if kind == "f8" or (bwd and V == 1) else 16) // V)
        return Plan([Step(K.Spec("smem", op, kind, V, 1, 1, b, ul, cache), grid, b,
                          smem_bytes(b, cache), ())], 0)

    def long_block():
        return sim_block if SIM_ else (config.block or 512)

    # packs per thread per step in the long/split loops: ~16 values in flight per thread
    unroll = 2 if SIM_ else max(1, (8 if kind == "f8" else 16) // V)

    def long_():
        b = long_block()
        grid = min(m, max_grid)
        return Plan([Step(K.Spec("long", op, kind, V, 1, 1, b, unroll), grid, b, 0, ())], 0)

    def split():
        b = long_block()
        target = (4 if SIM_ else sms * 4)
        per_step = b * unroll
        c = max(1, min(-(-target // m), -(-npk // per_step)))
        L = -(-npk // c)  # packs per chunk
        if not SIM_:
            L = -(-L // per_step) * per_step
        c = -(-npk // L)
        grid = min(m * c, max_grid)
        stats = K.Spec("split_stats", op, kind, V, 1, 1, b, unroll)
        write = K.Spec("split_write", op, kind, V, 1, 1, b, unroll)
        ws = m * c * (1 if bwd else 2)
        return Plan([Step(stats, grid, b, 0, (c, L)), Step(write, grid, b, 0, (c, L))], ws)

    force = config.force
    if force == "rows":
        return rows()
    if force == "smem":
        return smem()
    if force == "smem16":
        return smem("s" if itemsize == 2 else "c")
    if force == "long":
        return long_()
    if force == "split":
        return split()
    if n <= reg_max:
        return rows()
    if smem_bytes(smem_block(), smem_cache()) <= smem_cap:
        return smem()
    split_rows = config.split_rows if config.split_rows is not None else (
        2 if SIM_ else sms * 2)
    if m < split_rows and npk >= 2 * long_block() * unroll:
        return split()
    return long_()


# ---------------------------------------------------------------------------------------
# compilation

_prims = {}
_compiled = {}
_compile_lock = threading.RLock()


def primitives(kind):
    p = _prims.get(kind)
    if p is None:
        if SIM:
            from . import sim

            p = sim.make_primitives(kind)
        else:
            from . import intrinsics

            p = intrinsics.make_primitives(kind)
        _prims[kind] = p
    return p


def _arr(dtype):
    return types.Array(_NB[np.dtype(dtype)], 1, "C")


def _signature(spec):
    a = _arr(STORAGE[spec.kind])
    w = _arr(np.float64)
    i = _I64
    fwd = spec.op in K.FORWARD
    s = spec.strategy
    if s in ("rows", "smem", "long"):
        args = (a, i, a, i, i, i) if fwd else (a, i, a, i, a, i, i, i)
    elif s == "split_stats":
        args = (a, i, w, i, i, i, i) if fwd else (a, i, a, i, w, i, i, i, i)
    else:
        args = (a, i, a, i, w, i, i, i, i) if fwd else (a, i, a, i, a, i, w, i, i, i, i)
    return types.void(*args)


class Compiled:
    """One compiled kernel on one device, launchable with raw-int arguments."""

    __slots__ = ("dispatcher", "overload", "kernel", "max_shmem", "dev")

    def __init__(self, dispatcher, dev):
        self.dispatcher = dispatcher
        self.dev = dev
        self.max_shmem = SHMEM_DEFAULT
        self.overload = None
        self.kernel = None
        if not SIM:
            self.overload = next(iter(dispatcher.overloads.values()))
            with cuda.gpus[dev]:
                self.kernel = self.overload._codelibrary.get_cufunc()

    def ensure_shmem(self, nbytes):
        """Raise the kernel's dynamic shared-memory limit above 48 KB (no public numba API;
        shared FACTS.md)."""
        if SIM or nbytes <= self.max_shmem:
            return
        from numba.cuda.cudadrv.driver import binding, driver

        attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        f = self.kernel
        try:
            driver.cuKernelSetAttribute(attr, nbytes, f.handle, f.device.id)
        except Exception:  # noqa: BLE001 - older loaders hand out CUfunction handles
            driver.cuFuncSetAttribute(f.handle, attr, nbytes)
        self.max_shmem = nbytes


def _compile(key, src, dev):
    with _compile_lock:
        c = _compiled.get(key)
        if c is None:
            if SIM:
                disp = cuda.jit(src.pyfunc)
            else:
                try:
                    with cuda.gpus[dev]:
                        disp = cuda.jit(src.sig, **src.options)(src.pyfunc)
                except AttributeError as err:
                    if "row_stack" in str(err):  # numba-cuda 0.30 with numpy >= 2.5
                        raise RuntimeError(
                            f"numba-cuda cannot compile with numpy {np.__version__} ({err}); "
                            "install numpy<2.5 next to numba-cuda") from err
                    raise
            c = Compiled(disp, dev)
            _compiled[key] = c
        return c


# what ``cuda.jit`` compiles: the kernel's Python function, its signature, the options
Source = namedtuple("Source", "pyfunc sig options")


def kernel_source(spec):
    """The Source that ``get_kernel`` compiles for ``spec``."""
    return Source(K.build(spec, primitives(spec.kind)), _signature(spec),
                  dict(fastmath=False, lineinfo=False, launch_bounds=(spec.B, 1)))


def get_kernel(spec, dev):
    key = (spec, dev)
    c = _compiled.get(key)
    if c is None:
        c = _compile(key, kernel_source(spec), dev)
    return c


COPY_BLOCK = 256


def copy_source(ndim, src_dtype, dst_dtype, cast):
    """The Source of the strided copy kernel (see kernels.make_copy)."""
    tup = types.UniTuple(_I64, ndim)
    sig = types.void(_arr(src_dtype), _I64, tup, _arr(dst_dtype), _I64, tup, tup, _I64)
    return Source(K.make_copy(ndim, _NB[np.dtype(dst_dtype)] if cast else None), sig,
                  dict(fastmath=False, lineinfo=False, launch_bounds=(COPY_BLOCK, 1)))


def get_copy_kernel(ndim, src_dtype, dst_dtype, cast, dev):
    key = ("copy", ndim, np.dtype(src_dtype), np.dtype(dst_dtype), cast, dev)
    c = _compiled.get(key)
    if c is None:
        c = _compile(key, copy_source(ndim, src_dtype, dst_dtype, cast), dev)
    return c


# ---------------------------------------------------------------------------------------
# launching

_sim_lock = threading.Lock()
_streams = {}
_configs = {}
_core = None
_fallback_warned = False


def _sim_array(buf):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    if buf.nitems == 0:
        return FakeCUDAArray(np.zeros(1, dtype=buf.dtype))
    nbytes = buf.nitems * buf.dtype.itemsize
    raw = (ctypes.c_byte * nbytes).from_address(buf.ptr)
    return FakeCUDAArray(np.frombuffer(raw, dtype=buf.dtype, count=buf.nitems))


def _direct_args(args):
    out = []
    for a in args:
        if type(a) is Buf:
            size = a.dtype.itemsize
            out += (0, 0, a.nitems, size, a.ptr, a.nitems, size)
        elif type(a) is tuple:
            out += a
        else:
            out.append(a)
    return out


def _numba_args(args):
    out = []
    for a in args:
        if type(a) is Buf:
            out.append(cuda.from_cuda_array_interface(
                {"shape": (a.nitems,), "strides": None, "typestr": a.dtype.str,
                 "data": (a.ptr, False), "version": 3}, owner=None, sync=False))
        else:
            out.append(a)
    return out


def _core_stream(handle):
    s = _streams.get(handle)
    if s is None:
        from cuda.core import Stream

        s = Stream.from_handle(handle)
        if len(_streams) > 256:
            _streams.clear()
        _streams[handle] = s
    return s


def _launch_config(grid, block, shmem):
    key = (grid, block, shmem)
    c = _configs.get(key)
    if c is None:
        c = _core.LaunchConfig(grid=grid, block=block, shmem_size=shmem)
        if len(_configs) > 4096:
            _configs.clear()
        _configs[key] = c
    return c


def launch(compiled, grid, block, shmem, stream, args):
    """Launch on ``stream`` (a raw CUDA stream handle; 0 = the legacy default stream).
    Never synchronizes the host."""
    global _core
    if SIM:
        with _sim_lock:
            compiled.dispatcher[grid, block, 0, shmem](
                *[_sim_array(a) if type(a) is Buf else a for a in args])
        return
    if shmem > SHMEM_DEFAULT:
        compiled.ensure_shmem(shmem)
    if config.launch == "direct":
        try:
            if _core is None:
                import cuda.core as core

                _core = core
            _core.launch(_core_stream(stream), _launch_config(grid, block, shmem),
                         compiled.kernel.kernel, *_direct_args(args))
            return
        except (ImportError, AttributeError, TypeError) as err:
            _use_numba_launch(err)
    s = _numba_stream(stream)
    compiled.dispatcher[grid, block, s, shmem](*_numba_args(args))


def _use_numba_launch(err):
    """An incompatible cuda.core: use numba's own launch path from now on."""
    global _fallback_warned
    if not _fallback_warned:
        warnings.warn(f"numbasoftmax: direct kernel launch unavailable ({err!r}); using "
                      "numba's launch path (slower)", RuntimeWarning, stacklevel=4)
        _fallback_warned = True
    config.launch = "numba"
    _fast.clear()


_numba_streams = {}


def _numba_stream(handle):
    s = _numba_streams.get(handle)
    if s is None:
        s = cuda.external_stream(handle) if handle else cuda.default_stream()
        _numba_streams[handle] = s
    return s


# ---------------------------------------------------------------------------------------
# entry points used by api.py

_fast = {}


def fast_rows(op, kind, ptrs, optr, m, n, dev, stream, vec_ok):
    """Contiguous rows, no workspace: the per-call fast path (cupy/torch inputs). ``ptrs``:
    the inputs' device pointers. Returns False when the plan needs more (then the caller
    takes the general path)."""
    key = (op, kind, m, n, vec_ok, dev)
    prep = _fast.get(key)
    if prep is None:
        p = plan(op, kind, m, n, vec_ok, dev)
        if p.ws_items or SIM or config.launch != "direct":
            return False
        steps = []
        for st in p.steps:
            c = get_kernel(st.spec, dev)
            if st.shmem > SHMEM_DEFAULT:
                c.ensure_shmem(st.shmem)
            steps.append((c, st.grid, st.block, st.shmem))
        item = STORAGE[kind].itemsize
        total = m * n
        prep = (steps, total, item)
        with config._lock:
            if len(_fast) > 4096:
                _fast.clear()
            _fast[key] = prep
    steps, total, item = prep
    global _core
    if _core is None:
        import cuda.core as core

        _core = core
    args = []
    for ptr in ptrs:
        args += (0, 0, total, item, ptr, total, item, n)
    args += (0, 0, total, item, optr, total, item, n, m, n)
    s = _core_stream(stream)
    c, grid, block, shmem = steps[0]  # plans without workspace have one step
    try:
        _core.launch(s, _launch_config(grid, block, shmem), c.kernel.kernel, *args)
    except (AttributeError, TypeError) as err:  # an incompatible cuda.core: see launch()
        _use_numba_launch(err)
        return False
    return True


def reset_caches():
    """Forget plans (after changing tunables) and compiled kernels."""
    _fast.clear()
    _compiled.clear()


def run_rows(op, kind, inputs, out, m, n, dev, stream, alloc_ws, vec_ok):
    """``inputs``: [(Buf, row stride)] (1 for forward, 2 for gradients); ``out``: (Buf, row
    stride). ``alloc_ws(nitems)`` returns (Buf, keepalive) of float64 device memory."""
    p = plan(op, kind, m, n, vec_ok, dev)
    keep = None
    ws = None
    if p.ws_items:
        ws, keep = alloc_ws(p.ws_items)
    for step in p.steps:
        c = get_kernel(step.spec, dev)
        s = step.spec.strategy
        args = []
        for b, stride in inputs:
            args += (b, stride)
        if s == "split_stats":
            args += (ws, m, n) + step.extra
        elif s == "split_write":
            args += (out[0], out[1], ws, m, n) + step.extra
        else:
            args += (out[0], out[1], m, n)
        launch(c, step.grid, step.block, step.shmem, stream, args)
    return keep


def copy(src, soff, sstrides, dst, doff, dstrides, shape, dev, stream, cast=False):
    """Strided element copy (see kernels.make_copy); strides and offsets in elements."""
    total = math.prod(shape)
    if total == 0:
        return
    ndim = len(shape)
    c = get_copy_kernel(ndim, src.dtype, dst.dtype, cast, dev)
    block = (config.block or 32) if SIM else COPY_BLOCK
    sms = device_props(dev)[0]
    max_grid = config.max_grid or (2 if SIM else sms * 32)
    grid = min(-(-total // block), max_grid)
    launch(c, grid, block, 0, stream,
           [src, soff, tuple(sstrides), dst, doff, tuple(dstrides), tuple(shape), total])
