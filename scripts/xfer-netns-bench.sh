#!/usr/bin/env bash
# xfer-netns-bench.sh - measures the transfer engine between two network
# namespaces joined by two veth pairs, for the targets of docs/performance.md
# ("Transfer engine"). Needs root and `ip netns`; cleans up after itself.
#
#   scripts/xfer-netns-bench.sh [CELLM_BIN]     (default build/cellm)
#
# Environment: RATE (5gbit) RATE2 (2.5gbit) BURST (4mb) MTU (1500)
#   ITERS (7) RTT_ITERS (5000) SIZES (4K,256K,4M,64M) SOCKETS (2)
#
# Runs, each printing JSON lines tagged with the scenario:
#   cap1      one link capped at RATE: engine writes + raw baseline on it
#   cap2x1    link 1 of two capped at RATE2 each, one link only
#   cap2x2    both links capped at RATE2, striped as one peer
#   uncapped  one uncapped link: engine writes + raw stream + ping-pongs
set -euo pipefail
BIN=${1:-${CELLM_BIN:-build/cellm}}
BIN=$(readlink -f "$BIN")
RATE=${RATE:-5gbit}
RATE2=${RATE2:-2.5gbit}
BURST=${BURST:-4mb}
MTU=${MTU:-1500}
ITERS=${ITERS:-7}
RTT_ITERS=${RTT_ITERS:-5000}
SIZES=${SIZES:-4K,256K,4M,64M}
SOCKETS=${SOCKETS:-2}
[ "$(id -u)" = 0 ] || { echo "xfer-netns-bench: needs root (ip netns, tc)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "xfer-netns-bench: no cellm binary at $BIN" >&2; exit 1; }

A=cmx$$a
B=cmx$$b
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip -n "$A" link set lo up
ip -n "$B" link set lo up
for l in 1 2; do
    ip link add cmx$$${l}a type veth peer name cmx$$${l}b
    ip link set cmx$$${l}a netns "$A"
    ip link set cmx$$${l}b netns "$B"
    ip -n "$A" link set cmx$$${l}a mtu "$MTU" up
    ip -n "$B" link set cmx$$${l}b mtu "$MTU" up
    ip -n "$A" addr add 10.77.$l.1/24 dev cmx$$${l}a
    ip -n "$B" addr add 10.77.$l.2/24 dev cmx$$${l}b
done

cap() { # cap LINK RATE|none: both directions
    for side in a b; do
        ns=$A; [ $side = b ] && ns=$B
        ip netns exec "$ns" tc qdisc del dev cmx$$$1$side root 2>/dev/null || true
        if [ "$2" != none ]; then
            ip netns exec "$ns" tc qdisc add dev cmx$$$1$side root tbf rate "$2" burst "$BURST" latency 50ms
        fi
    done
}

"$BIN" key generate > "$TMP/key"
export CELLM_KEY_FILE=$TMP/key
ip netns exec "$A" "$BIN" xfer-bench --serve 0.0.0.0:7700 > "$TMP/server.out" 2> "$TMP/server.err" &
SERVER_PID=$!
for _ in $(seq 50); do grep -q listening "$TMP/server.out" 2>/dev/null && break; sleep 0.1; done

run() { # run TAG PEERS [extra args]
    local tag=$1 peers=$2
    shift 2
    echo "# $tag: ip netns exec $B cellm xfer-bench --peer $peers --sizes $SIZES --iters $ITERS --rtt-iters $RTT_ITERS --sockets $SOCKETS --json $*" >&2
    ip netns exec "$B" "$BIN" xfer-bench --peer "$peers" --sizes "$SIZES" --iters "$ITERS" \
        --rtt-iters "$RTT_ITERS" --sockets "$SOCKETS" --json "$@" | sed "s/^{/{\"scenario\":\"$tag\",/"
}

echo "# veth MTU $MTU, tbf burst $BURST latency 50ms, $(nproc) CPUs" >&2
cap 1 "$RATE"; cap 2 none
run cap1 10.77.1.1:7700 --baseline
cap 1 "$RATE2"; cap 2 "$RATE2"
run cap2x1 10.77.1.1:7700
run cap2x2 10.77.1.1:7700,10.77.2.1:7700
cap 1 none; cap 2 none
run uncapped 10.77.1.1:7700 --baseline
