#!/usr/bin/env bash
# FTP through a keepalived failover (lab.sh, docs/active-active.md): the
# control connections are opened through fw1, keepalived moves the virtual
# IPs to fw2 (whose notify script commits with primary-backup.sh), then a
# passive and an active data connection must pass fw2. The ruleset lets a
# data connection in only as `related`, so each passes only if fw2 holds
# the expectation fw1's ftp helper created: synced with LAB_EXPECTATIONS=1,
# not without it (the negative control, LAB_EXPECT=break).
#
# Real components: vsftpd, Python's ftplib, nftables with the kernel's ftp
# helper and SNAT to the WAN virtual IP, keepalived, ctsyncd.
#
# Environment: CTSYNCD (required), LAB_EXPECTATIONS (1), LAB_EXPECT
# (survive: both transfers pass; break: both fail), LAB_ID, LAB_KEEP_WORK.
set -euo pipefail
. "$(dirname "$0")/lab.sh"

CTSYNCD=${CTSYNCD:?CTSYNCD must name the ctsyncd binary}
export LAB_FTP=1 LAB_EXPECTATIONS=${LAB_EXPECTATIONS:-1}
EXPECT=${LAB_EXPECT:-survive}
PAYLOAD_LEN=100000
TOOL="python3 $LAB_DIR/labtool.py"
lab_names "${LAB_ID:-$$-$RANDOM}"
LAB_EXTRA_LOGS=("$WORK"/ftp-pasv.out "$WORK"/ftp-port.out "$WORK/fw2-kernel-expect.out" "$WORK/vsftpd.log")
# The clients' stdin fifos are closed before the lab goes down.
trap 'rc=$?; exec 7>&- 8>&-; lab_exit "$rc"' EXIT
trap 'exit 130' INT TERM
for tool in ip nft keepalived vsftpd python3 ss; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

ctl() { in_ns "$(fw_ns "$1")" "$CTSYNCD" -C "$WORK/$1/ctsyncd.yaml" "${@:2}"; }
# Wait until "$@" succeeds, up to 10 s.
settle() {
    local deadline=$(($(ms) + 10000))
    until "$@"; do
        [ "$(ms)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}
control_flows_on_fw2() { [ "$(ctl fw2 -e | grep -c 'dport=21 ')" = 2 ]; }
expectations_on_fw2() { [ "$(ctl fw2 -e expect | grep -c 'helper=ftp')" = 2 ]; }
# No unacknowledged bytes on either end of the control connections: nothing
# of them is retransmitted after the switch (a 227 reply crossing fw2 would
# let fw2's own helper create the expectation, and the negative control
# would pass for the wrong reason).
quiescent() {
    local ns out
    for ns in "$NS_CLIENT" "$NS_SERVER"; do
        out=$(in_ns "$ns" ss -tnH state established '( sport = :21 or dport = :21 )')
        [ "$(printf '%s\n' "$out" | grep -c .)" = 2 ] || return 1
        printf '%s\n' "$out" | awk '$2 != 0 { bad = 1 } END { exit bad }' || return 1
    done
}
first_line() { head -n 1 "$1" 2>/dev/null; }

log "lab up (FTP, expectation sync: $LAB_EXPECTATIONS, expect: $EXPECT)"
lab_up
printf 'CTSYNCD=%s\nMIXED_CTSYNCD=\n' "$CTSYNCD" >"$WORK/sync.env"
ctsyncd_start fw1
ctsyncd_start fw2
keepalived_start fw1
keepalived_start fw2
wait_master fw1 || die "fw1 did not become master"
log "fw1 is master"

mkdir -p "$WORK/ftproot" "$WORK/empty"
head -c "$PAYLOAD_LEN" /dev/zero | tr '\0' x >"$WORK/ftproot/payload"
sed -e "s|@LISTEN@|$SERVER_IP|" -e "s|@ROOT@|$WORK/ftproot|" -e "s|@EMPTY@|$WORK/empty|" \
    "$LAB_DIR/vsftpd.conf.in" >"$WORK/vsftpd.conf"
ip netns exec "$NS_SERVER" vsftpd "$WORK/vsftpd.conf" >"$WORK/vsftpd.log" 2>&1 &
echo $! >"$WORK/vsftpd.job"
settle in_ns "$NS_SERVER" sh -c "ss -ltnH | grep -q '$SERVER_IP:21 '" || die "vsftpd did not listen"

# Two control connections, one per mode: the helper keeps one expectation
# per master. Each client waits on its own fifo for the go.
for mode in pasv port; do
    mkfifo "$WORK/ftp-$mode.in"
    ip netns exec "$NS_CLIENT" $TOOL ftp-client "$mode" "$SERVER_IP" "$CLIENT_IP" \
        <"$WORK/ftp-$mode.in" >"$WORK/ftp-$mode.out" 2>&1 &
    echo $! >"$WORK/ftp-$mode.job"
done
exec 7>"$WORK/ftp-pasv.in" 8>"$WORK/ftp-port.in"
settle grep -q '^PASV ' "$WORK/ftp-pasv.out" || die "passive client: $(first_line "$WORK/ftp-pasv.out")"
settle grep -q '^PORT ' "$WORK/ftp-port.out" || die "active client: $(first_line "$WORK/ftp-port.out")"
log "announced: $(first_line "$WORK/ftp-pasv.out"); $(first_line "$WORK/ftp-port.out")"

settle control_flows_on_fw2 || die "fw2 does not hold both control connections"
if [ "$LAB_EXPECTATIONS" = 1 ]; then
    settle expectations_on_fw2 || die "fw2 does not hold both expectations"
fi
settle quiescent || die "the control connections kept unacknowledged data"

t=$(ms)
keepalived_stop fw1
wait_master fw2 "$t" || die "fw2 did not take over"
log "fw2 master and notified after $(($(ms) - t)) ms"
grep -h "committed" "$WORK/fw2/notify.log" | tail -n 2 >&2 || true

# What fw2's kernel holds when the data connections start (shown on failure).
in_ns "$NS_FW2" conntrack -L expect >"$WORK/fw2-kernel-expect.out" 2>&1 || true
echo go >&7
echo go >&8
for mode in pasv port; do
    settle grep -qE '^(OK|FAIL)' "$WORK/ftp-$mode.out" || true
done
pasv=$(grep -E '^(OK|FAIL)' "$WORK/ftp-pasv.out" || echo "FAIL no verdict")
port=$(grep -E '^(OK|FAIL)' "$WORK/ftp-port.out" || echo "FAIL no verdict")
echo "FTP passive after failover: $pasv"
echo "FTP active after failover: $port"
case "$EXPECT" in
survive)
    [ "$pasv" = "OK $PAYLOAD_LEN" ] && [ "$port" = "OK $PAYLOAD_LEN" ] ||
        die "a data connection failed through fw2 with expectation sync"
    echo "PASS: passive and active FTP data connections passed fw2 after the failover"
    ;;
break)
    case "$pasv$port" in
    FAIL*FAIL*) ;;
    *) die "a data connection passed without its expectation: the ruleset is too loose" ;;
    esac
    echo "PASS: without expectation sync both data connections failed after the failover"
    ;;
*) die "LAB_EXPECT: survive or break" ;;
esac
