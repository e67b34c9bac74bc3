"""Property-based tests of the GPU path (hypothesis): random shapes (0-d to 4-D, zero
sizes), axes (int, negative, tuples, None), layouts (transposed, stepped, negative
strides), dtypes, forced strategies, values mixing normal, huge, tiny, -inf, +inf and NaN;
``out`` sometimes a strided view in a poisoned buffer. Compared with the float64 reference.

50 examples per function by default, 20 for where= and dtype= (the simulator runs a Python
thread per CUDA thread);
``--fuzz-long`` or NUMBASOFTMAX_FUZZ_LONG=1 runs 100x more.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from gpu_helpers import FUNCS, assert_close, guarded, layout_strides, strided_view, to_host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbasoftmax as ns

pytestmark = pytest.mark.gpu

BASE_EXAMPLES = 50
WHERE_EXAMPLES = 20  # where= and dtype= per function: CI's time (200 each were run by hand)


def _examples(request, base=BASE_EXAMPLES):
    long = request.config.getoption("--fuzz-long", default=False) or \
        os.environ.get("NUMBASOFTMAX_FUZZ_LONG") == "1"
    factor = 100 if long else int(os.environ.get("NUMBASOFTMAX_FUZZ_MULTIPLIER", "1") or 1)
    return base * max(1, factor)


HUGE = {"float32": 3e38, "float64": 1e308, "float16": 6e4}
LARGE = {"float32": 1e15, "float64": 1e150, "float16": 100.0}
TINY = {"float32": 1e-30, "float64": 1e-300, "float16": 1e-6}


@st.composite
def shapes_axes(draw):
    nd = draw(st.integers(0, 4))
    shape = []
    total = 1
    for _ in range(nd):
        s = draw(st.sampled_from([0] + [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 33] * 3))
        if total * max(s, 1) > 160:
            s = 1
        shape.append(s)
        total *= max(s, 1)
    shape = tuple(shape)
    kind = draw(st.sampled_from(["default", "int", "tuple", "none"]))
    if kind == "default" or nd == 0:
        axis = -1 if nd else draw(st.sampled_from([-1, 0, None, ()]))
    elif kind == "int":
        axis = draw(st.integers(-nd, nd - 1))
    elif kind == "none":
        axis = None
    else:
        axs = draw(st.lists(st.integers(0, nd - 1), unique=True, max_size=nd))
        axis = tuple(a - nd if draw(st.booleans()) else a for a in axs)
    return shape, axis


@st.composite
def layouts(draw, nd):
    order = tuple(draw(st.permutations(range(nd)))) if nd else ()
    steps = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(nd))
    flip = tuple(draw(st.booleans()) and draw(st.booleans()) for _ in range(nd))
    extra = draw(st.sampled_from([0, 0, 1, 4]))
    return dict(order=order, steps=steps, flip=flip, row_extra=extra)


def _values(draw, shape, dtype, role):
    name = np.dtype(dtype).name
    size = int(np.prod(shape)) if shape else 1
    if np.dtype(dtype).kind in "biu":
        if np.dtype(dtype).kind == "b":
            return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)),
                            dtype=bool).reshape(shape)
        return np.array(draw(st.lists(st.integers(-5, 5), min_size=size, max_size=size)),
                        dtype=dtype).reshape(shape)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if role == "x":
        cats = ["normal"] * 6 + ["huge", "tiny", "-inf", "+inf", "nan"]
    elif role == "y":  # softmax output-like
        cats = ["unit"] * 6 + ["tiny", "nan", "+inf", "zero"]
    elif role == "z":  # log_softmax output-like
        cats = ["logp"] * 6 + ["-inf", "nan", "large-", "+inf"]
    else:  # incoming gradient
        cats = ["normal"] * 6 + ["large", "nan", "+inf", "-inf"]
    weights = draw(st.lists(st.integers(0, 3), min_size=len(cats), max_size=len(cats)))
    if sum(weights) == 0:
        weights[0] = 1
    p = np.array(weights, dtype=float) / sum(weights)
    pick = rng.choice(len(cats), size=size, p=p)
    normal = rng.standard_normal(size) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    table = {
        "normal": normal, "unit": rng.random(size), "logp": -np.abs(normal) * 3,
        "huge": np.sign(normal + 1e-9) * HUGE[name], "tiny": np.sign(normal) * TINY[name],
        "large": np.sign(normal) * LARGE[name], "large-": -LARGE[name] * np.ones(size),
        "-inf": -np.inf * np.ones(size), "+inf": np.inf * np.ones(size),
        "nan": np.nan * np.ones(size), "zero": np.zeros(size),
    }
    vals = np.empty(size)
    for k, c in enumerate(cats):
        sel = pick == k
        vals[sel] = table[c][sel]
    return vals.astype(dtype).reshape(shape)


# launch tunables a case runs under: the planner's choice, a strategy forced, or the rule of
# rows longer than a warp's for every row (two values of each input a thread: rows of 65
# elements or more take several warps)
TUNINGS = {"auto": {}, "rows": {"force": "rows"}, "warps": {"force": "rows", "reg_max": 1,
                                                             "row_values": 2},
           "smem": {"force": "smem"}, "long": {"force": "long"}, "split": {"force": "split"}}


def _tunables(data, names):
    return TUNINGS[data.draw(st.sampled_from(names))]


def _fuzz_once(func, data):
    from numbasoftmax._cuda import launch

    shape, axis = data.draw(shapes_axes())
    bwd = func in ("softmax_backward", "log_softmax_backward")
    dtype = data.draw(st.sampled_from(
        ["float32", "float64", "float16"] * 3 + (["int32", "bool"] if not bwd else ["int64"])))
    roles = ("x",) if not bwd else (("y", "g") if func == "softmax_backward" else ("z", "g"))
    host = [_values(data.draw, shape, dtype, r) for r in roles]
    views = []
    for h in host:
        lay = data.draw(layouts(len(shape)))
        v, _ = strided_view(h, layout_strides(h.shape, **lay), pad=data.draw(st.integers(0, 3)))
        views.append(v)
    res_dtype = np.float64 if np.dtype(dtype).kind in "biu" else np.dtype(dtype)
    out = check = None
    if data.draw(st.booleans()):
        lay = data.draw(layouts(len(shape)))
        out, check = guarded(shape, res_dtype, layout_strides(shape, **lay), pad=2)
    with launch.config.override(**_tunables(data, ["auto", "auto", *list(TUNINGS)[1:]])):
        r = getattr(ns, func)(*views, axis=axis, out=out)
    if out is not None:
        assert r is out
        check()
    got = to_host(r).astype(np.float64)
    assert got.shape == shape
    assert_close(func, got, [h.astype(np.float64) for h in host], axis,
                 np.dtype(res_dtype).name)


def _run(request, once, *args, base=BASE_EXAMPLES):
    """once(*args, data) for each example, from hypothesis's fixed seed."""
    @settings(max_examples=_examples(request, base), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def run(data):
        once(*args, data)

    run()


@pytest.mark.parametrize("func", FUNCS)
def test_fuzz(func, request):
    _run(request, _fuzz_once, func)


def _close_to_cpu(got, want, dtype_name, n):
    """GPU against the CPU path's logsumexp results: NaN and infinities where the CPU has
    them, finite values within the dtype's tolerance of a log-sum-exp over n elements."""
    from gpu_helpers import RTOL

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), (got, want)
    fin = np.isfinite(want)
    tol = 8 * RTOL[dtype_name] * (np.abs(want) + np.log(max(n, 1)) + 1)
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        assert np.all(np.abs(got - want)[fin] <= tol[fin]), (got, want)


def _fuzz_lse_once(data):
    from numbasoftmax._cuda import launch
    from numbasoftmax._layout import normalize_axes

    shape, axis = data.draw(shapes_axes())
    dtype = data.draw(st.sampled_from(["float32", "float64", "float16", "int32"]))
    x = _values(data.draw, shape, dtype, "x")
    res = "float64" if dtype == "int32" else dtype
    options = dict(keepdims=data.draw(st.booleans()), return_sign=data.draw(st.booleans()))
    if data.draw(st.booleans()):  # dtype=: computed as if x (and b) had been cast
        res = options["dtype"] = data.draw(st.sampled_from(["float16", "float32", "float64"]))
    host_b = host_w = None
    if data.draw(st.booleans()) and dtype != "int32":  # non-negative weights, zeros included
        bshape = shape[data.draw(st.integers(0, len(shape))):]
        host_b = np.abs(_values(data.draw, bshape, dtype, "y"))
    if data.draw(st.booleans()):
        host_w = _values(data.draw, shape, "bool", "x")
    dev = {}
    for name, h in (("x", x), ("b", host_b), ("where", host_w)):
        if h is not None:
            lay = data.draw(layouts(h.ndim))
            dev[name], _ = strided_view(h, layout_strides(h.shape, **lay))
    tuning = data.draw(st.sampled_from(["auto", "rows", "warps", "long", "split"]))
    with launch.config.override(**TUNINGS[tuning]):
        got = ns.logsumexp(dev["x"], axis=axis, b=dev.get("b"), where=dev.get("where"),
                           **options)
    with np.errstate(over="ignore"):  # a huge value cast to float16: inf on both paths
        want = ns.logsumexp(x, axis=axis, b=host_b, where=host_w, **options)
    got, want = (got, want) if options["return_sign"] else ((got,), (want,))
    axes = normalize_axes(axis, len(shape))
    n = int(np.prod([shape[a] for a in axes])) if shape else 1
    for g, w in zip(got, want, strict=True):
        _close_to_cpu(to_host(g), w, res, n)
    # the gradient, from the CPU's lse and a random upstream gradient
    with np.errstate(over="ignore"):
        lse = np.asarray(ns.logsumexp(x, axis=axis, b=host_b, where=host_w,
                                      dtype=options.get("dtype")))
    if not np.all(np.isfinite(lse)) or dtype == "int32":
        return
    dlse = np.random.default_rng(n).standard_normal(lse.shape).astype(res)
    lse = lse.astype(res)
    with launch.config.override(**TUNINGS["auto" if tuning == "split" else tuning]):
        grad = ns.logsumexp_backward(dev["x"], *(strided_view(v, layout_strides(v.shape))[0]
                                                 for v in (lse, dlse)),
                                     axis=axis, b=dev.get("b"), where=dev.get("where"),
                                     dtype=options.get("dtype"))
    want = ns.logsumexp_backward(x, lse, dlse, axis=axis, b=host_b, where=host_w,
                                 dtype=options.get("dtype"))
    _close_to_cpu(to_host(grad), want, res, 1)


def test_fuzz_logsumexp(request):
    """logsumexp and its gradient on the GPU path against the CPU path: random shapes,
    axes, layouts, weights, masks, signs, keepdims and non-finite values."""
    _run(request, _fuzz_lse_once)


EXCLUDED = {"softmax": 0.0, "log_softmax": -np.inf, "softmax_backward": 0.0,
            "log_softmax_backward": 0.0}


def _mask_shape(draw, shape):
    """x's shape, its trailing dims, or x's shape with some dims 1 (all broadcast)."""
    kind = draw(st.sampled_from(["full", "trailing", "ones"]))
    if kind == "trailing":
        return shape[draw(st.integers(0, len(shape))):]
    if kind == "ones":
        return tuple(1 if draw(st.booleans()) else s for s in shape)
    return shape


def _fuzz_features_once(func, data):
    from numbasoftmax._cuda import launch

    shape, axis = data.draw(shapes_axes())
    bwd = func in ("softmax_backward", "log_softmax_backward")
    dtype = data.draw(st.sampled_from(["float32", "float64", "float16", "int32"]))
    roles = ("x",) if not bwd else (("y", "g") if func == "softmax_backward" else ("z", "g"))
    host = [_values(data.draw, shape, dtype, r) for r in roles]
    views = [strided_view(h, layout_strides(h.shape, **data.draw(layouts(h.ndim))))[0]
             for h in host]
    host_w = None
    if data.draw(st.integers(0, 3)):  # a mask 3 times in 4
        host_w = _values(data.draw, _mask_shape(data.draw, shape), "bool", "x")
    result = data.draw(st.sampled_from([None, "float32", "float64", "float16"]))
    options = {} if result is None else {"dtype": result}
    if host_w is not None:
        options["where"] = strided_view(
            host_w, layout_strides(host_w.shape, **data.draw(layouts(host_w.ndim))))[0]
    with launch.config.override(**_tunables(data, list(TUNINGS))):
        r = getattr(ns, func)(*views, axis=axis, **options)
    name = result or ("float64" if dtype == "int32" else dtype)
    got = to_host(r)
    assert got.dtype == np.dtype(name) and got.shape == shape
    # as if cast first: the inputs rounded to the result's dtype, then in float64
    with np.errstate(over="ignore"):  # a huge float64 cast to float16 is inf, as on the GPU
        inputs = [h.astype(name).astype(np.float64) for h in host]
    assert_close(func, got.astype(np.float64), inputs, axis, name, where=host_w)
    if host_w is not None:
        excluded = ~np.broadcast_to(host_w, shape)
        assert np.all(got[excluded] == EXCLUDED[func]), (got, host_w)


@pytest.mark.parametrize("func", FUNCS)
def test_fuzz_where_and_dtype(func, request):
    """where= (masks of x's shape and broadcast ones, in any layout) and dtype= on the GPU
    path against the float64 reference of the masked call on the cast inputs; excluded
    elements exactly 0 (log_softmax: -inf)."""
    _run(request, _fuzz_features_once, func, base=WHERE_EXAMPLES)
