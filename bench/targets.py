#!/usr/bin/env python3
"""The project's performance targets, checked against a benchmark run's results.json.

    python -m numbasoftmax bench --out run1
    python bench/targets.py run1/results.json [--strict]

Prints one row per target with the worst measured value over the row lengths N (CPU: the
like-for-like cells, both sides writing into a preallocated out=; GPU: the plain call).
``--strict`` exits 1 when a target that was measured is not met. Targets need their cells
in the run: the "× torch" ones need torch installed; GPU targets need a GPU run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NamedTuple


class Target(NamedTuple):
    device: str
    op: str
    dtype: str
    # "vs:<peer>": our GB/s over the peer's; "time:<peer>": our time over the peer's
    # (lower is better: the threshold is a maximum); "pct": % of the copy bandwidth;
    # "latency:<peer>": the peer's µs per 8x128 call over ours; "f16": our float16
    # elements/s over our float32 elements/s, timed in the same rounds; "startup:cold" /
    # "startup:warm": seconds for import + first 8x128 + first 1000x1000 call (lower is
    # better: the threshold is a maximum)
    kind: str
    threshold: float
    text: str
    variant: str = "new"  # "out": both sides write into a preallocated out= (like-for-like)
    rows: str = "all"  # "short": N < 32 only; "long": N >= 32 only
    feature: str = ""  # the benchmark's feature cells (where=, dtype=): a key of FEATURES


# The CPU targets compare like-for-like (out= on both sides, the same threads, one run).
_FWD, _BWD = ("softmax", "log_softmax"), ("softmax_backward", "log_softmax_backward")
_MASKS = (("where-full", "a mask of x's shape"), ("where-row", "a (N,) mask"))
TARGETS = (
    *(Target("cpu", op, "float32", "vs:torch", 1.3, f"{op} ≥ 1.3× torch (out=), N ≥ 32",
             "out", "long") for op in _FWD),
    *(Target("cpu", op, "float32", "pct", 70.0, f"{op} ≥ 70 % of copy (out=), N ≥ 32",
             "out", "long") for op in _FWD),
    *(Target("cpu", op, "float32", "vs:torch", 1.1, f"{op} ≥ 1.1× torch (out=), N ≥ 32",
             "out", "long") for op in _BWD),
    *(Target("cpu", op, "float32", "pct", 90.0, f"{op} ≥ 90 % of copy (out=), N ≥ 32",
             "out", "long") for op in _BWD),
    *(Target("cpu", op, "float32", "pct", 40.0, f"{op}, N < 32: ≥ 40 % of copy (out=)",
             "out", "short") for op in _FWD + _BWD),
    *(Target("cpu", op, "float32", "vs:torch", 1.0, f"{op}, N < 32: never below torch (out=)",
             "out", "short") for op in _FWD + _BWD),
    Target("cpu", "softmax", "float16", "vs:torch", 1.0, "float16 softmax no slower than torch "
           "(out=)", "out"),
    Target("cpu", "softmax", "float64", "vs:torch", 1.0, "float64 softmax no slower than torch "
           "(out=)", "out"),
    Target("cpu", "softmax", "float32", "latency:torch", 1 / 1.2,
           "8×128 softmax call within 1.2× of torch's time"),
    *(Target("cpu", op, "float32", "startup:cold", 3.0,
             f"{op}: import + first calls ≤ 3 s, empty numba cache") for op in _FWD + _BWD),
    *(Target("cpu", op, "float32", "startup:warm", 0.3,
             f"{op}: import + first calls ≤ 0.3 s, warm cache") for op in _FWD + _BWD),
    # masked calls, logsumexp
    *(Target("cpu", op, "float32", "time:unmasked", 1.2,
             f"masked {op} ({what}) ≤ 1.2× the unmasked call's time (out=)", "out",
             feature=feature) for op in _FWD + _BWD for feature, what in _MASKS),
    *(Target("cpu", op, "float32", "vs:np.where+numbasoftmax", 1.5,
             f"masked {op} ({what}) ≥ 1.5× np.where + our unmasked call (out=)", "out",
             feature=feature) for op in _FWD for feature, what in _MASKS),
    Target("cpu", "logsumexp", "float32", "vs:scipy", 5.0,
           "logsumexp ≥ 5× scipy.special.logsumexp (plain calls: scipy has no out=)"),
    Target("cpu", "logsumexp", "float32", "vs:torch", 1.3, "logsumexp ≥ 1.3× torch.logsumexp "
           "(out=)", "out"),
    Target("gpu", "softmax", "float32", "pct", 90.0, "softmax forward ≥ 90 % of copy at every N"),
    Target("gpu", "softmax_backward", "float32", "pct", 85.0, "softmax backward ≥ 85 % of copy"),
    Target("gpu", "log_softmax", "float32", "pct", 90.0, "log_softmax forward ≥ 90 % of copy"),
    Target("gpu", "softmax", "float16", "pct", 80.0, "float16 forward ≥ 80 % of copy"),
    Target("gpu", "softmax_backward", "float16", "pct", 80.0, "float16 backward ≥ 80 % of copy"),
    Target("gpu", "softmax", "float32", "vs:torch", 1.0, "softmax forward never slower than torch"),
    Target("gpu", "softmax_backward", "float32", "vs:torch", 1.0,
           "softmax backward never slower than torch"),
)

OURS = "numbasoftmax"


def _startup(target, data):
    which = target.kind.split(":")[1]
    rec = data.get("startup", {}).get(target.op)
    if not rec:
        return []
    # lower is better: report threshold / value so that "worst >= 1" means met
    return [(rec[which]["total"], "start-up")]


def _values(target, data):
    """[(value, where)] measured for ``target`` in results.json ``data``."""
    if target.kind.startswith("startup:"):
        return _startup(target, data)
    if target.kind.startswith("latency:"):
        peer = target.kind.split(":")[1]
        recs = {r["impl"]: r for r in data["latency"]
                if (r["device"], r["op"]) == (target.device, target.op)}
        mine, theirs = recs.get(OURS), recs.get(peer)
        if mine and theirs and mine["us_per_call"] and theirs["us_per_call"]:
            return [(theirs["us_per_call"] / mine["us_per_call"], "8×128")]
        return []
    cells = {}
    for r in data["results"]:
        if _of(target, r) and r["gbps"]:
            if target.rows == "short" and r["n"] >= 32 or target.rows == "long" and r["n"] < 32:
                continue
            cells.setdefault(r["n"], {})[r["impl"]] = r
    out = []
    for n, recs in sorted(cells.items()):
        mine = recs.get(OURS)
        if mine is None:
            continue
        if target.kind == "pct" and mine["pct_copy"] is not None:
            out.append((mine["pct_copy"], n))
        elif target.kind.startswith("vs:") and target.kind[3:] in recs:
            out.append((mine["gbps"] / recs[target.kind[3:]]["gbps"], n))
        elif target.kind.startswith("time:") and target.kind[5:] in recs:
            out.append((mine["seconds"] / recs[target.kind[5:]]["seconds"], n))
        elif target.kind == "f16" and mine["f32_seconds"]:
            out.append((mine["f32_seconds"] / mine["seconds"], n))
    return out


def _of(target, r):
    """Whether results.json record ``r`` is a cell of ``target``'s table."""
    return (r["device"], r["op"], r["dtype"], r["variant"], r.get("feature", "")) == (
        target.device, target.op, target.dtype, target.variant, target.feature)


def _copy_at(target, data, n):
    """The copy timed beside our cell of ``target`` at N = n (GB/s), or None (runs before
    the benchmark timed one)."""
    return next((r.get("copy_gbps") for r in data["results"]
                 if _of(target, r) and (r["n"], r["impl"]) == (n, OURS)), None)


def evaluate(data, targets=TARGETS):
    """One dict per target measured in ``data``: the worst value, where, and whether it
    meets the threshold."""
    out = []
    for t in targets:
        values = _values(t, data)
        if not values:
            continue
        if t.kind.startswith(("startup:", "time:")):  # lower is better
            worst, at = max(values, key=lambda v: v[0])
            text = f"{worst:.2f} s" if t.kind.startswith("startup:") else (
                f"{worst:.2f}× at N = {at}")
            out.append({"device": t.device, "target": t.text, "threshold": t.threshold,
                        "worst": worst, "at": at, "met": worst <= t.threshold,
                        "text": text})
            continue
        worst, at = min(values, key=lambda v: v[0])
        unit = " %" if t.kind == "pct" else "×"
        where = "8×128 (torch µs / ours µs)" if at == "8×128" else f"N = {at}"
        copy = _copy_at(t, data, at) if t.kind == "pct" else None
        if copy:
            where += f" (copy {copy:.1f} GB/s, same rounds)"
        out.append({"device": t.device, "target": t.text, "threshold": t.threshold,
                    "worst": worst, "at": at, "met": worst >= t.threshold,
                    "text": f"{worst:.2f}{unit} at {where}"})
    return out


def markdown(rows):
    lines = ["| device | target | worst measured | status |", "|---|---|---|---|"]
    lines += [f"| {r['device'].upper()} | {r['target']} | {r['text']} | "
              f"{'met' if r['met'] else 'NOT met'} |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="numbasoftmax-bench/results.json",
                    help="a results.json written by python -m numbasoftmax bench")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    args = ap.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        rows = evaluate(json.load(f))
    if not rows:
        print("no target was measured in this run")
        return 0
    print(markdown(rows))
    return 1 if args.strict and not all(r["met"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
