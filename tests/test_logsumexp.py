"""logsumexp and logsumexp_backward on the CPU: against the float64 reference (which states
scipy's semantics for weights, signs and non-finite values), against scipy.special.logsumexp
where it is installed, and the package's guarantees (bits independent of layout, driver and
thread count; results always arrays).

Error bound of a value m + log|s|, s = sum(b * exp(x - m)) over the valid elements: the sum
is evaluated in the compute type, each term with the relative error of exp of a rounded
x - m (|x - m| * eps_c) and a few ulp; relative to |s| that is
``eps_c * sum(|b| e (1 + |x - m|)) / |s|`` (1 + the mean distance for positive weights,
large where weights of both signs cancel), which log turns into an absolute error; the
result is rounded to the output dtype once: ``C * (eps_c * that + eps_o * |ref|)``.
Each dtype, driver and option compiles kernels of its own: the drivers are covered in
float32, scipy's semantics (weights, signs, non-finite values) in float64, float16 once.
"""

from __future__ import annotations

import importlib.util
import math
import zlib

import numpy as np
import pytest
from _helpers import C, assert_bitwise_equal, compute_dtype, in_layout, num_threads

import numbasoftmax as nsm
from numbasoftmax import _cpu, _cpu_path, reference

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def lse_bound(x, axes, ref, dtype, b=None, where=None):
    """Element-wise bound on |logsumexp - reference| (module docstring), keepdims shape
    squeezed like ``ref``."""
    dtype = np.dtype(dtype)
    eps_c = float(np.finfo(compute_dtype(dtype)).eps)
    eps_o = float(np.finfo(dtype).eps)
    x = np.asarray(x, np.float64)
    bb = np.ones(x.shape) if b is None else np.broadcast_to(np.asarray(b, np.float64), x.shape)
    valid = bb != 0
    if where is not None:
        valid = valid & np.broadcast_to(where, x.shape)
    with np.errstate(all="ignore"):
        m = np.max(np.where(valid & np.isfinite(x), x, -np.inf), axis=axes, keepdims=True)
        e = np.where(valid, np.exp(x - m), 0.0)
        s = np.abs(np.sum(bb * e, axis=axes, keepdims=True))
        spread = np.sum(np.abs(bb) * e * (1 + np.abs(x - m)), axis=axes, keepdims=True) / s
        bound = C * (eps_c * (1 + spread)).reshape(np.shape(ref)) + C * eps_o * np.abs(ref)
    return np.where(np.isnan(bound), np.inf, bound)


def assert_close(got, ref, bound):
    got = np.asarray(got, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg="NaN positions")
    inf = np.isinf(got) | np.isinf(ref)
    np.testing.assert_array_equal(got[inf], ref[inf], err_msg="infinities")
    fin = ~np.isnan(got) & ~inf
    err = np.abs(got - ref)
    bad = fin & ~(err <= bound)
    assert not bad.any(), (f"{int(bad.sum())} values off: got {got[bad][:5]}, expected "
                           f"{ref[bad][:5]}, bound {np.broadcast_to(bound, got.shape)[bad][:5]}")


def check(x, axis=-1, dtype=None, **kw):
    """logsumexp against the reference; returns the result."""
    got = nsm.logsumexp(x, axis=axis, dtype=dtype, **kw)
    want = reference.logsumexp(x, axis=axis, dtype=dtype, **kw)
    rdtype = dtype or np.result_type(np.asarray(x).dtype, np.asarray(kw.get("b", x)).dtype)
    axes = tuple(range(np.ndim(x))) if axis is None else np.atleast_1d(axis) % max(np.ndim(x), 1)
    if kw.get("return_sign"):
        np.testing.assert_array_equal(got[1], want[1].astype(got[1].dtype))
        got, want = got[0], want[0]
    assert isinstance(got, np.ndarray) and got.dtype == rdtype
    assert got.shape == want.shape
    xx = np.asarray(x).astype(rdtype)
    assert_close(got, want, lse_bound(xx, tuple(axes), want, rdtype, kw.get("b"),
                                      kw.get("where")))
    return got


# ---------------------------------------------------------------------------------------
# values along every driver: serial rows, parallel rows, long rows in chunk tasks

SHAPES = [(1,), (5, 1), (7, 3), (9, 31), (4, 33), (3, 1025), (2, 8193), (600, 100),
          (3, 20000), (2, 40000)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, rng):
    check((rng.standard_normal(shape) * 4).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=lambda d: np.dtype(d).name)
def test_other_dtypes(dtype, rng):
    got = check((rng.standard_normal((9, 310)) * 4).astype(dtype))
    assert got.dtype == dtype


@pytest.mark.parametrize("axis", [0, (0, 2), None, -2, ()])
def test_axes(axis, rng):
    check(rng.standard_normal((4, 5, 6)).astype(np.float32), axis=axis)


def test_default_axis_is_last_and_log_softmax_identity(rng):
    x = rng.standard_normal((6, 50)).astype(np.float32)
    assert_bitwise_equal(nsm.logsumexp(x), nsm.logsumexp(x, axis=-1))
    lse = nsm.logsumexp(x.astype(np.float64), keepdims=True)
    np.testing.assert_allclose(nsm.log_softmax(x.astype(np.float64)), x - lse, atol=1e-14)


@pytest.mark.parametrize("keepdims", [False, True])
def test_keepdims_shapes(keepdims, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    for axis, shape in [(1, (3, 5)), ((0, 2), (4,)), (None, ())]:
        got = nsm.logsumexp(x, axis=axis, keepdims=keepdims)
        want = np.sum(x, axis=axis, keepdims=keepdims).shape
        assert got.shape == want
        assert keepdims or got.shape == shape


def test_results_are_arrays():
    got = nsm.logsumexp(np.float64(2.0))
    assert isinstance(got, np.ndarray) and got.shape == () and got == 2.0
    v, s = nsm.logsumexp([1.0, 2.0], return_sign=True)
    assert isinstance(v, np.ndarray) and isinstance(s, np.ndarray) and s == 1.0


def test_integer_and_bool_inputs_give_float64():
    assert nsm.logsumexp(np.arange(6).reshape(2, 3)).dtype == np.float64
    assert nsm.logsumexp(np.ones((2, 3), bool)).dtype == np.float64


def test_empty():
    np.testing.assert_array_equal(nsm.logsumexp(np.zeros((3, 0))), [-np.inf] * 3)
    v, s = nsm.logsumexp(np.zeros((3, 0), np.float32), return_sign=True)
    assert v.dtype == np.float32 and (s == 0).all()
    assert nsm.logsumexp(np.zeros((0, 3))).shape == (0,)


# ---------------------------------------------------------------------------------------
# weights and signs

def test_weights_and_signs(rng):
    x = rng.standard_normal((40, 70))
    b = rng.standard_normal((40, 70))
    check(x, b=b)
    check(x, b=b, return_sign=True)


@pytest.mark.parametrize("bshape", [(70,), (40, 1), (1, 70), ()], ids=str)
def test_weights_broadcast(bshape, rng):
    x = rng.standard_normal((40, 70))
    b = rng.random(bshape) + 0.5
    check(x, b=b)


def test_weights_promote_like_numpy(rng):
    x = rng.standard_normal((4, 9)).astype(np.float32)
    got = nsm.logsumexp(x, b=np.ones(9))
    assert got.dtype == np.float64  # x read as if cast to float64
    assert_bitwise_equal(got, nsm.logsumexp(x.astype(np.float64), b=np.ones(9)))
    assert np.result_type(np.float32, np.float16) == np.float32  # the rule used


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("b", [2.0, 3, True], ids=["float", "int", "bool"])
def test_python_scalar_weights_are_weak(b, dtype, rng):
    """A Python scalar weight keeps x's dtype, as numpy promotes Python scalars (scipy
    agrees); a numpy scalar is typed."""
    x = rng.standard_normal((4, 9)).astype(dtype)
    got = nsm.logsumexp(x, b=b)
    assert got.dtype == dtype
    assert_bitwise_equal(got, nsm.logsumexp(x, b=np.full(9, b, dtype)))
    grad = nsm.logsumexp_backward(x, got, np.ones(4, dtype), b=b)
    assert grad.dtype == dtype
    assert nsm.logsumexp(x, b=np.float64(b)).dtype == np.float64


NONFINITE = [
    # (x, b): the reference states the rule; scipy agrees on each
    ([np.inf, 1.0], None),
    ([np.inf, -np.inf], None),
    ([np.nan, 1.0], None),
    ([-np.inf, -np.inf], None),
    ([np.inf, np.inf], [1.0, -1.0]),
    ([np.inf, 2.0], [0.0, 1.0]),
    ([np.nan, 2.0], [0.0, 1.0]),
    ([1.0, 2.0], [1.0, -1.0]),
    ([1.0, 1.0], [1.0, -1.0]),
    ([np.inf, 1.0], [-1.0, 1.0]),
    ([1.0, 2.0], [np.nan, 1.0]),
    ([1.0, 2.0], [np.inf, 1.0]),
    ([-np.inf, -np.inf], [1.0, -1.0]),
    ([1e308, 1e308], None),
    ([-1e308, 1e308, 0.0], None),
]


@pytest.mark.parametrize("return_sign", [False, True])
@pytest.mark.parametrize("case", NONFINITE, ids=lambda c: f"{c[0]}-{c[1]}")
def test_non_finite(case, return_sign):
    x, b = (np.array(v, np.float64) if v is not None else None for v in case)
    got = nsm.logsumexp(x, b=b, return_sign=return_sign)
    want = reference.logsumexp(x, b=b, return_sign=return_sign)
    np.testing.assert_array_equal(got, want)
    if HAS_SCIPY:
        from scipy.special import logsumexp as scipy_lse

        with np.errstate(over="ignore"):  # scipy: x - max overflows for -1e308 - 1e308
            want = scipy_lse(x, b=b, return_sign=return_sign)
        np.testing.assert_array_equal(got, want)


def test_non_finite_in_long_rows():
    """+inf, NaN and cancelling infinities in different chunks of a row."""
    x = np.zeros((4, 3 * 8192))
    b = np.ones_like(x)
    x[0, 100] = np.inf
    x[1, 9000] = np.nan
    x[2, [10, 20000]] = np.inf
    b[2, 20000] = -1.0
    x[3, :] = -np.inf
    got = [nsm.logsumexp(x[i], b=b[i], return_sign=True) for i in range(4)]
    np.testing.assert_array_equal([v for v, _ in got], [np.inf, np.nan, np.nan, -np.inf])
    np.testing.assert_array_equal([s for _, s in got], [1.0, np.nan, np.nan, 0.0])


LAYOUTS = {
    "row": lambda v: v,
    "rows": lambda v: np.stack([v, v[::-1], v]),  # the row drivers
    "columns": lambda v: np.ascontiguousarray(np.tile(v[:, None], (1, 40))),  # axis 0
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("n", [100, 8193, 3 * 8192 + 5])
@pytest.mark.parametrize("weight", [np.nan, np.inf, -np.inf])
def test_weights_of_finite_elements_in_a_row_of_inf_max(weight, n, layout):
    """A row whose max is +inf sums its +inf elements alone: a NaN or infinite weight on a
    finite element changes nothing, in the +inf's chunk or in another (rows longer than a
    chunk combine per-chunk statistics; the columns kernel keeps them per lane)."""
    x, b = np.linspace(-3.0, 3.0, n), np.ones(n)
    x[1], b[-1] = np.inf, weight  # the weight is a chunk away from the +inf for n > 8192
    b[1] = -2.0
    make, axis = LAYOUTS[layout], 0 if layout == "columns" else -1
    got = nsm.logsumexp(make(x), axis=axis, b=make(b), return_sign=True)
    want = reference.logsumexp(x, b=b, return_sign=True)
    np.testing.assert_array_equal(got[0], np.broadcast_to(want[0], got[0].shape))
    np.testing.assert_array_equal(got[1], np.broadcast_to(want[1], got[1].shape))
    assert want[0] == np.inf and want[1] == -1.0


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype, x0, w", [(np.float64, -710.0, 1e308), (np.float64, -720.0, 1e308),
                                          (np.float32, -90.0, 1e38), (np.float32, -95.0, 3e38)])
def test_a_large_weight_lifts_a_term_below_the_normal_range(dtype, x0, w, layout):
    """exp(x0 - max) is below the smallest normal number (the kernels' exp gives 0 there),
    but w * exp(x0 - max) is not: the term counts, in the sum and in the gradient."""
    x = np.full(40, -1e4, dtype)
    x[:2] = x0, 0.0
    b = np.ones_like(x)
    b[0] = w
    make, axis = LAYOUTS[layout], 0 if layout == "columns" else -1
    lifted = math.log(w) + x0  # the log of the term
    want = np.logaddexp(lifted, 0.0)
    eps = float(np.finfo(dtype).eps)
    got = nsm.logsumexp(make(x), axis=axis, b=make(b))
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * eps)
    grad = nsm.logsumexp_backward(make(x), got, np.ones_like(got), axis=axis, b=make(b))
    want_grad = np.exp(np.log(b.astype(np.float64)) + x.astype(np.float64) - want)
    # the lifted term's exponent rounds once more (``_vmath._LIFT``)
    np.testing.assert_allclose(grad, make(want_grad), rtol=512 * eps, atol=1e-300)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_large_weight_lifts_a_chunk_far_below_the_rows_max(layout):
    """Chunks combine as weighted terms: a chunk whose max is 750 below the row's (its
    scale exp(-750) below the normal range) still counts through its large sum."""
    n = 3 * 8192 + 5
    x, b = np.full(n, -1e4), np.ones(n)
    x[0], b[0] = 0.0, 1e-300  # the row's max, in the first chunk, with a tiny weight
    x[9000], b[9000] = -750.0, 1e308  # the second chunk's max
    make, axis = LAYOUTS[layout], 0 if layout == "columns" else -1
    want = np.logaddexp(math.log(1e-300), math.log(1e308) - 750.0)  # about -40.8
    got = nsm.logsumexp(make(x), axis=axis, b=make(b))
    np.testing.assert_allclose(got, want, rtol=64 * np.finfo(np.float64).eps)
    np.testing.assert_allclose(reference.logsumexp(x, b=b), want, rtol=1e-14)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("weighted", [False, True])
def test_nan_element_in_another_chunk_of_a_row_of_inf_max(weighted, layout):
    n = 3 * 8192 + 5
    x = np.linspace(-3.0, 3.0, n)
    x[1], x[-2] = np.inf, np.nan
    b = np.full(n, 0.5) if weighted else None
    make, axis = LAYOUTS[layout], 0 if layout == "columns" else -1
    got = nsm.logsumexp(make(x), axis=axis, b=None if b is None else make(b))
    assert np.isnan(got).all()
    assert np.isnan(reference.logsumexp(x, b=b))


@pytest.mark.skipif(not HAS_SCIPY, reason="scipy not installed")
@pytest.mark.parametrize("axis", [-1, 0, None, (0, 2)])
def test_matches_scipy(axis, rng):
    from scipy.special import logsumexp as scipy_lse

    x = rng.standard_normal((5, 6, 7)) * 10
    b = rng.standard_normal((5, 6, 7))
    for kw in ({}, {"b": b}, {"b": b, "return_sign": True}, {"keepdims": True}):
        got = nsm.logsumexp(x, axis=axis, **kw)
        want = scipy_lse(x, axis=axis, **kw)
        if kw.get("return_sign"):
            np.testing.assert_array_equal(got[1], want[1])
            got, want = got[0], want[0]
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------
# out=

def test_out(rng):
    x = rng.standard_normal((6, 50)).astype(np.float32)
    out = np.full(6, 7.0, np.float32)
    assert nsm.logsumexp(x, out=out) is out
    assert_bitwise_equal(out, nsm.logsumexp(x))
    v, s = np.empty(6), np.empty(6)
    got = nsm.logsumexp(x.astype(np.float64), b=-np.ones(50), return_sign=True, out=(v, s))
    assert got[0] is v and got[1] is s and (s == -1).all()
    out = np.empty((6, 1), np.float32)
    assert nsm.logsumexp(x, keepdims=True, out=out) is out


class _Out(np.ndarray):
    """An ndarray subclass given as out= (a memmap, say)."""


def test_out_of_a_subclass_is_returned(rng):
    x = rng.standard_normal((6, 50)).astype(np.float32)
    out = np.empty(6, np.float32).view(_Out)
    assert nsm.logsumexp(x, out=out) is out
    pair = (np.empty(6, np.float32).view(_Out), np.empty(6, np.float32).view(_Out))
    got = nsm.logsumexp(x, return_sign=True, out=pair)
    assert got[0] is pair[0] and got[1] is pair[1]
    assert_bitwise_equal(np.asarray(out), nsm.logsumexp(x))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("order, axis", [("C", -1), ("C", 1), ("F", 1), ("F", 0)])
def test_value_and_sign_are_arrays_of_their_own(order, axis, keepdims, rng):
    """With return_sign, the value and the sign are contiguous arrays laid out as the value
    without it (C-ordered for C-ordered input), not two views of one interleaved buffer."""
    x = np.asarray(rng.standard_normal((3, 4, 50)), np.float32, order=order)
    plain = nsm.logsumexp(x, axis=axis, keepdims=keepdims)
    value, sign = nsm.logsumexp(x, axis=axis, keepdims=keepdims, return_sign=True)
    for r in (value, sign):
        assert r.flags.c_contiguous or r.flags.f_contiguous
        # (the stride of a kept axis of size 1 is arbitrary)
        assert [st for st, n in zip(r.strides, r.shape, strict=True) if n > 1] == [
            st for st, n in zip(plain.strides, plain.shape, strict=True) if n > 1]
    if order == "C":
        assert value.flags.c_contiguous and sign.flags.c_contiguous
    assert value.base is None or value.base is not sign.base
    assert_bitwise_equal(value, plain)


@pytest.mark.parametrize("out, exc, words", [
    (np.empty(6, np.float64), TypeError, ["out", "float32"]),
    (np.empty(5, np.float32), ValueError, ["out", "(6,)"]),
    (np.empty((6, 50), np.float32), ValueError, ["out"]),
])
def test_bad_out(out, exc, words):
    with pytest.raises(exc) as info:
        nsm.logsumexp(np.zeros((6, 50), np.float32), out=out)
    for w in words:
        assert w in str(info.value)


# ---------------------------------------------------------------------------------------
# guarantees

@pytest.mark.parametrize("layout", ["F", "transposed", "stepped", "negative"])
def test_layout_independent_bits(layout, rng):
    x = rng.standard_normal((30, 200)).astype(np.float32)
    for axis in (-1, 0):
        assert_bitwise_equal(nsm.logsumexp(in_layout(x, layout), axis=axis),
                             nsm.logsumexp(x, axis=axis))


@pytest.mark.parametrize("n", [3, 128, 20000])  # short rows, the row kernel, chunked rows
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_gives_the_general_paths_bits(dtype, n, rng):
    """A C-contiguous array along its last axis without options takes a fast path (from
    its second call on, the serial driver's compiled entry): the bits of the general path,
    here the same rows read through a Fortran-ordered copy."""
    x = (rng.standard_normal((6, n)) * 5).astype(dtype)
    x[0, 1], x[1, :], x[2, 2] = np.inf, -np.inf, np.nan
    general = nsm.logsumexp(np.asfortranarray(x))
    assert_bitwise_equal(nsm.logsumexp(x), general)
    assert_bitwise_equal(nsm.logsumexp(x), general)
    assert_bitwise_equal(nsm.logsumexp(x, keepdims=True), general[:, None])
    one = nsm.logsumexp(x[3])
    assert isinstance(one, np.ndarray) and one.shape == ()
    assert_bitwise_equal(one, general[3:4].reshape(()))


def test_fast_path_float16(rng):
    x = (rng.standard_normal((6, 128)) * 5).astype(np.float16)
    general = nsm.logsumexp(np.asfortranarray(x))
    assert general.dtype == np.float16
    assert_bitwise_equal(nsm.logsumexp(x), general)
    assert_bitwise_equal(nsm.logsumexp(x), general)


def test_bits_independent_of_driver_and_threads(rng):
    """Long rows alone (chunk tasks), in a big batch (row tasks), on one thread (serial)."""
    x = rng.standard_normal((20, 40000)).astype(np.float32)
    many = nsm.logsumexp(x)
    few = np.concatenate([nsm.logsumexp(x[i:i + 2]) for i in range(0, 20, 2)])
    with num_threads(1):
        serial = nsm.logsumexp(x)
    assert_bitwise_equal(few, many)
    assert_bitwise_equal(serial, many)


def test_input_not_modified(rng):
    x = rng.standard_normal((8, 100))
    b = rng.standard_normal(100)
    x0, b0 = x.copy(), b.copy()
    nsm.logsumexp(x, b=b, return_sign=True)
    assert_bitwise_equal(x, x0)
    assert_bitwise_equal(b, b0)


# ---------------------------------------------------------------------------------------
# the gradient

def test_backward_matches_reference(rng):
    x = rng.standard_normal((30, 300)).astype(np.float32)
    lse = nsm.logsumexp(x)
    g = rng.standard_normal(30).astype(np.float32)
    got = nsm.logsumexp_backward(x, lse, g)
    want = reference.logsumexp_backward(x, lse, g)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-30)
    # the gradient of logsumexp is the softmax, scaled by the upstream gradient
    np.testing.assert_allclose(got, nsm.softmax(x) * g[:, None], rtol=2e-5, atol=1e-12)


def test_backward_weights_sign_keepdims_axes(rng):
    x = rng.standard_normal((6, 7, 8))
    b = rng.standard_normal((7, 8))
    v, s = nsm.logsumexp(x, axis=(0, 2), b=b, return_sign=True, keepdims=True)
    g = rng.standard_normal(v.shape)
    got = nsm.logsumexp_backward(x, v, g, axis=(0, 2), b=b, sign=s)
    want = reference.logsumexp_backward(x, v, g, axis=(0, 2), b=b, sign=s)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
    # reduced-shape lse and dlse work as well
    got2 = nsm.logsumexp_backward(x, v.reshape(7), g.reshape(7), axis=(0, 2), b=b, sign=s)
    assert_bitwise_equal(got2, got)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_backward_matches_torch_autograd(rng):
    import torch

    x = rng.standard_normal((5, 40))
    t = torch.tensor(x, requires_grad=True)
    g = rng.standard_normal(5)
    torch.logsumexp(t, 1).backward(torch.tensor(g))
    ones = np.ones(40)  # weights 1: the kernels of the weighted test above
    got = nsm.logsumexp_backward(x, nsm.logsumexp(x, b=ones), g, b=ones)
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("n", [3, 128, 20000])  # short rows, the row kernel, chunked rows
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_backward_fast_path_gives_the_general_paths_bits(dtype, n, rng, monkeypatch):
    """The gradient of a C-contiguous array along its last axis, without options, takes a
    fast path: the bits of the general path (the same rows read through a Fortran-ordered
    copy), with lse and dlse in the reduced shape or with the axis kept."""
    x = (rng.standard_normal((6, n)) * 5).astype(dtype)
    x[0, 1], x[1, :], x[2, 2] = np.inf, -np.inf, np.nan
    lse = nsm.logsumexp(x)
    g = rng.standard_normal(6).astype(np.float32)
    real, taken = _cpu_path.fast_logsumexp_backward, []
    monkeypatch.setattr(_cpu_path, "fast_logsumexp_backward",
                        lambda *a: taken.append(real(*a)) or taken[-1])
    general = nsm.logsumexp_backward(np.asfortranarray(x), lse, g)
    assert taken == [None]
    assert general.dtype == dtype
    assert_bitwise_equal(nsm.logsumexp_backward(x, lse, g), general)
    assert_bitwise_equal(nsm.logsumexp_backward(x, lse[:, None], g[:, None]), general)
    assert_bitwise_equal(nsm.logsumexp_backward(x[3], lse[3:4], g[3:4]), general[3])
    assert all(t is not None for t in taken[1:]) and len(taken) == 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_fast_path_takes_each_row_value_dtype(dtype, rng):
    """The fast path's compiled entries are kept per dtype of the row values as well as of
    x: float32 and float64 lse and dlse (and mixed, read as float64) one after another on
    the same x give the general path's bits."""
    x = (rng.standard_normal((12, 40)) * 4).astype(dtype)
    lse = nsm.logsumexp(x).astype(np.float64)
    g = rng.standard_normal(12)
    for a, b in ((lse, g), (lse.astype(np.float32), g.astype(np.float32)),
                 (lse.astype(np.float32), g), (lse, g.astype(np.float32))):
        general = nsm.logsumexp_backward(np.asfortranarray(x), a, b)
        assert_bitwise_equal(nsm.logsumexp_backward(x, a, b), general)


@pytest.mark.parametrize("n", [2, 9, 128])  # the tiles, the row kernel
def test_backward_row_values_in_any_form(n, rng):
    """lse and dlse reach the kernels as they are where both are float32 or both float64
    and contiguous, read-only ones too (no copy); strided or mixed-dtype ones as float64
    copies: the same bits every way, and the caller's arrays unchanged."""
    x = (rng.standard_normal((40, n)) * 3).astype(np.float32)
    lse = nsm.logsumexp(x)
    g = rng.standard_normal(40).astype(np.float32)
    first, second = _cpu_path._given(lse, g)
    assert np.shares_memory(first, lse) and np.shares_memory(second, g)
    expected = nsm.logsumexp_backward(x, lse, g)
    wide = np.empty(80, np.float32)
    wide[::2] = g
    frozen = lse.copy()
    frozen.flags.writeable = False
    assert np.shares_memory(_cpu_path._given(frozen, g)[0], frozen)
    for a, b in ((frozen, g), (lse, wide[::2]), (lse.astype(np.float64), g)):
        before = [a.copy(), b.copy()]
        assert_bitwise_equal(nsm.logsumexp_backward(x, a, b), expected)
        assert_bitwise_equal(a, before[0])
        assert_bitwise_equal(b, before[1])


def test_backward_out_over_the_row_values(rng):
    """An ``out`` whose memory holds lse (and dlse) gets the results computed from the
    values as given: the kernels write out while they read the row values, so such values
    are copied first."""
    x = rng.standard_normal((40, 3)).astype(np.float32)
    lse, g = nsm.logsumexp(x), rng.standard_normal(40).astype(np.float32)
    expected = nsm.logsumexp_backward(x, lse, g)
    buf = np.empty(120, np.float32)
    buf[:40], buf[40:80] = lse, g  # the first rows of out hold lse and dlse
    got = nsm.logsumexp_backward(x, buf[:40], buf[40:80], out=buf.reshape(40, 3))
    assert got.base is buf
    assert_bitwise_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_strided_axis_read_in_place(dtype, rng, monkeypatch):
    """logsumexp along an axis that is not the contiguous one (axis 0 of a C-ordered
    array; axis 1 of three) reads it in place in a parallel call, with the bits of the same
    rows made contiguous, also with a mask of x's shape; with weights that broadcast along
    the contiguous axis, another result dtype, or fewer elements, it takes the rows' path,
    with the same values."""
    real, taken = _cpu_path._reduce_columns, []
    monkeypatch.setattr(_cpu_path, "_reduce_columns", lambda *a: taken.append(1) or real(*a))
    small = rng.standard_normal((5, 30)).astype(dtype)
    assert_bitwise_equal(nsm.logsumexp(small, axis=0),
                         nsm.logsumexp(np.ascontiguousarray(small.T), axis=-1))
    assert not taken
    x = (rng.standard_normal((40, 3, 300)) * 3).astype(dtype)
    x[5, 1, 7] = np.inf
    b = rng.standard_normal(x.shape).astype(dtype)
    for axis in (0, 1, (0, 1)):
        moved = np.moveaxis(x, axis, -1) if axis != (0, 1) else x.reshape(120, 300).T
        bmoved = np.moveaxis(b, axis, -1) if axis != (0, 1) else b.reshape(120, 300).T
        last = -1
        assert_bitwise_equal(nsm.logsumexp(x, axis=axis),
                             nsm.logsumexp(np.ascontiguousarray(moved), axis=last))
        value, sign = nsm.logsumexp(x, axis=axis, b=b, return_sign=True)
        ref = nsm.logsumexp(np.ascontiguousarray(moved), axis=last,
                            b=np.ascontiguousarray(bmoved), return_sign=True)
        assert_bitwise_equal(value, ref[0])
        assert_bitwise_equal(sign, ref[1])
    assert len(taken) == 6
    w = rng.random(x.shape) < 0.8
    for kw in ({"where": w}, {"b": b[:, :, :1]}, {"dtype": np.float64}):
        got = nsm.logsumexp(x, axis=0, **kw)
        kw = {k: (np.moveaxis(np.broadcast_to(v, x.shape), 0, -1) if k != "dtype" else v)
              for k, v in kw.items()}
        np.testing.assert_array_equal(got, nsm.logsumexp(np.moveaxis(x, 0, -1), axis=-1,
                                                         **kw))
    # the mask, and dtype= the same: in place, the reference (a transposed view) too
    assert len(taken) == 6 + 2 + 2 * (dtype == np.float64)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_backward_strided_axis_read_in_place(dtype, rng, monkeypatch):
    """logsumexp's gradient along an axis that is not the contiguous one (axis 0 of a
    C-ordered array; axis 1 of three) reads it in place in a parallel call (each lane
    given its row's values), with the bits of the same rows made contiguous: weighted,
    with ``sign=``, into ``out=`` (also one whose memory holds dlse), and as another
    result dtype, with a mask of x's shape; with fewer elements it takes the rows' path,
    with the same values."""
    real, taken = _cpu.run_columns, []
    monkeypatch.setattr(_cpu, "run_columns", lambda op, *a, **k: taken.append(op) or real(
        op, *a, **k))
    small = rng.standard_normal((5, 30)).astype(dtype)
    lse = nsm.logsumexp(small, axis=0)
    assert_bitwise_equal(nsm.logsumexp_backward(small, lse, lse, axis=0),
                         nsm.logsumexp_backward(np.ascontiguousarray(small.T), lse, lse).T)
    assert not taken
    x = (rng.standard_normal((40, 3, 300)) * 3).astype(dtype)
    x[5, 1, 7] = np.inf
    b = rng.standard_normal(x.shape).astype(dtype)
    for axis in (0, 1):
        moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
        bmoved = np.ascontiguousarray(np.moveaxis(b, axis, -1))
        lse = nsm.logsumexp(x, axis=axis)
        g = rng.standard_normal(lse.shape).astype(dtype)
        sign = np.where(rng.random(lse.shape) < 0.5, -1.0, 1.0).astype(dtype)
        for kw, ref_kw in (({}, {}), ({"b": b}, {"b": bmoved}), ({"sign": sign}, {"sign": sign}),
                           ({"dtype": np.float64}, {"dtype": np.float64})):
            got = nsm.logsumexp_backward(x, lse, g, axis=axis, **kw)
            ref = nsm.logsumexp_backward(moved, lse, g, axis=-1, **ref_kw)
            assert_bitwise_equal(got, np.moveaxis(ref, -1, axis))
        out = np.empty_like(x)
        got = nsm.logsumexp_backward(x, lse, g, axis=axis, out=out)
        assert got is out
        assert_bitwise_equal(out, np.moveaxis(nsm.logsumexp_backward(moved, lse, g), -1, axis))
    assert taken.count("logsumexp_backward") == 10
    # dlse in the memory of out, where earlier tasks write before later ones read: copied
    # before the kernels write out
    lse = nsm.logsumexp(x, axis=1)
    g = rng.standard_normal(lse.shape).astype(dtype)
    expected = nsm.logsumexp_backward(x, lse, g, axis=1)
    out = np.empty_like(x)
    held = out.reshape(-1)[:g.size].reshape(g.shape)
    held[...] = g
    assert_bitwise_equal(nsm.logsumexp_backward(x, lse, held, axis=1, out=out), expected)
    w = rng.random(x.shape) < 0.8
    lse = nsm.logsumexp(x, axis=0, where=w)
    g = rng.standard_normal(lse.shape).astype(dtype)
    taken.clear()
    got = nsm.logsumexp_backward(x, lse, g, axis=0, where=w)
    ref = nsm.logsumexp_backward(np.moveaxis(x, 0, -1), lse, g, where=np.moveaxis(w, 0, -1))
    assert_bitwise_equal(got, np.moveaxis(ref, -1, 0))
    assert taken == ["logsumexp_backward"] * 2  # the reference's strided last axis too


def test_backward_fast_path_declines_what_it_does_not_check(rng):
    """Lists, another row shape or a masked x go to the general path, with its rules."""
    x = rng.standard_normal((4, 16)).astype(np.float32)
    lse, g = nsm.logsumexp(x), np.ones(4, np.float32)
    assert _cpu_path.fast_logsumexp_backward(x, list(lse), g, -1) is None
    assert _cpu_path.fast_logsumexp_backward(x, lse[:2], g, -1) is None
    assert _cpu_path.fast_logsumexp_backward(np.ma.masked_array(x), lse, g, -1) is None
    assert_bitwise_equal(nsm.logsumexp_backward(x, list(lse), g),
                         nsm.logsumexp_backward(x, lse, g))
    with pytest.raises(ValueError, match="lse"):
        nsm.logsumexp_backward(x, lse[:2], g)


@pytest.mark.parametrize("missing", ["lse", "dlse"])
def test_backward_none_per_row_value(missing):
    x = np.zeros((3, 4))
    rows = {"lse": np.zeros(3), "dlse": np.ones(3), missing: None}
    with pytest.raises(TypeError, match=rf"logsumexp_backward\(\): {missing} must be "
                                        "array-like; got None"):
        nsm.logsumexp_backward(x, rows["lse"], rows["dlse"])


def test_backward_bad_shape():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="lse must have the reduced shape"):
        nsm.logsumexp_backward(x, np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match="dlse"):
        nsm.logsumexp_backward(x, np.zeros(3), np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------
# bad input: the parameter named, with what was expected and given

X = np.zeros((2, 3))
BAD = [
    ("x_complex", (X.astype(complex),), {}, TypeError, ["x", "complex128"]),
    ("x_string", (np.array(["a"]),), {}, TypeError, ["x"]),
    ("b_complex", (X,), {"b": X.astype(complex)}, TypeError, ["b", "complex128"]),
    ("b_not_broadcasting", (X,), {"b": np.ones(2)}, ValueError, ["b", "(2,)", "(2, 3)"]),
    ("b_bigger_than_x", (X,), {"b": np.ones((4, 2, 3))}, ValueError, ["b", "(4, 2, 3)"]),
    ("where_float", (X,), {"where": np.ones(3)}, TypeError, ["where", "float64"]),
    ("where_not_broadcasting", (X,), {"where": np.ones((3, 2), bool)}, ValueError,
     ["where", "(3, 2)", "(2, 3)"]),
    ("axis_out_of_range", (X,), {"axis": 2}, np.exceptions.AxisError, ["axis"]),
    ("axis_float", (X,), {"axis": 1.0}, TypeError, ["axis"]),
    ("dtype_int", (X,), {"dtype": int}, TypeError, ["dtype"]),
    ("out_tuple_without_sign", (X,), {"out": (np.empty(2), np.empty(2))}, TypeError, ["out"]),
    ("out_triple", (X,), {"return_sign": True, "out": (np.empty(2),) * 3}, ValueError,
     ["out"]),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_bad_input(case):
    _, args, kwargs, exc, words = case
    with pytest.raises(exc) as info:
        nsm.logsumexp(*args, **kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("masked_x", [True, False])
def test_gradient_takes_the_forward_calls_masked_results(masked_x):
    """logsumexp of a masked array returns masked arrays; they go back into its gradient
    (a fully masked row's lse is masked; a masked dlse counts as 0)."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((4, 6))
    hidden = rng.random((4, 6)) < 0.3
    hidden[2] = True  # a row without an included element
    x = np.ma.MaskedArray(data, mask=hidden)
    lse = nsm.logsumexp(x)
    assert isinstance(lse, np.ma.MaskedArray) and lse.mask.tolist() == [False, False, True,
                                                                         False]
    dlse = np.ma.MaskedArray(rng.standard_normal(4), mask=[False, True, False, False])
    got = nsm.logsumexp_backward(x if masked_x else data, lse, dlse,
                                where=None if masked_x else ~hidden)
    want = nsm.logsumexp_backward(data, lse.data, dlse.filled(0), where=~hidden)
    np.testing.assert_array_equal(np.ma.getdata(got), want)
    assert not want[1].any() and not want[2].any()


def test_gradient_of_plain_x_with_a_masked_lse_excludes_its_masked_rows():
    """A masked lse row had no included element: its gradient is 0, also when x comes
    without the mask (its lse data, -inf, would give exp(x + inf) = inf)."""
    data = np.arange(12.0).reshape(4, 3)
    hidden = np.zeros((4, 3), bool)
    hidden[1] = True
    lse = nsm.logsumexp(np.ma.MaskedArray(data, mask=hidden))
    got = nsm.logsumexp_backward(data, lse, np.ones(4))
    assert not got[1].any()
    rows = [0, 2, 3]
    np.testing.assert_array_equal(got[rows], nsm.logsumexp_backward(
        data[rows], lse.data[rows], np.ones(3)))
