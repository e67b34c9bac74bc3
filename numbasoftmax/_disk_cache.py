"""numba's on-disk cache, safe when several processes compile into it at once.

numba saves a compiled specialization by reading the function's cache index, taking the
first data-file number the index does not list, writing the index and then the data file,
with no lock. Two processes that compile different specializations of one function at the
same time (dask workers on their first tasks, a multiprocessing pool, two test workers)
can both take number 1: the index then names one specialization and the data file holds
the other's machine code, and every later process that loads it gets the wrong code
(``TypeError: can't unbox array`` at best, wrong results at worst).

``njit`` here is numba's, except that a function compiled with ``cache=True`` gets a cache
that holds an advisory lock on a file in its cache directory: exclusive while it saves,
shared while it loads an index and its data file. Processes that cache this package's
kernels therefore never interleave those steps. Where ``fcntl`` is missing (Windows) or the
lock file cannot be opened, the cache works as numba's own, unlocked.

numba also stamps a function's cache index with its own source file alone (a hash of its
contents), while a kernel's machine code holds every function it calls from the package's
other modules, inlined. An install that changes ``_row_kernel.py`` but leaves
``jit.py`` as it was (an editable install after a ``git pull``, say) would load the old row
kernel's code from the cache, with the bugs and bits of the old version. Here the stamp
also covers every module of the package (``package_stamp``): any change to one recompiles
every kernel once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading

import numba
from numba.core.caching import FunctionCache
from numba.core.runtime import rtsys

try:
    import fcntl
except ImportError:  # not on POSIX: numba's cache as it is
    fcntl = None

LOCK_NAME = "numbasoftmax.lock"
_held = threading.local()  # depth of this thread's locks: a nested save or load (a callee
# compiled while a caller loads) must not wait for the lock its own thread holds


@contextlib.contextmanager
def locked(directory, exclusive):
    """Hold the lock file of cache ``directory`` (shared or exclusive) while inside."""
    fd = None
    depth = getattr(_held, "depth", 0)
    if fcntl is not None and not depth:
        try:
            if exclusive:
                os.makedirs(directory, exist_ok=True)
            fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # no directory yet (nothing to load), or not writable
            fd = None
    _held.depth = depth + 1
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        _held.depth = depth
        if fd is not None:
            os.close(fd)  # releases the lock


def sources_stamp(directory):
    """A digest of the names and contents of the Python modules in ``directory`` (not its
    subdirectories), as numba's of one source file; None where they cannot be read."""
    digest = hashlib.sha256()
    try:
        for name in sorted(n for n in os.listdir(directory) if n.endswith(".py")):
            with open(os.path.join(directory, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:
        return None
    return digest.hexdigest()


@functools.cache
def package_stamp():
    """``sources_stamp`` of this package's modules (the CPU kernels and all they call),
    taken once per process."""
    return sources_stamp(os.path.dirname(os.path.abspath(__file__)))


class LockedCache(FunctionCache):
    """numba's FunctionCache with its loads and saves under the cache directory's lock, and
    its index stamped with the package's modules too (``package_stamp``)."""

    def __init__(self, py_func):
        super().__init__(py_func)
        # an index saved under another stamp reads as empty: the kernel compiles again
        file = self._cache_file
        file._source_stamp = (file._source_stamp, package_stamp())

    def load_overload(self, sig, target_context):
        # numba's own load refreshes the whole target context first: it imports every
        # lowering registry numba has (numba.np.linalg imports scipy.linalg to find a BLAS),
        # which is most of a warm process's first call. Machine code loaded from the cache
        # needs none of them, only numba's runtime (NRT) set up; a miss compiles, and
        # numba's compiler refreshes the context itself.
        rtsys.initialize(target_context)
        with locked(self._cache_path, exclusive=False), \
                self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    def save_overload(self, sig, data):
        with locked(self._cache_path, exclusive=True):
            super().save_overload(sig, data)


def njit(**options):
    """``numba.njit(**options)``, with a LockedCache where ``options`` turn caching on."""

    def decorate(func):
        # numba's own FunctionCache would be made first and replaced: each one looks up and
        # probes the cache directory (~0.1 ms, for some 55 kernel functions at the first call)
        dispatcher = numba.njit(**dict(options, cache=False))(func)
        if options.get("cache"):
            dispatcher._cache = LockedCache(dispatcher.py_func)
        return dispatcher

    return decorate
