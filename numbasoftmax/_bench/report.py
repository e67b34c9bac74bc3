"""The report: Markdown tables (GB/s, % of copy, ratios against each peer, per-call
latency), the header naming the machine and the method, and the files a run writes
(report.md, results.json, bench.png)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._ops import OPS
from .config import BUSY_WARNING, FEATURES, LATENCY_ROUNDS, NOISY, VARIANTS
from .plot import pow2, write_plot


def _fmt(value, digits=None):
    if value is None:
        return "–"
    if digits is None:
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:.{digits}f}"


def _size_label(n):
    for exp in range(31):
        if n == 1 << exp and exp >= 10:
            return f"{n} (2^{exp})"
    return str(n)


def _lookup(report):
    table = {}
    for r in report.results:
        table[(r.device, r.op, r.dtype, r.variant, r.feature, r.n, r.impl)] = r
    return table


def _status_cell(rec):
    if rec is None:
        return "–"
    if rec.status.startswith("skipped"):
        return "skip"
    if rec.status != "ok":
        return "error"
    noisy = rec.spread is not None and rec.spread > NOISY
    return _fmt(rec.gbps) + ("~" if noisy else "")


def throughput_tables(report):
    """[(title, header, rows)] — one table per device, op, dtype, variant and feature."""
    look = _lookup(report)
    keys = []
    for r in report.results:
        k = (r.device, r.op, r.dtype, r.variant, r.feature)
        if k not in keys:
            keys.append(k)
    tables = []
    for device, op, dtype, variant, feature in keys:
        recs = [r for r in report.results if (r.device, r.op, r.dtype, r.variant, r.feature)
                == (device, op, dtype, variant, feature)]
        names = list(dict.fromkeys(r.impl for r in recs))
        ours = "numbasoftmax" if "numbasoftmax" in names else None
        peers = [n for n in names if n != ours]
        sizes = list(dict.fromkeys(r.n for r in recs))
        m_of = {r.n: r.m for r in recs}
        f32 = ours and dtype != "float32" and any(
            r.f32_seconds for r in recs if r.impl == ours)
        header = ["N", "M"]
        copies = any(r.copy_gbps for r in recs)
        if copies:
            header.append("copy GB/s")
        for name in names:
            header += [f"{name} GB/s", "% copy"]
        if dtype != "float32" and ours and not feature:
            header += ["Gelem/s"]
            if f32:
                header += ["elem/s vs our f32 (same rounds)"]
        header += [f"× {p}" for p in peers] if ours else []
        rows = []
        for n in sizes:
            row = [_size_label(n), str(m_of[n])]
            if copies:
                row.append(_fmt(next((r.copy_gbps for r in recs if r.n == n and r.copy_gbps),
                                     None)))
            for name in names:
                rec = look.get((device, op, dtype, variant, feature, n, name))
                row += [_status_cell(rec),
                        _fmt(rec.pct_copy, 0) if rec is not None and rec.gbps else "–"]
            if dtype != "float32" and ours and not feature:
                rec = look.get((device, op, dtype, variant, feature, n, ours))
                eps = rec.elements_per_s if rec is not None else None
                row.append(_fmt(eps / 1e9 if eps else None))
                if f32:
                    if eps and rec.f32_seconds:
                        row.append(_fmt(rec.seconds and rec.f32_seconds / rec.seconds) + "×")
                    else:
                        row.append("–")
            if ours:
                mine = look.get((device, op, dtype, variant, feature, n, ours))
                for p in peers:
                    theirs = look.get((device, op, dtype, variant, feature, n, p))
                    if mine is not None and theirs is not None and mine.gbps and theirs.gbps:
                        row.append(_fmt(mine.gbps / theirs.gbps) + "×")
                    else:
                        row.append("–")
            rows.append(row)
        elements = report.plans.get(device, {}).get("elements")
        what = VARIANTS[variant] + (f" · {FEATURES[feature].title}" if feature else "")
        title = (f"{device.upper()} · {OPS[op].title} · {dtype} · M·N = "
                 f"{pow2(elements)} · {what}")
        tables.append((title, header, rows))
    return tables


def latency_table(report):
    if not report.latency:
        return None
    names = list(dict.fromkeys(r.impl for r in report.latency))
    peers = [n for n in names if n != "numbasoftmax"]
    header = ["device", "op", "shape"] + [f"{n} µs" for n in names]
    if "numbasoftmax" in names:
        header += [f"× {p}" for p in peers]
    rows = []
    keys = list(dict.fromkeys((r.device, r.op) for r in report.latency))
    for device, op in keys:
        recs = {r.impl: r for r in report.latency if (r.device, r.op) == (device, op)}
        shape = next(iter(recs.values())).shape
        row = [device.upper(), op, f"{shape[0]}×{shape[1]} float32"]
        for n in names:
            r = recs.get(n)
            row.append(_fmt(r.us_per_call) if r is not None and r.us_per_call else
                       ("–" if r is None else "error" if r.status.startswith("error") else "skip"))
        if "numbasoftmax" in names:
            mine = recs.get("numbasoftmax")
            for p in peers:
                theirs = recs.get(p)
                if mine and theirs and mine.us_per_call and theirs.us_per_call:
                    row.append(_fmt(theirs.us_per_call / mine.us_per_call) + "×")
                else:
                    row.append("–")
        rows.append(row)
    return ("Per-call latency (hot cache; CPU: median over individually timed calls, "
            f"{LATENCY_ROUNDS} rounds of ~3 ms per implementation in turn; GPU: host time of "
            "back-to-back calls)", header, rows)


def markdown_table(header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    def numeric(cell):
        text = str(cell)
        return text[:1].isdigit() or text in ("–", "error", "skip")

    right = [bool(rows) and all(numeric(r[i]) for r in rows) for i in range(len(header))]

    def line(cells):
        parts = []
        for i, c in enumerate(cells):
            parts.append(str(c).rjust(widths[i]) if right[i] else str(c).ljust(widths[i]))
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if right[i] else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def _copy_rule(report, device, what):
    """What a table's "% copy" of ``device`` is against."""
    if any(r.copy_gbps for r in report.results if r.device == device):
        return (f"\"% copy\" is against {what}, timed in the same rounds as each cell's "
                "implementations (the \"copy GB/s\" column; the start's figure where that "
                "failed).")
    return f"\"% copy\" is against the start's {_fmt(report.copy[device]['gbps'])} GB/s."


def header_lines(report):
    env = report.env
    v = env["versions"]
    cores = env["cpu_physical"]
    lines = [
        f"- CPU: {env['cpu']}, {cores or '?'} cores / {env['cpu_logical']} logical "
        f"({env['cpu_usable']} usable), last-level cache {env['cache_bytes'] >> 20} MiB; "
        f"numba {env['numba_threads']} threads ({env.get('numba_threading_layer') or '?'})"
        + (f", torch {env['torch_threads']} threads" if env.get("torch_threads") else ""),
        f"- GPU: {env['gpu'] or 'none'}",
        "- Versions: " + ", ".join(f"{k} {v[k] or '—'}" for k in
                                   ("numbasoftmax", "numba", "numba-cuda", "numpy", "torch",
                                    "cupy", "scipy")) + f", Python {env['python']}",
    ]
    for device, c in report.copy.items():
        if device == "cpu":
            s, e = c["start"], c["end"]
            lines.append(
                f"- CPU copy bandwidth (read + write, {s['bytes'] >> 21} MiB copied): "
                f"numpy 1 thread {_fmt(s['numpy'])} GB/s, all {s['threads']} threads "
                f"{_fmt(s['threaded'])} GB/s, with non-temporal stores "
                f"{_fmt(s.get('streamed'))} GB/s at the start; {_fmt(e['numpy'])} / "
                f"{_fmt(e['threaded'])} / {_fmt(e.get('streamed'))} GB/s at the end. "
                + _copy_rule(report, device, "the kind of copy fastest at the start"))
        else:
            s, e = c["start"], c["end"]
            lines.append(f"- GPU device-to-device copy (read + write, {s['bytes'] >> 21} MiB "
                         f"copied, CUDA events): {_fmt(s['d2d'])} GB/s at the start, "
                         f"{_fmt(e['d2d'])} GB/s at the end. "
                         + _copy_rule(report, device, "a device-to-device copy"))
    if report.jit:
        per = {}
        for key, sec in report.jit.items():
            dev = key.split(":")[0]
            per[dev] = per.get(dev, 0.0) + sec
        lines.append("- numbasoftmax first calls (numba compile, or load from its disk cache, "
                     "+ correctness checks): " + ", ".join(f"{d.upper()} {s:.1f} s"
                                                           for d, s in per.items()))
    for device, plan in report.plans.items():
        lines.append(f"- {device.upper()} sweep: M·N = {pow2(plan['elements'])}, "
                     f"N ∈ {{{', '.join(map(str, plan['sizes']))}}}")
    load = report.load
    if load.get("others_pct_of_machine") is not None:
        lines.append(f"- Load: other processes used {load['others_pct_of_machine']:.0f} % of the "
                     f"machine's {load['cpus']} CPUs during this run (steal "
                     f"{load['steal_pct_of_machine']:.0f} %; load average at start "
                     f"{load['loadavg_start']}). Figures marked ~ varied by more than "
                     f"{NOISY:.0%} (interquartile range / median) across repeats.")
    cfg = report.config
    lines.append(f"- Method: one warm-up call per implementation, then up to {cfg['repeats']} "
                 f"rounds (at least {cfg['min_repeats']}, ~{cfg['cell_seconds']} s per cell, "
                 f"{cfg['sweep_seconds']:.0f} s for all cells of a device) "
                 f"timing the implementations in turn; median reported; inputs rotated through "
                 f"copies so each cell's working set exceeds 2× the last-level cache; GPU "
                 f"timed with CUDA events. Wall time {report.wall_seconds:.1f} s.")
    return lines


def render_markdown(report, plot_name=None):
    out = ["# numbasoftmax benchmark", ""]
    out += header_lines(report)
    out.append("")
    busy = report.load.get("others_pct_of_machine")
    if busy is not None and busy > BUSY_WARNING:
        out += [f"**Warning: other processes used {busy:.0f} % of the CPUs during this run.** "
                "Multi-threaded calls (numbasoftmax's parallel kernels, torch) then wait for "
                "descheduled threads, in steps of the scheduler's tick: these figures, and "
                "torch's small-call latency most of all, are unreliable. Rerun on a quiet "
                "machine.", ""]
    bad = {k: v for k, v in report.checks.items() if v != "ok"}
    if bad:
        out.append("**Correctness check failures** (these cells are not timed):")
        out += [f"- `{k}`: {v}" for k, v in bad.items()]
        out.append("")
    for title, header, rows in throughput_tables(report):
        out += [f"## {title}", "", markdown_table(header, rows), ""]
    lat = latency_table(report)
    if lat:
        title, header, rows = lat
        out += [f"## {title}", "", markdown_table(header, rows), ""]
    if report.startup:
        from .startup import table

        title, header, rows = table(report.startup)
        out += [f"## {title}", "", markdown_table(header, rows), ""]
    if plot_name:
        out += [f"![GB/s over N]({plot_name})", ""]
    notes = list(report.notes)
    errors = [r for r in report.results if r.status.startswith("error")]
    errors += [r for r in report.latency if r.status.startswith("error")]
    for r in errors:
        notes.append(f"{r.device} {r.impl} {r.op} {r.dtype}: {r.status}")
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    out += ["GB/s counts the bytes an ideal kernel moves (forward: read X + write Y; backward: "
            "read Y and dY + write dX). \"× peer\" = our GB/s ÷ the peer's (> 1: numbasoftmax "
            "is faster). \"result allocated per call\" is the plain call users make "
            "(`softmax(x)`, `torch.softmax(t, -1)`), each result dropped before the next call: "
            "a fresh result of 32 MiB or more pays a page fault per page (malloc recycles "
            "smaller blocks). \"numbasoftmax result pool on\" times the same calls inside "
            "`numbasoftmax.result_pool(...)`: numbasoftmax then carves its result from the "
            "memory of the dropped one (peers are unaffected). \"preallocated out=\" passes an "
            "output buffer (numbasoftmax `out=`, torch's `out=` overloads): no allocation at "
            "all. In the where= and dtype= tables GB/s counts the bytes of the inputs (mask "
            "included) and of the result, for every column: their ratios are ratios of time. "
            "\"unmasked\" is our call without the mask; the two-pass peers "
            "(`np.where(mask, x, -inf)`, `x.astype(float32)`, torch's `masked_fill`) write "
            "their first pass into out= and run the softmax there in place."]
    return "\n".join(out) + "\n"


def write_outputs(report, out_dir, plot=True):
    """Write report.md, results.json and bench.png; returns (markdown, messages)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    messages = []
    plot_name = None
    if plot:
        path, why = write_plot(report, out_dir / "bench.png")
        if path is not None:
            plot_name = path.name
        else:
            messages.append(why)
    text = render_markdown(report, plot_name)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(report.to_json(), indent=1,
                                                     default=_json_default),
                                          encoding="utf-8")
    return text, messages


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    raise TypeError(type(obj).__name__)
