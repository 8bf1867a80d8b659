#!/bin/sh
# keepalived notify wrapper of the failover lab: records when a transition's
# notify began and ended (WORK/events), then runs ctsyncd's own
# scripts/primary-backup.sh with this firewall's binary and config.
# Usage (from keepalived.conf): notify.sh WORK fw1|fw2 primary|backup|fault
WORK=$1 FW=$2 STATE=$3
LAB_DIR=$(cd "$(dirname "$0")" && pwd)
ms() { date +%s%3N; }
echo "$(ms) notify $FW $STATE start" >>"$WORK/events"
rc=0
if [ -f "$WORK/sync.env" ]; then
    # shellcheck disable=SC1091
    . "$WORK/sync.env"
    # The script's ctsyncd runs go through timed.sh, which logs them.
    LAB_CTSYNCD=$CTSYNCD LAB_EVENTS=$WORK/events LAB_FW=$FW
    CTSYNCD=$LAB_DIR/timed.sh CTSYNC_CONFIG=$WORK/$FW/ctsyncd.yaml
    export CTSYNCD CTSYNC_CONFIG LAB_CTSYNCD LAB_EVENTS LAB_FW MIXED_CTSYNCD
    "$LAB_DIR/../../scripts/primary-backup.sh" "$STATE" >>"$WORK/$FW/notify.log" 2>&1 || rc=$?
fi
echo "$(ms) notify $FW $STATE end $rc" >>"$WORK/events"
