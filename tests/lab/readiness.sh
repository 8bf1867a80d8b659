#!/usr/bin/env bash
# Readiness test in the lab (lab.sh, docs/keepalived.md): a ctsyncd that has
# just started, with an empty external cache, must not take the virtual IPs
# from a ready master even though its keepalived has the higher priority,
# and must take them as soon as it holds the peer's table.
#
# fw1 (priority 150) runs ctsyncd and keepalived and is master. fw2 gets a
# fresh ctsyncd while its sync link is down, so the peer's table cannot
# arrive, and a keepalived with priority 200, minus 100 while its ready
# file says 1. After LAB_UNREADY_HOLD seconds fw1 must still be master;
# then the sync link comes up, fw2's bulk update completes, its ready file
# turns 0 and it preempts.
#
# Environment: CTSYNCD (required), LAB_UNREADY_HOLD (3), LAB_ID, LAB_KEEP_WORK.
set -euo pipefail
. "$(dirname "$0")/lab.sh"

CTSYNCD=${CTSYNCD:?CTSYNCD must name the ctsyncd binary}
HOLD=${LAB_UNREADY_HOLD:-3}
export LAB_READY=1 LAB_PRIO_FW1=150 LAB_PRIO_FW2=200
lab_names "${LAB_ID:-$$-$RANDOM}"
trap 'lab_exit $?' EXIT
trap 'exit 130' INT TERM
for tool in ip nft keepalived; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

ready_of() { cat "$WORK/$1/ready" 2>/dev/null || echo missing; }
wait_ready() {
    # $1: fw, $2: timeout ms
    local deadline=$(($(ms) + $2))
    while [ "$(ms)" -lt "$deadline" ]; do
        [ "$(ready_of "$1")" = 0 ] && return 0
        sleep 0.05
    done
    return 1
}

log "lab up (readiness: fw2 has the higher priority, 200 against 150)"
lab_up
printf 'CTSYNCD=%s\nMIXED_CTSYNCD=\n' "$CTSYNCD" >"$WORK/sync.env"
ctsyncd_start fw1
ctsyncd_start fw2
wait_ready fw1 10000 || die "fw1 never became ready (ready file: $(ready_of fw1))"
keepalived_start fw1
wait_master fw1 || die "fw1 did not become master"
log "fw1 is master and ready"

# A fresh fw2: its daemon restarts with an empty cache and cannot reach fw1.
kill -TERM "$(cat "$WORK/fw2/ctsyncd.job")"
for _ in $(seq 100); do
    kill -0 "$(cat "$WORK/fw2/ctsyncd.job")" 2>/dev/null || break
    sleep 0.05
done
ip -n "$NS_FW2" link set sync0 down
ctsyncd_start fw2
[ "$(ready_of fw2)" = 1 ] || die "a fresh ctsyncd says ready: $(ready_of fw2)"
t=$(ms)
event fresh fw2
keepalived_start fw2
sleep "$HOLD"
[ "$(master_of)" = fw1 ] || die "fw2 took the virtual IPs while not ready (master: $(master_of))"
! awk -v t="$t" '$1 >= t && $2 == "notify" && $3 == "fw2" && $4 == "primary"' "$WORK/events" | grep -q . ||
    die "fw2 became master while not ready"
log "after ${HOLD} s fw1 is still master; fw2's ready file says $(ready_of fw2)"

t=$(ms)
event sync-link up
ip -n "$NS_FW2" link set sync0 up
wait_ready fw2 20000 || die "fw2 never became ready once the sync link was up"
log "fw2 ready after $(($(ms) - t)) ms"
wait_master fw2 "$t" || die "fw2 did not take over once ready"
log "fw2 master and notified $(($(ms) - t)) ms after the sync link came up"
echo "PASS: a fresh ctsyncd waited for the peer's table before keepalived made it master"
