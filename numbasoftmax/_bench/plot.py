"""The plot: GB/s over the row length, one panel per device and operation, the copy
bandwidth as a roofline (timed beside each cell where the run did; matplotlib, from the
``bench`` extra; skipped without it)."""

from __future__ import annotations

import math

from .._ops import OPS
from .config import BUSY_WARNING


def short(n):
    """Axis label of a row length: 1k, 256k, 1M."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}k"
    return str(n)


def pow2(n):
    """2^k for powers of two."""
    if n and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def write_plot(report, path):
    """GB/s over N (log2), one line per implementation (float16 dashed), the copy
    bandwidth as a roofline; the calls with a preallocated ``out=`` when the run timed
    them, else the plain calls. Returns the path, or None with a reason if matplotlib is
    missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None, ("matplotlib is not installed: no plot written "
                      "(pip install 'numbasoftmax[bench]' or matplotlib)")
    # like-for-like first: the preallocated out= calls where the run timed them
    variant = "out" if any(r.variant == "out" for r in report.results) else "new"
    plain = [r for r in report.results if not r.feature]
    panels = list(dict.fromkeys((r.device, r.op) for r in plain if r.variant == variant))
    if not panels:
        return None, "nothing to plot"
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    colors = {"numbasoftmax": "C0", "torch": "C3", "scipy": "C2", "cupyx": "C4"}
    for ax, (device, op) in zip(axes.flat, panels, strict=False):
        lines = {}
        for r in plain:
            if (r.device, r.op, r.variant) == (device, op, variant) and r.gbps:
                lines.setdefault((r.impl, r.dtype), []).append((r.n, r.gbps))
        for (impl, dtype), pts in lines.items():
            pts.sort()
            style = {"float32": "-", "float16": "--", "float64": ":"}[dtype]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=4,
                    color=colors.get(impl), label=f"{impl} {dtype}")
        copy = report.copy.get(device)
        what = "copy, all threads" if device == "cpu" else "device-to-device copy"
        # the copy timed in each cell's rounds (float32 cells), else the start's line
        same = sorted({r.n: r.copy_gbps for r in plain if (r.device, r.op, r.variant, r.dtype)
                       == (device, op, variant, "float32") and r.copy_gbps}.items())
        if same:
            ax.plot([p[0] for p in same], [p[1] for p in same], "-.", color="k", lw=1.2,
                    label=f"{what}, same rounds")
        elif copy:
            ax.axhline(copy["gbps"], color="k", lw=1.2, ls="-.",
                       label=f"{what} {copy['gbps']:.0f} GB/s")
        if copy and device == "cpu" and copy["start"]["numpy"] < copy["gbps"] * 0.95:
            ax.axhline(copy["start"]["numpy"], color="0.5", lw=1, ls=":",
                       label=f"numpy copy (1 thread) {copy['start']['numpy']:.0f} GB/s")
        ax.set_xscale("log", base=2)
        sizes = sorted({r.n for r in report.results if (r.device, r.op) == (device, op)})
        ax.set_xticks(sizes, [short(n) for n in sizes], fontsize=8)
        ax.minorticks_off()
        elements = report.plans.get(device, {}).get("elements")
        ax.set_xlabel(f"row length N (M·N = {pow2(elements)})")
        ax.set_ylabel("GB/s (bytes an ideal kernel moves)")
        ax.set_ylim(bottom=0)
        calls = "out= on both sides" if variant == "out" else "result allocated per call"
        ax.set_title(f"{device.upper()} · {OPS[op].title} · {calls}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    env = report.env
    sub = env["cpu"] if not env["gpu"] else f"{env['cpu']} / {env['gpu']}"
    title = f"numbasoftmax {env['versions']['numbasoftmax']} — {sub}"
    busy = report.load.get("others_pct_of_machine")
    if busy is not None and busy > BUSY_WARNING:
        title += f" — other processes used {busy:.0f} % of the CPUs: noisy run"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, None
