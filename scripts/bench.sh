#!/usr/bin/env bash
# Compares ctsyncd with conntrackd 1.4 under the same load on the same
# kernel: two firewall namespaces joined by a veth sync link, each daemon in
# FTFW mode over UDP, N flows created on fw1 at the load tool's full rate.
#
#   sudo scripts/bench.sh                     # N = 100000, 3 repetitions
#   sudo BENCH_FLOWS=1000000 scripts/bench.sh # the big run
#
# BENCH_REPS sets the repetitions. The table (medians, [min-max]) is printed
# and written to target/bench-results.txt; the same runs drawn as a chart
# (latency CDFs, ctsyncd/conntrackd ratios, rates against the kernel's own
# create and event rates) go to target/bench-chart.svg, and the JSON lines of
# every run to target/bench-results.jsonl (scripts/bench/chart.py redraws
# from them). Needs root and conntrackd.
set -euo pipefail

FLOWS=${BENCH_FLOWS:-100000}
REPS=${BENCH_REPS:-3}
# Events queued while the sender is stopped; flows created at full speed
# with both daemons at their default settings; flows of the -n/-B bulks.
# 0 skips those runs.
DRAIN=${BENCH_DRAIN:-300000}
DEFAULTS=${BENCH_DEFAULTS:-500000}
BULK=${BENCH_BULK:-1000000}
# Seconds of mixed load from two load tools (0 skips it).
MIXED=${BENCH_MIXED:-60}
# Creates per second for the loaded latency run (0 skips latency).
LATENCY=${BENCH_LATENCY:-50000}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root" >&2; exit 1; }
command -v conntrackd >/dev/null || { echo "bench.sh: conntrackd not installed" >&2; exit 1; }

cargo build --release --examples --bins
BUILT=${CARGO_TARGET_DIR:-$PWD/target}/release
CTSYNCD=$BUILT/ctsyncd
LOAD=$BUILT/examples/ctload

NS1=ctbench-$$-fw1
NS2=ctbench-$$-fw2
WORK=$(mktemp -d /tmp/ctbench.XXXXXX)
MAX=/proc/sys/net/netfilter/nf_conntrack_max
OLD_MAX=$(cat "$MAX")

cleanup() {
    # Daemons still inside die with their namespace's processes.
    for ns in "$NS1" "$NS2"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    echo "$OLD_MAX" >"$MAX"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Each namespace's table must hold N flows (the limit is global).
# The mixed load keeps up to 2 x 10 blocks of 20 000 flows.
MIXED_FLOWS=$(( MIXED > 0 ? 400000 : 0 ))
BIGGEST=$(printf '%s\n' "$FLOWS" "$DRAIN" "$DEFAULTS" "$BULK" "$MIXED_FLOWS" | sort -n | tail -n 1)
[ "$OLD_MAX" -ge $((BIGGEST + 65536)) ] || echo $((BIGGEST + 65536)) >"$MAX"

ip netns add "$NS1"
ip netns add "$NS2"
ip link add sync0 netns "$NS1" type veth peer name sync0 netns "$NS2"
for i in 1 2; do
    ns=$NS1; [ $i = 2 ] && ns=$NS2
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add 10.255.0.$i/30 dev sync0
    ip -n "$ns" link set sync0 up
done

results=$WORK/results.jsonl
: >"$results"
for rep in $(seq "$REPS"); do
    # Interleaved so that drift in a noisy machine hits both daemons alike.
    for daemon in none ctsyncd conntrackd; do
        echo "run $rep/$REPS: $daemon, $FLOWS flows" >&2
        json=$(python3 scripts/bench/measure.py --daemon "$daemon" --flows "$FLOWS" \
            --ns "$NS1" "$NS2" --ctsyncd "$CTSYNCD" --load "$LOAD" --workdir "$WORK/$rep")
        echo "${json%\}}, \"daemon\": \"$daemon\", \"rep\": $rep}" | tee -a "$results" >&2
    done
    for mode in drain defaults bulk mixed latency; do
        case $mode in
            drain) n=$DRAIN ;; defaults) n=$DEFAULTS ;; bulk) n=$BULK ;; mixed) n=$MIXED ;;
            latency) n=$LATENCY ;;
        esac
        [ "$n" -gt 0 ] || continue
        for daemon in ctsyncd conntrackd; do
            echo "run $rep/$REPS: $daemon, $mode, $n" >&2
            json=$(python3 scripts/bench/measure.py --daemon "$daemon" --flows "$n" "--$mode" \
                --seconds "$MIXED" \
                --ns "$NS1" "$NS2" --ctsyncd "$CTSYNCD" --load "$LOAD" --workdir "$WORK/$rep-$mode")
            echo "${json%\}}, \"daemon\": \"$daemon\", \"rep\": $rep}" | tee -a "$results" >&2
        done
    done
done

mkdir -p target
cp "$results" target/bench-results.jsonl
title="ctsyncd vs conntrackd $(conntrackd -v 2>&1 | sed -n 's/.*daemon \(v[0-9.]*[0-9]\).*/\1/p'), FTFW over UDP"
machine="$(date -u +%F), kernel $(uname -r), $(nproc) CPUs: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)"
{
    echo "$title"
    echo "$machine"
    python3 scripts/bench/table.py "$FLOWS" "$results"
} | tee target/bench-results.txt
python3 scripts/bench/chart.py "$results" target/bench-chart.svg "$title" "$machine"
echo "chart: target/bench-chart.svg" >&2
