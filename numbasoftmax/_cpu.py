"""CPU launcher: picks the kernel and the serial or parallel driver, and keeps numba's
thread pool safe (concurrent callers, forked children).

Inputs here are flat 1-D buffers with strides (see ``_layout``); float16 data arrives
viewed as uint16. Every kernel gives a row the same bits (see ``_row_kernel``), so the
choices below are about speed only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading

import numba
import numpy as np

from ._config import STREAM_MIN_BYTES

# Below this many elements the serial driver runs: waking the thread pool costs more than
# the work (omp: ~2.7 us per call; a 32K-element float32 softmax takes ~30 us on one core).
PARALLEL_MIN_ELEMENTS = 1 << 15
# Rows shorter than this run W at a time, a lane per row, gathered into a tile: the row
# kernel's fixed cost per row (horizontal reductions, a division, the exp's latency)
# dominates short rows. The forward operations' tiles take rows of up to two vectors (2W
# elements). At 32 elements, time on the tiles / in the row kernel's groups, float32, both
# interleaved in one process on the same arrays, medians over fresh numpy allocations
# (each lands elsewhere in memory, which moves a single run's time by 20 % or more),
# 2 threads: softmax 0.62 / 0.58 / 0.83-0.85 at 2^16 / 2^20 / 2^24 elements, logsumexp
# 0.73 / 0.56 / 0.70-0.75, log_softmax 0.69 / 0.62 / 0.94-1.04 (its large outputs
# otherwise stream as runs); float16 softmax 0.53-0.59, log_softmax 0.60 at 2^24; masked
# softmax 0.92, log_softmax 0.98. Longer rows ran behind from ~36 (0.64x torch / 1.1x at
# 48; 2-core Zen 4, AVX-512). The gradients' tiles in registers (up to REGISTER_ROW_MAX
# elements) ran 1.4-1.8x the row kernel's groups, whose rows of 9 and 10 ran 1.0-2.3x the
# lane kernel's (softmax_backward 1.5-2.3x). These are the rows the lane kernel's tiles
# take (``_lane_kernel.TILE_ROW_MAX``, ``REGISTER_ROW_MAX``; a test holds them together).
SHORT_ROW_MAX = {"forward": 33, "backward": 9}
# ... of at most this many bytes of output: float64's tiles led up to 20 elements, were
# level at 22 and behind from 24 (ns per element, tiles / row kernel, 2^24 elements, 2
# threads, three runs, 2-core Zen 4: softmax 1.05-1.06 / 1.47-1.53 at 17, 1.13-1.15 /
# 1.27-1.31 at 20, 1.16-1.17 / 1.15-1.18 at 22, 1.33-1.35 / 1.11-1.18 at 24, 1.19-1.28 /
# 0.95-0.99 at 28; log_softmax 1.09-1.16 / 1.14-1.23 at 20, 1.13-1.15 / 1.04-1.12 at 22,
# 1.35-1.41 / 0.98-1.06 at 24); float32's and float16's rows up to 32 elements are 128
# and 64 bytes
SHORT_ROW_BYTES = 176
# From there (masked rows, which the lane kernel does not take, from 1 element), rows
# shorter than this run in groups through each phase of the row kernel (``grouped_rows``):
# a short row's phases are one chain of dependent steps, and a group's chains fill each
# other's waits. Measured single-threaded, float16/32/64, against a row at a time: the
# forward operations ahead up to ~200 elements (float32 at 32: 1.1-1.4x) and level from
# 256 to a chunk (so they run in groups throughout, and their first calls compile these
# drivers only); the gradients ahead up to 64 (float32 at 16: 1.3-1.6x), behind from 96
# (float32 at 128-512: 0.8x).
GROUPED_ROW_MAX = {"forward": 8192, "backward": 64}
# Except where the output is large (past the L2 caches): there softmax's and log_softmax's
# rows of at least ALONE_ROW_BYTES run a row at a time (``rows``) where they would run in
# groups (log_softmax's contiguous rows mostly run as streamed runs instead, ``RUN_OPS``).
# In groups, the rows' max passes read memory back to back and their sum passes compute
# with the memory idle; a row at a time overlaps the two. Time a row at a time ÷ in groups,
# softmax, 2^24 elements, 2 threads, both in one process, alternating (2-core Intel Xeon,
# AVX-512): float32 1.02-1.07 / 0.81-0.82 / 0.92-0.93 / 0.94-0.95 / 0.89 / 1.02 / 1.09 /
# 0.89 / 0.85-0.88 / 0.98 / 0.99-1.00 / 0.97-0.98 at 32 / 64 / 80 / 128 / 192 / 256 / 384
# / 512 / 1024 / 2048 / 4096 / 8192 elements; float64 0.80 / 0.93-0.94 / 0.94 / 0.97 /
# 0.95 / 0.98-0.99 / 1.07-1.08 / 1.01 at 32 / 64 / 128 / 256 / 384 / 512 / 1024 / 2048;
# float16 1.05 / 0.89 / 0.76 / 0.80 / 0.96 / 0.97 at 64 / 128 / 256 / 512 / 1024 / 4096.
# In the L2 cache (2^16 elements) groups stay ahead (float32 at 32-64 elements: 1.2-1.7x).
ALONE_OPS = ("softmax", "log_softmax")
ALONE_ROW_BYTES = 256
ALONE_MIN_BYTES = 1 << 25
# Where the output is large (past the L2 caches), the row drivers fetch the rows of at most
# FETCH_ROW_BYTES FETCH_BYTES (at least a row) ahead of the one they work on into the L1
# cache: the inputs' lines to read and the output's to write (``_cpu_kernels.fetch_rows``;
# where the output streams past the caches, the inputs' only). Short rows' phases
# read and write a few lines each and then compute; without the hints each row's stores
# waited for their lines (the stores' reads for ownership) and its loads for theirs. Time
# with ÷ without, float32, 2^24 elements, 2 threads, both alternating in one process over
# five rotated inputs (2-core Intel Xeon, AVX-512): softmax 0.75 / 0.72 / 0.74 / 0.68 /
# 0.79 / 0.68 / 0.71 / 0.83 at 3 / 8 / 16 / 32 / 64 / 128 / 256 / 512 elements;
# log_softmax 0.92 / 0.77 / 0.76 / 0.74 / 0.73 / 0.84 at 3 / 8 / 16 / 32 / 64 / 128, level
# from 256 (its outputs stream, so only x is fetched); softmax_backward 0.66-0.90 and
# log_softmax_backward 0.69-0.79 at 3-512; float64 0.70-0.88 (softmax at 8-256,
# log_softmax_backward at 32, 256); float16 0.86-1.02; masked rows 0.69-0.89. Rows of 4-32
# KiB, fetched one row ahead (two processes each): log_softmax_backward 0.78-0.82 / 0.85-0.86
# / 0.90-0.91 / 0.94-0.96 at 4 / 8 / 16 / 32 KiB (its second pass reads z, which its first
# did not), softmax_backward 0.93 / 0.99-1.00 / 1.06-1.07 at 4 / 8 / 16 KiB, softmax
# 0.94-1.03, log_softmax 0.91-0.99 (one process): so per operation the longest row fetched
# (FETCH_ROW_BYTES). In the cache the hints only cost (2^17 elements, one thread:
# 1.05-1.25x the time), and at 2^20-2^21 elements they measured level or slower: so from
# FETCH_MIN_BYTES. A first call compiles ~0.1-0.2 s longer.
FETCH_ROW_BYTES = {"softmax": 2048, "log_softmax": 2048, "softmax_backward": 4096,
                   "log_softmax_backward": 16384}
FETCH_BYTES = 2048
FETCH_MIN_BYTES = 1 << 25
# Except on the CPUs whose names (LLVM's, of the host) start with one of these: AMD's Zen
# cores. On a Zen 4 (2-core AMD EPYC, AVX-512) the same rows ran level or faster without
# the hints, their own prefetchers keeping up: time without ÷ with, float32, 2^24
# elements, 2 threads, 12 calls each taking turns over five rotated inputs: softmax 0.91 /
# 0.96 / 0.85 / 0.99 / 0.81 at 3 / 16 / 32 / 128 / 512 elements, log_softmax 1.02 / 0.99 /
# 1.03 / 0.85 / 0.74, softmax_backward 0.95 / 1.00 / 1.06 / 0.98 / 0.97 / 0.83 at 3 / 16 /
# 32 / 128 / 512 / 1024, log_softmax_backward 0.78 / 0.94 / 0.96 / 0.96 / 0.87 / 0.76 /
# 0.75 at 3 / 16 / 32 / 128 / 512 / 1024 / 4096; float64 0.80-1.09, float16 0.88-1.08,
# masked 0.87-1.00 (the Intel Xeon's column above: 0.66-0.95 with the hints). On a Zen 3
# (2-core AMD EPYC, AVX2; the same measurement, two runs) mixed: the forward functions'
# rows of 16 and 32 elements lost 4-29 % without the hints (softmax 1.22-1.25 / 1.07-1.11,
# log_softmax 1.28-1.29 / 1.04), the other rows measured 0.83-1.09 (softmax_backward at
# 32: 1.24 in one run, 0.97 in the other; float64 and float16 not measured there). Zen 3
# stays under this rule; fetching its forward rows of up to 128 bytes is a lead.
NO_FETCH_CPUS = ("znver",)


def fetches_on(cpu_name):
    """Whether the row drivers fetch rows ahead on a CPU of LLVM name ``cpu_name``."""
    return not cpu_name.startswith(NO_FETCH_CPUS)


@functools.cache
def host_fetches():
    """``fetches_on`` this machine's CPU (asked once per process)."""
    from llvmlite import binding

    return fetches_on(binding.get_host_cpu_name())


# Rows of at least this many bytes write a large output (``_config.STREAM_MIN_BYTES``)
# with non-temporal stores: a row's first and last partial cache lines take masked plain
# stores, and below this that cost outweighs the traffic saved. The kernel streams only
# where its first passes kept nothing in ``out`` (``_row_kernel.may_stream``).
# Along a strided axis read in place the rule applies to the runs of contiguous outputs
# (the inner positions), whose whole column tiles then stream (``run_columns``).
STREAM_MIN_ROW_BYTES = 2048
# The operations whose rows measured otherwise, per item size (float16, float32, float64;
# None: never). Time with plain stores / time streamed under the rule above, 2^24
# elements, 2 threads, median of 31 alternating pairs per process, three processes: rows
# of 2 / 4 / 8 / 16 KiB: log_softmax float32 - / 0.89-1.11 / 0.94-1.26 / 1.03-1.18,
# float64 - / 0.86-0.91 / 1.02-1.11 / 1.10-1.20. float16, two processes of 15 pairs at
# 2-256 KiB: 0.69-0.99 in all three operations measured (its conversions bound it);
# softmax_backward float32 0.85-1.04 / 1.16-1.23 / 1.13-1.41, float64 0.83-0.87 /
# 1.04-1.18 / 1.10-1.25; log_softmax_backward float32 at 16 / 64 / 256 KiB / 1 MiB
# 0.94-1.02 / 1.05-1.07 / 0.97-1.03 / 0.89-0.93, float64 at 64 KiB / 256 KiB / 1 MiB
# 0.99-1.05 / 0.98-1.03 / 0.95-1.00. This rule holds for rows streamed one at a time (rows
# longer than a chunk, dask's segments); on the row drivers log_softmax and the gradients
# stream whole runs of rows (see ``RUN_ITEMSIZES``).
STREAM_ROW_BYTES = {
    "log_softmax": (None, 8192, 8192),
    "softmax_backward": (None, 4096, 4096),
    "log_softmax_backward": (None, None, None),
}
# Large outputs of the gradients' contiguous rows, from 16 elements
# (``_cpu_kernels.RUN_ROW_MIN``) to a chunk, unmasked or with a mask of x's shape or one
# mask for every row, stream as one run per task whatever the row length
# (``_cpu_kernels.run_rows``, ``RUN_OPS``): the lines two rows share are streamed whole.
# Time against the rule above, float32, 2^24 elements, 2 threads, 15 alternating rounds:
# softmax_backward 0.69 / 0.78 / 0.76 / 0.80 / 0.80 / 0.83 / 0.95 at 16 / 32 / 48 / 64 /
# 128 / 1024 / 4096 elements, log_softmax_backward 0.78 / 0.84 / 0.96 at 32 / 128 / 1024,
# and its rows longer than a chunk, streamed one at a time then, 0.90-0.93; float64 0.59
# / 0.89 at 32 / 1024; masked 0.60-0.79 at 32. Not float16 (as above).
# log_softmax's rows run too from the short rows' end (``SHORT_ROW_MAX``: the tiles stay
# faster below it, 1.26-1.40x the time as runs at 16 elements) to a chunk, their statistics
# in groups (``_cpu_kernels.grouped_rows``). Time against the rule above, float32, 2^24
# elements, 2 threads, 5 alternating rounds over 8 inputs (2-core Intel Xeon, AVX-512):
# 0.98-1.07 / 0.83-0.93 / 0.89-0.96 / 0.83-0.86 / 0.71-0.84 / 0.73-0.80 / 0.90-0.95 /
# 0.94-0.98 / 0.98-1.01 at 32 / 48 / 64 / 128 / 256 / 1024 / 2048 / 4096 / 8192 elements;
# float64 0.80-0.87 / 0.64-0.68 / 0.66-0.69 / 0.93 at 32 / 64 / 128 / 1024; masked
# 0.76-1.03 at 32-1024.
RUN_ITEMSIZES = (4, 8)
_ITEMSIZES = (2, 4, 8)


def stream_row_bytes(op, itemsize):
    """The shortest row, in bytes, that operation ``op`` writes past the caches (when the
    output is large) with outputs of ``itemsize`` bytes; None: never."""
    sizes = STREAM_ROW_BYTES.get(op)
    return STREAM_MIN_ROW_BYTES if sizes is None else sizes[_ITEMSIZES.index(itemsize)]


def ahead(op, m, n, itemsize):
    """How many rows ahead of their work the row drivers fetch m rows of n elements of
    ``itemsize`` bytes of operation ``op`` (0: none; see FETCH_BYTES)."""
    row = n * itemsize
    if row > FETCH_ROW_BYTES.get(op, 0) or m * row < FETCH_MIN_BYTES or not host_fetches():
        return 0
    return max(1, FETCH_BYTES // row)


def alone(op, m, n, itemsize):
    """Whether m rows of n outputs of ``itemsize`` bytes of operation ``op`` that would run
    in groups run a row at a time (``ALONE_ROW_BYTES``)."""
    return (op in ALONE_OPS and n * itemsize >= ALONE_ROW_BYTES
            and m * n * itemsize >= ALONE_MIN_BYTES)


def past_caches(nbytes):
    """Whether an output of ``nbytes`` bytes is large enough to be written past the caches
    (``STREAM_MIN_BYTES``; whether it is, ``streams`` says)."""
    return STREAM_MIN_BYTES is not None and nbytes >= STREAM_MIN_BYTES


def streams(m, n, itemsize, op=None, runs=False):
    """Whether m rows of n outputs of ``itemsize`` bytes are written past the caches (by
    operation ``op``; None: as the operations without a rule of their own). ``runs``: rows
    that ``_cpu_kernels.run_rows`` can take, which stream as one run."""
    if not past_caches(m * n * itemsize):
        return False
    if runs and itemsize in RUN_ITEMSIZES:
        return True
    least = STREAM_MIN_ROW_BYTES if op is None else stream_row_bytes(op, itemsize)
    return least is not None and n * itemsize >= least


# Longer rows always run whole inside one parallel task (the second pass over a row then
# reads from cache); with fewer than ROW_TASK_MIN_ROWS of them they are split into chunks
# so that every thread has work.
ROW_TASK_MAX = 32768
ROW_TASK_MIN_ROWS = 16

_layer_lock = threading.Lock()
_serialize_lock = None  # a Lock when numba runs on the workqueue layer
_layer_checked = False


def _launch_pool():
    """Start numba's thread pool once and learn which threading layer it got.

    The workqueue layer aborts the process when two threads enter parallel code at once
    and costs ~87 us per call; numba only falls back to it when neither TBB nor OpenMP
    can be loaded. Then parallel calls are serialized with a lock, which is safe."""
    global _serialize_lock, _layer_checked
    with _layer_lock:
        if _layer_checked:
            return
        from numba.np.ufunc import parallel

        _preload_tbb()
        parallel._launch_threads()
        if numba.threading_layer() == "workqueue":
            _serialize_lock = threading.Lock()
        _layer_checked = True


def _preload_tbb():
    """Let numba find a pip-installed TBB (``numbasoftmax[tbb]``).

    numba tries its TBB layer first (fork-safe, thread-safe) but loads ``libtbb.so.12`` by
    name, and pip puts it in the environment's ``lib/``, which is not on the loader's
    search path (conda's is). Loading it once by its full path makes the name resolve."""
    if not sys.platform.startswith("linux"):
        return
    path = os.path.join(sys.prefix, "lib", "libtbb.so.12")
    if os.path.exists(path):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # numba then picks OpenMP or workqueue, as without TBB


# Fork safety. GNU OpenMP (numba's "omp" layer on Linux builds) cannot run a parallel region
# in a process forked after the parent started its threads: numba then kills the child
# ("Terminating: fork() called from a process already using GNU OpenMP") and a
# multiprocessing pool waits forever. Such a child runs the serial drivers (same bits, one
# thread). TBB and workqueue children keep the parallel drivers.
_serial_only = False


def _after_fork_in_child():
    global _serial_only, _serialize_lock
    if _serialize_lock is not None:
        _serialize_lock = threading.Lock()  # another thread may have held it at the fork
    if _serial_only:
        return
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never started a thread pool: the child may
        return
    omp = sys.modules.get("numba.np.ufunc.omppool")
    if layer == "omp" and getattr(omp, "openmp_vendor", "GNU") == "GNU":
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_allowed():
    """False in a child forked after GNU OpenMP threads started in an ancestor."""
    return not _serial_only


_kernels = None


def _load_kernels():
    global _kernels
    # imported at the first call: ``import numbasoftmax`` compiles nothing
    from . import _cpu_kernels

    _kernels = _cpu_kernels
    return _kernels


def _parallel(kernel, args):
    if not _layer_checked:
        _launch_pool()
    # the loops hand their tasks out one at a time (``_serial_call.handed_out_one_at_a_time``)
    if _serialize_lock is None:
        kernel(*args)
    else:
        with _serialize_lock:
            kernel(*args)


# op name -> (marker, shortest row the row kernel runs, shortest row it runs a row at a time,
# direct entries), at the first call.
# Direct entries: the serial drivers as compiled for 1-D C-contiguous, aligned arrays (the
# inputs read-only, ``read_only``), per (driver, dtype[, whether a mask comes without row
# offsets]), called without numba's dispatcher, which types all 15 arguments at every call
# (the operation's marker in Python): ~1 us of a ~4.8 us 8x128 softmax.
_routes = {}
# operations whose rows the lane kernel's tiles take (short ones) but the groups do not:
# from SHORT_ROW_MAX on a row at a time (logsumexp's gradient, element-wise given each
# row's values)
UNGROUPED_OPS = ("logsumexp_backward",)
# operations whose masked short rows run on the lane kernel's tiles too, where the rows
# and their masks lie as the tiles take them (``_cpu_kernels.mask_takes_tiles``); other
# masked rows run on the row drivers
TILE_MASK_OPS = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
                 "logsumexp", "logsumexp_sign", "logsumexp_backward")
# ... logsumexp's and its gradient's in parallel calls only: their masked tiles' first
# compile took 0.7-1.05 s longer than the row drivers', which calls below the parallel
# threshold would not win back
TILE_MASK_PARALLEL_OPS = ("logsumexp", "logsumexp_sign", "logsumexp_backward")


def _route(op):
    k = _kernels or _load_kernels()
    kind = "backward" if "backward" in op else "forward"
    short, grouped = SHORT_ROW_MAX[kind], GROUPED_ROW_MAX[kind]
    if op in UNGROUPED_OPS:
        grouped = 0
    route = _routes[op] = (k.OPS[op], short, grouped, {})
    return route


def run(op, a, sa, b, sb, out, so, m, n, side=None, direct=False):
    """Run operation ``op`` on M rows of n contiguous elements: flat buffers and their row
    strides (``a, sa, b, sb, out, so``), then M and n; ``b`` is the second input (a
    gradient's), or ``a`` again for a forward operation, or None (logsumexp without
    weights). ``side``: None, or the mask and given row values (see ``_cpu_kernels``);
    with a mask the row kernel runs every row, but the short rows of ``TILE_MASK_OPS``.
    ``direct``: the buffers are 1-D C-contiguous and aligned arrays of one dtype (``out``
    writable), and ``side`` None, a mask as ``_cpu_path._fast_side`` gives it, or given
    values as ``_cpu_path._given`` gives them (without a mask)."""
    marker, short_max, grouped_max, entries = _routes.get(op) or _route(op)
    itemsize = out.itemsize
    if n < short_max and n * itemsize > SHORT_ROW_BYTES:
        short_max = n  # the row kernel's routes from here (SHORT_ROW_BYTES)
    k = _kernels
    step = n  # a mask's layout (``mask_takes_tiles``), n without one
    masked = side is not None and side[0] is not None
    if masked:
        # the tiles' masked rows lie one after the other (a reduction's values at any
        # stride; logsumexp without weights has no second input)
        apart = sa == n and (sb == n or b is None) and (so == n or op in k.REDUCED)
        if op in TILE_MASK_PARALLEL_OPS and m * n < PARALLEL_MIN_ELEMENTS:
            apart = False
        step = k.mask_takes_tiles(side[1], n) if op in TILE_MASK_OPS and apart else -1
        if step < 0:
            short_max = 0
        elif step == 0 and n < short_max:  # one mask for every row: the tiles' own form
            side = (side[0], None, *side[2:])
    runs = stream = False
    if past_caches(m * n * itemsize):  # else neither (a small call's path: no more tests)
        # the rows ``run_rows`` takes: a mask, if any, laid out as the rows or one for all;
        # short rows keep their tiles
        runs = (op in k.RUN_OPS and step >= 0 and sa == sb == so == n
                and max(k.RUN_ROW_MIN, short_max) <= n <= k.CHUNK)
        stream = streams(m, n, itemsize, op, runs=runs)
        runs = runs and stream and out.flags.aligned  # as ``run_rows`` takes them
        if runs and step == 0:
            side = k.run_side(side, n)
    # a large result's long enough rows run a row at a time (below the parallel threshold
    # no result is large: small calls skip the test)
    fetch = 0
    if m * n >= PARALLEL_MIN_ELEMENTS:
        if n < grouped_max and alone(op, m, n, itemsize):
            grouped_max = n
        fetch = ahead(op, m, n, itemsize)
    if m * n < PARALLEL_MIN_ELEMENTS or _serial_only:
        if runs:
            driver = k.run_rows
        elif n < short_max:
            driver = k.masked_short_rows if masked else k.short_rows
        else:
            driver = k.grouped_rows if n < grouped_max else k.rows
        if direct:  # one entry per driver, dtype and side's form: a mask with its dims or
            # without (the tiles'), or given values (of one float dtype)
            key = (driver, a.dtype) if side is None else (
                driver, a.dtype, side[1] is None, None if side[-1] is None else side[-1].dtype)
            entry = entries.get(key)
            if entry is not None:  # compiled for read-only inputs: its entry reads any alike
                entry(marker, a, sa, 1, b, sb, 1, out, so, 1, 0, m, n, fetch, side, stream)
                return
        a, b, side = read_only_inputs(a, b, side)
        call = (marker, a, sa, 1, b, sb, 1, out, so, 1, 0, m, n, fetch, side, stream)
        if direct:
            _first_direct(entries, key, driver, call)
        else:
            driver(*call)
        return
    a, b, side = read_only_inputs(a, b, side)
    arrays = (marker, a, sa, 1, b, sb, 1, out, so, 1)
    if runs:
        _parallel(k.run_rows_parallel, (*arrays, m, n, fetch, side, stream))
        return
    if n < short_max:
        tiles = k.masked_short_rows_parallel if masked else k.short_rows_parallel
        _parallel(tiles, (*arrays, m, n, fetch, side, stream))
        return
    if n < grouped_max:
        _parallel(k.grouped_rows_parallel, (*arrays, m, n, fetch, side, stream))
        return
    if n <= ROW_TASK_MAX or m >= ROW_TASK_MIN_ROWS:
        driver = k.rows_parallel
    else:
        driver = k.chunks_parallel
    _parallel(driver, (*arrays, m, n, fetch, side, stream))


def read_only(a):
    """``a`` as the kernels take an array they only read: read-only, a view where ``a`` is
    writable. numba compiles a specialization per writability of each array argument;
    passing every input, mask and given value read-only makes one serve all callers,
    whatever their arrays' flags (a read-only input, a broadcast mask, a dask block), and
    the warm-up's compiles serve them too. Calls through a direct entry (``run``) skip the
    view: the entry's unboxing reads an array's memory, not its flags."""
    if a is None or not a.flags.writeable:
        return a
    v = a.view()
    v.setflags(write=False)
    return v


def read_only_inputs(a, b, side):
    """(a, b, side) of a kernel call with every array read-only (``read_only``): ``b``
    may be ``a`` again (a forward operation) or None; ``side`` None or a tuple of masks,
    their layouts and given values (each may be None or an integer)."""
    ra = read_only(a)
    return ra, ra if b is a else read_only(b), read_only_side(side)


def read_only_side(side):
    """A kernel's ``side`` (None or a tuple) with every array in it read-only."""
    if side is not None:
        for v in side:
            if type(v) is np.ndarray and v.flags.writeable:
                return tuple(read_only(v) if type(v) is np.ndarray else v for v in side)
    return side


def _first_direct(entries, key, driver, call):
    """Run the first direct call of ``driver`` for ``call``'s types and keep its entry
    under ``key`` (which determines them: a direct call's other types are fixed)."""
    from ._serial_call import run_and_keep  # with the kernels: not at import

    entries[key] = run_and_keep(driver, call)


# Along a strided axis softmax computes its exps again in the write pass instead of keeping
# them in ``out`` between the passes (same bits): a band's kept exps are written to memory
# and read back, a larger cost than the exps where the band outgrows the cache. float32,
# out=, the two interleaved in one process: (8192, 2048) along axis 0 0.66x the time (2
# threads), 0.83x (1 thread); (64, 512, 512) along axis 1 0.93x, 0.89x; no shape slower.
COLUMN_OPS = {"softmax": "softmax_split"}


def run_columns(op, args, direct=False, side=None):
    """Run ``op`` along a strided axis read in place: ``args`` are, per array (a[, b], out),
    a flat buffer, its outer stride and its axis stride, then M outer positions, n elements
    along the axis and C contiguous inner positions. logsumexp's ``b`` (weights) may be
    None (its strides 0), and its out holds M x C values at its outer stride C, their signs
    (``logsumexp_sign``) at its "axis stride" M x C further. ``side``: None, or a
    ``where=`` mask's bytes and logsumexp_backward's given values of the M x C positions
    in order, ``(mask, layout, first, second)`` (each may be None; the mask's layout as
    ``_cpu_kernels.columns`` takes it). ``direct`` as for ``run``."""
    op = COLUMN_OPS.get(op, op)
    marker, _, _, entries = _routes.get(op) or _route(op)
    k = _kernels
    if len(args) == 9:  # forward: b is a
        a, sa, ia, out, so, io, m, n, c = args
        arrays = (a, sa, ia, a, sa, ia, out, so, io)
    else:
        *arrays, m, n, c = args
        out, so, io = arrays[6:]
    # plain stores for logsumexp (a value per column, signs ``io`` further); its gradient
    # streams as the softmax functions do (float32 along axis 0 of (K, N), K·N = 2^24,
    # 2 threads: 0.7x the time with plain stores at K = 8-128, level at K = 2-3)
    lead = -1
    if op not in k.REDUCED:
        lead, stream = column_stream(out, so, io, m * n, c)
        lead = lead if stream else -1
    if m * n * c < PARALLEL_MIN_ELEMENTS or not parallel_allowed():
        tasks, _ = k.columns_tasks(marker, m, n, c, max(lead, 0), arrays[0].itemsize)
        entry = entries.get((k.columns, arrays[0].dtype)) if direct and side is None else None
        if entry is not None:  # compiled for read-only inputs, as in ``run``
            entry(marker, *arrays, 0, tasks, n, c, lead, side)
            return
        arrays, side = _read_only_columns(arrays, side)
        call = (marker, *arrays, 0, tasks, n, c, lead, side)
        if direct and side is None:
            _first_direct(entries, (k.columns, arrays[0].dtype), k.columns, call)
        else:
            k.columns(*call)
    else:
        arrays, side = _read_only_columns(arrays, side)
        _parallel(k.columns_parallel, (marker, *arrays, m, n, c, lead, side))


def _read_only_columns(arrays, side):
    """``run_columns``' (a, sa, ia, b, sb, ib, out, so, io) and ``side`` with the inputs
    read-only (``read_only_inputs``)."""
    a, b, side = read_only_inputs(arrays[0], arrays[3], side)
    return (a, *arrays[1:3], b, *arrays[4:]), side


def column_stream(out, so, io, runs, c):
    """(lead, stream) of the column drivers for ``runs`` runs of c contiguous outputs in
    flat ``out`` (outer and axis strides so, io): stream where ``streams`` says so and
    ``_cpu_kernels.column_lead`` can place whole tiles on line boundaries (then ``lead``
    is its lead, else 0)."""
    from . import _cpu_kernels

    lead = _cpu_kernels.column_lead(out, so, io) if streams(runs, c, out.itemsize) else -1
    return max(lead, 0), lead >= 0


# Below this many elements numpy's own strided copy is as fast and needs no compilation.
TILED_COPY_MIN_ELEMENTS = 1 << 16


def copy2d(src, dst):
    """dst[...] = src for 2-D arrays of any strides."""
    if src.size < TILED_COPY_MIN_ELEMENTS or not parallel_allowed():
        dst[...] = src
        return
    k = _kernels or _load_kernels()
    _parallel(k.copy2d, (read_only(src), dst))
