#!/bin/sh
# Runs conntrackd (FTFW) in place of ctsyncd, to compare the two in the
# lab: CTSYNCD=tests/lab/conntrackd-ref.sh tests/lab/failover.sh
# Takes ctsyncd's command line (-C FILE.yaml, then conntrackd-compatible
# flags) and uses a conntrackd.conf written next to FILE.yaml from the
# addresses in it.
[ "$1" = -C ] || { echo "usage: $0 -C FILE.yaml [flags]" >&2; exit 2; }
yaml=$2
shift 2
dir=$(dirname "$yaml")
conf=$dir/conntrackd.conf
key() { sed -n "s/^ *-\{0,1\} *$1: *//p" "$yaml" | head -n 1; }
if [ ! -f "$conf" ]; then
    cat >"$conf.tmp" <<CONF
Sync {
    Mode FTFW {
        DisableExternalCache Off
        PurgeTimeout 5
        CommitTimeout 180
    }
    UDP {
        IPv4_address $(key local)
        IPv4_Destination_Address $(key peer)
        Port 3780
        Interface $(key interface)
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }
}
General {
    Systemd off
    HashSize 65536
    HashLimit 524288
    LogFile $dir/conntrackd.log
    Syslog off
    LockFile $dir/conntrackd.lock
    UNIX {
        Path $dir/conntrackd.ctl
    }
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 16777216
    NetlinkEventsReliable On
    Filter From Userspace {
        Address Ignore {
            IPv4_address 127.0.0.1
            IPv4_address $(key local)
            IPv4_address $(key peer)
        }
    }
}
CONF
    mv "$conf.tmp" "$conf"
fi
# REF_DAEMON lets ctsyncd read the same conntrackd.conf (mixed pairs).
exec "${REF_DAEMON:-conntrackd}" -C "$conf" "$@"
