"""One registry of implementations, ours and the peers', for the tests and the benchmarks.

Each entry says which operation it computes, on which device, how to turn numpy inputs
into its native inputs (not timed), how to call it, and how to get a numpy result back.
Peers that are not installed report ``available() == False`` and are skipped.

Operations and their arguments (after ``prepare``):
    softmax(x, axis), log_softmax(x, axis),
    softmax_backward(y, dy, axis), log_softmax_backward(z, dz, axis),
    logsumexp(x, axis), logsumexp_backward(x, lse, dlse, axis)
(logsumexp's result and lse, dlse hold a value per row).

``role`` says what an entry is for: "ours" (numbasoftmax), "peer" (a library we compare
against) or "oracle" (the float64 reference: checked against, never timed by the benchmark).
``call_out(*inputs, axis, out)``, where given, writes into a preallocated native ``out``
(made with ``prepare``) and returns it; the benchmark uses it to time calls without the
allocation of the result.

``form`` says how an entry is called. "plain": the operation's own arguments, as above.
The softmax functions also come in optional forms (``FORM_OPS``), each with the peers'
way of getting the same result:
    "where": (x, mask, axis), mask a boolean array broadcastable to x (True: included),
        and for the gradients (y, dy, mask, axis): ours with ``where=``, ours without a
        mask ("unmasked", role "baseline": what the mask costs), and for the forward
        operations ``np.where(mask, x, -inf)`` then ours, torch's ``masked_fill`` then
        its softmax;
    "dtype": (x, axis) with float16 x and a float32 result: ours with ``dtype=``,
        ``x.astype(float32)`` then ours, torch with ``dtype=torch.float32``.
Both forms have CPU and GPU (cupy, torch CUDA) entries.
The peers' out= forms write the masked or cast input into ``out`` and then run the
softmax there in place: no allocation, the best that way of computing it can do.
Rows must keep at least one included element: the "np.where" and torch forms give NaN
for a row without one (ours gives 0, or -inf for log_softmax).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._ops import NAMES as OPS
from ._ops import OPS as OP_TABLE


@dataclass(frozen=True)
class Impl:
    name: str  # "numbasoftmax", "reference", "scipy", "torch", "cupyx"
    op: str
    device: str  # "cpu" or "gpu"
    call: Callable  # call(*native_inputs, axis) -> native result
    prepare: Callable = lambda *arrays: arrays  # numpy arrays -> native inputs
    to_numpy: Callable = np.asarray
    available: Callable[[], bool] = lambda: True
    sync: Callable[[], None] = lambda: None  # wait for the device before reading a clock
    int_axis_only: bool = False  # torch takes one int dim
    role: str = "peer"  # "ours", "peer", "baseline" (ours, another call) or "oracle"
    call_out: Callable | None = None  # call_out(*native_inputs, axis, out) -> out
    form: str = "plain"  # a key of FORMS

    @property
    def key(self):
        return f"{self.name}-{self.device}"


def _has(module):
    return importlib.util.find_spec(module) is not None


def _gpu_ok():
    if not _has("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return False


def _torch_cuda_ok():
    if not _has("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def _ours(op):
    import numbasoftmax

    return getattr(numbasoftmax, op)


def _ours_gpu_ok():
    # our GPU path needs numba-cuda and a usable GPU (checked through cupy, whose arrays
    # the registry feeds it)
    return _has("numba.cuda") and _gpu_ok()


def _reference(op):
    from . import reference

    return getattr(reference, op)


def _scipy(op):
    import scipy.special

    return getattr(scipy.special, op)


def _torch_call(op):
    import torch

    if op == "logsumexp":
        return lambda x, axis: torch.logsumexp(x, axis)
    if op == "logsumexp_backward":  # what torch's autograd runs: grad * exp(x - result)
        return lambda x, lse, dlse, axis: torch.exp(x - lse.unsqueeze(axis)) * dlse.unsqueeze(
            axis)
    if op == "softmax":
        return lambda x, axis: torch.softmax(x, axis)
    if op == "log_softmax":
        return lambda x, axis: torch.log_softmax(x, axis)
    if op == "softmax_backward":
        return lambda y, dy, axis: torch._softmax_backward_data(dy, y, axis, y.dtype)
    return lambda z, dz, axis: torch._log_softmax_backward_data(dz, z, axis, z.dtype)


def _torch_call_out(op):
    import torch

    aten = torch.ops.aten
    if op == "logsumexp":
        return lambda x, axis, out: torch.logsumexp(x, axis, out=out)
    if op == "logsumexp_backward":
        def grad(x, lse, dlse, axis, out):
            torch.sub(x, lse.unsqueeze(axis), out=out)
            torch.exp(out, out=out)
            return out.mul_(dlse.unsqueeze(axis))
        return grad
    if op == "softmax":
        return lambda x, axis, out: torch._softmax(x, axis, False, out=out)
    if op == "log_softmax":
        return lambda x, axis, out: torch._log_softmax(x, axis, False, out=out)
    if op == "softmax_backward":
        return lambda y, dy, axis, out: aten._softmax_backward_data.out(dy, y, axis, y.dtype,
                                                                        grad_input=out)
    return lambda z, dz, axis, out: aten._log_softmax_backward_data.out(dz, z, axis, z.dtype,
                                                                        out=out)


def _torch_prepare(device):
    def prepare(*arrays):
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)

    return prepare


def _torch_to_numpy(t):
    return t.detach().cpu().numpy()


def _cupy_prepare(*arrays):
    import cupy

    return tuple(cupy.asarray(a) for a in arrays)


def _cupy_to_numpy(a):
    import cupy

    return cupy.asnumpy(a)


def _cupy_sync():
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def _torch_sync():
    import torch

    torch.cuda.synchronize()


def _cupyx(op):
    import cupyx.scipy.special

    return getattr(cupyx.scipy.special, op)


def _ours_gpu(**kw):
    """Keyword arguments of an entry on cupy arrays run by our GPU path."""
    return dict(prepare=_cupy_prepare, to_numpy=_cupy_to_numpy, available=_ours_gpu_ok,
                sync=_cupy_sync, **kw)


def _entries():
    out = []
    for op in OPS:
        def ours_out(*a, axis, out, _op=op):
            return _ours(_op)(*a, axis, out=out)

        def torch_out(*a, axis, out, _op=op):
            return _torch_call_out(_op)(*a, axis, out)

        out.append(Impl("numbasoftmax", op, "cpu", lambda *a, _op=op: _ours(_op)(*a),
                        role="ours", call_out=ours_out))
        out.append(Impl("reference", op, "cpu", lambda *a, _op=op: _reference(_op)(*a),
                        role="oracle"))
        out.append(Impl("torch", op, "cpu", lambda *a, _op=op: _torch_call(_op)(*a),
                        prepare=_torch_prepare("cpu"), to_numpy=_torch_to_numpy,
                        available=lambda: _has("torch"), int_axis_only=True, call_out=torch_out))
        out.append(Impl("numbasoftmax", op, "gpu", lambda *a, _op=op: _ours(_op)(*a),
                        **_ours_gpu(role="ours", call_out=ours_out)))
        out.append(Impl("torch", op, "gpu", lambda *a, _op=op: _torch_call(_op)(*a),
                        prepare=_torch_prepare("cuda"), to_numpy=_torch_to_numpy,
                        available=_torch_cuda_ok, sync=_torch_sync, int_axis_only=True,
                        call_out=torch_out))
    for op in ("softmax", "log_softmax", "logsumexp"):  # scipy and cupyx: no gradients
        out.append(Impl("scipy", op, "cpu", lambda *a, _op=op: _scipy(_op)(*a),
                        available=lambda: _has("scipy")))
        out.append(Impl("cupyx", op, "gpu", lambda *a, _op=op: _cupyx(_op)(*a),
                        prepare=_cupy_prepare, to_numpy=_cupy_to_numpy, available=_gpu_ok,
                        sync=_cupy_sync))
    return tuple(out)


FORMS = {"plain": "the operation's own arguments",
         "where": "x and a boolean mask (where=)",
         "dtype": "float16 x, float32 result (dtype=)"}
# the operations with entries of each optional form
FORM_OPS = {"where": ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward"),
            "dtype": ("softmax", "log_softmax")}
RESULT_DTYPE = np.float32  # the "dtype" form's result


def _torch_fill_mask(*arrays):
    """torch tensors, a boolean mask inverted: masked_fill fills where its mask is True."""
    import torch

    return tuple(torch.from_numpy(~a if a.dtype == bool else np.ascontiguousarray(a))
                 for a in arrays)


def _torch_softmax_out(op):
    import torch

    return torch._softmax if op == "softmax" else torch._log_softmax


def _xp(a):
    """The array module of ``a``: cupy for cupy arrays, else numpy."""
    if type(a).__module__.partition(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _torch_fill_mask_cuda(*arrays):
    return tuple(t.to("cuda") for t in _torch_fill_mask(*arrays))


def _where_entries(op):
    f = functools.partial(_ours, op)

    def ours(*args):  # (*inputs, mask, axis)
        return f()(*args[:-2], args[-1], where=args[-2])

    def ours_out(*args, axis, out):  # (*inputs, mask)
        return f()(*args[:-1], axis, where=args[-1], out=out)

    def unmasked(*args):
        return f()(*args[:-2], args[-1])

    def unmasked_out(*args, axis, out):
        return f()(*args[:-1], axis, out=out)

    def np_where(x, mask, axis):
        return f()(_xp(x).where(mask, x, -np.inf), axis)

    def np_where_out(x, mask, axis, out):  # np.where has no out=: its two copies
        xp = _xp(x)
        xp.copyto(out, -np.inf)
        xp.copyto(out, x, where=mask)
        return f()(out, axis, out=out)

    def torch_fill(x, fill, axis):
        import torch

        return getattr(torch, op)(x.masked_fill(fill, -np.inf), axis)

    def torch_fill_out(x, fill, axis, out):
        import torch

        torch.ops.aten.masked_fill.Scalar_out(x, fill, -np.inf, out=out)
        return _torch_softmax_out(op)(out, axis, False, out=out)

    gpu = _ours_gpu(form="where")
    ours_and_unmasked = (
        Impl("numbasoftmax", op, "cpu", ours, role="ours", call_out=ours_out, form="where"),
        Impl("unmasked", op, "cpu", unmasked, role="baseline", call_out=unmasked_out,
             form="where"),
        Impl("numbasoftmax", op, "gpu", ours, role="ours", call_out=ours_out, **gpu),
        Impl("unmasked", op, "gpu", unmasked, role="baseline", call_out=unmasked_out, **gpu),
    )
    if OP_TABLE[op].backward:  # no peer has a masked gradient
        return ours_and_unmasked
    return ours_and_unmasked + (
        Impl("np.where+numbasoftmax", op, "cpu", np_where, call_out=np_where_out,
             form="where"),
        Impl("torch", op, "cpu", torch_fill, prepare=_torch_fill_mask,
             to_numpy=_torch_to_numpy, available=lambda: _has("torch"), int_axis_only=True,
             call_out=torch_fill_out, form="where"),
        Impl("cupy.where+numbasoftmax", op, "gpu", np_where, call_out=np_where_out, **gpu),
        Impl("torch", op, "gpu", torch_fill, prepare=_torch_fill_mask_cuda,
             to_numpy=_torch_to_numpy, available=_torch_cuda_ok, sync=_torch_sync,
             int_axis_only=True, call_out=torch_fill_out, form="where"),
    )


def _dtype_entries(op):
    f = functools.partial(_ours, op)

    def ours(x, axis):
        return f()(x, axis, dtype=RESULT_DTYPE)

    def ours_out(x, axis, out):
        return f()(x, axis, dtype=RESULT_DTYPE, out=out)

    def astype(x, axis):
        return f()(x.astype(RESULT_DTYPE), axis)

    def astype_out(x, axis, out):
        out[...] = x  # numpy or cupy: a converting copy
        return f()(out, axis, out=out)

    def torch_dtype(x, axis):
        import torch

        return getattr(torch, op)(x, axis, dtype=torch.float32)

    def torch_dtype_out(x, axis, out):
        import torch

        return getattr(torch.ops.aten, op).int_out(x, axis, torch.float32, out=out)

    gpu = _ours_gpu(form="dtype")
    return (
        Impl("numbasoftmax", op, "cpu", ours, role="ours", call_out=ours_out, form="dtype"),
        Impl("astype+numbasoftmax", op, "cpu", astype, call_out=astype_out, form="dtype"),
        Impl("torch", op, "cpu", torch_dtype, prepare=_torch_prepare("cpu"),
             to_numpy=_torch_to_numpy, available=lambda: _has("torch"), int_axis_only=True,
             call_out=torch_dtype_out, form="dtype"),
        Impl("numbasoftmax", op, "gpu", ours, role="ours", call_out=ours_out, **gpu),
        Impl("astype+numbasoftmax", op, "gpu", astype, call_out=astype_out, **gpu),
        Impl("torch", op, "gpu", torch_dtype, prepare=_torch_prepare("cuda"),
             to_numpy=_torch_to_numpy, available=_torch_cuda_ok, sync=_torch_sync,
             int_axis_only=True, call_out=torch_dtype_out, form="dtype"),
    )


IMPLEMENTATIONS = (_entries() + tuple(e for op in FORM_OPS["where"] for e in _where_entries(op))
                   + tuple(e for op in FORM_OPS["dtype"] for e in _dtype_entries(op)))


def implementations(op=None, device=None, name=None, available_only=True, form="plain"):
    """Entries matching the filters, in registry order (by default the plain form only;
    ``form=None``: every form)."""
    return [i for i in IMPLEMENTATIONS
            if (op is None or i.op == op) and (device is None or i.device == device)
            and (name is None or i.name == name) and (form is None or i.form == form)
            and (not available_only or i.available())]
