"""Markers: Python objects whose numba type names an operation or a kernel function.

A marker carries no data. Passed to a compiled function, it makes the choice it names part
of the compiled signature: one driver compiled per operation, and generic loops
(``seg_sum(lanes, ...)``) specialized per kernel function, at no run-time cost. (numba's own
function values would do the same but are compiled in as process-specific addresses, which
numba's disk cache refuses.)

Functions chosen by a marker are plain Python functions compiled as overload
implementations: one compile unit each, no forwarding wrapper.
"""

from __future__ import annotations

import inspect

from llvmlite import ir
from numba import types
from numba.core.imputils import impl_ret_borrowed, lower_constant
from numba.extending import NativeValue, intrinsic, models, overload, register_model, unbox

# Options of every function that only compiled code calls: no C-callable wrapper, which numba
# builds by default, and which LLVM then optimizes and compiles with the function's whole
# body inlined into it, never to be called (~8 % of a first call's compile).
CALLEE = {"no_cfunc_wrapper": True}
# Options of every function that compiled code calls (overload implementations and, in
# ``_row_kernel.INTERNAL``, internal njit functions). No reference counting: numba counts
# an array's references with atomic operations at every slice and call, and the callers
# keep the arrays alive. Inlined by LLVM (``alwaysinline``; numba's own ``inline="always"``
# inlines its IR and costs compile time): LLVM's own heuristics left kernel functions
# (called per vector) and segment loops (called per row) out of line, which made a softmax
# over rows of 32 to 128 elements take up to twice as long.
INLINE = {"_nrt": False, "forceinline": True, **CALLEE}


class MarkerType(types.Type):
    def __init__(self, key):
        self.key_ = key
        super().__init__(name=f"Marker({key})")


register_model(MarkerType)(models.OpaqueModel)


@unbox(MarkerType)
def _unbox_marker(typ, obj, c):
    return NativeValue(c.context.get_constant_null(typ))


@lower_constant(MarkerType)
def _marker_constant(context, builder, typ, pyval):
    return context.get_constant_null(typ)


class Marker:
    def __init__(self, key):
        self.key = key
        self._numba_type_ = MarkerType(key)

    def __repr__(self):
        return f"Marker({self.key!r})"


@intrinsic
def same(typingctx, a, b):
    """Whether two markers name the same thing: a constant of the compiled code."""
    if not (isinstance(a, MarkerType) and isinstance(b, MarkerType)):
        return None
    value = int(a == b)
    return types.boolean(a, b), lambda context, builder, sig, args: ir.Constant(ir.IntType(1),
                                                                                   value)


@intrinsic
def pick(typingctx, a, b, x, y):
    """``x`` if markers ``a`` and ``b`` name the same thing, else ``y``: chosen when
    compiling, so ``x`` and ``y`` may have different types."""
    if not (isinstance(a, MarkerType) and isinstance(b, MarkerType)):
        return None
    chosen = 2 if a == b else 3

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, sig.return_type, args[chosen])

    return (x, y)[chosen - 2](a, b, x, y), codegen


def dispatch(stub, table):
    """Make ``stub(marker, ...)`` run ``table[marker key]`` in compiled code. The table's
    functions are plain Python functions with the stub's signature."""

    def typer(*args):
        marker = args[0]
        if isinstance(marker, MarkerType) and marker.key_ in table:
            return table[marker.key_]
        return None

    typer.__signature__ = inspect.signature(stub)  # numba checks it against the table's
    overload(stub, jit_options=INLINE)(typer)


def dispatch_all(stubs, table):
    """``dispatch`` each stub of ``stubs`` (a NamedTuple of stub functions) from one
    operation table: {key: a NamedTuple of the same type, holding key's functions}."""
    for field, stub in zip(stubs._fields, stubs, strict=True):
        dispatch(stub, {key: getattr(row, field) for key, row in table.items()})


_KERNEL_FUNCTIONS = {}


def invoke(f, a, b, c, i, k):
    """Call the kernel function that marker ``f`` names with ``(f, a, b, c, i, k)``
    (compiled code only)."""


dispatch(invoke, _KERNEL_FUNCTIONS)


def kernel_fn(py_func):
    """Register ``py_func(f, a, b, c, i, k)`` (``f``: its own marker) and return its
    marker, for the generic loops that call it with ``invoke``."""
    key = f"{py_func.__module__}.{py_func.__qualname__}"
    _KERNEL_FUNCTIONS[key] = py_func
    return Marker(key)
