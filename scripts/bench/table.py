#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench/measure.py runs into one table:
median of the repetitions with their range, for ctsyncd and conntrackd,
and the ratio of the medians.

usage: table.py FLOWS RESULTS.jsonl   (lines are {"daemon": ..., ...})
"""

import json
import statistics
import sys

# mode, key, label, format, True if higher is better
ROWS = [
    ("main", "converge_s", "convergence time, N creates (s)", "{:.2f}", False),
    ("main", "ext_count", "fw2 external cache after convergence (flows)", "{:.0f}", True),
    ("main", "missing", "flows missing from fw2 (set difference)", "{:.0f}", False),
    ("main", "overruns", "netlink event overruns, both sides", "{:.0f}", False),
    ("main", "gaps", "sequence gaps seen by fw2 (NACKs / Lost msgs)", "{:.0f}", False),
    ("main", "load_rate", "ctload create rate while syncing (flows/s)", "{:.0f}", True),
    ("main", "commit_s", "commit N flows on fw2, -c (s)", "{:.2f}", False),
    ("main", "commit_rate", "commit rate (flows/s)", "{:.0f}", True),
    ("main", "rss_send_per_flow", "RSS per flow, fw1 sender (bytes)", "{:.0f}", False),
    ("main", "rss_recv_per_flow", "RSS per flow, fw2 receiver (bytes)", "{:.0f}", False),
    ("main", "rss_kept_send", "RSS kept after the flows go, fw1 (share of growth)", "{:.2f}", False),
    ("main", "rss_kept_recv", "RSS kept after the flows go, fw2 (share of growth)", "{:.2f}", False),
    ("main", "link_bytes_fwd", "sync link bytes per change, fw1->fw2", "{:.1f}", False),
    ("main", "link_pkts_fwd", "sync link packets per change, fw1->fw2", "{:.4f}", False),
    ("main", "link_bytes_back", "sync link bytes per change, fw2->fw1 (acks)", "{:.2f}", False),
    ("main", "cpu_send_per100k", "CPU s per 100k changes, fw1 sender", "{:.2f}", False),
    ("main", "cpu_recv_per100k", "CPU s per 100k changes, fw2 receiver", "{:.2f}", False),
    ("drain", "drain_rate", "drain of queued events after SIGSTOP (events/s)", "{:.0f}", True),
    ("drain", "drain_cpu_us", "sender CPU per drained event (us)", "{:.2f}", False),
    ("defaults", "created", "default settings: flows created at full speed", "{:.0f}", True),
    ("defaults", "ext_count", "default settings: flows at fw2", "{:.0f}", True),
    ("defaults", "missing", "default settings: flows missing at fw2", "{:.0f}", False),
    ("defaults", "converge_s", "default settings: convergence time (s)", "{:.2f}", False),
    ("mixed", "mixed_rate", "mixed load, 2 tools: changes/s offered", "{:.0f}", True),
    ("mixed", "mixed_missing", "mixed load: flows missing at fw2 after it stops", "{:.0f}", False),
    ("mixed", "mixed_extra", "mixed load: stale flows at fw2 after it stops", "{:.0f}", False),
    ("mixed", "mixed_settle_s", "mixed load: time to exact convergence after it (s)", "{:.1f}", False),
    ("mixed", "mixed_cpu_send_per100k", "mixed load: CPU s per 100k changes, fw1", "{:.2f}", False),
    ("mixed", "mixed_cpu_recv_per100k", "mixed load: CPU s per 100k changes, fw2", "{:.2f}", False),
    ("latency", "lat_idle_p50_ms", "latency to fw2's kernel, idle, p50 (ms)", "{:.2f}", False),
    ("latency", "lat_idle_p99_ms", "latency to fw2's kernel, idle, p99 (ms)", "{:.2f}", False),
    ("latency", "lat_load_p50_ms", "latency to fw2's kernel, loaded, p50 (ms)", "{:.2f}", False),
    ("latency", "lat_load_p99_ms", "latency to fw2's kernel, loaded, p99 (ms)", "{:.2f}", False),
    ("bulk", "created", "bulk: flows in fw1's table", "{:.0f}", True),
    ("bulk", "bulk_n_s", "bulk -n into a fresh fw2 (s)", "{:.2f}", False),
    ("bulk", "bulk_n_missing", "bulk -n: flows missing at fw2", "{:.0f}", False),
    ("bulk", "bulk_B_s", "bulk -B into a fresh fw2 (s)", "{:.2f}", False),
    ("bulk", "bulk_B_missing", "bulk -B: flows missing at fw2", "{:.0f}", False),
]


def cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a", None
    med = statistics.median(values)
    text = fmt.format(med)
    if len(values) > 1:
        text += f" [{fmt.format(min(values))}-{fmt.format(max(values))}]"
    return text, med


def main():
    flows = int(sys.argv[1])
    runs = {"ctsyncd": [], "conntrackd": [], "none": []}
    with open(sys.argv[2]) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("commit_s"):
                    r["commit_rate"] = r.get("created", flows) / r["commit_s"]
                runs[r["daemon"]].append(r)
    main_runs = {k: [r for r in v if r.get("mode", "main") == "main"] for k, v in runs.items()}
    reps = max(len(main_runs["ctsyncd"]), len(main_runs["conntrackd"]))
    head = ("metric", "ctsyncd", "conntrackd", "ctsyncd/conntrackd")
    lines = []
    for mode, key, label, fmt, higher in ROWS:
        mine = [r.get(key) for r in runs["ctsyncd"] if r.get("mode", "main") == mode]
        theirs = [r.get(key) for r in runs["conntrackd"] if r.get("mode", "main") == mode]
        if not mine and not theirs:
            continue
        a, ma = cell(mine, fmt)
        b, mb = cell(theirs, fmt)
        if ma is None or mb is None:
            ratio = "n/a"
        elif mb == 0:
            ratio = "-" if ma == 0 else "inf"
        else:
            ratio = f"{ma / mb:.2f} ({'higher' if higher else 'lower'} is better)"
        lines.append((label, a, b, ratio))
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(4)]
    created = sorted({r.get("created", flows) for rs in runs.values() for r in rs})
    note = "" if created == [flows] else f" (the kernel accepted {created}; rates use those)"
    out = [
        f"N = {flows} flows{note}, median of {reps} runs [min-max]",
        "  ".join(h.ljust(w) for h, w in zip(head, widths)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    raw, _ = cell([r["raw_rate"] for r in runs["none"]], "{:.0f}")
    out.append(f"kernel limit: ctload create rate with no daemon running: {raw} flows/s")
    events = [r.get("raw_event_rate") for r in runs["none"]]
    if any(e is not None for e in events):
        raw, _ = cell(events, "{:.0f}")
        out.append(f"kernel limit: queued conntrack events read with no daemon running: {raw} events/s")
    checks = []
    for name in ("ctsyncd", "conntrackd"):
        rs = main_runs[name]
        eq = sum(1 for r in rs if r.get("set_equal"))
        com = [r.get("committed") for r in rs]
        checks.append(f"{name}: fw2 set equal to fw1 in {eq}/{len(rs)} runs, committed {com}")
    out.append("; ".join(checks))
    for name in ("ctsyncd", "conntrackd"):
        rs = [r for r in runs[name] if r.get("mode") == "drain"]
        if rs:
            got = [f"{r.get('drain_arrived')}/{r.get('drain_created')}" for r in rs]
            out.append(f"drain, {name}: flows at the peer {got}")
        rs = [r for r in runs[name] if r.get("mode") == "latency"]
        if rs:
            got = [(r.get("lat_idle_seen"), r.get("lat_load_seen")) for r in rs]
            out.append(f"latency, {name}: flows matched (idle, loaded) {got}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
