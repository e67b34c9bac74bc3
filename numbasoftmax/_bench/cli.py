"""Command line: ``python -m numbasoftmax bench [options]`` and ``... warmup``.

``bench`` runs the benchmark sweep on the available devices, prints a Markdown report and
writes report.md, results.json and bench.png into ``--out`` (default ./numbasoftmax-bench/).
``warmup`` compiles every CPU kernel into numba's disk cache (see ``numbasoftmax._warmup``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import (
    DTYPES,
    FEATURE_OPS,
    FEATURE_SIZES,
    OP_GROUPS,
    OPS,
    Config,
    parse_size,
    parse_sizes,
)

OPS_HELP = ("fwd = softmax forward; bwd = softmax backward; log = log_softmax forward and "
            "backward; lse = logsumexp and its gradient; all = the six (default). Also a "
            "comma list of operation names (softmax, log_softmax, softmax_backward, "
            "log_softmax_backward, logsumexp, logsumexp_backward).")


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m numbasoftmax",
        description="numbasoftmax: softmax, log_softmax and their gradients in Numba.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench", help="benchmark against torch, scipy and cupyx; write a report and a plot",
        description="Benchmark numbasoftmax against the peers installed here (torch, "
                    "scipy.special, cupyx) on the available devices. Reports GB/s (forward: "
                    "read X + write Y; backward: read Y, dY + write dX), % of the same run's "
                    "copy bandwidth and the ratio against each peer; prints a Markdown table "
                    "and writes report.md, results.json and bench.png into --out.")
    bench.add_argument("--device", choices=("cpu", "gpu", "all"), default="all",
                       help="cpu, gpu, or all available (default). 'gpu' fails if there is "
                            "no usable GPU; 'all' skips it with a note.")
    bench.add_argument("--op", default="all", help=OPS_HELP)
    bench.add_argument("--dtype", default="auto",
                       help="comma list of float32, float16, float64; default auto: float32 "
                            "for every op plus float16 for softmax forward (CPU) and softmax "
                            "forward and backward (GPU); --quick: float32 only")
    bench.add_argument("--sizes", default=None,
                       help="comma list of row lengths N, e.g. 32,128,1k,2^18 (default: "
                            "CPU 3, 10, 32, 128, 1024, 4096, 16384, 262144; GPU 32, 128, 512, "
                            "1000, 1024, 2048, 4096, 8192, 12288, 16384, 32768, 65536, 262144; "
                            "--quick: 128, 4096, 65536)")
    bench.add_argument("--elements", default=None,
                       help="M·N per array, e.g. 2^24 (default CPU 2^24, GPU 2^26; --quick: "
                            "CPU 2^22, GPU 2^24)")
    bench.add_argument("--quick", action="store_true",
                       help="a short run (~20 s with compiled kernels cached): fewer and "
                            "smaller sizes, float32, fewer repeats")
    bench.add_argument("--prealloc", choices=("auto", "none", "all"), default="auto",
                       help="also time calls with a preallocated out= (auto: CPU softmax "
                            "forward float32 on full runs; all: every cell; none)")
    bench.add_argument("--pool", choices=("auto", "none", "all"), default="auto",
                       help="also time plain calls with numbasoftmax's result pool on "
                            "(numbasoftmax.result_pool; auto: CPU float32 on full runs; all: "
                            "every CPU cell; none)")
    bench.add_argument("--features", choices=("auto", "none", "all"), default="auto",
                       help="also time masked calls (where=: a mask of x's shape and a (N,) "
                            "mask) and dtype= calls (float16 in, float32 out), out= on both "
                            "sides, against the unmasked call, their two-pass peers and "
                            f"torch (auto: {', '.join(FEATURE_OPS)} at N = "
                            f"{', '.join(map(str, FEATURE_SIZES))} on full CPU runs; all: "
                            "every operation that takes them (the gradients: where=), at "
                            "every size, also with --quick; none)")
    bench.add_argument("--no-latency", action="store_true",
                       help="leave out the 8x128 per-call latency rows")
    bench.add_argument("--repeats", type=int, default=None,
                       help="most timed rounds per cell (default 11; --quick 7)")
    bench.add_argument("--threads", type=int, default=None,
                       help="threads for numbasoftmax (numba) and torch (default: theirs, "
                            "all cores); e.g. 1 for per-core figures on a shared machine")
    bench.add_argument("--out", default="numbasoftmax-bench",
                       help="output folder (default ./numbasoftmax-bench/)")
    bench.add_argument("--no-plot", action="store_true", help="do not write bench.png")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--no-startup", action="store_true",
                       help="leave out the start-up measurement (full runs time, per op, a "
                            "fresh process's import and first calls with an empty numba "
                            "cache and with a warm one)")
    warm = sub.add_parser(
        "warmup", help="compile every CPU kernel into numba's disk cache",
        description="Compile (or load) every CPU kernel, for every operation, dtype and "
                    "driver, into numba's disk cache, so that later processes start without "
                    "compiling: for container images and CI jobs. Honours NUMBA_CACHE_DIR "
                    "and NUMBASOFTMAX_CACHE.")
    warm.add_argument("--no-progress", action="store_true", help="no progress bar")
    warm.add_argument("--features", action="store_true",
                      help="also the kernels of where= masks, dtype= (each wider float "
                           "type) and logsumexp's b= and return_sign, each option alone "
                           "(about four times the calls)")
    parser.commands = {"bench": bench, "warmup": warm}
    return parser


def _ops(text):
    ops = []
    for part in text.replace(" ", "").split(","):
        if part in OP_GROUPS:
            ops += OP_GROUPS[part]
        elif part in OPS:
            ops.append(part)
        else:
            raise ValueError(f"--op: unknown operation {part!r}; expected fwd, bwd, log, lse, all "
                             f"or one of {', '.join(OPS)}")
    return tuple(dict.fromkeys(op for op in OPS if op in ops))


def _dtypes(text):
    if text == "auto":
        return None
    out = []
    for part in text.replace(" ", "").split(","):
        if part not in DTYPES:
            raise ValueError(f"--dtype: unknown dtype {part!r}; expected "
                             f"{', '.join(DTYPES)} or auto")
        out.append(part)
    return tuple(dict.fromkeys(out))


def config_from_args(args):
    elements = None
    if args.elements:
        elements = parse_size(args.elements.strip(), "--elements")
    quick = args.quick
    return Config(
        devices=("cpu", "gpu") if args.device == "all" else (args.device,),
        ops=_ops(args.op),
        dtypes=_dtypes(args.dtype),
        sizes=parse_sizes(args.sizes, "--sizes") if args.sizes else None,
        elements=elements,
        quick=quick,
        prealloc=args.prealloc,
        pool=args.pool,
        latency=not args.no_latency,
        repeats=args.repeats or (7 if quick else 11),
        min_repeats=3,
        cell_seconds=0.12 if quick else 0.5,
        sweep_seconds=15.0 if quick else 150.0,
        out=Path(args.out),
        progress=not args.no_progress,
        plot=not args.no_plot,
        device_required=args.device == "gpu",
        threads=args.threads,
        startup=not args.no_startup,
        features=args.features,
    )


def bench(args):
    from .report import write_outputs
    from .sweep import run

    try:
        config = config_from_args(args)
        for option, value in (("--threads", args.threads), ("--repeats", args.repeats)):
            if value is not None and value < 1:
                raise ValueError(f"{option} must be at least 1; got {value}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        report = run(config)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text, messages = write_outputs(report, config.out, plot=config.plot)
    print(text)
    for message in messages:
        print(f"note: {message}", file=sys.stderr)
    files = ["report.md", "results.json"] + (["bench.png"] if "bench.png" in text else [])
    print(f"Wrote {', '.join(str(config.out / f) for f in files)} "
          f"({time.perf_counter() - t0:.1f} s).", file=sys.stderr)
    return 0


def main(argv=None):
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them with the top-level usage, not the command's
        parser.commands.get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "bench":
        return bench(args)
    if args.command == "warmup":
        from .._warmup import warmup

        count, seconds = warmup(progress=not args.no_progress, features=args.features)
        print(f"numbasoftmax: {count} kernel calls compiled or loaded in {seconds:.1f} s.",
              file=sys.stderr)
        return 0
    parser.print_help()
    return 0
