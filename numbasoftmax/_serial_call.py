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

from llvmlite import ir
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


@intrinsic
def handed_out_one_at_a_time(typingctx):
    """The ``prange`` loops that follow in this function give their iterations to the
    threads one at a time (numba's parallel chunk size 1) instead of splitting them evenly
    up front: when another process holds a core, an even split waits for the descheduled
    thread (a 1 MiB softmax went from 0.2 ms to 8 ms); a task holds thousands of elements,
    so the extra atomics cost nothing measurable. Returns the previous chunk size, to
    be given back by ``chunk_size_back`` after the loops. This calls the threading layer's
    own function, linked by name as numba's parallel loops call it; the same from Python,
    ``numba.set_parallel_chunksize``, takes two process-wide locks (~1 us a call).
    """

    def codegen(context, builder, sig, args):
        previous = builder.call(_chunk_size_function(context, builder, False), [])
        builder.call(_chunk_size_function(context, builder, True),
                     [context.get_constant(types.uintp, 1)])
        return previous

    return types.uintp(), codegen


@intrinsic
def chunk_size_back(typingctx, previous):
    """Set numba's parallel chunk size back to ``previous`` (``handed_out_one_at_a_time``'s
    result)."""
    if previous != types.uintp:
        return None

    def codegen(context, builder, sig, args):
        builder.call(_chunk_size_function(context, builder, True), [args[0]])
        return context.get_dummy_value()

    return types.none(previous), codegen


def _chunk_size_function(context, builder, setter):
    """numba's threading layer's get_ or set_parallel_chunksize, declared as its parallel
    loops declare them (numba registers both symbols when it starts its thread pool)."""
    size = context.get_value_type(types.uintp)
    if setter:
        return cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [size]), "set_parallel_chunksize")
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(size, []),
                                          "get_parallel_chunksize")


def run_and_keep(dispatcher, args):
    """Call numba ``dispatcher`` with ``args`` (it compiles, or loads from the disk cache,
    the specialization for their types) and return that specialization's compiled entry
    point, which later calls with arguments of the same types can call directly; the
    dispatcher itself where it ran another specialization, converting the arguments."""
    dispatcher(*args)
    compiled = dispatcher.overloads.get(tuple(dispatcher.typeof_pyval(v) for v in args))
    return dispatcher if compiled is None else compiled.entry_point


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
        self._runs = {}  # type key -> (address, the loop's compiled entry for those types)

    def __call__(self, *args):
        run = self._runs.get(_type_key(args))
        if run is None:
            self._first_run(args)
        else:
            run[1](run[0], *self.tasks(args), *args[1:])

    def _first_run(self, args):
        """Run the loop the first time for these types (``run_and_keep``); later calls
        skip the dispatcher's typing of every argument (~0.4 us a call)."""
        address = self.address(*args)
        entry = run_and_keep(self.loop, (address, *self.tasks(args), *args[1:]))
        self._runs[_type_key(args)] = (address, entry)

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
