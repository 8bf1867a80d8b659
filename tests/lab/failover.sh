#!/usr/bin/env bash
# Failover test in the lab (lab.sh): a TCP stream and a UDP flow from the
# client to the server through the virtual IPs and SNAT, background flows
# in fw1's table, then LAB_CYCLES rounds of failover (fw1's keepalived
# stopped with SIGTERM, fw2 takes over and its notify_master commits) and
# fail-back (fw1's keepalived started again, it preempts). Prints, per
# switch, the time from the trigger to the end of the new master's notify
# run and the longest gap seen by the TCP server and the UDP client.
#
# Environment:
#   CTSYNCD         ctsyncd binary; unset or empty: no state sync at all
#                   (the negative control)
#   LAB_EXPECT      survive (default with CTSYNCD) or break (default without):
#                   exit 0 only if the TCP stream did what was expected;
#                   measure: exit 0 either way, report what happened
#   LAB_CYCLES      failover/fail-back rounds (10)
#   LAB_FLOWS       background flows added to fw1's table (100000)
#   LAB_TRIGGER     sigterm (default: fw1's keepalived stopped with SIGTERM,
#                   started again to fail back) or links (fw1's LAN and WAN
#                   links set down, so fw2 must notice the silence; set up
#                   again to fail back)
#   LAB_HOLD        seconds on each master before the next switch (4; above
#                   the client's 3 s TCP user timeout, so a stalled stream
#                   aborts instead of resuming on the old master)
#   LAB_BASELINE_CYCLES  rounds before the background flows are added (0):
#                   the report gives the outage of both phases side by side
#   LAB_CTLOAD      examples/ctload binary: fill fw1's table with it instead
#                   of labtool.py's ctflood (much faster)
#   LAB_FORGET      1: before each failover, delete the stream's entries from
#                   fw2's kernel and have fw2's ctsyncd ask fw1 for its table,
#                   so that what fw2 holds of the stream comes from state
#                   sync alone, never from having carried it in an earlier
#                   round (which its kernel remembers for the purge timeout)
#   LAB_UDP_SERVER  echo (default) or push: the UDP server also sends on its
#                   own, always to the client's first address and port, so
#                   its datagrams reach the VIP through the switch
#   LAB_UDP_CLIENT_INTERVAL_MS  how often the UDP client sends (LAB_INTERVAL_MS)
#   LAB_UDP_MAX_GAP_MS  judge the UDP stream too: fail if it was silent
#                   longer than this (its end included)
#   LAB_CHECK       1: after each switch, once the pair is quiet, check the
#                   handover invariants on full dumps (labtool.py tables):
#                   the new master's kernel holds every flow the old one's
#                   held before the switch, its internal cache equals its
#                   kernel, the peer's external cache equals that; the run
#                   fails if one does not hold. The dumps are taken once
#                   the pair is quiet: LAB_QUIET s (1) after the switch and
#                   once the peer's external cache counts as many flows as
#                   the new master's internal one, or LAB_QUIET_MAX s (3)
#   LAB_ID          run id in every name (default: pid and a random number)
#   LAB_KEEP_WORK   keep /tmp/ctsync-lab-ID (logs, events) after the run
# and lab.sh's LAB_TCP_LOOSE, LAB_DIRECT, LAB_READY.
# Everything the run made is removed on exit, failed or not; `lab.sh down ID`
# does the same from outside (the Rust test's guard calls it).
set -euo pipefail
. "$(dirname "$0")/lab.sh"

CTSYNCD=${CTSYNCD:-}
if [ -n "$CTSYNCD" ]; then EXPECT=${LAB_EXPECT:-survive}; else EXPECT=${LAB_EXPECT:-break}; fi
CYCLES=${LAB_CYCLES:-10}
FLOWS=${LAB_FLOWS:-100000}
HOLD=${LAB_HOLD:-4}
BASELINE_CYCLES=${LAB_BASELINE_CYCLES:-0}
TRIGGER=${LAB_TRIGGER:-sigterm}
case "$TRIGGER" in sigterm | links) ;; *) echo "LAB_TRIGGER: sigterm or links" >&2; exit 2 ;; esac
lab_names "${LAB_ID:-$$-$RANDOM}"
# The interpreter itself, not a wrapper (pyenv's shim forks): "$!" must be
# the process that handles SIGTERM.
TOOL="$(python3 -c 'import sys; print(sys.executable)') $LAB_DIR/labtool.py"
# The streams' ends run before the daemons on the CPU: a gap they report is
# then the network's, not a scheduler's delay of the measuring process on a
# busy machine (forwarding itself runs in the kernel, unaffected). nice
# execs the interpreter, so "$!" stays the process that handles SIGTERM.
BOOST="nice -n -15"
T0=$(ms)

trap 'lab_exit $?' EXIT
trap 'exit 130' INT TERM

for tool in ip nft keepalived conntrack python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
[ -z "$CTSYNCD" ] || [ -x "$CTSYNCD" ] || die "CTSYNCD=$CTSYNCD is not executable"

log "lab up (sync: ${CTSYNCD:-none}, expect: $EXPECT, cycles: $BASELINE_CYCLES + $CYCLES, flows: $FLOWS, trigger: $TRIGGER, tcp_loose: ${LAB_TCP_LOOSE:-0}, direct: ${LAB_DIRECT:-0})"
lab_up
if [ -n "$CTSYNCD" ]; then
    printf 'CTSYNCD=%s\nMIXED_CTSYNCD=%s\n' "$CTSYNCD" "${MIXED_CTSYNCD:-}" >"$WORK/sync.env"
    ctsyncd_start fw1
    ctsyncd_start fw2
fi
keepalived_start fw1
keepalived_start fw2
wait_master fw1 0 || die "fw1 did not become master"
log "fw1 is master"

ip netns exec "$NS_SERVER" $BOOST $TOOL tcp-server "$SERVER_IP" 5001 "$WORK/tcp-server.json" "$WORK/tcp-gaps" &
echo $! >"$WORK/tcp-server.job"
ip netns exec "$NS_SERVER" $BOOST $TOOL udp-server "$SERVER_IP" 5002 "${LAB_UDP_SERVER:-echo}" &
echo $! >"$WORK/udp-server.job"
for _ in $(seq 100); do [ -e "$WORK/tcp-server.json.ready" ] && break; sleep 0.05; done
ip netns exec "$NS_CLIENT" $BOOST $TOOL tcp-client "$SERVER_IP" 5001 "$WORK/tcp-client.json" &
CLIENT=$!
echo $CLIENT >"$WORK/tcp-client.job"
ip netns exec "$NS_CLIENT" $BOOST $TOOL udp-client "$SERVER_IP" 5002 "$WORK/udp-client.json" &
UDP_CLIENT=$!
echo $UDP_CLIENT >"$WORK/udp-client.job"
sleep 0.5
kill -0 "$CLIENT" 2>/dev/null || die "the TCP client could not connect"
check_path fw1 || die "the client or the server does not send to fw1"
in_ns "$NS_FW1" conntrack -L -p tcp --dport 5001 2>/dev/null | grep -q "dst=$WAN_VIP" ||
    die "the TCP stream is not SNATed to $WAN_VIP on fw1"

# $1 rounds of failover and fail-back.
cycles() {
    local i t
    for i in $(seq "$1"); do
        [ "${LAB_FORGET:-0}" = 1 ] && forget_stream
        snapshot fw1
        t=$(ms)
        event trigger failover "$i"
        if [ "$TRIGGER" = links ]; then
            ip -n "$NS_FW1" link set lan0 down
            ip -n "$NS_FW1" link set wan0 down
        else
            keepalived_stop fw1
        fi
        wait_master fw2 "$t" || die "failover $i: fw2 did not take over"
        event switched failover "$i"
        log "failover $i: fw2 master and notified after $(($(ms) - t)) ms"
        check_tables "failover $i" fw2 fw1 "$HOLD"
        check_path fw2 || die "failover $i: the client or the server still sends to fw1"

        snapshot fw2
        t=$(ms)
        event trigger failback "$i"
        if [ "$TRIGGER" = links ]; then
            ip -n "$NS_FW1" link set lan0 up
            ip -n "$NS_FW1" link set wan0 up
        else
            keepalived_start fw1
        fi
        wait_master fw1 "$t" || die "fail-back $i: fw1 did not take over"
        event switched failback "$i"
        log "fail-back $i: fw1 master and notified after $(($(ms) - t)) ms"
        check_tables "fail-back $i" fw1 fw2 "$HOLD"
        check_path fw1 || die "fail-back $i: the client or the server still sends to fw2"
        if [ "$EXPECT" != break ] && ! kill -0 "$CLIENT" 2>/dev/null; then
            log "the TCP client stopped during round $i"
            return 1
        fi
    done
}

# LAB_CHECK: the old master's kernel table just before a switch.
snapshot() {
    [ "${LAB_CHECK:-0}" = 1 ] || return 0
    in_ns "$(fw_ns "$1")" conntrack -L >"$WORK/before" 2>/dev/null || true
}

# Hold the new master $2 for $4 seconds; with LAB_CHECK, take the dumps for
# the handover invariants on the way (once the pair is quiet: see below)
# and compare them in the background, so that the check does not lengthen
# the hold: the expiries of the purge must race the next commit as they do
# without it. $1 names the switch, $3 is the peer.
CHECKS=()
check_tables() {
    local start d
    start=$(ms)
    if [ "${LAB_CHECK:-0}" = 1 ] && [ -n "$CTSYNCD" ]; then
        d=$WORK/check-${#CHECKS[@]}
        mkdir -p "$d"
        mv "$WORK/before" "$d/before"
        sleep "${LAB_QUIET:-1}"
        # Quiet means the peer's external cache has caught up with the new
        # master's bulk (in direct-to-kernel mode the peer writes it into
        # its kernel as it comes, which takes longer): wait for the counts
        # to match, up to LAB_QUIET_MAX s (3) after the switch; only then
        # does the check lengthen the hold.
        local until=$((start + ${LAB_QUIET_MAX:-3} * 1000)) n_int n_ext
        while [ "$(ms)" -lt "$until" ]; do
            n_int=$(daemon_stat "$2" internal.active)
            n_ext=$(daemon_stat "$3" external.active)
            [ "$n_int" != 0 ] && [ "$n_int" = "$n_ext" ] && break
            sleep 0.1
        done
        # Side by side, so that the three dumps see the same moment.
        local dumps=()
        in_ns "$(fw_ns "$2")" conntrack -L >"$d/kernel" 2>/dev/null &
        dumps+=($!)
        in_ns "$(fw_ns "$2")" "$CTSYNCD" -C "$WORK/$2/ctsyncd.yaml" -i >"$d/internal" 2>/dev/null &
        dumps+=($!)
        in_ns "$(fw_ns "$3")" "$CTSYNCD" -C "$WORK/$3/ctsyncd.yaml" -e >"$d/external" 2>/dev/null &
        dumps+=($!)
        wait "${dumps[@]}" 2>/dev/null || true
        (
            if $TOOL tables "$1" "$d/before" "$d/kernel" "$d/internal" "$d/external" >"$d/result"; then
                event tables ok "$1"
            else
                event tables broken "$1"
            fi
            cat "$d/result" >>"$WORK/tables"
            sed 's/^/[tables] /' "$d/result" >&2
            rm -rf "$d"
        ) &
        CHECKS+=($!)
    fi
    sleep "$(python3 -c "print(max(0, $4 - ($(ms) - $start) / 1000))")"
}

# LAB_FORGET: fw2 forgets the streams, then relearns them from fw1 (in
# direct-to-kernel mode, into its kernel: wait until they are there).
forget_stream() {
    local n=0 deadline
    in_ns "$NS_FW2" conntrack -D -p tcp --dport 5001 >/dev/null 2>&1 || true
    in_ns "$NS_FW2" conntrack -D -p udp --dport 5002 >/dev/null 2>&1 || true
    in_ns "$NS_FW2" "$CTSYNCD" -C "$WORK/fw2/ctsyncd.yaml" -n >/dev/null 2>&1 || true
    if [ "${LAB_DIRECT:-0}" = 1 ]; then
        deadline=$(($(ms) + 10000))
        while [ "$(ms)" -lt "$deadline" ]; do
            n=$(in_ns "$NS_FW2" conntrack -L -p tcp --dport 5001 2>/dev/null | grep -c ESTABLISHED) || n=0
            [ "$n" -gt 0 ] && break
            sleep 0.05
        done
        [ "$n" -gt 0 ] || log "WARNING: fw2's kernel did not get the stream back from fw1"
    else
        sleep 1
    fi
}

# A number from `ctsyncd -s --json` of $1, e.g. external.active.
daemon_stat() {
    in_ns "$(fw_ns "$1")" "$CTSYNCD" -C "$WORK/$1/ctsyncd.yaml" -s --json 2>/dev/null |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    d = d[k]
print(d)' "$2" 2>/dev/null || echo 0
}

stopped=0
if [ "$BASELINE_CYCLES" -gt 0 ]; then
    event phase baseline
    cycles "$BASELINE_CYCLES" || stopped=1
fi

if [ "$FLOWS" -gt 0 ] && [ "$stopped" = 0 ]; then
    if [ -n "${LAB_CTLOAD:-}" ]; then
        in_ns "$NS_FW1" "$LAB_CTLOAD" create "$FLOWS" >&2 || die "could not fill fw1's table"
    else
        in_ns "$NS_FW1" $TOOL ctflood "$FLOWS" "$WAN_VIP" >&2 || die "could not fill fw1's table"
    fi
    if [ -n "$CTSYNCD" ]; then
        # Wait until fw2's external cache holds fw1's table (and, in
        # direct-to-kernel mode, fw2's kernel too).
        t=$(ms) n=0 k=0
        while [ $(($(ms) - t)) -lt 60000 ]; do
            if [ -z "${MIXED_CTSYNCD:-}" ]; then
                n=$(daemon_stat fw2 external.active)
            else
                n=$(in_ns "$NS_FW2" "$CTSYNCD" -C "$WORK/fw2/ctsyncd.yaml" -e 2>/dev/null | wc -l) || n=0
            fi
            k=$FLOWS
            [ "${LAB_DIRECT:-0}" = 1 ] && k=$(in_ns "$NS_FW2" conntrack -C 2>/dev/null || echo 0)
            [ "$n" -ge "$FLOWS" ] && [ "$k" -ge "$FLOWS" ] && break
            sleep 0.5
        done
        log "fw2's external cache: $n flows, its kernel: $k flows after $(($(ms) - t)) ms"
        [ "$n" -ge "$FLOWS" ] || log "WARNING: fw2 did not learn all $FLOWS background flows"
    fi
fi
sleep 1

event phase background "$FLOWS"
[ "$stopped" = 0 ] && cycles "$CYCLES" || true

kill -TERM "$CLIENT" "$UDP_CLIENT" 2>/dev/null || true
wait "$CLIENT" 2>/dev/null || true
wait "$UDP_CLIENT" 2>/dev/null || true
for _ in $(seq 100); do [ -e "$WORK/tcp-server.json" ] && break; sleep 0.05; done
for job in tcp-server udp-server; do
    pid=$(cat "$WORK/$job.job")
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
event end
[ ${#CHECKS[@]} -eq 0 ] || wait "${CHECKS[@]}" 2>/dev/null || true
LAB_EXTRA_LOGS=("$WORK/tables")
log "run took $(($(ms) - T0)) ms"
# ctsyncd's own account of its last commits (count, first 1 %, total) and,
# in direct-to-kernel mode, of its kernel writes.
if [ -n "$CTSYNCD" ] && [ -z "${MIXED_CTSYNCD:-}" ]; then
    grep -h "committed" "$WORK"/fw?/ctsyncd.log 2>/dev/null | tail -n 4 >&2 || true
    # Commits that met entries in the way of synced NAT mappings.
    grep -h "deleted first" "$WORK"/fw?/ctsyncd.log 2>/dev/null >&2 || true
    if [ "${LAB_DIRECT:-0}" = 1 ]; then
        for fw in fw1 fw2; do
            log "$fw direct-to-kernel: $(daemon_stat "$fw" direct | tr -d "{}'")"
        done
    fi
fi
rc=0
$TOOL report "$WORK" "$EXPECT" || rc=$?
if [ "${LAB_CHECK:-0}" = 1 ]; then
    broken=$(grep -c " tables broken " "$WORK/events") || true
    checked=$(grep -c " tables \(ok\|broken\) " "$WORK/events") || true
    if [ "$broken" -gt 0 ]; then
        [ "$EXPECT" = measure ] || die "the handover invariants broke after $broken of $checked switches"
        log "MEASURED: the handover invariants broke after $broken of $checked switches"
    else
        log "the handover invariants held after all $checked switches"
    fi
fi
exit "$rc"
