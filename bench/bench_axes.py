"""Every axis: a softmax along a strided axis against the same rows along the last axis,
and against torch along the same axis.

    python bench/bench_axes.py [--cases 8192x2048:0,64x512x512:1] [--ops all]
                               [--trials 8] [--calls 7] [--threads N]

For each case (shape and axis, float32) and operation, every trial allocates new arrays:
the inputs laid out as given (the softmax axis strided), the same rows copied to the last
axis (contiguous rows), and an output for each (written once before timing, so no page
fault is timed). Within a trial the three calls take turns, ``--calls`` times each, and a
trial keeps each call's fastest time:
- ours along the axis (``out=``),
- ours on the same rows along the last axis (``out=``),
- torch along the axis, reading the same arrays (``torch.from_numpy``) and writing into a
  preallocated ``out`` (the ``_softmax(..., out=)`` / ``_backward_data.out`` overloads).

Why fresh arrays per trial and medians over trials: on a shared VM where an array lands in
memory moves a memory-bound call's time by 20 % or more, and one allocation is one sample
of that; the ratios of calls that read the same arrays in turns hold steadier than either
time. Each trial also checks the promise that makes the comparison fair: the result along
the axis, moved to the last axis, has the same bits as the contiguous rows' result.

GB/s counts the bytes an ideal kernel moves: forward 2 arrays (read x, write y), backward 3
(read y or z and the upstream gradient, write the gradient). Prints a Markdown table with
the machine facts; the issue's targets are ≥ 60 % of the last-axis speed and ≥ 2× torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numbasoftmax as ns  # noqa: E402
from numbasoftmax import registry  # noqa: E402
from numbasoftmax._bench.environment import cpu_model, version  # noqa: E402
from numbasoftmax._bench.timing import mapped  # noqa: E402

OPS = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
DEFAULT_CASES = "8192x2048:0,64x512x512:1"
TARGET_LAST_AXIS = 0.60
TARGET_TORCH = 2.0


@dataclass(frozen=True)
class Case:
    shape: tuple
    axis: int

    @classmethod
    def parse(cls, text):
        dims, _, axis = text.partition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
            axis = int(axis)
        except ValueError:
            raise SystemExit(f"--cases: expected entries like 8192x2048:0, got {text!r}") from None
        if not -len(shape) <= axis < len(shape):
            raise SystemExit(f"--cases: axis {axis} is out of range for shape {shape}")
        return cls(shape, axis % len(shape))

    def label(self):
        return f"{self.shape} axis {self.axis}"


@dataclass
class Trial:
    axis_s: float
    last_s: float
    torch_s: float | None
    same_bits: bool


def inputs(op, case, rng):
    """The operation's numpy inputs along the case's axis, freshly allocated."""
    x = rng.standard_normal(case.shape, dtype=np.float32)
    if op in ("softmax", "log_softmax"):
        return (x,)
    forward = ns.softmax if op == "softmax_backward" else ns.log_softmax
    return forward(x, axis=case.axis), rng.standard_normal(case.shape, dtype=np.float32)


def fastest(calls, count):
    """Each callable's fastest time over ``count`` rounds, the callables taking turns."""
    best = [float("inf")] * len(calls)
    for f in calls:
        f()  # not timed: the first call may compile or fault in
    for _ in range(count):
        for i, f in enumerate(calls):
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def trial(op, case, rng, calls, torch_impl):
    ours = registry.implementations(op, "cpu", "numbasoftmax")[0]
    given = inputs(op, case, rng)
    last = tuple(np.ascontiguousarray(np.moveaxis(a, case.axis, -1)) for a in given)
    out, out_last = mapped(case.shape, np.float32), mapped(last[0].shape, np.float32)
    runs = [lambda: ours.call_out(*given, axis=case.axis, out=out),
            lambda: ours.call_out(*last, axis=-1, out=out_last)]
    if torch_impl is not None:
        native = torch_impl.prepare(*given)
        tout = torch_impl.prepare(mapped(case.shape, np.float32))[0]
        runs.append(lambda: torch_impl.call_out(*native, axis=case.axis, out=tout))
    times = fastest(runs, calls)
    moved = np.ascontiguousarray(np.moveaxis(out, case.axis, -1))
    same = moved.view(np.uint32).tobytes() == out_last.view(np.uint32).tobytes()
    return Trial(times[0], times[1], times[2] if torch_impl is not None else None, same)


def spread(values, fmt):
    values = sorted(values)
    med = statistics.median(values)
    return f"{fmt.format(med)} ({fmt.format(values[0])}–{fmt.format(values[-1])})"


def row(op, case, trials):
    nbytes = int(np.prod(case.shape)) * 4 * (2 if op in ("softmax", "log_softmax") else 3)
    axis_ms = statistics.median(t.axis_s for t in trials) * 1e3
    last_ms = statistics.median(t.last_s for t in trials) * 1e3
    of_last = [t.last_s / t.axis_s for t in trials]
    cells = [case.label(), op, f"{axis_ms:.2f} ({nbytes / axis_ms / 1e6:.1f})",
             f"{last_ms:.2f}", spread([100 * r for r in of_last], "{:.0f} %")]
    met = statistics.median(of_last) >= TARGET_LAST_AXIS
    if trials[0].torch_s is not None:
        vs_torch = [t.torch_s / t.axis_s for t in trials]
        cells += [f"{statistics.median(t.torch_s for t in trials) * 1e3:.2f}",
                  spread(vs_torch, "{:.2f}×")]
        met = met and statistics.median(vs_torch) >= TARGET_TORCH
    else:
        cells += ["–", "–"]
    bits = "same" if all(t.same_bits for t in trials) else "DIFFER"
    cells += [bits, "met" if met else "not met"]
    return "| " + " | ".join(cells) + " |", bits == "same"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES,
                        help=f"comma list of SHAPE:AXIS, e.g. {DEFAULT_CASES} (the default)")
    parser.add_argument("--ops", default="all",
                        help="comma list of " + ", ".join(OPS) + ", or all (the default)")
    parser.add_argument("--trials", type=int, default=8,
                        help="fresh allocations per cell (default 8)")
    parser.add_argument("--calls", type=int, default=7,
                        help="timed calls of each form per trial (default 7)")
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS,
                        help="threads for numbasoftmax and torch (default: numba's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ops = OPS if args.ops == "all" else tuple(args.ops.split(","))
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        raise SystemExit(f"--ops: expected names from {', '.join(OPS)}, got {unknown}")
    if args.trials < 1 or args.calls < 1:
        raise SystemExit("--trials and --calls: expected at least 1")
    cases = [Case.parse(c) for c in args.cases.split(",")]

    numba.set_num_threads(args.threads)
    torch_impls = {op: registry.implementations(op, "cpu", "torch") for op in ops}
    if any(torch_impls.values()):
        import torch

        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    print(f"- CPU: {cpu_model()}; {args.threads} threads for numbasoftmax and torch")
    print(f"- numba {numba.__version__}, numpy {np.__version__}, torch "
          f"{version('torch') or 'not installed'}; float32, out= on every side")
    print(f"- per cell: {args.trials} trials of fresh arrays, in each the fastest of "
          f"{args.calls} calls per form, the forms taking turns; median (range) over trials")
    print()
    print("| shape, axis | op | ours along the axis: ms (GB/s) | same rows, last axis: ms "
          "| % of last-axis speed | torch along the axis: ms | × torch | bits | targets |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    all_same = True
    for case in cases:
        for op in ops:
            impls = torch_impls[op]
            trials = [trial(op, case, rng, args.calls, impls[0] if impls else None)
                      for _ in range(args.trials)]
            line, same = row(op, case, trials)
            all_same = all_same and same
            print(line, flush=True)
    print()
    print(f"targets: ≥ {TARGET_LAST_AXIS:.0%} of the last-axis speed and ≥ {TARGET_TORCH:g}× "
          "torch (medians over trials); bits: the result along the axis, moved to the last "
          "axis, against the contiguous rows' result")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
