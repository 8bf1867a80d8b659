#!/bin/sh
# keepalived notify script for ctsyncd, the same contract as conntrackd's
# primary-backup.sh:
#   notify_master "/usr/share/ctsync/primary-backup.sh primary"
#   notify_backup "/usr/share/ctsync/primary-backup.sh backup"
#   notify_fault  "/usr/share/ctsync/primary-backup.sh fault"
# Override the binary and config with CTSYNCD and CTSYNC_CONFIG.
CTSYNCD=${CTSYNCD:-/usr/sbin/ctsyncd}
CTSYNC_CONFIG=${CTSYNC_CONFIG:-/etc/ctsync/ctsyncd.yaml}
TAG=ctsync-notify

log() {
    logger -t "$TAG" -p daemon.err -- "$*" 2>/dev/null || echo "$TAG: $*" >&2
}

run() {
    # $1: what it does, for the log; the rest: ctsyncd flags
    what=$1
    shift
    out=$("$CTSYNCD" -C "$CTSYNC_CONFIG" "$@" 2>&1) || {
        log "$what failed ($CTSYNCD -C $CTSYNC_CONFIG $*): $out"
        return 1
    }
    return 0
}

case "$1" in
primary)
    # Become master: put the peer's flows into our kernel first, then make
    # our caches match the kernel and tell the peer what we hold.
    run "commit of the external cache" -c
    run "flush of the caches" -f
    run "resync of the internal cache with the kernel" -R
    run "bulk send to the peer" -B
    ;;
backup)
    # Make sure the daemon runs, clear the flows we created as master
    # after PurgeTimeout, and ask the new master for its table.
    if ! "$CTSYNCD" -C "$CTSYNC_CONFIG" -s >/dev/null 2>&1; then
        # Under systemd the unit owns the daemon; elsewhere start it here.
        if [ -d /run/systemd/system ] && systemctl cat ctsyncd.service >/dev/null 2>&1 &&
            [ "$CTSYNC_CONFIG" = /etc/ctsync/ctsyncd.yaml ]; then
            systemctl start ctsyncd.service || { log "systemctl start ctsyncd failed"; exit 1; }
        else
            run "start of ctsyncd" -d || exit 1
        fi
    fi
    run "purge of the kernel table" -t
    run "resync request to the peer" -n
    ;;
fault)
    run "purge of the kernel table" -t
    ;;
*)
    log "unknown state '$1' (expected primary, backup or fault)"
    echo "usage: $0 {primary|backup|fault}" >&2
    exit 1
    ;;
esac
exit 0
