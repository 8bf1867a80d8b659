#!/usr/bin/env bash
# Two-firewall demo in network namespaces (run as root on Debian 12):
#   client ── fw1 ── server        fw1 ══ sync link ══ fw2
# Starts ctsyncd on fw1 and fw2, opens a TCP and a UDP flow through fw1,
# shows fw1's statistics and internal cache, fw2's external cache, commits
# on fw2 and shows the flows in fw2's kernel. Removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
BIN=$PWD/target/release/ctsyncd

ID=$$
NS_C=ctsd-$ID-client NS_1=ctsd-$ID-fw1 NS_2=ctsd-$ID-fw2 NS_S=ctsd-$ID-server
WORK=$(mktemp -d /tmp/ctsync-demo.XXXXXX)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Whatever still runs inside our namespaces is ours too.
    for ns in "$NS_C" "$NS_1" "$NS_2" "$NS_S"; do
        pids=$(ip netns pids "$ns" 2>/dev/null) && [ -n "$pids" ] && kill $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

step "namespaces: client, fw1, fw2, server"
for ns in "$NS_C" "$NS_1" "$NS_2" "$NS_S"; do ip netns add "$ns"; in_ns "$ns" ip link set lo up; done
ip link add c0 netns "$NS_C" type veth peer name lan0 netns "$NS_1"
ip link add s0 netns "$NS_S" type veth peer name wan0 netns "$NS_1"
ip link add sync0 netns "$NS_1" type veth peer name sync0 netns "$NS_2"
in_ns "$NS_C" ip addr add 192.168.50.10/24 dev c0
in_ns "$NS_1" ip addr add 192.168.50.1/24 dev lan0
in_ns "$NS_1" ip addr add 198.51.100.1/24 dev wan0
in_ns "$NS_S" ip addr add 198.51.100.7/24 dev s0
in_ns "$NS_1" ip addr add 10.255.0.1/30 dev sync0
in_ns "$NS_2" ip addr add 10.255.0.2/30 dev sync0
for pair in "$NS_C c0" "$NS_1 lan0" "$NS_1 wan0" "$NS_S s0" "$NS_1 sync0" "$NS_2 sync0"; do
    set -- $pair; in_ns "$1" ip link set "$2" up
done
in_ns "$NS_C" ip route add default via 192.168.50.1
in_ns "$NS_S" ip route add default via 198.51.100.1
in_ns "$NS_1" sysctl -qw net.ipv4.ip_forward=1
in_ns "$NS_1" nft -f - <<'NFT'
table inet demo {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan0" ct state new accept
  }
  chain postrouting {
    type nat hook postrouting priority 100;
    oifname "wan0" masquerade
  }
}
NFT

step "ctsyncd on fw1 and fw2, sharing a key that authenticates the sync link"
"$BIN" --gen-key "$WORK/sync.key" >/dev/null
for n in 1 2; do
    peer=$((3 - n))
    cat >"$WORK/fw$n.yaml" <<YAML
general:
  lock_file: $WORK/fw$n.lock
  control_socket: $WORK/fw$n.sock
sync:
  auth: { key_file: $WORK/sync.key }
  channels:
    - type: udp
      local: 10.255.0.$n
      peer: 10.255.0.$peer
      interface: sync0
YAML
done
in_ns "$NS_1" "$BIN" -C "$WORK/fw1.yaml" 2>"$WORK/fw1.log" & PIDS+=($!)
in_ns "$NS_2" "$BIN" -C "$WORK/fw2.yaml" 2>"$WORK/fw2.log" & PIDS+=($!)
for n in 1 2; do
    for _ in $(seq 50); do [ -S "$WORK/fw$n.sock" ] && break; sleep 0.1; done
done

step "a TCP stream and a UDP exchange from the client to the server, through fw1 (SNAT)"
in_ns "$NS_S" socat -u TCP-LISTEN:8080,reuseaddr,fork - >/dev/null & PIDS+=($!)
in_ns "$NS_S" socat UDP-RECVFROM:5353,reuseaddr,fork EXEC:'echo pong' & PIDS+=($!)
sleep 0.3
in_ns "$NS_C" sh -c 'while sleep 0.2; do echo tick; done | socat -u - TCP:198.51.100.7:8080' & PIDS+=($!)
echo ping | in_ns "$NS_C" socat -t1 - UDP:198.51.100.7:5353
sleep 1.5

step "fw1: ctsyncd -s (statistics, abridged; --json for scripts)"
in_ns "$NS_1" "$BIN" -C "$WORK/fw1.yaml" -s | grep -E '^(synced|ready|internal|external|  active|  created|links|  name|  packets)'
step "fw1: ctsyncd -i (internal cache: fw1's kernel flows)"
in_ns "$NS_1" "$BIN" -C "$WORK/fw1.yaml" -i
step "fw2: ctsyncd -e (external cache: what fw2 learned from fw1)"
in_ns "$NS_2" "$BIN" -C "$WORK/fw2.yaml" -e
step "fw2: kernel table before the commit"
in_ns "$NS_2" conntrack -L 2>/dev/null || true
step "fw2: ctsyncd -c (commit, as keepalived's notify_master would)"
in_ns "$NS_2" "$BIN" -C "$WORK/fw2.yaml" -c
step "fw2: kernel table after the commit (note the SNAT reply tuple)"
in_ns "$NS_2" conntrack -L 2>/dev/null
step "done; removing namespaces"
