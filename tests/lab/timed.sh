#!/bin/sh
# Stands in for ctsyncd in primary-backup.sh's runs: records when each
# client command (-c, -f, -R, -B, -t, -n, -s, -d) starts and ends in the
# lab's event log, so the report can time the commit itself.
# Environment (set by notify.sh): LAB_CTSYNCD, LAB_EVENTS, LAB_FW.
# Usage: timed.sh -C FILE FLAG...
ms() { date +%s%3N; }
echo "$(ms) cmd $LAB_FW $3 start" >>"$LAB_EVENTS"
"$LAB_CTSYNCD" "$@"
rc=$?
echo "$(ms) cmd $LAB_FW $3 end $rc" >>"$LAB_EVENTS"
exit "$rc"
