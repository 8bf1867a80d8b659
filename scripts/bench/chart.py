#!/usr/bin/env python3
"""Draws the JSON lines of scripts/bench/measure.py runs as one SVG, the
comparison at a glance beside the table of scripts/bench/table.py:

  (a) latency from fw1's kernel to fw2's, idle and loaded: the CDF of
      ctsyncd and of conntrackd (from the `lat_*_q` percentiles);
  (b) ctsyncd/conntrackd per throughput or cost figure, on a log scale
      around 1.0, each bar saying which direction is better;
  (c) the rates against the kernel's own limits, measured in the same run
      with no daemon running: ctload's batched create rate (`raw_rate`) and
      the rate at which queued events are read (`raw_event_rate`).

A panel or bar whose keys the results lack (a mode skipped with
BENCH_*=0, results from before a key existed) is left out. Standard
library only; the same input gives the same bytes.

usage: chart.py RESULTS.jsonl OUT.svg [TITLE [LINE...]]   (LINEs go under the title)
"""

import json
import math
import statistics
import sys
from xml.sax.saxutils import escape

WIDTH = 960
MARGIN = 20
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'
COLOR = {"ctsyncd": "#1f6fb4", "conntrackd": "#d0661c"}
DASH = {"ctsyncd": "", "conntrackd": ' stroke-dasharray="6 3"'}
BETTER, WORSE = "#3a9a3a", "#c8443c"

# mode, key, label, True if higher is better (panel b)
RATIOS = [
    ("main", "converge_s", "convergence time, N creates", False),
    ("main", "commit_rate", "commit rate, -c on fw2", True),
    ("main", "cpu_send_per100k", "CPU per 100k changes, fw1 sender", False),
    ("main", "cpu_recv_per100k", "CPU per 100k changes, fw2 receiver", False),
    ("main", "link_bytes_fwd", "sync link bytes per change", False),
    ("main", "link_pkts_fwd", "sync link packets per change", False),
    ("drain", "drain_rate", "drain rate of queued events", True),
    ("bulk", "bulk_n_s", "bulk -n into a fresh fw2, time", False),
    ("bulk", "bulk_B_s", "bulk -B into a fresh fw2, time", False),
]

# mode, key, label, key of the kernel's limit in the `none` runs, what
# that limit is (panel c). Creates and commits insert into a kernel table;
# a drain reads events the kernel queued before it was timed.
CREATES = "limit: ctload's batched creates"
RATES = [
    ("main", "load_rate", "ctload creates/s while syncing", "raw_rate", CREATES),
    ("main", "commit_rate", "commit rate, -c on fw2 (flows/s)", "raw_rate", CREATES),
    ("drain", "drain_rate", "drain rate (events/s)", "raw_event_rate", "limit: queued events read"),
]

DAEMONS = ("ctsyncd", "conntrackd")


def load(path):
    """Runs by daemon; the main mode's commit rate derived as table.py does."""
    runs = {"ctsyncd": [], "conntrackd": [], "none": []}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"chart.py: {path} line {number} is not JSON ({e}): rerun scripts/bench.sh")
            if r.get("commit_s") and r.get("created"):
                r["commit_rate"] = r["created"] / r["commit_s"]
            runs.setdefault(r.get("daemon"), []).append(r)
    return runs


def values(runs, daemon, mode, key):
    return [
        r[key]
        for r in runs.get(daemon, [])
        if r.get("mode", "main") == mode and isinstance(r.get(key), (int, float))
    ]


def median(xs):
    return statistics.median(xs) if xs else None


def num(x):
    """A short, fixed rendering of a figure: 3 significant digits, k/M."""
    if x is None:
        return "n/a"
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def text(x, y, s, size=12, anchor="start", weight="normal", fill="#222", halo=False):
    bold = ' font-weight="bold"' if weight == "bold" else ""
    # A white outline under the glyphs keeps a label readable over a line.
    under = ' stroke="white" stroke-width="3" paint-order="stroke"' if halo else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" {FONT} font-size="{size}" text-anchor="{anchor}"'
        f'{bold} fill="{fill}"{under}>{escape(s)}</text>'
    )


def line(x1, y1, x2, y2, stroke="#bbb", width=1, extra=""):
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
        f'stroke="{stroke}" stroke-width="{width}"{extra}/>'
    )


def pooled_quantiles(runs, daemon, key):
    """Each percentile is the median of the repetitions' values of it."""
    qs = [
        r[key]
        for r in runs.get(daemon, [])
        if r.get("mode") == "latency" and isinstance(r.get(key), list) and len(r[key]) == 101
    ]
    if not qs:
        return None
    return [statistics.median(q[i] for q in qs) for i in range(101)], len(qs)


def cdf_plot(x0, y0, w, h, title, curves):
    """One CDF on a log latency axis; curves: daemon -> 101 percentiles."""
    out = [text(x0 + w / 2, y0 - 8, title, 13, "middle", "bold")]
    floor = 0.001
    every = [max(v, floor) for q in curves.values() for v in q]
    lo = 10 ** math.floor(math.log10(min(every)))
    hi = 10 ** math.ceil(math.log10(max(every)))
    if hi <= lo:
        hi = lo * 10
    span = math.log10(hi) - math.log10(lo)

    def px(v):
        return x0 + w * (math.log10(max(v, floor)) - math.log10(lo)) / span

    def py(p):
        return y0 + h - h * p / 100

    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
    for p in (0, 25, 50, 75, 90, 100):
        out.append(line(x0, py(p), x0 + w, py(p), "#e4e4e4"))
        out.append(text(x0 - 5, py(p) + 4, f"{p} %", 10, "end"))
    decade = lo
    while decade <= hi * 1.0001:
        for step in (1, 2, 5):
            v = decade * step
            if v > hi * 1.0001:
                break
            out.append(line(px(v), y0, px(v), y0 + h, "#e4e4e4" if step > 1 else "#cfcfcf"))
            out.append(text(px(v), y0 + h + 14, f"{v:g}", 10, "middle"))
        decade *= 10
    out.append(text(x0 + w / 2, y0 + h + 30, "latency, fw1's kernel to fw2's (ms, log scale)", 11, "middle"))
    for daemon, q in curves.items():
        points = " ".join(f"{px(v):.1f},{py(i):.1f}" for i, v in enumerate(q))
        out.append(
            f'<polyline points="{points}" fill="none" stroke="{COLOR[daemon]}" '
            f'stroke-width="2"{DASH[daemon]}/>'
        )
    # Bottom right: a CDF never reaches there.
    for row, (daemon, q) in enumerate(curves.items()):
        ly = y0 + h - 12 - (len(curves) - 1 - row) * 16
        out.append(line(x0 + w - 30, ly - 4, x0 + w - 8, ly - 4, COLOR[daemon], 2, DASH[daemon]))
        out.append(text(x0 + w - 35, ly, f"{daemon}: p50 {num(q[50])}, p99 {num(q[99])} ms", 11, "end"))
    return out


def panel_latency(runs, y):
    """(a), or nothing when no run holds percentiles."""
    plots = []
    for key, title in (("lat_idle_q", "idle (200 creates/s)"), ("lat_load_q", "loaded")):
        curves, reps = {}, set()
        for daemon in DAEMONS:
            got = pooled_quantiles(runs, daemon, key)
            if got:
                curves[daemon], n = got
                reps.add(n)
        if curves:
            plots.append((title, curves, reps))
    if not plots:
        return [], y
    out = [text(MARGIN, y + 16, "(a) Latency CDF: a flow's creation on fw1 to its creation on fw2", 15, weight="bold")]
    top, h = y + 50, 230
    w = (WIDTH - 2 * MARGIN - 70 - 50 * (len(plots) - 1)) / len(plots)
    for i, (title, curves, _) in enumerate(plots):
        out += cdf_plot(MARGIN + 50 + i * (w + 50), top, w, h, title, curves)
    reps = sorted(set().union(*(p[2] for p in plots)))
    out.append(
        text(
            MARGIN,
            top + h + 52,
            "Both daemons write the peer's flows straight into the kernel; both ends are the kernel's "
            "own creation timestamps.",
            11,
        )
    )
    out.append(
        text(
            MARGIN,
            top + h + 67,
            f"Pooled over {'/'.join(map(str, reps))} repetition(s): each percentile is the median of "
            "the repetitions' values of it. Left and up is better.",
            11,
        )
    )
    return out, top + h + 80


def panel_ratios(runs, y):
    """(b), or nothing when no bar has both daemons' figures."""
    bars = []
    for mode, key, label, higher in RATIOS:
        a = median(values(runs, "ctsyncd", mode, key))
        b = median(values(runs, "conntrackd", mode, key))
        if a is None or b is None or a <= 0 or b <= 0:
            continue
        bars.append((f"{label} ({mode})" if mode != "main" else label, a, b, a / b, higher))
    if not bars:
        return [], y
    out = [text(MARGIN, y + 16, "(b) ctsyncd / conntrackd, median of each (log scale)", 15, weight="bold")]
    top, row = y + 44, 24
    x0, w = MARGIN + 250, 330
    reach = max(1, math.ceil(max(abs(math.log10(r)) for *_, r, _ in bars)))
    reach = min(reach, 3)

    def px(r):
        v = max(-reach, min(reach, math.log10(r)))
        return x0 + w / 2 + (w / 2) * v / reach

    h = row * len(bars)
    for k in range(-reach, reach + 1):
        for step in ((1, 2, 5) if reach == 1 else (1,)):
            r = 10**k * step
            if r > 10**reach * 1.0001:
                break
            out.append(line(px(r), top - 4, px(r), top + h, "#e4e4e4"))
            out.append(text(px(r), top + h + 14, f"{r:g}", 10, "middle"))
    for i, (label, a, b, ratio, higher) in enumerate(bars):
        cy = top + i * row + row / 2
        good = ratio > 1 if higher else ratio < 1
        if ratio == 1:
            good = True
        left, right = sorted((px(1), px(ratio)))
        out.append(text(x0 - 8, cy + 4, label, 11, "end"))
        out.append(
            f'<rect x="{left:.1f}" y="{cy - 8:.1f}" width="{max(right - left, 1):.1f}" height="16" '
            f'fill="{BETTER if good else WORSE}"/>'
        )
        direction = "higher" if higher else "lower"
        out.append(
            text(x0 + w + 10, cy + 4, f"{ratio:.2f}x, {direction} is better ({num(a)} vs {num(b)})", 11)
        )
    out.append(line(px(1), top - 8, px(1), top + h + 2, "#222", 1.5))
    out.append(text(px(1), top - 10, "1.0 = same", 10, "middle"))
    out.append(
        text(
            MARGIN,
            top + h + 32,
            "Green: ctsyncd better, red: conntrackd better. Times in s, rates per s, CPU in s, link per "
            "flow change; bars beyond the axis are clipped.",
            11,
        )
    )
    return out, top + h + 46


def panel_rates(runs, y):
    """(c): absolute rates, each group with its kernel limit as a line."""
    groups = []
    for mode, key, label, limit_key, limit_label in RATES:
        bars = [(d, v) for d in DAEMONS if (v := median(values(runs, d, mode, key))) is not None]
        if bars:
            limits = values(runs, "none", "main", limit_key)
            groups.append((label, bars, median(limits), len(limits), limit_label))
    if not groups:
        return [], y
    out = [
        text(MARGIN, y + 16, "(c) Rates against the physical limits, median of each", 15, weight="bold")
    ]
    top, row, gap = y + 36, 18, 14
    x0, w = MARGIN + 250, 500
    top_value = max(v for g in groups for v in [*(b[1] for b in g[1]), g[2] or 0])
    scale = w / (top_value * 1.05)
    cy = top
    notes = []
    for label, bars, limit, runs_of_limit, limit_label in groups:
        first, at = cy, len(out)
        out.append(text(x0 - 8, cy + 13, label, 11, "end"))
        if limit:
            out.append(text(x0 - 8, cy + 13 + row, f"limit {num(limit)}/s", 10, "end", fill="#555"))
        for daemon, v in bars:
            out.append(
                f'<rect x="{x0}" y="{cy + 2:.1f}" width="{max(v * scale, 1):.1f}" height="13" '
                f'fill="{COLOR[daemon]}"/>'
            )
            share = f" = {100 * v / limit:.0f} % of the limit" if limit else ""
            out.append(text(x0 + v * scale + 6, cy + 13, f"{daemon} {num(v)}{share}", 10, halo=True))
            cy += row
        if limit:
            # Under the bars and their labels.
            lx = x0 + limit * scale
            out.insert(at, line(lx, first - 2, lx, cy + 2, "#222", 1.5, ' stroke-dasharray="4 3"'))
            note = f"{limit_label}: {num(limit)}/s (median of {runs_of_limit} run(s))"
            if note not in notes:
                notes.append(note)
        cy += gap
    out.append(line(x0, top - 2, x0, cy - gap + 2, "#888"))
    if notes:
        out.append(
            text(MARGIN, cy + 10, "Dashed: the kernel alone, no daemon running, measured in this benchmark.", 11)
        )
        for note in notes:
            cy += 15
            out.append(text(MARGIN, cy + 10, note, 11))
    else:
        out.append(text(MARGIN, cy + 10, "No run without a daemon in these results: no limit shown.", 11))
    return out, cy + 24


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: chart.py RESULTS.jsonl OUT.svg [TITLE [LINE...]]")
    runs = load(sys.argv[1])
    title = sys.argv[3] if len(sys.argv) > 3 else "ctsyncd vs conntrackd, FTFW over UDP"
    body = [text(MARGIN, 28, title, 17, weight="bold")]
    flows = sorted(
        {
            r["created"]
            for r in runs.get("ctsyncd", []) + runs.get("conntrackd", [])
            if r.get("mode", "main") == "main" and isinstance(r.get("created"), int)
        }
    )
    sub = f"main run: {', '.join(map(str, flows))} flows created" if flows else "no main run"
    y = 28
    for extra in [*sys.argv[4:], f"{sub}; scripts/bench.sh, same kernel, same load"]:
        y += 17
        body.append(text(MARGIN, y, extra, 11))
    y += 14
    drew = False
    for panel in (panel_latency, panel_ratios, panel_rates):
        out, y2 = panel(runs, y + 10)
        if out:
            body += out
            y, drew = y2, True
    if not drew:
        body.append(text(MARGIN, y + 30, "No figure in these results has both daemons.", 13))
        y += 40
    height = int(y + MARGIN)
    svg = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        *body,
        "</svg>",
    ]
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
