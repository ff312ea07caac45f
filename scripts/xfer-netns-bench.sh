#!/usr/bin/env bash
# xfer-netns-bench.sh - measures the transfer engine between two network
# namespaces joined by two veth pairs, for the targets of docs/performance.md
# ("Transfer engine"). Needs root and `ip netns`; cleans up after itself.
#
#   scripts/xfer-netns-bench.sh [CELLM_BIN]     (default build/cellm)
#
# Environment: RATE (5gbit) RATE2 (2.5gbit) BURST (4mb) MTU (1500)
#   ITERS (7) RTT_ITERS (5000) SIZES (4K,256K,4M,64M) SOCKETS (2)
#   RAW_BUFFERS (4M,64M: one raw stream per buffer size) IPERF (1: also
#   run iperf3 when installed) IPERF_SECONDS (5)
#
# Runs, each printing JSON lines tagged with the scenario:
#   cap1      one link capped at RATE: engine writes + raw baselines (and
#             iperf3, one stream) on it
#   cap2x1    link 1 of two capped at RATE2 each, one link only
#   cap2x2    both links capped at RATE2, striped as one peer
#   uncapped  one uncapped link: engine writes + raw streams + ping-pongs
#             (and iperf3)
# then a table of every scenario against the targets of docs/performance.md
# (on stderr, with the load average before and after).
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
RAW_BUFFERS=${RAW_BUFFERS:-4M,64M}
IPERF=${IPERF:-1}
IPERF_SECONDS=${IPERF_SECONDS:-5}
[ "$(id -u)" = 0 ] || { echo "xfer-netns-bench: needs root (ip netns, tc)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "xfer-netns-bench: no cellm binary at $BIN" >&2; exit 1; }

A=cmx$$a
B=cmx$$b
TMP=$(mktemp -d)
SERVER_PID=
IPERF_PID=
cleanup() {
    # (a killed server's status must not end the script under set -e)
    [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; }
    [ -z "$IPERF_PID" ] || { kill "$IPERF_PID" 2>/dev/null; wait "$IPERF_PID" 2>/dev/null || true; }
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$TMP"
    return 0
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
        --rtt-iters "$RTT_ITERS" --sockets "$SOCKETS" --json "$@" | sed "s/^{/{\"scenario\":\"$tag\",/" | tee -a "$TMP/all.json"
}

# iperf3 as a second baseline: one TCP stream for IPERF_SECONDS between the
# same namespaces, on link 1 (its own default 128 KiB writes).
iperf() { # iperf TAG
    [ "$IPERF" = 1 ] && command -v iperf3 >/dev/null || return 0
    ip netns exec "$A" iperf3 -s -1 -p 7710 > "$TMP/iperf.srv" 2>&1 &
    IPERF_PID=$!
    for _ in $(seq 50); do grep -q "listening" "$TMP/iperf.srv" 2>/dev/null && break; sleep 0.1; done
    local mbit
    mbit=$(ip netns exec "$B" iperf3 -c 10.77.1.1 -p 7710 -t "$IPERF_SECONDS" -f m 2>/dev/null | awk '/receiver/ {print $(NF-2)}')
    wait "$IPERF_PID" 2>/dev/null
    IPERF_PID=
    [ -z "$mbit" ] || echo "{\"scenario\":\"$1\",\"mode\":\"iperf3\",\"seconds\":$IPERF_SECONDS,\"gbit_s\":$(awk "BEGIN {printf \"%.3f\", $mbit / 1000}")}" | tee -a "$TMP/all.json"
}

echo "# veth MTU $MTU, tbf burst $BURST latency 50ms, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cap 1 "$RATE"; cap 2 none
run cap1 10.77.1.1:7700 --baseline --raw-buffers "$RAW_BUFFERS"
iperf cap1
cap 1 "$RATE2"; cap 2 "$RATE2"
run cap2x1 10.77.1.1:7700
run cap2x2 10.77.1.1:7700,10.77.2.1:7700
cap 1 none; cap 2 none
run uncapped 10.77.1.1:7700 --baseline --raw-buffers "$RAW_BUFFERS"
iperf uncapped
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# The summary: Gbit/s per size, the baselines, and each target's ratio.
awk -v rate="$RATE" -v sizes="$SIZES" '
function num(key,   m) { if (match($0, "\"" key "\":[-0-9.e]+")) return substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3); return "" }
function str(key) { if (match($0, "\"" key "\":\"[^\"]*\"")) return substr($0, RSTART + length(key) + 4, RLENGTH - length(key) - 5); return "" }
function hum(b) { return b >= 1048576 ? b / 1048576 "M" : b / 1024 "K" }
{
    sc = str("scenario"); mode = str("mode")
    if (!(sc in seen)) { seen[sc] = 1; order[n++] = sc }
    if (mode == "write") { w[sc, num("size_bytes")] = num("gbit_s"); sz[num("size_bytes")] = 1 }
    else if (mode == "rtt") rtt[sc] = num("rtt_us")
    else if (mode == "raw_stream") { raw[sc, num("buffer_bytes")] = num("gbit_s"); inter[sc, num("buffer_bytes")] = $0 ~ /"interleaved":true/ }
    else if (mode == "raw_pingpong") pp[sc] = num("rtt_us")
    else if (mode == "iperf3") ip[sc] = num("gbit_s")
}
END {
    ns = 0
    for (s in sz) list[ns++] = s + 0
    for (i = 0; i < ns; i++) for (j = i + 1; j < ns; j++) if (list[j] < list[i]) { t = list[i]; list[i] = list[j]; list[j] = t }
    hdr = "scenario"; for (i = 0; i < ns; i++) hdr = hdr "\t" hum(list[i])
    print hdr "\traw 4M\traw 64M\tiperf3\tRTT us\traw pp us" > "/dev/stderr"
    for (k = 0; k < n; k++) {
        sc = order[k]; line = sc
        for (i = 0; i < ns; i++) line = line "\t" w[sc, list[i]]
        line = line "\t" raw[sc, 4194304] "\t" raw[sc, 67108864] "\t" ip[sc] "\t" rtt[sc] "\t" pp[sc]
        print line > "/dev/stderr"
    }
    cap = rate; sub(/gbit$/, "", cap)
    for (i = 0; i < ns; i++) {
        s = list[i]; if (s < 262144) continue
        if (w["cap1", s] != "") printf "target cap1 %s: %.1f%% of %s Gbit/s (>= 90%%)\n", hum(s), 100 * w["cap1", s] / cap, cap > "/dev/stderr"
        if (w["cap2x1", s] > 0 && w["cap2x2", s] != "") printf "target striping %s: %.2fx (>= 1.8x)\n", hum(s), w["cap2x2", s] / w["cap2x1", s] > "/dev/stderr"
    }
    if (raw["uncapped", 4194304] > 0 && w["uncapped", 4194304] != "") printf "target uncapped 4M: %.0f%% of the raw stream (>= 80%%)%s\n", 100 * w["uncapped", 4194304] / raw["uncapped", 4194304], inter["uncapped", 4194304] ? "; repetitions interleaved" : "" > "/dev/stderr"
    for (k = 0; k < n; k++) if (pp[order[k]] > 0) printf "target RTT %s: %.2fx raw ping-pong (<= 1.5x)\n", order[k], rtt[order[k]] / pp[order[k]] > "/dev/stderr"
}' "$TMP/all.json"
