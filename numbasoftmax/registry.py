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
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._ops import NAMES as OPS


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
    role: str = "peer"  # "ours", "peer" or "oracle"
    call_out: Callable | None = None  # call_out(*native_inputs, axis, out) -> out

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
                        prepare=_cupy_prepare, to_numpy=_cupy_to_numpy, available=_ours_gpu_ok,
                        sync=_cupy_sync, role="ours", call_out=ours_out))
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


IMPLEMENTATIONS = _entries()


def implementations(op=None, device=None, name=None, available_only=True):
    """Entries matching the filters, in registry order."""
    return [i for i in IMPLEMENTATIONS
            if (op is None or i.op == op) and (device is None or i.device == device)
            and (name is None or i.name == name) and (not available_only or i.available())]
