"""Shared test helpers: the four operations, inputs for them, memory layouts, and a
comparison with the float64 reference under the documented non-finite rules.

Tolerances
----------
Every comparison uses an element-wise error bound derived from how each result is
computed, instead of one rtol per dtype: a flat rtol is either too loose for most elements
or too tight for the ill-conditioned ones. Notation: ``eps_c`` is the machine epsilon of the
compute type (float32 for float16 and float32 inputs, float64 for float64), ``eps_o`` the
one of the output dtype (float16 results are rounded once more when stored), ``tiny_c`` the
smallest normal number of the compute type, ``flush_c`` the largest result the vectorized
exp returns as 0 (exp of the bottom of its range, just above ``tiny_c``), ``sub_o`` the
spacing of subnormal numbers of the output dtype (what a correctly rounded store can lose
near 0). With ``m`` the max and ``lse`` the log-sum-exp over the softmax axes:

* softmax: ``exp(x - m)`` is evaluated on a rounded ``x - m`` (relative error of the
  result ``|x - m| * eps_c``, the conditioning of exp, which the float64 reference has too)
  plus a few ulp for exp, the sum and the division:
  ``|err| <= C * ((eps_c * (1 + |x - m|) + eps_o) * |ref|) + flush_c + sub_o``.
* log_softmax: ``(x - m) - lse`` is a difference of rounded terms:
  ``|err| <= C * (eps_c * (1 + |x - m| + |lse|) + eps_o * |ref|) + sub_o`` (the 1: the sum
  of exp is rounded in the compute type, an absolute error of a few eps_c in lse).
* softmax_backward ``y * (dy - s)``, ``s = sum(y * dy)``:
  ``|err| <= C * (eps_c * |y| * (|dy| + sum|y * dy|) + eps_o * |ref|) + |y| * n * sub_c
  + sub_o``, ``sub_c`` the subnormal spacing of the compute type: each of the n products
  in ``s`` that falls below the normal range rounds to that spacing, not relatively.
* log_softmax_backward ``dz - exp(z) * S``, ``S = sum(dz)``:
  ``|err| <= C * (eps_c * (|dz| + exp(z) * sum|dz|) + eps_o * |ref|)
  + C * tiny_c * sum|dz| + sub_o``.

Where a term above goes through a row's sum (the 1 of softmax and log_softmax, the sums of
the gradients), ``C`` is ``max(C, k)``, ``k`` the most roundings on the way from a term
to the row's sum in the kernels' summation order (``_sum_chain``: 38 for 500 elements):
equal small terms added to one large one round the same way every time, so the errors of
a lane's adds add up (seen: 9 eps_c in log_softmax of 500 float64 values, 498 of them
equal).

``C = 8`` gives margin over what was measured (float32 softmax over 70000 elements of
5 * N(0, 1): 2.2e-6 relative = 19 eps_c, of which |x - m| ~ 40 accounts for 16;
float16: one half-ulp of the output, 2 for rows over 32768 elements that keep exp(x - max)
in the float16 output). The bound is tight: a result off by one ulp of float16 in a float32
computation, or a float32 rounding in a float64 computation, fails.

The reference is evaluated on contiguous rows (see ``expected``), where numpy's sums are
pairwise and accurate to a few ulp.

Non-finite results must match exactly: NaN where the reference (cast to the result dtype)
is NaN, and the same infinity where it is infinite.
"""

from __future__ import annotations

import numpy as np

import numbasoftmax
from numbasoftmax import reference

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
FORWARD_OPS = ("softmax", "log_softmax")
BACKWARD_OPS = ("softmax_backward", "log_softmax_backward")
OPS = FORWARD_OPS + BACKWARD_OPS
# parameter names per op, as the error messages must name them
ARG_NAMES = {
    "softmax": ("x",),
    "log_softmax": ("x",),
    "softmax_backward": ("y", "dy"),
    "log_softmax_backward": ("z", "dz"),
}

C = 8.0

# kernel thresholds (numbasoftmax/_cpu.py, numbasoftmax/_cpu_kernels.py), restated here so
# that a change there shows up as a reviewable change of the tests
PARALLEL_MIN_ELEMENTS = 32768
BLOCK = 1024
CHUNK = 8192
ROW_TASK_MAX = 32768
# the lane kernel below SHORT_ROW_MAX, rows in groups below GROUPED_ROW_MAX
SHORT_ROW_MAX = {"forward": 33, "backward": 9}
SHORT_ROW_BYTES = 176  # ... and outputs of rows of at most this many bytes
GROUPED_ROW_MAX = {"forward": 8192, "backward": 64}


def func(op):
    return getattr(numbasoftmax, op)


def result_dtype(dtype):
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def compute_dtype(dtype):
    return np.dtype(np.float64) if result_dtype(dtype) == np.float64 else np.dtype(np.float32)


# ---------------------------------------------------------------------------------------
# inputs

def random_x(rng, shape, dtype, scale=3.0):
    """Finite logits of a moderate spread."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(-20 if dtype.kind == "i" else 0, 20, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def inputs_for(op, rng, shape, dtype, axis=-1):
    """Valid inputs for ``op``: logits for the forward ops; for the backward ops the
    forward output (rounded to ``dtype``) of random logits and a random upstream gradient."""
    x = random_x(rng, shape, dtype)
    if op in FORWARD_OPS:
        return (x,)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return (x, random_x(rng, shape, dtype))
    fwd = reference.softmax if op == "softmax_backward" else reference.log_softmax
    y = fwd(x, axis).astype(dtype)
    return (y, random_x(rng, shape, dtype, scale=1.0))


def call(op, inputs, axis=-1, out=None):
    if out is None:
        return func(op)(*inputs, axis=axis)
    return func(op)(*inputs, axis=axis, out=out)


# ---------------------------------------------------------------------------------------
# layouts: the same logical values in different memory layouts

LAYOUTS = ("C", "F", "transposed", "stepped", "negative", "offset")


def in_layout(a, layout):
    """A new array equal to ``a`` (same shape, dtype and values) laid out as named:

    C / F: contiguous; transposed: a C array of the axes rotated by one, transposed back;
    stepped: every other element of a bigger buffer along every axis;
    negative: every axis reversed (negative strides);
    offset: the interior of a buffer one element bigger on each side of every axis
    (unit inner stride, rows spaced further apart than their length)."""
    a = np.asarray(a)
    if layout == "C":
        return np.array(a, order="C", copy=True)
    if layout == "F":
        return np.array(a, order="F", copy=True)
    nd = a.ndim
    if layout == "transposed":
        if nd < 2:
            return np.array(a, copy=True)
        rot = tuple(range(1, nd)) + (0,)
        inv = tuple(np.argsort(rot))
        return np.ascontiguousarray(a.transpose(rot)).transpose(inv)
    if layout == "stepped":
        buf = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
        view = buf[(Ellipsis,) + tuple(slice(1, None, 2) for _ in a.shape)]
    elif layout == "negative":
        buf = np.zeros(a.shape, dtype=a.dtype)
        view = buf[(Ellipsis,) + tuple(slice(None, None, -1) for _ in a.shape)]
    elif layout == "offset":
        buf = np.zeros(tuple(s + 2 for s in a.shape), dtype=a.dtype)
        view = buf[(Ellipsis,) + tuple(slice(1, -1) for _ in a.shape)]
    else:
        raise ValueError(layout)
    view[...] = a
    return view


def read_only_copy(a):
    """A copy of ``a`` that is not writable."""
    a = a.copy()
    a.flags.writeable = False
    return a


def bits(a):
    """The bit patterns of ``a`` (NaN-safe exact comparison)."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.itemsize}")) if a.dtype.kind == "f" else a


def assert_bitwise_equal(got, expected):
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(bits(got), bits(expected))


# ---------------------------------------------------------------------------------------
# comparison with the reference

def _axes(axis, ndim):
    from numbasoftmax._layout import normalize_axes

    return normalize_axes(axis, ndim)


def error_bound(op, inputs, axis, ref, dtype, where=None):
    """Element-wise bound on |result - reference| (see the module docstring); ``where``:
    the mask of a masked call (sums and maxima over its elements)."""
    with np.errstate(all="ignore"):
        bound = _error_bound(op, inputs, axis, ref, dtype, where)
    # an infinite term times 0 means no precision is promised there
    return np.where(np.isnan(bound), np.inf, bound)


def _exp_flush(cdt):
    """The largest result the kernels' exp rounds to 0, in compute dtype ``cdt``."""
    from numba import types

    from numbasoftmax._vmath import _RANGE

    lowest = _RANGE[types.float64 if cdt == np.float64 else types.float32][0]
    return float(np.exp(np.float64(lowest)))


def _sum_chain(n):
    """The most roundings on the way from one term to a row's sum of n terms, in the
    kernels' order (``numbasoftmax._row_kernel``): the adds of a lane in a block (BLOCK /
    16 terms at most), the halving tree of the 16 lanes, the block sums of a chunk, the
    chunk sums of the row. The standard bound of a sum of positive terms is then k eps
    relative."""
    lanes = 16
    return (-(-min(n, BLOCK) // lanes) + 4 + -(-min(n, CHUNK) // BLOCK) + -(-n // CHUNK))


def _error_bound(op, inputs, axis, ref, dtype, where):
    dtype = result_dtype(dtype)
    cdt = compute_dtype(dtype)
    eps_c = float(np.finfo(cdt).eps)
    eps_o = float(np.finfo(dtype).eps)
    tiny_c = float(np.finfo(cdt).tiny)
    # the kernels' exp returns 0 below its range: an absolute error up to exp(lowest
    # argument), just above the smallest normal number (1.1799e-38 against 1.1755e-38)
    flush_c = _exp_flush(cdt)
    sub_o = float(np.finfo(dtype).smallest_subnormal)
    sub_c = float(np.finfo(cdt).smallest_subnormal)
    a = [np.asarray(v, dtype=np.float64) for v in inputs]
    axes = _axes(axis, a[0].ndim)
    n = int(np.prod([a[0].shape[ax] for ax in axes], dtype=np.int64))
    # a row's sum rounds up to k times on the way to any one term (``_sum_chain``); with C
    # already allowing C rounding errors, the sums' terms get max(C, k)
    Cs = max(C, _sum_chain(n))
    absref = np.abs(ref)
    valid = np.ones(a[0].shape, bool) if where is None else np.broadcast_to(where, a[0].shape)
    with np.errstate(all="ignore"):
        if op in FORWARD_OPS:
            x = a[0]
            finite = np.where(np.isfinite(x) & valid, x, -np.inf)
            m = np.max(finite, axis=axes, keepdims=True) if x.size else 0.0
            dist = np.abs(x - m)
            if op == "softmax":
                # past 1/eps_c the relative error promise is void anyway; clipping keeps
                # 0 * inf out of the bound where exp(x - m) underflows to 0
                dist = np.minimum(dist, 1 / eps_c)
                return (C * (eps_c * dist + eps_o) + Cs * eps_c) * absref + flush_c + sub_o
            lse = np.abs(np.log(np.sum(np.where(valid, np.exp(x - m), 0.0), axis=axes,
                                       keepdims=True)))
            return C * (eps_c * (dist + lse) + eps_o * absref) + Cs * eps_c + sub_o
        if op == "softmax_backward":
            y, dy = a
            tot = np.sum(np.where(valid, np.abs(y * dy), 0.0), axis=axes, keepdims=True)
            # a product y * dy below the compute type's normal range rounds to its
            # subnormal spacing, an absolute error of up to half of it per term of the sum
            terms = np.sum(valid, axis=axes, keepdims=True)
            return (eps_c * np.abs(y) * (C * np.abs(dy) + Cs * tot) + C * eps_o * absref
                    + np.abs(y) * terms * sub_c + sub_o)
        z, dz = a
        tot = np.sum(np.where(valid, np.abs(dz), 0.0), axis=axes, keepdims=True)
        return (eps_c * (C * np.abs(dz) + Cs * np.exp(z) * tot) + C * eps_o * absref
                + C * tiny_c * tot + sub_o)


def expected(op, inputs, axis=-1, where=None):
    """The float64 reference result, evaluated on contiguous rows.

    numpy sums pairwise only along a contiguous axis; along a strided axis it accumulates
    one element after the other, an error of up to n * eps that would be blamed on the
    package (seen: 16 ulp at n = 1823). So the softmax axes are moved last and made
    contiguous before calling ``numbasoftmax.reference`` over one axis."""
    arrs = [np.asarray(a) for a in inputs]
    if where is not None:
        arrs.append(np.broadcast_to(np.asarray(where), arrs[0].shape))
    nd = arrs[0].ndim
    axes = _axes(axis, nd)
    others = tuple(a for a in range(nd) if a not in axes)
    perm = others + tuple(axes)
    pshape = tuple(arrs[0].shape[p] for p in perm)
    m = int(np.prod(pshape[:len(others)], dtype=np.int64))
    n = int(np.prod(pshape[len(others):], dtype=np.int64))
    rows = [np.ascontiguousarray(a.transpose(perm)).reshape(m, n) for a in arrs]
    if where is not None:
        *rows, mask = rows
        ref = getattr(reference, op)(*rows, axis=-1, where=mask)
    else:
        ref = getattr(reference, op)(*rows, axis=-1)
    return ref.reshape(pshape).transpose(tuple(np.argsort(perm)))


def assert_matches_reference(op, got, inputs, axis=-1, ref=None, where=None, dtype=None):
    """``got`` has the right shape and dtype and agrees with the reference: identical NaN
    and infinity positions (against the reference rounded to the result dtype), finite
    values within ``error_bound``. ``where``: the call's mask; ``dtype``: the call's
    ``dtype=`` (the inputs are then rounded to it first, as the call promises)."""
    inputs = tuple(np.asarray(v) for v in inputs)
    if dtype is not None:
        inputs = tuple(v.astype(dtype) for v in inputs)
    dtype = result_dtype(inputs[0].dtype)
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == dtype, (got.dtype, dtype)
    assert got.shape == inputs[0].shape, (got.shape, inputs[0].shape)
    if ref is None:
        ref = expected(op, inputs, axis, where)
    with np.errstate(over="ignore"):
        ref_o = ref.astype(dtype)
    g = got.astype(np.float64)
    # NaN exactly where the reference has NaN
    np.testing.assert_array_equal(np.isnan(g), np.isnan(ref_o), err_msg=f"{op}: NaN positions")
    # near the overflow threshold of the output dtype the float64 reference may round
    # either way: allow inf or the largest finite value there
    big = float(np.finfo(dtype).max) * (1 - 4 * float(np.finfo(dtype).eps))
    band = np.isfinite(ref) & (np.abs(ref) >= big) & (np.sign(g) == np.sign(ref))
    inf_mismatch = (np.isinf(g) | np.isinf(ref_o)) & (g != ref_o) & ~band
    assert not inf_mismatch.any(), (
        f"{op}: infinities differ at {np.argwhere(inf_mismatch)[:5].tolist()}: "
        f"got {g[inf_mismatch][:5]}, expected {ref[inf_mismatch][:5]}")
    fin = np.isfinite(g) & np.isfinite(ref_o)
    bound = error_bound(op, inputs, axis, ref, dtype, where)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(g - ref)
        bad = fin & ~(err <= bound)
    if bad.any():
        idx = np.argwhere(bad)[:5].tolist()
        raise AssertionError(
            f"{op} ({dtype}): {int(bad.sum())} of {g.size} values outside the error bound; "
            f"first at {idx}: got {g[bad][:5]}, expected {ref[bad][:5]}, "
            f"|err| {err[bad][:5]}, bound {np.broadcast_to(bound, g.shape)[bad][:5]}")


# ---------------------------------------------------------------------------------------
# adversarial inputs (in the style of bottleneck's array generator), one named case each

def special_values(dtype):
    """Named extreme finite values of ``dtype``: huge is near the largest finite value
    (+-1e308 for float64, +-3e38 for float32, +-6e4 for float16)."""
    fi = np.finfo(dtype)
    huge = {np.dtype(np.float64): 1e308, np.dtype(np.float32): 3e38,
            np.dtype(np.float16): 6e4}[np.dtype(dtype)]
    return {"huge": huge, "tiny": float(fi.smallest_subnormal), "normal_tiny": float(fi.tiny),
            "max": float(fi.max)}


def adversarial_cases(dtype):
    """(name, array) pairs of 2-D inputs whose rows mix the awkward values."""
    dtype = np.dtype(dtype)
    sv = special_values(dtype)
    inf, nan, h = np.inf, np.nan, sv["huge"]
    rng = np.random.default_rng(1234)
    base = rng.standard_normal((4, 9))
    cases = {
        "nan_row": [[nan] * 5, [0.0, 1, 2, 3, 4]],
        "nan_among_finite": [[0.0, nan, 1, 2, 3], [0.0, 1, 2, 3, 4]],
        "posinf_among_finite": [[0.0, inf, 1, 2, 3], [0.5, 1, 2, 3, 4]],
        "two_posinf": [[inf, inf, 1, 2, 3], [0.5, 1, 2, 3, 4]],
        "all_neginf": [[-inf] * 5, [0.0, 1, 2, 3, 4]],
        "neginf_among_finite": [[-inf, 0.0, -inf, 1.0, 2.0], [-inf, -inf, -inf, -inf, 7.0]],
        "huge_pos": [[h, h, 0.0, -h, 1.0], [h, -h, -h, -h, -h]],
        "huge_neg": [[-h, -h, -h, -h, -h], [-h, 0.0, -h, 1.0, -h]],
        "max_value": [[sv["max"], -sv["max"], 0.0, 1.0, 2.0], [sv["max"]] * 5],
        "tiny": [[sv["tiny"], -sv["tiny"], 0.0, sv["normal_tiny"], 0.0], [0.0] * 5],
        "constant": [[3.25] * 5, [-7.5] * 5],
        "large_spread": [[0.0, -50.0, -100.0, -200.0, 30.0], [10.0, -10.0, 20.0, -20.0, 0.0]],
        "mixed": np.where(rng.random((4, 9)) < 0.15, nan,
                          np.where(rng.random((4, 9)) < 0.2, -inf, base)),
    }
    return [(name, np.asarray(v, dtype=np.float64).astype(dtype)) for name, v in cases.items()]


# ---------------------------------------------------------------------------------------
# test-run settings

def fuzz_examples(n):
    """``n`` hypothesis examples, times 100 under ``pytest --fuzz-long``."""
    import os

    return n * int(os.environ.get("NUMBASOFTMAX_FUZZ_MULTIPLIER", "1"))


class num_threads:
    """Context manager: run the body with ``numba.set_num_threads(n)`` (this thread only)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        import numba

        self.old = numba.get_num_threads()
        numba.set_num_threads(min(self.n, numba.config.NUMBA_NUM_THREADS))
        return self

    def __exit__(self, *exc):
        import numba

        numba.set_num_threads(self.old)


def fail_scheduler(*args, **kwargs):
    """A dask scheduler that fails: for checking that calls stay lazy."""
    raise AssertionError("something was computed at call time")

