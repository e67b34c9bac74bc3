"""Parallel drivers that run the serial drivers' own machine code, called by address.

A parallel driver is a ``prange`` over tasks, each a call of a serial driver on a range of
tasks (rows, tiles or bands). Calling the serial driver directly, numba links its code into
the parallel one and optimizes it again inside each parfor library it makes: ~1 s of LLVM
on a user's first large call (float32 softmax over 1000 x 1000 compiled its parallel
driver in 1.2-1.6 s). Here one loop, ``_tasks``, gets the address of the serial driver's
specialization as an integer argument and calls through it (``call_address``): it
compiles on its own, in a fraction of that, and holds no process-specific constant, so
numba's disk cache keeps it. Every task runs the code a serial call runs: the same bits
by construction.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba._dispatcher import compute_fingerprint as fingerprint
from numba.core import cgutils
from numba.core.callconv import excinfo_ptr_t
from numba.extending import intrinsic

from ._config import CACHE
from ._disk_cache import njit


@intrinsic
def call_address(typingctx, address, args):
    """Call the numba function at ``address`` (an integer) with the tuple ``args`` by
    numba's calling convention; it returns None. The status it returns is not checked: the
    serial drivers check no bounds and use numpy's error model, so only the allocation of
    their small scratch arrays could fail."""
    if not (isinstance(address, types.Integer) and isinstance(args, types.BaseTuple)):
        return None
    argtys = tuple(args.types)

    def codegen(context, builder, sig, llargs):
        cc = context.call_conv
        fnty = cc.get_function_type(types.none, argtys)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        retty = cc.get_return_type(types.none).pointee
        retval = cgutils.alloca_once(builder, retty)
        builder.store(cgutils.get_null_value(retty), retval)
        excinfo = cgutils.alloca_once(builder, excinfo_ptr_t)
        values = cgutils.unpack_tuple(builder, llargs[1], len(argtys))
        builder.call(fn, [retval, excinfo,
                          *cc._get_arg_packer(argtys).as_arguments(builder, values)])
        return context.get_dummy_value()

    return types.none(address, args), codegen


def _type_key(args):
    """What numba's types of a driver's arguments depend on, cheaply: the operation (its
    marker) and numba's own fingerprint of the rest, which its dispatcher types arguments
    by (an array's dtype, dimensions, layout and writability; a scalar's kind: the sizes
    and strides here fit int64). Equal keys, equal types."""
    return args[0].key, fingerprint(args[1:])


# the serial drivers' task bounds as ``_tasks`` passes them: numba's int64
_TASK_RANGE = (0, 0)


_LOOP = dict(cache=CACHE, nogil=True, parallel=True, error_model="numpy", boundscheck=False)


# Tasks 0 .. total-1, ``per`` a call: serial(op, a.., b.., out.., lo, hi, n, C[, x, y]). The
# arguments come flat, one loop per arity: numba's dispatcher types a tuple, or ``*args``,
# in Python (~50 us a call).

@njit(**_LOOP)
def _tasks(serial, total, per, op, a, ao, an, b, bo, bn, out, oo, on, n, C, x, y):
    for t in prange((total + per - 1) // per):
        lo, hi = np.int64(t * per), np.int64(min(total, (t + 1) * per))
        call_address(serial, (op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, C, x, y))


@njit(**_LOOP)
def _tasks_short(serial, total, per, op, a, ao, an, b, bo, bn, out, oo, on, n, C):
    for t in prange((total + per - 1) // per):
        lo, hi = np.int64(t * per), np.int64(min(total, (t + 1) * per))
        call_address(serial, (op, a, ao, an, b, bo, bn, out, oo, on, lo, hi, n, C))


class ParallelDriver:
    """The parallel form of serial driver ``serial``, called with its arguments with M (at
    position ``AT``) in place of its task range lo, hi; ``tasks(args)`` gives (tasks,
    tasks per call)."""

    AT = 10  # as in ``_tasks``

    def __init__(self, serial, tasks):
        self.serial, self.tasks = serial, tasks
        self._addresses = {}

    def __call__(self, *args):
        address = self._addresses.get(_type_key(args)) or self.address(*args)
        total, per = self.tasks(args)
        at = self.AT
        (_tasks if len(args) == 15 else _tasks_short)(address, total, per, *args[:at],
                                                      *args[at + 1:])

    def address(self, *args):
        """The address of the serial driver's specialization for these arguments (compiled,
        or loaded from the disk cache, the first time)."""
        key = _type_key(args)
        address = self._addresses.get(key)
        if address is not None:
            return address
        serial, at = self.serial, self.AT
        sig = tuple(serial.typeof_pyval(v) for v in (*args[:at], *_TASK_RANGE, *args[at + 1:]))
        compiled = serial.overloads.get(sig)
        if compiled is None:
            serial.compile(sig)  # numba's compiler lock serializes concurrent callers
            compiled = serial.overloads[sig]
        address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
        if not address:
            raise RuntimeError(f"no machine code for {serial.py_func.__name__}{sig}")
        self._addresses[key] = address
        return address

    def __repr__(self):
        return f"ParallelDriver({self.serial.py_func.__name__})"
