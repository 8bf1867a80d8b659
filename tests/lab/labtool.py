#!/usr/bin/env python3
"""Traffic, table filling and the verdict of the failover lab.

  labtool.py tcp-server IP PORT RESULT GAPS   counts a stream, checks order
  labtool.py tcp-client IP PORT RESULT        sends a counter every 10 ms
  labtool.py udp-server IP PORT [push]        echoes datagrams (push: sends
                                              every 10 ms to the first sender)
  labtool.py udp-client IP PORT RESULT        sends every 10 ms, counts echoes
  labtool.py ctflood COUNT                    adds COUNT flows to the kernel table
  labtool.py ftp-client pasv|port SERVER OWN_IP   announces a data connection,
                                              waits for a line on stdin, then
                                              transfers "payload"
  labtool.py tables WHEN BEFORE KERNEL INTERNAL EXTERNAL   the handover
                                              invariants over four table dumps
                                              (conntrack -L, ctsyncd -i/-e):
                                              exit 0 if they hold
  labtool.py report WORK survive|break|measure  prints figures, exit 0 if as
                                              expected (measure: always)

Clients and servers stop on SIGTERM and then write RESULT (JSON). Times are
wall-clock milliseconds, so they line up with the lab's event log.
"""

import errno
import json
import os
import select
import signal
import socket
import struct
import sys
import time

INTERVAL = float(os.environ.get("LAB_INTERVAL_MS", "10")) / 1000.0
# The UDP client's own sending: sparse keepalives beside a pushing server
# (a media or VPN stream) make the server's datagrams the first to reach a
# new master.
UDP_CLIENT_INTERVAL = float(os.environ.get("LAB_UDP_CLIENT_INTERVAL_MS", "0")) / 1000.0 or INTERVAL
# A stall longer than this aborts the client's connection (TCP_USER_TIMEOUT):
# with TCP's retransmission back-off, a stream that stalls this long would
# otherwise resume on the old master after fail-back and hide the break.
USER_TIMEOUT_MS = int(os.environ.get("LAB_USER_TIMEOUT_MS", "3000"))
# Gaps from this long on are logged; the report's outage of a switch is the
# longest gap after it (shorter ones count as 0).
GAP_LOG_MS = float(os.environ.get("LAB_GAP_LOG_MS", "50"))


class Stop(Exception):
    """Raised from the SIGTERM handler to end the main loop."""


def on_term(_sig, _frame):
    raise Stop()


def now_ms():
    return time.time() * 1000.0


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def tcp_server(ip, port, result, gaps_path):
    res = {"received": 0, "order_errors": 0, "first_order_error": None, "max_gap_ms": 0.0,
           "end_seen": False, "end_count": None, "reset": False, "eof": False,
           "terminated": False, "error": None}
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((ip, int(port)))
    lst.listen(1)
    open(result + ".ready", "w").close()
    gaps = open(gaps_path, "w", buffering=1)
    signal.signal(signal.SIGTERM, on_term)
    expected = 0
    last = None
    buf = b""
    try:
        conn, _ = lst.accept()
        while True:
            data = conn.recv(65536)
            t = now_ms()
            if not data:
                res["eof"] = not res["end_seen"]
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"END "):
                    res["end_seen"] = True
                    res["end_count"] = int(line[4:])
                    continue
                seq = int(line)
                if seq != expected:
                    res["order_errors"] += 1
                    if res["first_order_error"] is None:
                        res["first_order_error"] = {"expected": expected, "got": seq}
                expected = seq + 1
                res["received"] += 1
                if last is not None:
                    gap = t - last
                    if gap > res["max_gap_ms"]:
                        res["max_gap_ms"] = gap
                    if gap >= GAP_LOG_MS:
                        gaps.write("%d %.1f %d\n" % (t, gap, seq))
                last = t
            if res["end_seen"]:
                conn.close()
                break
    except Stop:
        res["terminated"] = True
    except ConnectionResetError:
        res["reset"] = True
    except (OSError, ValueError) as e:
        res["error"] = repr(e)
    write_json(result, res)


class Flag:
    """Set by SIGTERM; the senders check it between two messages, so a
    message is never cut in half."""

    stop = False

    @classmethod
    def set(cls, _sig, _frame):
        cls.stop = True


def tcp_client(ip, port, result):
    res = {"sent": 0, "error": None, "clean_close": False}
    signal.signal(signal.SIGTERM, Flag.set)
    sock = socket.create_connection((ip, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    sock.settimeout(None)
    seq = 0
    nxt = time.monotonic()
    try:
        while not Flag.stop:
            nxt += INTERVAL
            delay = nxt - time.monotonic()
            # The server never sends data: readable means RST, an error
            # (the user timeout) or an early FIN.
            r, _, _ = select.select([sock], [], [], max(delay, 0))
            if r:
                if not sock.recv(1):
                    raise OSError("server closed the stream early")
            if Flag.stop:
                break
            sock.sendall(b"%d\n" % seq)
            seq += 1
            res["sent"] = seq
        sock.sendall(b"END %d\n" % seq)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        res["clean_close"] = sock.recv(1) == b""
    except OSError as e:
        res["error"] = "%s: %s" % (errno.errorcode.get(e.errno, "?"), e)
    write_json(result, res)
    sys.exit(0 if res["error"] is None else 1)


def udp_server(ip, port, mode="echo"):
    """echo: answers each datagram to its sender. push: also sends every
    INTERVAL on its own, and only ever to the first sender (as a media or
    VPN server does), so that a flow that comes back on another NAT port is
    a broken stream, not a new one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, int(port)))
    sock.setblocking(False)
    signal.signal(signal.SIGTERM, on_term)
    peer = None
    nxt = time.monotonic()
    try:
        while True:
            wait = max(nxt - time.monotonic(), 0) if mode == "push" and peer else None
            select.select([sock], [], [], wait)
            while True:
                try:
                    data, sender = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if mode != "push":
                    sock.sendto(data, sender)
                elif peer is None:
                    peer = sender
            if mode == "push" and peer and time.monotonic() >= nxt:
                nxt += INTERVAL
                try:
                    sock.sendto(b"push", peer)
                except OSError:
                    pass
    except Stop:
        pass


def udp_client(ip, port, result):
    res = {"sent": 0, "received": 0, "max_gap_ms": 0.0, "gaps": [], "errors": 0}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((ip, int(port)))
    sock.setblocking(False)
    signal.signal(signal.SIGTERM, Flag.set)
    last = None
    nxt = time.monotonic()
    stop_at = None

    def drain():
        nonlocal last
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                return
            except OSError:
                res["errors"] += 1
                return
            t = now_ms()
            res["received"] += 1
            if last is not None:
                gap = t - last
                res["max_gap_ms"] = max(res["max_gap_ms"], gap)
                if gap >= GAP_LOG_MS:
                    res["gaps"].append([int(t), round(gap, 1)])
            last = t

    while stop_at is None or time.monotonic() < stop_at:
        wake = stop_at if stop_at is not None else nxt
        select.select([sock], [], [], max(wake - time.monotonic(), 0))
        drain()
        if Flag.stop and stop_at is None:
            # Wait a little for the last echoes.
            stop_at = time.monotonic() + 0.5
        if Flag.stop and "end_ms" not in res:
            res["end_ms"] = now_ms()
        if stop_at is None and time.monotonic() >= nxt:
            nxt += UDP_CLIENT_INTERVAL
            try:
                sock.send(b"%d" % res["sent"])
                res["sent"] += 1
            except OSError:
                res["errors"] += 1
    res["last_ms"] = last
    write_json(result, res)


# ctnetlink (linux/netfilter/nfnetlink_conntrack.h)
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLMSG_ERROR = 2
IPCTNL_MSG_CT_NEW = (1 << 8) | 0
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_NAT_SRC, CTA_TIMEOUT = 6, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO = 1, 2, 3
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
IPS_SEEN_REPLY, IPS_ASSURED, IPS_SRC_NAT = 2, 4, 0x10
# Bits the kernel has already set when it applies CTA_STATUS to a new flow
# (confirmed, NAT done); a status that would clear them is refused (EBUSY).
IPS_KERNEL_SET = 0x8 | 0x80 | 0x100
TCP_CONNTRACK_ESTABLISHED = 3


def nla(kind, payload, nested=False):
    hdr = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return hdr + payload + b"\0" * (-len(payload) % 4)


def tuple_attr(kind, src, dst, proto, sport, dport):
    ip = nla(CTA_IP_V4_SRC, socket.inet_aton(src)) + nla(CTA_IP_V4_DST, socket.inet_aton(dst))
    pr = (nla(CTA_PROTO_NUM, bytes([proto])) + nla(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
          + nla(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return nla(kind, nla(CTA_TUPLE_IP, ip, True) + nla(CTA_TUPLE_PROTO, pr, True), True)


def flow_msg(i, seq, nat_ip, timeout):
    """Flow i: a LAN host to a server on the Internet, SNATed to nat_ip."""
    proto = 17 if i % 5 == 0 else 6
    src = "192.168.60.%d" % (20 + i % 200)
    sport = 1024 + i // 200
    d = i % 65000
    dst = "198.18.%d.%d" % (d >> 8, d & 255)
    dport = 53 if proto == 17 else 443
    natport = 1024 + i % 60000
    body = tuple_attr(CTA_TUPLE_ORIG, src, dst, proto, sport, dport)
    body += tuple_attr(CTA_TUPLE_REPLY, dst, nat_ip, proto, dport, natport)
    body += nla(CTA_STATUS, struct.pack("!I", IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT | IPS_KERNEL_SET))
    body += nla(CTA_TIMEOUT, struct.pack("!I", timeout))
    if proto == 6:
        tcp = nla(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED]))
        body += nla(CTA_PROTOINFO, nla(CTA_PROTOINFO_TCP, tcp, True), True)
    natproto = (nla(CTA_PROTONAT_PORT_MIN, struct.pack("!H", natport))
                + nla(CTA_PROTONAT_PORT_MAX, struct.pack("!H", natport)))
    nat = (nla(CTA_NAT_V4_MINIP, socket.inet_aton(nat_ip))
           + nla(CTA_NAT_V4_MAXIP, socket.inet_aton(nat_ip))
           + nla(CTA_NAT_PROTO, natproto, True))
    body += nla(CTA_NAT_SRC, nat, True)
    payload = struct.pack("=BBH", socket.AF_INET, 0, 0) + body
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return struct.pack("=IHHII", 16 + len(payload), IPCTNL_MSG_CT_NEW, flags, seq, 0) + payload


def ctflood(count, nat_ip="203.0.113.1", timeout=1200, batch=256):
    """Creates flows with batched CT_NEW requests; one ack per request."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((0, 0))
    t0 = time.monotonic()
    ok = failed = 0
    first_err = None
    i = 0
    while i < count:
        n = min(batch, count - i)
        sock.send(b"".join(flow_msg(i + k, i + k + 1, nat_ip, timeout) for k in range(n)))
        i += n
        pending = n
        while pending:
            data = sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                mlen, mtype = struct.unpack_from("=IH", data, off)
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    pending -= 1
                    if err == 0:
                        ok += 1
                    else:
                        failed += 1
                        first_err = first_err or os.strerror(-err)
                off += (mlen + 3) & ~3
    dt = time.monotonic() - t0
    print("ctflood: %d flows created, %d failed%s, in %.2f s"
          % (ok, failed, " (%s)" % first_err if first_err else "", dt))
    return 0 if failed == 0 else 1


def ftp_client(mode, server, own_ip):
    """Logs in anonymously and announces a data connection: PASV (the client
    will connect) or PORT (the server will connect back). Prints what it
    announced, waits for a line on stdin (the failover happens meanwhile),
    then transfers "payload" and prints "OK <bytes>" or "FAIL <why>"."""
    import ftplib
    import re
    ftp = ftplib.FTP()
    ftp.connect(server, 21, timeout=5)
    ftp.login()
    if mode == "pasv":
        resp = ftp.sendcmd("PASV")
        nums = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", resp).groups()
        host, port = ".".join(nums[:4]), int(nums[4]) * 256 + int(nums[5])
        print("PASV", host, port, flush=True)
    else:
        lsock = socket.create_server((own_ip, 0))
        lsock.settimeout(4)
        port = lsock.getsockname()[1]
        ftp.sendcmd("PORT %s,%d,%d" % (own_ip.replace(".", ","), port >> 8, port & 255))
        print("PORT", own_ip, port, flush=True)
    sys.stdin.readline()
    try:
        if mode == "pasv":
            data = socket.create_connection((host, port), timeout=4)
            ftp.sendcmd("RETR payload")
        else:
            ftp.putcmd("RETR payload")
            data, _ = lsock.accept()
            ftp.getresp()
        body = b""
        while True:
            chunk = data.recv(65536)
            if not chunk:
                break
            body += chunk
        data.close()
        ftp.voidresp()
        print("OK", len(body), flush=True)
    except Exception as e:  # the verdict is the output, not a traceback
        print("FAIL", type(e).__name__, e, flush=True)


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def report(work, expect):
    events = []
    with open(os.path.join(work, "events")) as f:
        for line in f:
            p = line.split()
            if len(p) >= 2:
                events.append((int(p[0]), p[1:]))
    gaps = []
    try:
        with open(os.path.join(work, "tcp-gaps")) as f:
            gaps = [(float(a), float(b)) for a, b, _ in (ln.split() for ln in f)]
    except OSError:
        pass
    srv = load(os.path.join(work, "tcp-server.json"), {})
    cli = load(os.path.join(work, "tcp-client.json"), {})
    udp = load(os.path.join(work, "udp-client.json"), {})
    triggers = [(t, e[1], e[2]) for t, e in events if e[0] == "trigger"]
    phases = [(t, e[1]) for t, e in events if e[0] == "phase"]
    end_t = max(t for t, _ in events) if events else 0
    # The outage of a switch is the longest gap that began within this long
    # after its trigger (the addresses move within about 100 ms): later
    # stalls come from the notify scripts' work on a machine that runs both
    # firewalls, and are shown apart (round-max-ms).
    window = float(os.environ.get("LAB_SWITCH_WINDOW_MS", "1000"))
    print("%-10s %-9s %5s %13s %9s %15s %10s %10s %13s" % (
        "phase", "switch", "cycle", "to-commit-ms", "commit-ms", "to-notified-ms", "tcp-gap-ms",
        "udp-gap-ms", "round-max-ms"))
    outages = {}

    def first(t, fw, *words):
        return next(((u, e) for u, e in events if u >= t and e[1:2] == [fw] and
                     [e[0]] + e[2:1 + len(words)] == list(words)), None)

    for k, (t, kind, cyc) in enumerate(triggers):
        until = triggers[k + 1][0] if k + 1 < len(triggers) else end_t + 10000
        new = "fw2" if kind == "failover" else "fw1"
        c_start = first(t, new, "cmd", "-c", "start")
        c_end = first(t, new, "cmd", "-c", "end")
        n_end = first(t, new, "notify", "primary", "end")
        round_max = max([g for a, g in gaps if t <= a < until], default=0.0)
        tcp_gap = max([g for a, g in gaps if t <= a - g < t + window and a < until], default=0.0)
        udp_gap = max([g for a, g in udp.get("gaps", []) if t <= a - g < t + window and a < until],
                      default=0.0)
        phase = next((p for u, p in reversed(phases) if u <= t), "-")
        outages.setdefault((phase, kind), []).append(tcp_gap)
        print("%-10s %-9s %5s %13s %9s %15s %10.0f %10.0f %13.0f" % (
            phase, kind, cyc, "%d" % (c_end[0] - t) if c_end else "-",
            "%d" % (c_end[0] - c_start[0]) if c_end and c_start else "-",
            "%d" % (n_end[0] - t) if n_end else "-", tcp_gap, udp_gap, round_max))
    # One line per phase and direction, for the tests and the closing notes:
    # the median and the worst outage the TCP stream saw.
    for phase in sorted({p for p, _ in outages}):
        both = outages.get((phase, "failover"), []) + outages.get((phase, "failback"), [])
        for kind, gs in (("failover", outages.get((phase, "failover"), [])),
                         ("failback", outages.get((phase, "failback"), [])), ("all", both)):
            if not gs:
                continue
            gs = sorted(gs)
            mid = len(gs) // 2
            median = gs[mid] if len(gs) % 2 else (gs[mid - 1] + gs[mid]) / 2
            print("OUTAGE phase=%s switch=%s n=%d median_ms=%.0f max_ms=%.0f"
                  % (phase, kind, len(gs), median, gs[-1]))
    # primary-backup.sh logs a failed step and goes on: look at each step.
    failed_cmds = ["%s %s (rc %s)" % (e[1], e[2], e[4]) for _, e in events
                   if e[0] == "cmd" and e[3] == "end" and e[2] != "-s" and e[4] != "0"]
    failed_cmds += ["notify %s %s (rc %s)" % (e[1], e[2], e[4]) for _, e in events
                    if e[0] == "notify" and e[3] == "end" and e[4] != "0"]
    problems = []
    if srv.get("reset"):
        problems.append("the server saw a reset")
    if srv.get("eof"):
        problems.append("the server saw EOF before the end marker")
    if not srv.get("end_seen"):
        problems.append("the stream never reached its end marker")
    if srv.get("order_errors"):
        problems.append("%d counters out of order (first %s)"
                        % (srv["order_errors"], srv["first_order_error"]))
    if srv.get("end_seen") and srv.get("end_count") != srv.get("received"):
        problems.append("%s counters sent, %s received" % (srv.get("end_count"), srv.get("received")))
    if cli.get("error"):
        problems.append("the client's stream failed: %s" % cli["error"])
    if srv.get("error"):
        problems.append("the server failed: %s" % srv["error"])
    max_gap = float(os.environ.get("LAB_MAX_GAP_MS", "3000"))
    if srv.get("max_gap_ms", 0) > max_gap:
        problems.append("longest gap %.0f ms > %.0f ms" % (srv["max_gap_ms"], max_gap))
    print("tcp: %s counters sent, %s received in order, longest gap %.0f ms"
          % (cli.get("sent"), srv.get("received"), srv.get("max_gap_ms", 0)))
    print("udp: %s sent, %s echoes received, longest gap %.0f ms"
          % (udp.get("sent"), udp.get("received"), udp.get("max_gap_ms", 0)))
    for p in problems:
        print("tcp stream broken: " + p)
    # LAB_UDP_MAX_GAP_MS: the UDP stream is judged too, by its longest gap,
    # the silence at its end included (a stream that stopped for good).
    udp_limit = os.environ.get("LAB_UDP_MAX_GAP_MS")
    if udp_limit:
        tail = (udp.get("end_ms") or 0) - (udp.get("last_ms") or 0)
        udp_gap = max(udp.get("max_gap_ms", 0), tail)
        if udp_gap > float(udp_limit):
            problems.append("udp stream: longest gap %.0f ms > %s ms" % (udp_gap, udp_limit))
            print("udp stream broken: longest gap %.0f ms (%.0f ms silent at the end)" % (udp_gap, tail))
    if expect == "measure":
        print("MEASURED: the TCP stream %s" % ("broke: " + problems[0] if problems else "survived"))
        return 0
    if expect == "survive":
        if failed_cmds:
            print("FAIL: ctsyncd commands run by primary-backup.sh failed: "
                  + ", ".join(failed_cmds))
            return 1
        if problems:
            print("FAIL: the TCP stream did not survive the failovers")
            return 1
        print("PASS: the TCP stream survived every failover and fail-back")
        return 0
    if not problems:
        print("FAIL: the stream survived without state sync: the ruleset is too loose")
        return 1
    print("PASS: without state sync the failover breaks the TCP stream (the lab is strict)")
    return 0


SYNC_NET = "10.255.0."


def flow_keys(path):
    """The flows of a dump in conntrack's one-line format (conntrack -L,
    ctsyncd -i/-e), each as its protocol and both tuples, so that a flow that
    kept its original tuple but got another NAT mapping counts as different."""
    keys = set()
    with open(path) as f:
        for line in f:
            words = line.split()
            if not words or "=" in words[0]:
                continue
            fields = [w for w in words if w.split("=", 1)[0] in
                      ("src", "dst", "sport", "dport", "type", "code", "id")]
            # The sync link's own traffic, which ctsyncd never replicates.
            if fields and not fields[0].startswith("src=" + SYNC_NET):
                keys.add((words[0],) + tuple(fields))
    return keys


def tables(when, before, kernel, internal, external):
    """The handover invariants (docs/PROTOCOL.md): the new master's kernel
    holds every flow the old master's kernel held before the switch, the new
    master's internal cache equals its kernel, the peer's external cache
    equals that internal cache. Prints one line; exit 0 if they hold."""
    b, k, i, e = (flow_keys(p) for p in (before, kernel, internal, external))
    lost = b - k
    problems = []
    if lost:
        problems.append("%d flows of the old master's kernel missing from the new master's kernel (e.g. %s)"
                        % (len(lost), " ".join(sorted(lost)[0][1:])))
    # The internal cache holds what the filter accepts: compare only in the
    # direction that loses flows, plus whatever it holds that the kernel lacks.
    missing_i = (k & b) - i
    extra_i = i - k
    if missing_i:
        problems.append("%d flows of the kernel missing from the internal cache (e.g. %s)"
                        % (len(missing_i), " ".join(sorted(missing_i)[0][1:])))
    if extra_i:
        problems.append("%d flows in the internal cache that the kernel lacks" % len(extra_i))
    if i != e:
        problems.append("the peer's external cache differs: %d missing, %d extra"
                        % (len(i - e), len(e - i)))
    print("%s: before %d, kernel %d, internal %d, external %d%s"
          % (when, len(b), len(k), len(i), len(e),
             "" if not problems else ": " + "; ".join(problems)))
    return 1 if problems else 0


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "tcp-server":
        tcp_server(*args)
    elif cmd == "tcp-client":
        tcp_client(*args)
    elif cmd == "udp-server":
        udp_server(*args)
    elif cmd == "udp-client":
        udp_client(*args)
    elif cmd == "ctflood":
        return ctflood(int(args[0]), *args[1:2])
    elif cmd == "ftp-client":
        ftp_client(*args)
    elif cmd == "tables":
        return tables(*args)
    elif cmd == "report":
        return report(args[0], args[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
