"""Strategy choice, lazy compilation and low-overhead launching of the kernels.

Buffers are ``Buf(ptr, nitems, dtype)``: device pointers on a GPU, host addresses under
the simulator. Kernels take flat 1-D contiguous arrays; on a GPU such an argument goes to
``cuda.core.launch`` as numba's flattened array struct of raw ints, with the compiled
kernel's handle: numba's generic dispatch (typing, ``__cuda_array_interface__``) costs tens
of microseconds per launch. Inputs are validated before they get here (api.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import threading
import warnings
from collections import namedtuple
from typing import NamedTuple

import numpy as np
from numba import cuda, types
from numba.cuda.core import config as _numba_config
from numba.np.numpy_support import from_dtype

from .._ops import OPS
from . import driver
from . import kernels as K

SIM = bool(_numba_config.ENABLE_CUDASIM)

Buf = namedtuple("Buf", "ptr nitems dtype")  # dtype: numpy dtype of the kernel's view
# numpy dtype each storage kind is viewed as inside the kernels
STORAGE = {"f4": np.dtype(np.float32), "f8": np.dtype(np.float64),
           "f2": np.dtype(np.uint16), "bf16": np.dtype(np.uint16)}
_I64 = types.int64


class _Config:
    """Tunables; ``None`` is the built-in default (smaller under the simulator). block:
    threads per block (whole warps; ``rows`` takes at least a row's threads); max_grid: cap
    on the blocks (grid-stride loops cover the rest); reg_max: longest row of ``rows`` in a
    warp or less; row_values: values of each input a thread holds of a longer row in
    ``rows``, which takes up to 1024 threads a row; smem_max: bytes of dynamic shared memory
    for ``smem``; split_rows: a long-row call with fewer rows is split into chunks; force:
    a strategy of ``_STRATEGIES``; vector: False never plans 16-byte loads (tests); launch:
    "direct" (cuda.core) or "numba" (numba's launch path: slower, the cross-check and the
    fallback)."""

    _fields = ("block", "max_grid", "reg_max", "row_values", "smem_max", "split_rows", "force",
               "vector", "launch")

    def __init__(self):
        self.__dict__.update(dict.fromkeys(self._fields), vector=True,
                             launch=os.environ.get("NUMBASOFTMAX_CUDA_LAUNCH", "direct"))
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def override(self, **kwargs):
        """Temporarily set tunables (not thread-safe against concurrent calls)."""
        unknown = sorted(set(kwargs) - set(self._fields))
        if unknown:
            raise TypeError(f"unknown tunable(s) {unknown}")
        with self._lock:
            old = {k: getattr(self, k) for k in kwargs}
            self._set(kwargs)
            try:
                yield self
            finally:
                self._set(old)

    def _set(self, values):
        self.__dict__.update(values)
        ready.cache_clear()  # plans depend on the tunables


config = _Config()

# ---------------------------------------------------------------------------------------
# plans: which kernels, launched how

DeviceProps = namedtuple("DeviceProps", "sms smem_optin")  # smem_optin: bytes per block
_props = {}


def device_props(dev):
    """DeviceProps of device ordinal ``dev`` (a DeviceProps is returned as is)."""
    if isinstance(dev, DeviceProps):
        return dev
    if dev not in _props:
        if SIM:
            _props[dev] = DeviceProps(1, 48 * 1024)
        else:
            with cuda.gpus[dev]:
                d = cuda.get_current_device()
                _props[dev] = DeviceProps(int(d.MULTIPROCESSOR_COUNT),
                                          int(d.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN))
    return _props[dev]


Step = namedtuple("Step", "spec grid shmem chunks")  # chunks: (C, L) of the split kernels
Plan = namedtuple("Plan", "steps ws_items")  # ws_items: float64 workspace length (split)
SHMEM_DEFAULT = 48 * 1024
_STATIC_SMEM = 1024  # reduction scratch and friends, below the opt-in limit


class _Call:
    """An (m, n) call of ``op`` on ``kind`` data, tunables resolved for device and mode."""

    def __init__(self, op, kind, m, n, vec_ok, props, sim, src, mask, weights, signed):
        self.op, self.kind, self.m, self.n, self.sim = op, kind, m, n, sim
        self.src, self.mask, self.weights, self.signed = src, mask, weights, signed
        self.bwd = OPS[op].backward
        # logsumexp reads a row once (no smem cache needed), its gradient has no reduction
        self.lse = OPS[op].forward == "logsumexp"
        self.item = STORAGE[kind].itemsize
        width = 16 // self.item
        # inputs of another kind (dtype=) are read an element at a time
        self.V = width if vec_ok and src is None and config.vector and n % width == 0 else 1
        self.npk = n // self.V  # packs per row
        self.ctsize = 8 if kind == "f8" else 4  # bytes of the compute type
        self.sms = props.sms
        self.smem_cap = (props.smem_optin - _STATIC_SMEM if config.smem_max is None
                         else config.smem_max)
        self.max_grid = config.max_grid or (2 if sim else props.sms * 32)
        # packs per thread and step in the smem/long/split loops: ~16 values in flight
        # (float64: 8; masked float64: 4, else the masked long-row kernels spill)
        values = 16 if kind != "f8" else 4 if mask else 8
        self.unroll = 2 if sim else max(1, values // self.V)
        two = self.bwd or weights  # two inputs in registers
        # ``rows`` in a warp's registers: up to 64 float32 values a thread of each input
        # (H200, N = 2048: forward 62 % of copy against 30 % for smem, gradients 102 %
        # against 75 %) on the vector path; 32 (16 of each of two inputs) for single
        # elements (64 of them spill), float64 (twice the registers; not measured),
        # logsumexp, masks, dtype=
        wide = self.V > 1 and self.ctsize == 4 and not (self.lse or weights or mask or src)
        self.reg_max = ((2048 if wide else 512 if two else 1024) * 4 // self.ctsize
                        if config.reg_max is None else config.reg_max)
        # Longer rows in up to 1024 threads' registers, 16 float32 values of one input a
        # thread or 8 of each of two (float64: half), so that a block of 1024 threads stays
        # within 64 registers a thread; half that again for logsumexp's weights, and for
        # single elements (each with an address of its own) of two inputs, float64 or with
        # a mask: ptxas spilled those at 1024 threads. Not measured on a GPU. The plan
        # takes them for the forward functions, whose ``smem`` ran at 30-51 % of copy on an
        # H200 (N = 2048-32768), and for logsumexp and its gradient (``long`` before); the
        # softmax gradients keep ``smem`` (93-97 % there at N = 4096-12288) unless forced.
        self.multiwarp = not self.bwd or self.lse
        values = config.row_values
        if values is None:
            values = (8 if two else 16) * 4 // self.ctsize
            if weights or self.V == 1 and (two or self.ctsize == 8 or mask):
                values //= 2
        self.row_packs = max(1, values // self.V)

    def block(self, default):
        """Threads per block: whole warps, since the reductions shuffle over full warps."""
        b = config.block or (32 if self.sim else default)
        if b % 32 or not 32 <= b <= 1024:
            raise ValueError(f"block size must be a multiple of 32 from 32 to 1024 (whole "
                             f"warps); got {b}")
        return b

    def step(self, strategy, b, u, grid, shmem=0, chunks=(), G=1, K_=1):
        spec = K.Spec(strategy, self.op, self.kind, self.V, G, K_, b, u, self.src, self.mask,
                      self.weights, self.signed)
        return Step(spec, grid, shmem, chunks)

    def smem_block(self):
        # Each row pays two block-wide reductions (gradients: one) and the passes over its
        # cache, so a forward row wants few threads: 16 packs a thread, 4 for the gradients
        # (H200, float32: N = 2048-8192 forward at 51-55 % of copy with 128 threads, 30-47 %
        # with 512; gradients 98 % at N = 2048 with 256, 84 % at N = 16384 with 1024)
        per, least = (4, 256) if self.bwd else (16, 128)
        b = 1 << max(0, (self.npk // per).bit_length() - 1)  # a power of two <= npk / per
        return self.block(min(1024, max(least, b)))

    def row_threads(self):
        """Threads a row takes in ``rows``: a power of two, a warp or less up to reg_max
        elements, else enough for row_packs packs a thread (past 1024 no block holds it)."""
        packs = max(self.npk, 1)
        if self.n <= self.reg_max:
            return min(_pow2(packs), 32)
        return _pow2(-(-packs // self.row_packs))

    def smem_bytes(self):
        """The bytes of a row cached in the compute type (gradients: both inputs)."""
        b = self.smem_block()
        return -(-self.npk // b) * b * self.V * self.ctsize * (2 if self.bwd else 1)


def _pow2(q):
    """The least power of two >= q (>= 1)."""
    return 1 << max(0, (q - 1).bit_length())


def _rows(c):
    packs = max(c.npk, 1)
    g = c.row_threads()
    if g > 1024:  # only a forced strategy gets here
        raise ValueError(f"config.force: a row of {c.n} elements ({c.op}, {c.kind}) needs "
                         f"{g} threads to hold in registers, more than a block's 1024")
    k = _pow2(-(-packs // g))  # packs per thread
    b = max(g, c.block(128))
    # two rows per group and step when a row is at most 8 values per thread of a warp or
    # less, so that each thread keeps two loads in flight
    u = 2 if k * c.V <= 8 and g <= 32 else 1
    grid = min(-(-c.m // (b // g * u)), c.max_grid)
    return Plan([c.step("rows", b, u, grid, G=g, K_=k)], 0)


def _smem(c):
    if c.smem_bytes() > c.smem_cap:  # only a forced strategy gets here
        raise ValueError(f"config.force: a row of {c.n} elements ({c.op}, {c.kind}) needs "
                         f"{c.smem_bytes()} B of shared memory to cache, more than the "
                         f"{c.smem_cap} B a block has")
    # the gradients load two arrays: half the packs of each in flight (at 1024 threads a
    # thread has 64 registers; more spill)
    u = max(1, c.unroll // 2) if c.bwd and not c.sim else c.unroll
    return Plan([c.step("smem", c.smem_block(), u, min(c.m, c.max_grid), c.smem_bytes())],
                0)


def _long(c):
    return Plan([c.step("long", c.block(512), c.unroll, min(c.m, c.max_grid))], 0)


def _split(c):
    b = c.block(512)
    per_step = b * c.unroll
    target = 4 if c.sim else c.sms * 4  # blocks to fill the device
    chunks = max(1, min(-(-target // c.m), -(-c.npk // per_step)))
    L = -(-c.npk // chunks)  # packs per chunk
    if not c.sim:
        L = -(-L // per_step) * per_step  # whole steps
    chunks = -(-c.npk // L)
    grid = min(c.m * chunks, c.max_grid)
    stats = c.step("split_stats", b, c.unroll, grid, chunks=(chunks, L))
    if c.op in ("softmax", "log_softmax"):  # the same statistics: compile them once
        stats = stats._replace(spec=stats.spec._replace(op="softmax"))
    write = c.step("split_write", b, c.unroll, grid, chunks=(chunks, L))
    if c.lse:  # it combines the statistics and reads no data: one kernel for every pack
        write = write._replace(spec=write.spec._replace(V=1, U=1))
    return Plan([stats, write], c.m * chunks * (1 if c.bwd else 2))


def _choose(c):
    if c.n <= c.reg_max or c.multiwarp and c.row_threads() <= 1024:
        return "rows"
    # ``smem`` caches a row in the compute type only: float16 rows cached as their 2-byte
    # bits (twice as long a row, its exps taken twice) ran at 23-26 % of copy forward on
    # an H200 (N = 32768-65536), where ``long`` read float32 rows at 64 %
    if not c.lse and c.smem_bytes() <= c.smem_cap:
        return "smem"
    split_rows = config.split_rows
    if split_rows is None:
        split_rows = 2 if c.sim else c.sms * 2
    if (c.m < split_rows and c.npk >= 2 * c.block(512) * c.unroll
            and c.op != "logsumexp_backward"):
        return "split"
    return "long"


_STRATEGIES = {"rows": _rows, "smem": _smem, "long": _long, "split": _split}


def plan(op, kind, m, n, vec_ok, dev, sim=None, src=None, mask=False, weights=False,
         signed=False):
    """Kernels, launch shapes and workspace for an (m, n) call; see kernels.py. ``dev``: a
    device ordinal or a DeviceProps (to plan for another device); ``sim`` (default: whether
    the simulator runs) picks the simulator's small defaults; ``src``: the inputs' storage
    kind where it is not ``kind`` (``dtype=``); ``mask``: whether a ``where=`` mask is
    read; ``weights``, ``signed``: logsumexp's ``b=`` and sign (see kernels.Spec)."""
    c = _Call(op, kind, m, n, vec_ok, device_props(dev), SIM if sim is None else sim, src,
              mask, weights, signed)
    strategy = config.force or _choose(c)
    if strategy not in _STRATEGIES:
        raise ValueError(f"config.force must be one of {sorted(_STRATEGIES)}; got "
                         f"{strategy!r}")
    if c.lse and (strategy.startswith("smem") or strategy == "split" and c.bwd):
        strategy = "long"  # what logsumexp and its gradient have instead
    return _STRATEGIES[strategy if n else "rows"](c)  # empty rows: every row is padding


# ---------------------------------------------------------------------------------------
# compilation

Source = namedtuple("Source", "pyfunc sig options")  # what ``cuda.jit`` compiles
COPY_BLOCK = 256
_compiled = {}
_compile_lock = threading.RLock()


@functools.cache
def primitives(kind, src=None):
    if SIM:
        from . import sim

        return sim.make_primitives(kind, src)
    from . import intrinsics

    return intrinsics.make_primitives(kind, src)


def _arr(dtype):
    return types.Array(from_dtype(np.dtype(dtype)), 1, "C")


def _signature(spec):
    """The arguments of every kernel (kernels.build), in the order ``_kernel_args`` gives."""
    a, o, i = _arr(STORAGE[spec.src or spec.kind]), _arr(STORAGE[spec.kind]), _I64
    mask = (_arr(np.uint8), i, types.UniTuple(i, 6)) if spec.mask else ()
    return types.void(a, i, a, i, o, i, _arr(np.float64), i, i, i, i, *mask)


def _options(block):
    # Launch bounds: at most the block size, at least one block per SM, so that ptxas keeps
    # registers x block within the register file (else the launch fails for lack of
    # resources). With the block size alone it also aims at several blocks per SM and
    # spills registers for that, by heuristics that move with every code change.
    return dict(fastmath=False, lineinfo=False, launch_bounds=(block, 1))


def kernel_source(spec):
    """The Source that ``get_kernel`` compiles for ``spec``."""
    return Source(K.build(spec, primitives(spec.kind, spec.src)), _signature(spec),
                  _options(spec.B))


def copy_source(ndim, src_dtype, dst_dtype, cast, kinds=None):
    """The Source of the strided copy kernel (see kernels.make_copy); ``kinds``: (the
    destination's storage kind, the source's) for a float conversion, or with ``cast``
    (integer or bool values) the destination's kind twice: the values are converted to
    its compute type and stored as its bits (a 2-byte float is not its storage integer)."""
    tup = types.UniTuple(_I64, ndim)
    sig = types.void(_arr(src_dtype), _I64, tup, _arr(dst_dtype), _I64, tup, tup, _I64)
    P = None if kinds is None else primitives(kinds[0], None if kinds[1] == kinds[0]
                                              else kinds[1])
    convert = (from_dtype(np.dtype(dst_dtype)) if P is None else P.ctype) if cast else None
    return Source(K.make_copy(ndim, SIM, convert, P), sig, _options(COPY_BLOCK))


def _limits(kernel):
    """(the most threads per block, the bytes of dynamic shared memory before an opt-in) of
    a compiled kernel. Without the opt-in a block has 48 KB of shared memory in all, the
    kernel's static arrays included."""
    if SIM:
        return 1024, SHMEM_DEFAULT
    return int(kernel.attrs.maxthreads), SHMEM_DEFAULT - int(kernel.attrs.shared)


class Compiled:
    """One compiled kernel on one device, launchable with raw-int arguments; ``max_shmem``:
    the bytes of dynamic shared memory it may use now."""

    __slots__ = ("dispatcher", "kernel", "dev", "max_threads", "max_shmem")

    def __init__(self, dispatcher, dev):
        self.dispatcher, self.dev, self.kernel = dispatcher, dev, None
        if not SIM:
            with cuda.gpus[dev]:
                self.kernel = next(iter(dispatcher.overloads.values()))._codelibrary.get_cufunc()
        self.max_threads, self.max_shmem = _limits(self.kernel)

    def ensure_shmem(self, nbytes):
        """Raise the kernel's dynamic shared-memory limit when ``nbytes`` exceeds it."""
        if nbytes > self.max_shmem:
            driver.set_max_dynamic_shared(self.kernel.handle, self.dev, nbytes)
            self.max_shmem = nbytes


def _compile(src, dev):
    if SIM:  # the simulator rejects the options (launch bounds, lineinfo)
        return cuda.jit(src.pyfunc)
    try:
        with cuda.gpus[dev]:
            return cuda.jit(src.sig, **src.options)(src.pyfunc)
    except AttributeError as err:
        if "row_stack" in str(err):  # numba-cuda 0.30 with numpy >= 2.5
            raise RuntimeError(f"numba-cuda cannot compile with numpy {np.__version__} "
                               f"({err}); install numpy<2.5 next to numba-cuda") from err
        raise


def _compiled_kernel(key, source, dev):
    """The Compiled kernel cached under ``key``, compiled from ``source()`` the first time."""
    c = _compiled.get(key)
    if c is None:
        with _compile_lock:
            c = _compiled.get(key)
            if c is None:
                c = _compiled[key] = Compiled(_compile(source(), dev), dev)
    return c


def get_kernel(spec, dev):
    """The compiled kernel of ``spec`` on ``dev``; an error (at plan time, not at launch)
    when it cannot run blocks of the planned size."""
    c = _compiled_kernel((spec, dev), lambda: kernel_source(spec), dev)
    if c.max_threads < spec.B:
        raise RuntimeError(f"numbasoftmax: the compiled {spec.strategy} kernel {spec} runs "
                           f"at most {c.max_threads} threads per block on cuda:{dev}, but "
                           f"its plan launches {spec.B}")
    return c


class Ready(NamedTuple):
    """A plan with its compiled kernels; without workspace (one step) and of one storage
    kind, also the fast path's raw arguments for contiguous rows, with ``slots``: (position,
    k) where the k-th data pointer (inputs, then out) goes."""

    launches: tuple  # ((Compiled, Step), ...)
    ws_items: int
    args: list | None = None
    slots: tuple = ()


@functools.lru_cache(maxsize=4096)
def ready(op, kind, m, n, vec_ok, dev, src=None, mask=False, weights=False, signed=False):
    p = plan(op, kind, m, n, vec_ok, dev, src=src, mask=mask, weights=weights, signed=signed)
    launches = tuple((get_kernel(s.spec, dev), s) for s in p.steps)
    if p.ws_items or src is not None or mask or OPS[op].forward == "logsumexp":
        return Ready(launches, p.ws_items)
    marks = [-1 - i for i in range(len(OPS[op].args) + 1)]  # stand-ins for the pointers
    rows = [(Buf(mark, m * n, STORAGE[kind]), n) for mark in marks]
    args = _direct_args(_kernel_args(p.steps[0], rows[:-1], rows[-1], None, m, n))
    return Ready(launches, 0, args, tuple((i, -1 - v) for i, v in enumerate(args)
                                          if v in marks))


# ---------------------------------------------------------------------------------------
# temporary device memory: released in stream order, the host never waits

class ArrayMemory:
    """Memory held by arrays until freed: an array library's pool (cupy, torch: stream
    ordered), host arrays under the simulator, or numba device arrays on a device without
    memory pools (numba's deferred cuMemFree synchronizes: only there). ``make(nbytes)``
    returns an array of uint8, ``pointer(array)`` its address."""

    def __init__(self, make, pointer):
        self.make, self.pointer, self.arrays = make, pointer, {}

    def alloc(self, nbytes, stream):
        a = self.make(max(nbytes, 1))
        self.arrays[self.pointer(a)] = a
        return self.pointer(a)

    def free(self, ptr, stream):
        del self.arrays[ptr]


class _AsyncMemory:
    """The device's default pool: ``cuMemAllocAsync`` / ``cuMemFreeAsync``."""

    alloc, free = staticmethod(driver.alloc_async), staticmethod(driver.free_async)


@functools.cache
def device_memory(dev):
    """Where Scratch gets memory when the array library has no pool of its own."""
    if SIM:
        return ArrayMemory(lambda nbytes: np.empty(nbytes, np.uint8), lambda a: a.ctypes.data)
    if driver.memory_pools_supported(dev):
        return _AsyncMemory()
    return ArrayMemory(lambda nbytes: cuda.device_array(nbytes, np.uint8),
                       lambda a: a.__cuda_array_interface__["data"][0])


class Scratch:
    """The temporary buffers of one call on its stream, from ``memory`` (default:
    ``device_memory(dev)``), freed when it closes, after the call's work is queued."""

    def __init__(self, dev, stream, memory=None):
        self.stream, self.mem, self._ptrs = stream, memory or device_memory(dev), []

    def buf(self, nitems, dtype):
        dtype = np.dtype(dtype)
        self._ptrs.append(self.mem.alloc(nitems * dtype.itemsize, self.stream))
        return Buf(self._ptrs[-1], nitems, dtype)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        while self._ptrs:
            self.mem.free(self._ptrs.pop(), self.stream)


# ---------------------------------------------------------------------------------------
# launching

_sim_lock = threading.Lock()
_core = None  # the cuda.core module, imported at the first direct launch
_tls = threading.local()
_fallback_warned = False
_NO_WS = Buf(0, 0, np.dtype(np.float64))


def _kernel_args(step, ins, out, ws, m, n, mask=None):
    """The one builder of kernel arguments, in the order of ``_signature``: the inputs as
    (Buf, row stride) (a forward op's input twice), out (Buf, row stride), the split's
    workspace (else a placeholder), m, n, the split's (C, L) (else 1, n), and for a masked
    kernel ``mask``: a Mask."""
    args = [*ins[0], *ins[-1], *out, ws or _NO_WS, m, n, *(step.chunks or (1, n))]
    return args + list(mask) if step.spec.mask else args


def _direct_args(args):
    """Kernel arguments as raw ints: a Buf as numba's 1-D C-contiguous array struct
    (meminfo, parent, nitems, itemsize, data, shape, stride), tuples flattened."""
    out = []
    for a in args:
        if type(a) is Buf:
            item = a.dtype.itemsize
            out += (0, 0, a.nitems, item, a.ptr, a.nitems, item)
        else:
            out += a if type(a) is tuple else (a,)
    return out


def _numba_arg(a):
    if type(a) is not Buf:
        return a
    return cuda.from_cuda_array_interface(
        {"shape": (a.nitems,), "strides": None, "typestr": a.dtype.str,
         "data": (a.ptr, False), "version": 3}, owner=None, sync=False)


def _sim_arg(a):
    if type(a) is not Buf:
        return a
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    if a.nitems == 0:
        return FakeCUDAArray(np.zeros(1, dtype=a.dtype))
    raw = (ctypes.c_byte * (a.nitems * a.dtype.itemsize)).from_address(a.ptr)
    return FakeCUDAArray(np.frombuffer(raw, dtype=a.dtype, count=a.nitems))


@functools.lru_cache(maxsize=256)
def numba_stream(handle):
    """numba's Stream for a raw stream handle (the simulator has only its default)."""
    return cuda.default_stream() if SIM or not handle else cuda.external_stream(handle)


@functools.lru_cache(maxsize=256)
def _core_stream(handle):
    return _core.Stream.from_handle(handle)


@functools.lru_cache(maxsize=4096)
def _core_config(grid, block, shmem):
    return _core.LaunchConfig(grid=grid, block=block, shmem_size=shmem)


def _direct_launch(compiled, grid, block, shmem, stream, args):
    """cuda.core's launch of the compiled kernel with raw-int ``args``. False when cuda.core
    is incompatible: nothing was launched, and numba's launch path is used from now on."""
    global _core, _fallback_warned
    try:
        if _core is None:
            import cuda.core

            _core = cuda.core
        # once per thread and device: a current context for the context-less kernel handle
        done = _tls.__dict__.setdefault("devs", set())
        if compiled.dev not in done:
            driver.ensure_context(compiled.dev)
            done.add(compiled.dev)
        _core.launch(_core_stream(stream), _core_config(grid, block, shmem),
                     compiled.kernel.kernel, *args)
    except (ImportError, AttributeError, TypeError) as err:
        if not _fallback_warned:
            warnings.warn(f"numbasoftmax: direct kernel launch unavailable ({err!r}); using "
                          "numba's launch path (slower)", RuntimeWarning, stacklevel=3)
            _fallback_warned = True
        config.launch = "numba"
        return False
    return True


def launch(compiled, grid, block, shmem, stream, args):
    """Launch on ``stream`` (a raw CUDA stream handle; 0 = the legacy default stream).
    Never synchronizes the host."""
    if SIM:
        with _sim_lock:
            compiled.dispatcher[grid, block, 0, shmem](*map(_sim_arg, args))
        return
    compiled.ensure_shmem(shmem)
    if config.launch != "direct" or not _direct_launch(compiled, grid, block, shmem, stream,
                                                       _direct_args(args)):
        compiled.dispatcher[grid, block, numba_stream(stream), shmem](*map(_numba_arg, args))


# ---------------------------------------------------------------------------------------
# entry points used by api.py and arrays.py

def _aligned(ptrs, n, item):
    """Whether 16-byte vector loads may be planned: every row start 16-byte aligned."""
    return not (n * item) % 16 and not any(p % 16 for p in ptrs)


class Mask(NamedTuple):
    """A ``where=`` mask as the kernels read it (kernels._masking): uint8 bytes (0:
    excluded), the element stride (1, or 0 for one value per row) and the rows' dims."""

    buf: Buf
    step: int
    dims: tuple  # three (size, byte stride) pairs, flattened


def run_rows(op, kind, ins, out, m, n, dev, stream, scratch, src=None, mask=None,
             ws=None, weights=False, signed=False):
    """Run ``op`` over m rows of n elements. ``ins``: [(Buf, row stride)] per input; ``out``:
    (Buf, row stride; logsumexp: a value, or value and sign, per row); ``scratch`` (a
    Scratch) holds the split kernels' workspace; ``src``: the inputs' storage kind where it
    is not ``kind`` (``dtype=``); ``mask``: a Mask; ``ws``: logsumexp's gradient's row
    statistics (a float64 Buf of (lse, dlse[, sign]) per row); ``weights``: ``ins[1]`` is
    logsumexp's ``b``; ``signed``: logsumexp's sign is written or read."""
    rows = ins if OPS[op].reduces else (*ins, out)
    vec_ok = all(_aligned((b.ptr,), stride, STORAGE[kind].itemsize) for b, stride in rows)
    r = ready(op, kind, m, n, vec_ok, dev, None if src == kind else src, mask is not None,
              weights, signed)
    if r.ws_items:
        ws = scratch.buf(r.ws_items, np.float64)
    for compiled, step in r.launches:
        launch(compiled, step.grid, step.spec.B, step.shmem, stream,
               _kernel_args(step, ins, out, ws, m, n, mask))


def fast_rows(op, kind, ptrs, optr, m, n, dev, stream):
    """The fast path of cupy/torch inputs: C-contiguous rows at device pointers ``ptrs``
    (inputs) and ``optr`` (result). False when it does not apply (a plan with a workspace,
    the simulator, numba's launch path): then the caller takes the general path."""
    if SIM or config.launch != "direct":
        return False
    r = ready(op, kind, m, n, _aligned((*ptrs, optr), n, STORAGE[kind].itemsize), dev)
    if r.args is None:
        return False
    args, ptrs = r.args.copy(), (*ptrs, optr)
    for slot, k in r.slots:
        args[slot] = ptrs[k]
    ((compiled, step),) = r.launches
    compiled.ensure_shmem(step.shmem)
    return _direct_launch(compiled, step.grid, step.spec.B, step.shmem, stream, args)


def copy(src, soff, sstrides, dst, doff, dstrides, shape, dev, stream, cast=False,
         kinds=None):
    """Strided element copy (see kernels.make_copy); strides and offsets in elements.
    ``cast``: convert to the destination's dtype (integers, bool); ``kinds``: (the
    destination's storage kind, the source's): convert one float kind to another."""
    total = math.prod(shape)
    if total == 0:
        return
    key = ("copy", len(shape), src.dtype, dst.dtype, cast, kinds, dev)
    c = _compiled_kernel(key, lambda: copy_source(len(shape), src.dtype, dst.dtype, cast,
                                                  kinds), dev)
    block = (config.block or 32) if SIM else COPY_BLOCK
    max_grid = config.max_grid or (2 if SIM else device_props(dev).sms * 32)
    launch(c, min(-(-total // block), max_grid), block, 0, stream,
           [src, soff, tuple(sstrides), dst, doff, tuple(dstrides), tuple(shape), total])
