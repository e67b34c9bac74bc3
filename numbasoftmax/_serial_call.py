"""Parallel drivers that run the serial drivers' own machine code, called by address.

A parallel driver is a ``prange`` over tasks, each a call of a serial driver on a range of
tasks (rows, tiles or bands). Calling the serial driver directly, numba links its code into
the parallel one and optimizes it again inside each parfor library it makes: ~1 s of LLVM
on a user's first large call (float32 softmax over 1000 x 1000 compiled its parallel
driver in 1.2-1.6 s). Here the loop gets the address of the serial driver's specialization
as an integer argument and calls through it (``call_address``): it compiles on its own, in
a fraction of that, and holds no process-specific constant, so numba's disk cache keeps it.
Every task runs the code a serial call runs: the same bits by construction.

The loops (``_cpu_kernels``) take their arguments flat: numba's dispatcher types a tuple
argument, or ``*args``, in Python (~50 us a call).
"""

from __future__ import annotations

from numba import types
from numba._dispatcher import compute_fingerprint as fingerprint
from numba.core import cgutils
from numba.core.callconv import excinfo_ptr_t
from numba.extending import intrinsic


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


# the serial drivers' task bounds as the loops pass them: numba's int64
_TASK_RANGE = (0, 0)
AT = 10  # where the loops' arguments have M and the serial drivers' lo, hi


class ParallelDriver:
    """The parallel form of serial driver ``serial``: called with its arguments, M in
    place of its task range lo, hi (at position ``AT``), it runs ``loop(address, total,
    per, *args[1:])``, a ``prange`` over ``total`` tasks, ``per`` a call of ``serial`` at
    ``address``, as ``tasks(args)`` gives them (the address stands for the operation, the
    first argument)."""

    def __init__(self, serial, loop, tasks):
        self.serial, self.loop, self.tasks = serial, loop, tasks
        self._addresses = {}

    def __call__(self, *args):
        address = self._addresses.get(_type_key(args)) or self.address(*args)
        self.loop(address, *self.tasks(args), *args[1:])

    def address(self, *args):
        """The address of the serial driver's specialization for these arguments (compiled,
        or loaded from the disk cache, the first time)."""
        key = _type_key(args)
        address = self._addresses.get(key)
        if address is not None:
            return address
        serial = self.serial
        sig = tuple(serial.typeof_pyval(v) for v in (*args[:AT], *_TASK_RANGE, *args[AT + 1:]))
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
