#!/bin/sh
# Stands in for ctsyncd to make a mixed pair, as in a rolling upgrade:
# fw1 runs ctsyncd (MIXED_CTSYNCD) and fw2 the real conntrackd, both from
# the same kind of conntrackd.conf (written by conntrackd-ref.sh).
# Usage: CTSYNCD=tests/lab/mixed.sh MIXED_CTSYNCD=/path/ctsyncd tests/lab/failover.sh
LAB_DIR=$(cd "$(dirname "$0")" && pwd)
case "$2" in
*/fw1/*) REF_DAEMON=${MIXED_CTSYNCD:?MIXED_CTSYNCD must name the ctsyncd binary} \
    exec "$LAB_DIR/conntrackd-ref.sh" "$@" ;;
*) exec "$LAB_DIR/conntrackd-ref.sh" "$@" ;;
esac
