"""Every available CPU implementation in numbasoftmax.registry (the one list the tests and
the benchmarks share) agrees with the float64 reference for its operation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _helpers import OPS, assert_matches_reference, inputs_for

from numbasoftmax import registry
from numbasoftmax._bench.config import FEATURES

CPU_IMPLS = [i for i in registry.implementations(device="cpu") if i.op in OPS]
LSE_IMPLS = [i for i in registry.implementations(device="cpu") if i.op not in OPS]


def _impl_id(impl):
    return f"{impl.key}-{impl.op}"


def _run(impl, inputs, axis):
    native = impl.prepare(*inputs)
    got = impl.call(*native, axis)
    impl.sync()
    return np.asarray(impl.to_numpy(got))


def test_registry_lists_ours_and_the_oracle_for_every_op():
    for op in OPS:
        names = {i.name for i in registry.implementations(op=op, device="cpu")}
        assert {"numbasoftmax", "reference"} <= names, (op, names)
    assert {i.op for i in registry.IMPLEMENTATIONS} == set(registry.OPS)
    assert set(OPS) < set(registry.OPS)
    keys = [(i.key, i.op, i.form) for i in registry.IMPLEMENTATIONS]
    assert len(keys) == len(set(keys))


def test_unavailable_entries_are_filtered():
    every = registry.implementations(available_only=False)
    available = registry.implementations()
    assert set(map(_impl_id, available)) <= set(map(_impl_id, every))
    assert all(i.available() for i in available)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", CPU_IMPLS, ids=_impl_id)
def test_impl_matches_reference_int_axis(impl, dtype):
    rng = np.random.default_rng(11)
    for axis in (-1, 0):
        inputs = inputs_for(impl.op, rng, (6, 9), dtype, axis=axis)
        got = _run(impl, inputs, axis)
        assert_matches_reference(impl.op, got.astype(np.dtype(dtype), copy=False), inputs,
                                 axis=axis)


@pytest.mark.parametrize("impl", [i for i in CPU_IMPLS if not i.int_axis_only], ids=_impl_id)
def test_impl_matches_reference_axis_tuple(impl):
    rng = np.random.default_rng(12)
    axis = (0, 2)
    inputs = inputs_for(impl.op, rng, (3, 4, 5), np.float64, axis=axis)
    assert_matches_reference(impl.op, _run(impl, inputs, axis), inputs, axis=axis)


@pytest.mark.parametrize("impl", [i for i in CPU_IMPLS if getattr(i, "call_out", None)],
                         ids=_impl_id)
def test_impl_call_out_writes_out(impl):
    rng = np.random.default_rng(13)
    inputs = inputs_for(impl.op, rng, (5, 8), np.float32)
    native = impl.prepare(*inputs)
    (out,) = impl.prepare(np.zeros((5, 8), np.float32))
    got = impl.call_out(*native, axis=-1, out=out)
    impl.sync()
    assert got is out
    assert_matches_reference(impl.op, np.asarray(impl.to_numpy(out)), inputs)


def test_forms_are_opt_in():
    """The where= and dtype= entries take other inputs: only a caller asking for their
    form gets them."""
    assert {i.form for i in registry.implementations(available_only=False)} == {"plain"}
    for form in ("where", "dtype"):
        entries = registry.implementations(form=form, available_only=False)
        assert {i.op for i in entries} == set(registry.FORM_OPS[form])
        assert all(i.call_out is not None for i in entries)
        assert sorted((i.op, i.device) for i in entries if i.role == "ours") == sorted(
            (op, d) for op in registry.FORM_OPS[form] for d in ("cpu", "gpu"))
        assert {i.name for i in entries if i.role == "ours"} == {"numbasoftmax"}
    assert {i.form for i in registry.implementations(form=None)} == set(registry.FORMS)


FEATURE_CASES = [pytest.param(impl, name, id=f"{_impl_id(impl)}-{name}")
                 for name, feature in FEATURES.items()
                 for impl in registry.implementations(device="cpu", form=feature.form)]


@pytest.mark.parametrize(("impl", "feature"), FEATURE_CASES)
def test_feature_impls_match_reference(impl, feature):
    """Each where= / dtype= entry (ours, the unmasked baseline, the two-pass peers,
    torch) gives the reference's result with the feature's argument, plain and out=, the
    out= buffer poisoned with NaN; the baseline gives the unmasked result."""
    from numbasoftmax._bench import checks

    spec = FEATURES[feature]
    for variant in ("new", "out"):
        checks.check_impl(impl, impl.op, spec.dtype, variant, shapes=((6, 9), (3, 100)),
                          feature=spec)


def test_feature_check_rejects_the_unmasked_result():
    """The feature check can fail: the plain call's result is not the masked one."""
    from numbasoftmax._bench import checks

    (plain,) = registry.implementations(op="softmax", device="cpu", name="numbasoftmax")
    wrong = dataclasses.replace(plain, call=lambda x, mask, axis: plain.call(x, axis),
                                form="where")
    with pytest.raises(AssertionError, match="max abs error"):
        checks.check_impl(wrong, "softmax", "float32", "new", shapes=((6, 9),),
                          feature=FEATURES["where-full"])


@pytest.mark.parametrize("impl", LSE_IMPLS, ids=_impl_id)
def test_logsumexp_impls_match_reference(impl):
    """logsumexp and its gradient (ours, torch's, scipy's) against the reference, with the
    benchmark's own check (and its out= form, where the entry has one)."""
    from numbasoftmax._bench import checks

    checks.check_impl(impl, impl.op, "float64", "new", shapes=((6, 9), (3, 100)))
    if impl.call_out is not None:
        checks.check_impl(impl, impl.op, "float64", "out", shapes=((6, 9),))
