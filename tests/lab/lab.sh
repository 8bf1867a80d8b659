#!/usr/bin/env bash
# The failover lab: a client on the LAN, a server on the WAN, two firewalls
# (fw1, fw2) with keepalived and a strict nftables ruleset, LAN and WAN
# switches (bridges in one "sw" namespace) and a dedicated sync link:
#
#   client ─┐             ┌─ fw1 ─┐             ┌─ server
#           ├─ brlan (sw) ┤   ║   ├─ brwan (sw) ┤
#           │             └─ fw2 ─┘             │
#                  fw1 ══ sync0 (10.255.0.0/30) ══ fw2
#
# Sourced by failover.sh; run directly for `lab.sh down ID` (remove
# everything a run with that id made, also what a crashed run left).
#
# Every name carries the run id, so runs never meet: namespaces
# ctlab-ID-{client,server,fw1,fw2,sw}, work directory /tmp/ctsync-lab-ID.
#
# Knobs shared by the scripts that source it:
#   LAB_TCP_LOOSE   nf_conntrack_tcp_loose in both firewalls (0: strict, a
#                   mid-stream packet never creates a flow; 1: the kernel's
#                   default, it picks one up)
#   LAB_DIRECT      1: ctsyncd runs with sync.direct_to_kernel
#   LAB_READY       1: ctsyncd writes general.ready_file and keepalived
#                   tracks it (the deprecated track_file way); script:
#                   keepalived tracks a vrrp_script running
#                   `ctsyncd --check-ready` (docs/keepalived.md)
#   LAB_PRIO_FW1, LAB_PRIO_FW2   keepalived priorities (150, 100)
#   LAB_FTP         1: the kernel's ftp helper on connections to port 21 (an
#                   nft `ct helper`), and new connections only to port 21:
#                   an FTP data connection passes only as `related`
#   LAB_EXPECTATIONS  1: ctsyncd syncs the ftp helper's expectations
#   LAB_LAX_INPUT   1: the firewalls' input chains accept what they do not
#                   know (policy accept, no invalid drop), as many do
#   LAB_PURGE_TIMEOUT  ctsyncd's sync.purge_timeout in seconds (its default)

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LAB_DIR/../.." && pwd)

LAN_NET=192.168.60 WAN_NET=203.0.113
LAN_VIP=$LAN_NET.1 WAN_VIP=$WAN_NET.1
CLIENT_IP=$LAN_NET.10 SERVER_IP=$WAN_NET.10
SYNC_PORT=3780

lab_names() {
    # $1: run id
    LAB_ID=$1
    NS_CLIENT=ctlab-$1-client NS_SERVER=ctlab-$1-server
    NS_FW1=ctlab-$1-fw1 NS_FW2=ctlab-$1-fw2 NS_SW=ctlab-$1-sw
    WORK=/tmp/ctsync-lab-$1
}

ms() { date +%s%3N; }
log() { printf '%s [lab %s] %s\n' "$(date +%T.%3N)" "$LAB_ID" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
# Not for background jobs: "$!" of a function is a subshell, not the command.
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
fw_ns() { if [ "$1" = fw1 ]; then echo "$NS_FW1"; else echo "$NS_FW2"; fi; }

# Link a namespace's interface to a bridge port in the switch namespace.
wire() {
    # $1: namespace, $2: its interface, $3: bridge, $4: port name in sw
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$NS_SW"
    in_ns "$NS_SW" ip link set "$4" master "$3" up
    in_ns "$1" ip link set "$2" up
}

lab_up() {
    rm -rf "$WORK"
    mkdir -p "$WORK/fw1" "$WORK/fw2"
    : >"$WORK/events"
    # The sync link's shared key, made as docs/SECURITY.md says.
    (umask 077; echo "1 $(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$WORK/sync.key")
    for ns in "$NS_CLIENT" "$NS_SERVER" "$NS_FW1" "$NS_FW2" "$NS_SW"; do
        ip netns add "$ns"
        in_ns "$ns" ip link set lo up
    done
    for br in brlan brwan; do
        # No STP and no forward delay: ports forward at once, like a
        # plain switch; no multicast snooping, so VRRP adverts flood.
        in_ns "$NS_SW" ip link add "$br" type bridge stp_state 0 forward_delay 0 mcast_snooping 0
        in_ns "$NS_SW" ip link set "$br" up
    done
    wire "$NS_CLIENT" c0 brlan pc
    wire "$NS_FW1" lan0 brlan p1lan
    wire "$NS_FW2" lan0 brlan p2lan
    wire "$NS_SERVER" s0 brwan ps
    wire "$NS_FW1" wan0 brwan p1wan
    wire "$NS_FW2" wan0 brwan p2wan
    ip link add sync0 netns "$NS_FW1" type veth peer name sync0 netns "$NS_FW2"

    in_ns "$NS_CLIENT" ip addr add "$CLIENT_IP/24" dev c0
    in_ns "$NS_CLIENT" ip route add default via "$LAN_VIP"
    in_ns "$NS_SERVER" ip addr add "$SERVER_IP/24" dev s0
    in_ns "$NS_SERVER" ip route add default via "$WAN_VIP"
    # Take the gratuitous ARP of a new master at once, even right after
    # an earlier update (the default locktime would ignore it for 1 s).
    in_ns "$NS_CLIENT" sysctl -qw net.ipv4.neigh.c0.locktime=0
    in_ns "$NS_SERVER" sysctl -qw net.ipv4.neigh.s0.locktime=0

    local host_loose
    host_loose=$(sysctl -n net.netfilter.nf_conntrack_tcp_loose)
    for n in 1 2; do
        local ns fw=fw$n
        ns=$(fw_ns "$fw")
        in_ns "$ns" ip addr add "$LAN_NET.$((n + 1))/24" dev lan0
        in_ns "$ns" ip addr add "$WAN_NET.$((n + 1))/24" dev wan0
        in_ns "$ns" ip addr add "10.255.0.$n/30" dev sync0
        in_ns "$ns" ip link set sync0 up
        in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1
        # Loading the ruleset loads conntrack in the namespace; only then
        # do its per-namespace sysctls exist.
        sed -e "s/@LAN_VIP@/$LAN_VIP/g" -e "s/@WAN_VIP@/$WAN_VIP/g" \
            -e "s/@LAN_NET@/$LAN_NET.0\/24/g" -e "s/@SYNC_PORT@/$SYNC_PORT/g" \
            "$LAB_DIR/ruleset.nft.in" >"$WORK/$fw/ruleset.nft"
        [ "${LAB_FTP:-0}" = 1 ] && ftp_ruleset "$WORK/$fw/ruleset.nft"
        [ "${LAB_LAX_INPUT:-0}" = 1 ] && lax_input "$WORK/$fw/ruleset.nft"
        in_ns "$ns" nft -f "$WORK/$fw/ruleset.nft"
        # Strict TCP tracking by default: a mid-stream packet never creates
        # a flow, so a firewall without the synced state drops the stream.
        # The sysctl is per namespace: nothing outside the lab changes.
        in_ns "$ns" sysctl -qw net.netfilter.nf_conntrack_tcp_loose="${LAB_TCP_LOOSE:-0}"
        in_ns "$ns" sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=0
        [ "$(in_ns "$ns" sysctl -n net.netfilter.nf_conntrack_tcp_loose)" = "${LAB_TCP_LOOSE:-0}" ] ||
            die "nf_conntrack_tcp_loose did not take ${LAB_TCP_LOOSE:-0} in $ns"
        if [ "$(sysctl -n net.netfilter.nf_conntrack_tcp_loose)" != "$host_loose" ]; then
            sysctl -qw net.netfilter.nf_conntrack_tcp_loose="$host_loose"
            die "nf_conntrack_tcp_loose is not per namespace here (the host's value changed; restored)"
        fi
    done
}

# LAB_LAX_INPUT: the input chain of many a real firewall, in place: policy
# accept and no invalid drop, so that a packet to a virtual IP makes a
# local entry.
lax_input() {
    python3 - "$1" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
head, rest = text.split("chain input {", 1)
body, tail = rest.split("}", 1)
body = body.replace("policy drop;", "policy accept;").replace("        ct state invalid drop\n", "")
open(path, "w").write(head + "chain input {" + body + "}" + tail)
PY
    grep -q "hook input priority filter; policy accept;" "$1" || die "the lax input edit did not apply to $1"
}

# The FTP variant of the ruleset, in place: new TCP only to the control
# port, which gets the ftp helper; UDP and ICMP not at all.
ftp_ruleset() {
    sed -i -e '/ct state new meta l4proto/d' \
        -e 's/oifname "wan0" ct state new tcp flags/oifname "wan0" tcp dport 21 ct state new tcp flags/' "$1"
    grep -q 'tcp dport 21 ct state new' "$1" || die "the FTP ruleset edit did not apply to $1"
    cat >>"$1" <<'NFT'

table inet labftp {
    ct helper ftp-standard {
        type "ftp" protocol tcp
        l3proto ip
    }
    chain pre {
        type filter hook prerouting priority filter;
        iifname "lan0" tcp dport 21 ct helper set "ftp-standard"
    }
}
NFT
}

# keepalived for one firewall, in the foreground of a background job, with
# its own pid files (the defaults under /run would clash between the two).
keepalived_start() {
    # $1: fw1 or fw2
    local fw=$1 ns d=$WORK/$1
    ns=$(fw_ns "$fw")
    [ -f "$d/keepalived.conf" ] || keepalived_conf "$fw" >"$d/keepalived.conf"
    ip netns exec "$ns" keepalived --dont-fork --log-console --log-detail --no-syslog --vrrp \
        --use-file="$d/keepalived.conf" --pid="$d/keepalived.pid" \
        --vrrp_pid="$d/vrrp.pid" --checkers_pid="$d/checkers.pid" \
        --bfd_pid="$d/bfd.pid" >>"$d/keepalived.log" 2>&1 &
    echo $! >"$d/keepalived.job"
}

keepalived_stop() {
    # $1: fw1 or fw2. SIGTERM: keepalived sends a priority 0 advert, drops
    # the virtual IPs, and the peer takes over without waiting.
    local d=$WORK/$1 pid
    pid=$(cat "$d/keepalived.job" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$d/keepalived.job"
}

keepalived_conf() {
    # $1: fw1 or fw2
    local fw=$1 prio=${LAB_PRIO_FW2:-100} track=
    [ "$fw" = fw1 ] && prio=${LAB_PRIO_FW1:-150}
    # docs/keepalived.md: a node that is not ready loses 100 priority points.
    # Trackers are defined before the group that uses them, or keepalived
    # ignores them.
    case "${LAB_READY:-0}" in
    1)
        track="sync_group_tracking_weight\\n    track_file {\\n        ctsync_ready weight -100\\n    }"
        printf 'track_file ctsync_ready {\n    file "%s"\n}\n' "$WORK/$fw/ready"
        ;;
    script)
        track="sync_group_tracking_weight\\n    track_script {\\n        ctsync_ready weight -100\\n    }"
        printf 'vrrp_script ctsync_ready {\n    script "%s -C %s --check-ready"\n    interval 1\n    timeout 3\n    fall 2\n    rise 1\n    init_fail\n}\n' \
            "$CTSYNCD" "$WORK/$fw/ctsyncd.yaml"
        ;;
    esac
    sed -e "s|@ROUTER_ID@|$fw|g" -e "s|@PRIORITY@|$prio|g" \
        -e "s|@LAN_VIP@|$LAN_VIP|g" -e "s|@WAN_VIP@|$WAN_VIP|g" \
        -e "s|@ADVERT_INT@|${LAB_ADVERT_INT:-0.1}|g" \
        -e "s|@NOTIFY@|$LAB_DIR/notify.sh $WORK $fw|g" \
        -e "s|@TRACK@|$track|g" \
        "$LAB_DIR/keepalived.conf.in"
}

ctsyncd_conf() {
    # $1: fw1 or fw2
    local n=${1#fw}
    cat <<YAML
general:
  lock_file: $WORK/$1/ctsyncd.lock
  control_socket: $WORK/$1/ctsyncd.sock
$([ "${LAB_READY:-0}" = 1 ] && echo "  ready_file: $WORK/$1/ready")
sync:
  auth: { key_file: $WORK/sync.key }
  direct_to_kernel: $([ "${LAB_DIRECT:-0}" = 1 ] && echo true || echo false)
$([ -n "${LAB_PURGE_TIMEOUT:-}" ] && echo "  purge_timeout: ${LAB_PURGE_TIMEOUT}s")
$([ "${LAB_EXPECTATIONS:-0}" = 1 ] && echo "  expectations: [ftp]")
  channels:
    - type: udp
      local: 10.255.0.$n
      peer: 10.255.0.$((3 - n))
      interface: sync0
YAML
}

ctsyncd_start() {
    # $1: fw1 or fw2
    local fw=$1 ns d=$WORK/$1
    ns=$(fw_ns "$fw")
    ctsyncd_conf "$fw" >"$d/ctsyncd.yaml"
    ip netns exec "$ns" "$CTSYNCD" -C "$d/ctsyncd.yaml" >>"$d/ctsyncd.log" 2>&1 &
    echo $! >"$d/ctsyncd.job"
    for _ in $(seq 100); do
        in_ns "$ns" "$CTSYNCD" -C "$d/ctsyncd.yaml" -s >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$d/ctsyncd.job")" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$d/ctsyncd.log" >&2 || true
    die "ctsyncd on $fw did not become ready"
}

# The firewall that holds both virtual IPs, or nothing.
master_of() {
    local fw
    for fw in fw1 fw2; do
        if ip -n "$(fw_ns "$fw")" -4 -o addr show dev lan0 2>/dev/null | grep -q " $LAN_VIP/" &&
            ip -n "$(fw_ns "$fw")" -4 -o addr show dev wan0 2>/dev/null | grep -q " $WAN_VIP/"; then
            echo "$fw"
            return
        fi
    done
}

# Wait until $1 holds the virtual IPs, the other does not, and (if $2 is
# given) $1's notify script finished a "primary" run that began after $2 ms.
wait_master() {
    local fw=$1 since=${2:-} other=fw2 deadline=$(($(ms) + ${LAB_SWITCH_TIMEOUT_MS:-20000}))
    [ "$fw" = fw2 ] && other=fw1
    while [ "$(ms)" -lt "$deadline" ]; do
        if [ "$(master_of)" = "$fw" ] &&
            ! ip -n "$(fw_ns "$other")" -4 -o addr show 2>/dev/null | grep -q " $LAN_VIP/"; then
            [ -z "$since" ] && return 0
            awk -v fw="$fw" -v t="$since" \
                '$2 == "notify" && $3 == fw && $4 == "primary" && $5 == "end" && $1 >= t { f = 1 }
                 END { exit !f }' "$WORK/events" && return 0
        fi
        sleep 0.02
    done
    return 1
}

event() { echo "$(ms) $*" >>"$WORK/events"; }

mac_of() { ip -n "$1" -o link show dev "$2" | sed -n 's|.*link/ether \([0-9a-f:]*\).*|\1|p'; }
neigh_mac() { ip -n "$1" neigh show "$2" dev "$3" | sed -n 's|.* lladdr \([0-9a-f:]*\).*|\1|p'; }

# Check that the client and the server send to $1's MAC addresses for the
# virtual IPs: the stream really crosses the new master (a stopped
# keepalived leaves the old one able to forward what still reaches it).
check_path() {
    local ns
    ns=$(fw_ns "$1")
    [ "$(neigh_mac "$NS_CLIENT" "$LAN_VIP" c0)" = "$(mac_of "$ns" lan0)" ] &&
        [ "$(neigh_mac "$NS_SERVER" "$WAN_VIP" s0)" = "$(mac_of "$ns" wan0)" ]
}

# The EXIT trap of the lab scripts: `trap 'lab_exit $?' EXIT`. After a
# failure (status $1), the tails of the daemons' logs, of LAB_EXTRA_LOGS
# and of the event log; then lab_down, and exit with $1.
LAB_EXTRA_LOGS=()
lab_exit() {
    local rc=$1 f
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/fw?/keepalived.log "$WORK"/fw?/notify.log "$WORK"/fw?/ctsyncd.log \
            "${LAB_EXTRA_LOGS[@]}" "$WORK/events"; do
            [ -s "$f" ] || continue
            echo "--- $f (tail)" >&2
            tail -n 15 "$f" >&2
        done
    fi
    lab_down
    exit "$rc"
}

lab_down() {
    # Processes first (only ours: the jobs we recorded and whatever runs in
    # our namespaces), then the namespaces, then the work directory.
    # keepalived takes about a second to stop its VRRP child.
    local ns pid f left
    for f in "$WORK"/*/*.job "$WORK"/*.job; do
        [ -f "$f" ] || continue
        pid=$(cat "$f") && kill -TERM "$pid" 2>/dev/null || true
    done
    for ns in "$NS_FW1" "$NS_FW2" "$NS_CLIENT" "$NS_SERVER" "$NS_SW"; do
        [ -e "/run/netns/$ns" ] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    done
    for _ in $(seq 60); do
        left=
        for ns in "$NS_FW1" "$NS_FW2" "$NS_CLIENT" "$NS_SERVER" "$NS_SW"; do
            [ -e "/run/netns/$ns" ] && left=$left$(ip netns pids "$ns" 2>/dev/null)
        done
        [ -z "$left" ] && break
        sleep 0.05
    done
    for ns in "$NS_FW1" "$NS_FW2" "$NS_CLIENT" "$NS_SERVER" "$NS_SW"; do
        [ -e "/run/netns/$ns" ] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "${LAB_KEEP_WORK:-}" ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
    down)
        [ -n "${2:-}" ] || { echo "usage: $0 down ID" >&2; exit 2; }
        lab_names "$2"
        lab_down
        ;;
    *)
        echo "usage: $0 down ID   (failover.sh runs the lab)" >&2
        exit 2
        ;;
    esac
fi
