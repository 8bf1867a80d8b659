#!/usr/bin/env bash
# Readiness tests in the lab (lab.sh, docs/keepalived.md). Two scenarios
# (LAB_SCENARIO):
#
# fresh (default): a ctsyncd that has just started, with an empty external
# cache, must not take the virtual IPs from a ready master even though its
# keepalived has the higher priority, and must take them as soon as it
# holds the peer's table. fw1 (priority 150) runs ctsyncd and keepalived
# and is master. fw2 gets a fresh ctsyncd while its sync link is down, so
# the peer's table cannot arrive, and a keepalived with priority 200, minus
# 100 while it is not ready. After LAB_UNREADY_HOLD seconds fw1 must still
# be master; then the sync link comes up, fw2's bulk update completes and
# it preempts.
#
# dead-backup: a backup whose ctsyncd is not running must never look
# ready (DESIGN.md principle 8). fw1 (150) is master, fw2 (100) backup,
# both ready. For each way of stopping in LAB_DEAD_STOPS (kill: SIGKILL;
# term: a clean stop), fw2's daemon stops, then the master fails: its
# ctsyncd restarts and, its peer's daemon being dead, stays not ready, so
# fw1 runs at 150 - 100 = 50. A backup that looked ready (100) would take
# the VIPs; with LAB_EXPECT=hold (default) fw2 must not within
# LAB_UNREADY_HOLD seconds. Then fw2's daemon comes back, both become
# ready, and the master's keepalived stops: the ready fw2 takes over.
# LAB_EXPECT=takeover is the negative control: with LAB_READY=1 (the
# track_file a killed daemon leaves at 0) fw2 must take the VIPs.
#
# Environment: CTSYNCD (required), LAB_SCENARIO (fresh), LAB_READY (1 for
# fresh, script for dead-backup), LAB_UNREADY_HOLD (3 for fresh, 4 for
# dead-backup), LAB_DEAD_STOPS ("kill term"), LAB_EXPECT (hold), LAB_ID,
# LAB_KEEP_WORK.
set -euo pipefail
. "$(dirname "$0")/lab.sh"

CTSYNCD=${CTSYNCD:?CTSYNCD must name the ctsyncd binary}
SCENARIO=${LAB_SCENARIO:-fresh}
case "$SCENARIO" in
fresh) export LAB_READY=${LAB_READY:-1} LAB_PRIO_FW1=150 LAB_PRIO_FW2=200 ;;
dead-backup) export LAB_READY=${LAB_READY:-script} LAB_PRIO_FW1=150 LAB_PRIO_FW2=100 ;;
*) echo "LAB_SCENARIO must be fresh or dead-backup, not $SCENARIO" >&2; exit 2 ;;
esac
HOLD=${LAB_UNREADY_HOLD:-$([ "$SCENARIO" = fresh ] && echo 3 || echo 4)}
lab_names "${LAB_ID:-$$-$RANDOM}"
trap 'lab_exit $?' EXIT
trap 'exit 130' INT TERM
for tool in ip nft keepalived; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

# 0 (ready) or 1, as keepalived sees it: the ready file, or --check-ready.
ready_of() {
    if [ "$LAB_READY" = script ]; then
        in_ns "$(fw_ns "$1")" "$CTSYNCD" -C "$WORK/$1/ctsyncd.yaml" --check-ready >/dev/null 2>&1 &&
            echo 0 || echo 1
    else
        cat "$WORK/$1/ready" 2>/dev/null || echo missing
    fi
}
wait_ready() {
    # $1: fw, $2: timeout ms
    local deadline=$(($(ms) + $2))
    while [ "$(ms)" -lt "$deadline" ]; do
        [ "$(ready_of "$1")" = 0 ] && return 0
        sleep 0.05
    done
    return 1
}

# Stop fw's daemon with $2 (KILL or TERM) and wait until it is gone.
ctsyncd_signal() {
    local pid
    pid=$(cat "$WORK/$1/ctsyncd.job")
    kill "-$2" "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    die "ctsyncd on $1 did not stop on SIG$2"
}

fresh() {
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
}

dead_backup() {
    local stop t
    log "lab up (dead backup: fw1 150, fw2 100, readiness by ${LAB_READY}, expect ${LAB_EXPECT:-hold})"
    lab_up
    printf 'CTSYNCD=%s\nMIXED_CTSYNCD=\n' "$CTSYNCD" >"$WORK/sync.env"
    ctsyncd_start fw1
    ctsyncd_start fw2
    wait_ready fw1 10000 || die "fw1 never became ready"
    wait_ready fw2 10000 || die "fw2 never became ready"
    keepalived_start fw1
    wait_master fw1 || die "fw1 did not become master"
    keepalived_start fw2
    # Long enough for fw2's keepalived to count its check as good.
    sleep 2
    [ "$(master_of)" = fw1 ] || die "fw1 lost the VIPs to a ready backup of lower priority"
    log "fw1 is master, fw2 backup, both ready"
    for stop in ${LAB_DEAD_STOPS:-kill term}; do
        event "fw2-daemon-$stop"
        ctsyncd_signal fw2 "$([ "$stop" = kill ] && echo KILL || echo TERM)"
        log "fw2's ctsyncd stopped with $stop; its readiness reads $(ready_of fw2)"
        # keepalived counts two failed checks a second apart (fall 2).
        sleep 3
        t=$(ms)
        event master-fails
        ctsyncd_signal fw1 KILL
        ctsyncd_start fw1
        log "fw1's ctsyncd restarted, not ready (readiness $(ready_of fw1)): fw1 runs at 50"
        if [ "${LAB_EXPECT:-hold}" = takeover ]; then
            wait_master fw2 "$t" ||
                die "negative control: fw2 did not take the VIPs although its readiness reads $(ready_of fw2)"
            echo "PASS (negative control): with the ready file, fw2 took the VIPs with its ctsyncd dead ($stop)"
            return 0
        fi
        sleep "$HOLD"
        [ "$(master_of)" = fw1 ] || die "fw2 took the VIPs with its ctsyncd dead ($stop; master: $(master_of))"
        ! awk -v t="$t" '$1 >= t && $2 == "notify" && $3 == "fw2" && $4 == "primary"' "$WORK/events" | grep -q . ||
            die "fw2 became master with its ctsyncd dead ($stop)"
        grep -q "Changing effective priority from 100 to 1\b" "$WORK/fw2/keepalived.log" ||
            die "fw2's keepalived never lowered its priority"
        log "after ${HOLD} s fw1 is still master: fw2 with a dead ctsyncd ($stop) did not win"
        ctsyncd_start fw2
        wait_ready fw2 20000 || die "fw2 never became ready again"
        wait_ready fw1 20000 || die "fw1 never became ready again"
        sleep 2
        [ "$(master_of)" = fw1 ] || die "fw1 lost the VIPs once both were ready (master: $(master_of))"
    done
    t=$(ms)
    event fw1-keepalived-stops
    keepalived_stop fw1
    wait_master fw2 "$t" || die "the ready fw2 did not take over when fw1's keepalived stopped"
    log "the ready fw2 took over $(($(ms) - t)) ms after fw1's keepalived stopped"
    echo "PASS: a backup whose ctsyncd was not running never took the VIPs; a ready one did"
}

case "$SCENARIO" in
fresh) fresh ;;
dead-backup) dead_backup ;;
esac
