#!/usr/bin/env python3
"""One benchmark run: a sync daemon pair (ctsyncd or conntrackd, FTFW over
UDP) in two namespaces joined by `sync0`, N flows created on fw1 by ctload
at full speed, then measured on both sides. Prints one JSON object.

With `--daemon none` only the load tool runs: the kernel's own create rate
(`raw_rate`) and the rate at which it delivers queued events
(`raw_event_rate`, `ctload events`).
Run by scripts/bench.sh, which owns the namespaces and their removal.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def sh(ns, *cmd, check=True, timeout=600):
    out = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"{ns}: {' '.join(cmd)} failed: {out.stderr.strip()}")
    return out.stdout


def kernel_count(ns):
    return int(sh(ns, "conntrack", "-C").strip())


def flush(ns):
    sh(ns, "conntrack", "-F", check=False)
    deadline = time.time() + 30
    while kernel_count(ns) > 0 and time.time() < deadline:
        time.sleep(0.1)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after it do not.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def link(ns):
    def stat(name):
        return int(sh(ns, "cat", f"/sys/class/net/sync0/statistics/{name}").strip())

    return {k: stat(k) for k in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")}


TUPLE = re.compile(r"\b(src|dst|sport|dport)=(\S+)")
MARK = re.compile(r"\bmark=(\d+)")


def flow_key(line, full):
    """Protocol, original tuple (with `full`, the reply tuple too) and mark
    of a conntrack-style line: the parts that the kernel, ctsyncd -e and
    conntrackd -e print the same way (conntrackd -e omits the reply tuple)."""
    words = line.split()
    if not words or "=" in words[0]:
        return None
    tuples = tuple(m.group(0) for m in TUPLE.finditer(line))[: 8 if full else 4]
    mark = MARK.search(line)
    return (words[0], tuples, mark.group(1) if mark else "0")


def flow_set(text, full=False):
    keys = set()
    for line in text.splitlines():
        key = flow_key(line, full)
        # The sync link's own flow is filtered by both daemons.
        if key and not any(t.startswith(("src=10.255.0.", "dst=10.255.0.")) for t in key[1]):
            keys.add(key)
    return keys


def load_result(out):
    """Flows created and rate from ctload's summary line."""
    m = re.search(r": (\d+) flows in .* = (\d+) flows/s", out)
    if not m:
        raise RuntimeError(f"ctload printed no summary: {out!r}")
    return int(m.group(1)), float(m.group(2))


class Daemon:
    """One side of a pair: its config, process and control commands."""

    def __init__(
        self, kind, binary, ns, n, side, workdir, flows, nlbuf=8 << 20, defaults=False, direct=False
    ):
        self.kind, self.binary, self.ns = kind, binary, ns
        self.dir = os.path.join(workdir, f"{kind}-fw{side}")
        os.makedirs(self.dir, exist_ok=True)
        local, peer = f"10.255.0.{side}", f"10.255.0.{3 - side}"
        if kind == "ctsyncd":
            self.conf = os.path.join(self.dir, "ctsyncd.yaml")
            # Authenticated, as by default: the MAC is part of the cost.
            key = os.path.join(workdir, "sync.key")
            if not os.path.exists(key):
                fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, f"1 {os.urandom(32).hex()}\n".encode())
                os.close(fd)
            limit = max(1048576, 2 * flows + 65536)
            if defaults:
                # Only what a configuration must say: where, with whom, the key.
                text = (
                    f"general:\n  lock_file: {self.dir}/lock\n  control_socket: {self.dir}/ctl\n"
                    f"sync:\n  auth:\n    key_file: {key}\n"
                    + ("  direct_to_kernel: true\n" if direct else "")
                    + f"  channels:\n    - type: udp\n      local: {local}\n"
                    f"      peer: {peer}\n      interface: sync0\n"
                )
            else:
                text = (
                    f"general:\n  lock_file: {self.dir}/lock\n  control_socket: {self.dir}/ctl\n"
                    f"  cache_limit: {limit}\n  log:\n    level: warn\n"
                    f"  netlink:\n    rcvbuf: {nlbuf}\n    rcvbuf_max: {max(nlbuf, 128 << 20)}\n"
                    f"sync:\n  auth:\n    key_file: {key}\n  resend_queue: {max(131072, flows)}\n"
                    f"  channels:\n    - type: udp\n      local: {local}\n"
                    f"      peer: {peer}\n      interface: sync0\n"
                    f"      sndbuf: 1249280\n      rcvbuf: 1249280\n"
                )
        elif defaults:
            self.conf = os.path.join(self.dir, "conntrackd.conf")
            # Only what a configuration must say, and the sync link's own
            # flows filtered out as in conntrackd's example configurations.
            text = f"""Sync {{
    Mode FTFW {{
        DisableExternalCache {"On" if direct else "Off"}
    }}
    UDP {{
        IPv4_address {local}
        IPv4_Destination_Address {peer}
        Port 3780
        Interface sync0
        Checksum on
    }}
}}
General {{
    Systemd off
    LogFile {self.dir}/conntrackd.log
    Syslog off
    LockFile {self.dir}/lock
    UNIX {{
        Path {self.dir}/ctl
    }}
    Filter From Userspace {{
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv4_address {local}
            IPv4_address {peer}
        }}
    }}
}}
"""
        else:
            self.conf = os.path.join(self.dir, "conntrackd.conf")
            # Sized like the ctsyncd side: cache room for twice the flows,
            # the same netlink buffers, the same socket buffers.
            text = f"""Sync {{
    Mode FTFW {{
        DisableExternalCache Off
        ResendQueueSize {max(131072, flows)}
    }}
    UDP {{
        IPv4_address {local}
        IPv4_Destination_Address {peer}
        Port 3780
        Interface sync0
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize {max(65536, flows // 2)}
    HashLimit {max(1048576, 2 * flows + 65536)}
    LogFile {self.dir}/conntrackd.log
    Syslog off
    LockFile {self.dir}/lock
    UNIX {{
        Path {self.dir}/ctl
    }}
    NetlinkBufferSize {nlbuf}
    NetlinkBufferSizeMaxGrowth {max(nlbuf, 128 << 20)}
    NetlinkEventsReliable Off
    Filter From Userspace {{
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv4_address {local}
            IPv4_address {peer}
        }}
    }}
}}
"""
        with open(self.conf, "w") as f:
            f.write(text)
        self.log = open(os.path.join(self.dir, "stderr.log"), "w")
        self.proc = None

    def start(self):
        # `ip netns exec` execs the daemon, so this PID is the daemon's.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, self.binary, "-C", self.conf],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} on {self.ns} exited: see {self.dir}")
            if self.cli("-s", check=False) is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} on {self.ns} did not answer -s")

    def cli(self, *args, check=True, timeout=600):
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, self.binary, "-C", self.conf, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            if check:
                raise RuntimeError(f"{self.kind} {args}: {out.stderr.strip()}")
            return None
        return out.stdout

    def external_count(self):
        if self.kind == "ctsyncd":
            out = self.cli("-s", "--json", check=False)
            return json.loads(out)["external"]["active"] if out else -1
        out = self.cli("-s", check=False) or ""
        m = re.search(r"cache external:\s*\n\s*current active connections:\s*(\d+)", out)
        return int(m.group(1)) if m else -1

    def loss_counters(self):
        """Counters that tell whether events were lost and the table dumped
        again, or messages resent: what slows a convergence down."""
        interesting = re.compile(r"overrun|resync|enobufs|lost|retrans|resen|nack", re.I)
        if self.kind == "ctsyncd":
            found = {}

            def walk(value, path):
                if isinstance(value, dict):
                    for k, v in value.items():
                        walk(v, f"{path}.{k}" if path else k)
                elif isinstance(value, (int, float)) and interesting.search(path):
                    found[path] = value

            walk(json.loads(self.cli("-s", "--json")), "")
            return found
        found = {}
        text = (self.cli("-s", check=False) or "") + (self.cli("-s", "runtime", check=False) or "")
        # "name: N" lines (runtime) and "N Name  N Name" lines (traffic).
        pairs = re.findall(r"([A-Za-z][A-Za-z ()]*?):\s+(\d+)", text)
        pairs += [(n, v) for v, n in re.findall(r"(\d+) ([A-Z][A-Za-z]*(?: [a-z]+)?)", text)]
        for name, num in pairs:
            if interesting.search(name) or name.startswith("Error"):
                found[name.strip()] = int(num)
        return found

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def pair(args, n, *extra, **options):
    """fw1's and fw2's daemon of the kind under test, sized for `n` flows
    (not started)."""
    binary = args.ctsyncd if args.daemon == "ctsyncd" else "conntrackd"
    return [
        Daemon(args.daemon, binary, ns, n, i + 1, args.workdir, n, *extra, **options)
        for i, ns in enumerate(args.ns)
    ]


def wait_for_count(daemon, target, t0, stall=20):
    """Seconds from `t0` until `daemon`'s external cache holds `target`
    flows, None if it stops growing for `stall` seconds before."""
    last, last_move = -1, time.monotonic()
    while True:
        count = daemon.external_count()
        now = time.monotonic()
        if count >= target:
            return now - t0
        if count != last:
            last, last_move = count, now
        if now - last_move > stall:
            return None
        time.sleep(0.05)


def bulk(res, sides, want):
    """fw2 restarted with an empty cache, then fw1's table asked for (-n on
    fw2) and pushed (-B on fw1): time and exactness of each bulk."""
    fw1, fw2 = sides
    for how in ("n", "B"):
        fw2.stop()
        fw2.log = open(os.path.join(fw2.dir, f"stderr-{how}.log"), "w")
        fw2.start()
        # ctsyncd asks for the peer's table when it starts: let that one
        # finish, so that the timed bulk is the requested one.
        time.sleep(3)
        before = -1
        while (count := fw2.external_count()) != before:
            before = count
            time.sleep(1)
        fw2.cli("-f", "external", check=False)
        t0 = time.monotonic()
        if how == "n":
            fw2.cli("-n")
        else:
            fw1.cli("-B")
        res[f"bulk_{how}_s"] = wait_for_count(fw2, len(want), t0)
        have = flow_set(fw2.cli("-e"))
        res[f"bulk_{how}_missing"] = len(want - have)
        res[f"bulk_{how}_extra"] = len(have - want)


def mixed(args):
    """Two load tools at once for a while, each cycling over its own flows:
    create a block, update it twice, destroy half of it. Then the load
    stops and fw2's external cache must come to equal fw1's table exactly,
    marks included, however far behind the daemons fell."""
    import threading

    n, (ns1, ns2) = args.flows, args.ns
    sides = pair(args, n, defaults=True)
    res = {"mode": "mixed"}
    block = 20000
    changes = [0, 0]

    def loader(idx, deadline):
        base, mark, cycle = idx * 2_000_000, 1, 0
        while time.monotonic() < deadline:
            start = base + (cycle % 10) * block
            for op, count, extra in (
                ("create", block, []),
                ("update", block, ["--mark", str(mark + 1)]),
                ("update", block, ["--mark", str(mark + 2)]),
                ("destroy", block // 2, []),
            ):
                out = sh(ns1, args.load, op, str(count), "--start", str(start), *extra, check=False)
                m = re.search(r": (\d+) flows in", out)
                changes[idx] += int(m.group(1)) if m else 0
            mark += 2
            cycle += 1

    try:
        for d in sides:
            d.start()
        time.sleep(3)
        pids = [d.proc.pid for d in sides]
        cpu0 = [cpu_secs(p) for p in pids]
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=loader, args=(i, t0 + args.seconds)) for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_s = time.monotonic() - t0
        res["mixed_changes"] = sum(changes)
        res["mixed_rate"] = sum(changes) / load_s
        want = flow_set(sh(ns1, "conntrack", "-L"))
        t1 = time.monotonic()
        have = set()
        while time.monotonic() - t1 < 120:
            have = flow_set(sides[1].cli("-e"))
            if have == want:
                break
            time.sleep(1)
        res["mixed_settle_s"] = time.monotonic() - t1 if have == want else None
        res["mixed_missing"] = len(want - have)
        res["mixed_extra"] = len(have - want)
        res["mixed_flows"] = len(want)
        cpu1 = [cpu_secs(p) for p in pids]
        res["mixed_cpu_send_per100k"] = (cpu1[0] - cpu0[0]) * 100000 / max(1, sum(changes))
        res["mixed_cpu_recv_per100k"] = (cpu1[1] - cpu0[1]) * 100000 / max(1, sum(changes))
    finally:
        for d in sides:
            d.stop()
    for ns in (ns1, ns2):
        flush(ns)
    print(json.dumps(res))


def kernel_starts(ns):
    """Original tuple -> creation time (ns) of every entry of `ns`'s table,
    from the kernel's own timestamps (`nf_conntrack_timestamp`)."""
    out = sh(ns, "conntrack", "-L", "-o", "xml,ktimestamp")
    starts = {}
    for flow in re.finditer(r"<flow>(.*?)</flow>", out):
        body = flow.group(1)
        orig = re.search(
            r'direction="original">.*?<src>(.*?)</src><dst>(.*?)</dst>.*?'
            r"<sport>(\d+)</sport><dport>(\d+)</dport>",
            body,
        )
        start = re.search(r"<start>(\d+)</start>", body)
        if orig and start:
            starts[orig.groups()] = int(start.group(1))
    return starts


def quantiles(ordered):
    """The 0th to 100th percentile of a sorted, non-empty list (nearest
    rank, in steps of 1 %), rounded to the microsecond: the distribution
    in 101 numbers, enough for scripts/bench/chart.py to draw its CDF."""
    last = len(ordered) - 1
    return [round(ordered[last * i // 100], 3) for i in range(101)]


def latency(args):
    """From a flow's creation in fw1's kernel to its creation in fw2's, with
    both daemons writing the peer's flows straight into the kernel
    (ctsyncd's direct_to_kernel, conntrackd's DisableExternalCache). Both
    ends are the kernel's own creation timestamps (`nf_conntrack_timestamp`,
    same clock), read from a dump of each table afterwards: no listener's
    scheduling enters the figure. Idle (200 creates/s) and under load
    (args.flows creates/s): p50, p99 and the 101 percentiles `lat_*_q`
    (ms)."""
    n, (ns1, ns2) = args.flows, args.ns
    sides = pair(args, n, defaults=True, direct=True)
    res = {"mode": "latency"}
    for ns in (ns1, ns2):
        sh(ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
    try:
        for d in sides:
            d.start()
        time.sleep(3)
        start, seen = 0, set()
        for label, rate, secs in (("idle", 200, 5), ("load", n, 5)):
            count = int(rate * secs)
            # Batches of a millisecond's worth: a paced stream, not bursts.
            batch = str(max(1, rate // 1000))
            sh(ns1, args.load, "create", str(count), "--start", str(start), "--rate", str(rate),
               "--batch", batch)
            start += count
            deadline = time.monotonic() + 30
            while kernel_count(ns2) < kernel_count(ns1) and time.monotonic() < deadline:
                time.sleep(0.2)
            t1, t2 = kernel_starts(ns1), kernel_starts(ns2)
            fresh = {k: v for k, v in t1.items() if k not in seen}
            seen.update(t1)
            lat = sorted((t2[k] - v) / 1e6 for k, v in fresh.items() if k in t2)
            res[f"lat_{label}_seen"] = f"{len(lat)}/{len(fresh)}"
            if lat:
                res[f"lat_{label}_p50_ms"] = lat[len(lat) // 2]
                res[f"lat_{label}_p99_ms"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)]
                res[f"lat_{label}_q"] = quantiles(lat)
    finally:
        for d in sides:
            d.stop()
    for ns in (ns1, ns2):
        flush(ns)
        sh(ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=0")
    print(json.dumps(res))


def drain(args):
    """Daemon throughput without the kernel's event rate in the way: the
    sender is stopped while N flows are created, so their events queue in
    its netlink socket (sized to hold them all); then it is resumed and we
    time until the peer's external cache holds them all."""
    n, (ns1, ns2) = args.flows, args.ns
    # Big enough for every queued event: an event's buffer costs about 1 KiB.
    nlbuf = max(8 << 20, n * 2048)
    sides = pair(args, n, nlbuf)
    res = {"mode": "drain"}
    try:
        for d in sides:
            d.start()
        time.sleep(3)
        sender = sides[0].proc.pid
        os.kill(sender, signal.SIGSTOP)
        try:
            created, _ = load_result(sh(ns1, args.load, "create", str(n)))
        finally:
            os.kill(sender, signal.SIGCONT)
            cpu0, t0 = cpu_secs(sender), time.monotonic()
        count, last, last_move = -1, -1, t0
        while True:
            count = sides[1].external_count()
            now = time.monotonic()
            if count >= created:
                break
            if count != last:
                last, last_move = count, now
            if now - last_move > 20:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        # The CPU the sender spent draining; it is idle once the peer has all.
        cpu = cpu_secs(sender) - cpu0
        res["drain_created"] = created
        res["drain_arrived"] = count
        res["drain_rate"] = created / elapsed if count >= created else None
        res["drain_cpu_us"] = cpu * 1e6 / created
        res["drain_overruns"] = sides[0].loss_counters()
    finally:
        for d in sides:
            d.stop()
    for ns in (ns1, ns2):
        flush(ns)
    print(json.dumps(res))


def commit_and_release(res, sides, ns1, ns2, n, pids, rss0, rss1):
    """`-c` on fw2, checked against fw1 in both tuples; then fw1's flows
    go and we see how much of the memory they took each daemon keeps."""
    # Commit fw2's external cache into its kernel.
    t1 = time.monotonic()
    sides[1].cli("-c")
    deadline = time.monotonic() + 120
    while kernel_count(ns2) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    res["commit_s"] = time.monotonic() - t1
    # Committed flows must match fw1's in both tuples (NAT included).
    want_full = flow_set(sh(ns1, "conntrack", "-L"), full=True)
    res["committed"] = len(flow_set(sh(ns2, "conntrack", "-L"), full=True) & want_full)

    # The flows go: does the memory they took come back?
    flush(ns1)
    deadline = time.monotonic() + 60
    while sides[1].external_count() > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    rss2 = [rss_kib(p) for p in pids]
    for i, side in enumerate(("send", "recv")):
        grown = rss1[i] - rss0[i]
        res[f"rss_kept_{side}"] = (rss2[i] - rss0[i]) / grown if grown > 0 else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", choices=["ctsyncd", "conntrackd", "none"], required=True)
    ap.add_argument("--flows", type=int, required=True)
    ap.add_argument("--ns", nargs=2, required=True)
    ap.add_argument("--ctsyncd", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--drain", action="store_true", help="measure the SIGSTOP drain instead")
    ap.add_argument("--defaults", action="store_true", help="both daemons with default settings")
    ap.add_argument("--bulk", action="store_true", help="measure -n and -B into a fresh peer")
    ap.add_argument("--mixed", action="store_true", help="two load tools cycling for --seconds")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument(
        "--latency", action="store_true", help="creation to the peer's kernel, idle and at --flows/s"
    )
    args = ap.parse_args()
    n, (ns1, ns2) = args.flows, args.ns
    for ns in (ns1, ns2):
        flush(ns)
    if args.drain:
        return drain(args)
    if args.mixed:
        return mixed(args)
    if args.latency:
        return latency(args)

    if args.daemon == "none":
        done, rate = load_result(sh(ns1, args.load, "create", str(n), check=False))
        flush(ns1)
        # The kernel's delivery of queued events (the drain's limit), for at
        # most 200 000 flows: their events must fit one socket buffer.
        out = sh(ns1, args.load, "events", str(min(n, 200000)), check=False)
        m = re.search(r"= (\d+) events/s \(0 overruns, 0 failed\)", out)
        flush(ns1)
        print(json.dumps({"raw_rate": rate, "created": done,
                          "raw_event_rate": float(m.group(1)) if m else None}))
        return

    sides = pair(args, n, defaults=args.defaults)
    res = {"mode": "defaults" if args.defaults else "bulk" if args.bulk else "main"}
    try:
        for d in sides:
            d.start()
        # Let the pair find each other (heartbeats every second).
        time.sleep(3)
        pids = [d.proc.pid for d in sides]
        rss0 = [rss_kib(p) for p in pids]
        cpu0 = [cpu_secs(p) for p in pids]
        link0 = link(ns2)

        t0 = time.monotonic()
        load = subprocess.Popen(
            ["ip", "netns", "exec", ns1, args.load, "create", str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        # Converged once fw2's external cache holds every flow created; give
        # up after it has not moved for 20 s.
        count, last_move, last, target, out = -1, time.monotonic(), -1, n, None
        while True:
            count = sides[1].external_count()
            now = time.monotonic()
            if out is None and load.poll() is not None:
                # Creates the kernel refused (clashing tuples) are not flows.
                out = load.stdout.read()
                target = load_result(out)[0]
            if count >= target:
                break
            if count != last:
                last, last_move = count, now
            if now - last_move > 20 and load.poll() is not None:
                break
            time.sleep(0.05)
        t_conv = time.monotonic() - t0
        if out is None:
            out = load.communicate()[0]
        n, res["load_rate"] = load_result(out)
        res["created"] = n
        res["converged"] = count >= n
        res["converge_s"] = t_conv if count >= n else None
        # Trailing acknowledgements and heartbeats settle.
        time.sleep(1)
        res["ext_count"] = sides[1].external_count()
        cpu1 = [cpu_secs(p) for p in pids]
        link1 = link(ns2)
        rss1 = [rss_kib(p) for p in pids]
        res["cpu_send_per100k"] = (cpu1[0] - cpu0[0]) * 100000 / n
        res["cpu_recv_per100k"] = (cpu1[1] - cpu0[1]) * 100000 / n
        res["link_bytes_fwd"] = (link1["rx_bytes"] - link0["rx_bytes"]) / n
        res["link_pkts_fwd"] = (link1["rx_packets"] - link0["rx_packets"]) / n
        res["link_bytes_back"] = (link1["tx_bytes"] - link0["tx_bytes"]) / n
        res["link_pkts_back"] = (link1["tx_packets"] - link0["tx_packets"]) / n
        res["rss_send_per_flow"] = (rss1[0] - rss0[0]) * 1024 / n
        res["rss_recv_per_flow"] = (rss1[1] - rss0[1]) * 1024 / n
        res["rss_idle_kib"] = rss0
        res["loss_fw1"] = sides[0].loss_counters()
        res["loss_fw2"] = sides[1].loss_counters()
        both = (res["loss_fw1"], res["loss_fw2"])
        res["overruns"] = sum(c.get("netlink.overruns", c.get("netlink overrun", 0)) for c in both)
        res["gaps"] = res["loss_fw2"].get("protocol.nacks_sent", res["loss_fw2"].get("Lost msgs"))

        # Set equality: fw2's external cache against fw1's kernel table.
        want = flow_set(sh(ns1, "conntrack", "-L"))
        have = flow_set(sides[1].cli("-e"))
        res["kernel_fw1"] = len(want)
        res["missing"] = len(want - have)
        res["extra"] = len(have - want)
        res["set_equal"] = want == have
        if want != have:
            res["sample_missing"] = str(sorted(want - have)[:1])
            res["sample_extra"] = str(sorted(have - want)[:1])

        if args.bulk:
            bulk(res, sides, want)
        elif not args.defaults:
            commit_and_release(res, sides, ns1, ns2, n, pids, rss0, rss1)
    finally:
        for d in sides:
            d.stop()
    for ns in (ns1, ns2):
        flush(ns)
    print(json.dumps(res))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one line for the caller's log
        print(f"measure: {e}", file=sys.stderr)
        sys.exit(1)
