#!/usr/bin/env bash
# test_xfer_netns.sh - cellm xfer-bench between two network namespaces joined
# by two veth pairs capped with tc tbf: one link, two links striped, and a
# wrong key. Checks that the bench completes and prints sane JSON (fields
# present, numbers positive and finite); it does not assert throughput.
# Skips (exit 0) when not root or when namespaces cannot be made.
# Meant to pass on a slow, loaded machine (sanitizer build, parallel ctest):
# waits are generous, a client that could not even start a session (no
# output, nonzero exit) is retried, and every check is about correctness,
# never speed. On a failure the client's and server's stderr are printed.
set -uo pipefail
BIN=${CELLM_BIN:-build/cellm}
if [ "$(id -u)" != 0 ]; then echo "skip: test_xfer_netns needs root for ip netns"; exit 0; fi
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then echo "skip: ip/tc not installed"; exit 0; fi
if [ ! -x "$BIN" ]; then echo "FAIL: no cellm binary at $BIN"; exit 1; fi

A=cmx$$a
B=cmx$$b
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    ip netns del "$A" 2>/dev/null
    ip netns del "$B" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
if ! ip netns add "$A" 2>/dev/null; then echo "skip: ip netns add failed (no permission for namespaces here)"; exit 0; fi
ip netns add "$B" || { echo "skip: ip netns add failed"; exit 0; }
ip -n "$A" link set lo up
ip -n "$B" link set lo up
for l in 1 2; do
    if ! ip link add cmx$$${l}a type veth peer name cmx$$${l}b; then echo "skip: cannot create veth pairs"; exit 0; fi
    ip link set cmx$$${l}a netns "$A"
    ip link set cmx$$${l}b netns "$B"
    ip -n "$A" addr add 10.77.$l.1/24 dev cmx$$${l}a
    ip -n "$B" addr add 10.77.$l.2/24 dev cmx$$${l}b
    ip -n "$A" link set cmx$$${l}a up
    ip -n "$B" link set cmx$$${l}b up
    # tbf needs a burst of at least rate/HZ; 4mb holds 5 Gbit/s at HZ 100..1000
    ip netns exec "$A" tc qdisc add dev cmx$$${l}a root tbf rate 5gbit burst 4mb latency 50ms || { echo "skip: tc tbf unavailable"; exit 0; }
    ip netns exec "$B" tc qdisc add dev cmx$$${l}b root tbf rate 5gbit burst 4mb latency 50ms
done

fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; else echo "ok   $2"; fi; }
# check, and on failure show what the client (file stem $3) and the server said
check_run() {
    if ! eval "$1"; then
        echo "FAIL: $2 (exit $rc)"
        fail=1
        echo "--- $3 stdout"; cat "$TMP/$3.json"
        echo "--- $3 stderr"; tail -n 40 "$TMP/$3.err"
        echo "--- server stderr"; tail -n 40 "$TMP/server.err"
    else
        echo "ok   $2"
    fi
}
# bench STEM ARGS...: one client run in namespace B, stdout to STEM.json and
# stderr to STEM.err, exit status in rc. Retried (3 tries) only while it
# fails before printing anything, i.e. it could not set up a session with a
# server busy ending the previous one; a run that measured something and
# then failed is not retried.
bench() {
    local stem=$1 try
    shift
    for try in 1 2 3; do
        ip netns exec "$B" "$BIN" xfer-bench "$@" > "$TMP/$stem.json" 2> "$TMP/$stem.err"
        rc=$?
        if [ $rc = 0 ] || [ -s "$TMP/$stem.json" ] || [ $try = 3 ]; then break; fi
        echo "note: $stem: client failed before any result (exit $rc), retrying: $(tail -n 1 "$TMP/$stem.err")"
        sleep 2
    done
}

"$BIN" key generate > "$TMP/key"
"$BIN" key generate > "$TMP/otherkey"
ip netns exec "$A" "$BIN" xfer-bench --serve 0.0.0.0:7700 --key-file "$TMP/key" > "$TMP/server.out" 2> "$TMP/server.err" &
PIDS+=($!)
for _ in $(seq 600); do grep -q listening "$TMP/server.out" 2>/dev/null && break; sleep 0.1; done
check 'grep -q listening "$TMP/server.out"' "server listens"

# JSON sanity: every line an object with size_bytes and a positive gbit_s or rtt_us
sane() {
    awk '
    !/^\{.*\}$/ { bad = 1 }
    /"mode":"write"/ { w++; if (!match($0, /"size_bytes":[0-9]+/) || !match($0, /"gbit_s":[0-9.]+/)) bad = 1
        split(substr($0, RSTART), a, /[:,}]/); if (a[2] + 0 <= 0) bad = 1 }
    /"mode":"rtt"/ { r++; if (!match($0, /"rtt_us":[0-9.]+/)) bad = 1; split(substr($0, RSTART), a, /[:,}]/); if (a[2] + 0 <= 0) bad = 1 }
    /"mode":"raw_stream"/ { s++ } /"mode":"raw_pingpong"/ { p++ }
    END { exit !(bad == 0 && w == '"$2"' && r == 1 && s == '"$3"' && p == '"$3"') }' "$1"
}

bench one --peer 10.77.1.1:7700 --key-file "$TMP/key" --sizes 4K,1M --iters 2 --rtt-iters 200 --baseline --json
check_run '[ $rc = 0 ] && sane "$TMP/one.json" 2 1' "one capped link: bench completes with sane JSON" one
cat "$TMP/one.json"

bench two --peer 10.77.1.1:7700,10.77.2.1:7700 --key-file "$TMP/key" --sizes 4M --iters 2 --rtt-iters 200 --json
check_run '[ $rc = 0 ] && sane "$TMP/two.json" 1 0 && grep -q "\"links\":2" "$TMP/two.json"' \
    "two links striped: bench completes with sane JSON" two
cat "$TMP/two.json"

ip netns exec "$B" "$BIN" xfer-bench --peer 10.77.1.1:7700 --key-file "$TMP/otherkey" --sizes 4K --iters 1 \
    --rtt-iters 10 --json > "$TMP/bad.json" 2> "$TMP/bad.err"
rc=$?
check '[ $rc = 1 ] && grep -q "refused our cell key" "$TMP/bad.err"' "wrong key refused (exit $rc)"
for _ in $(seq 100); do grep -q "authentication failed" "$TMP/server.err" && break; sleep 0.1; done
check 'grep -q "authentication failed" "$TMP/server.err"' "server logs the refused key"

# one raw stream per --raw-buffers size (the server walks a buffer of that
# size): the one matching a write size runs interleaved with the engine's
# repetitions, the other alone; machine CPU use on every throughput line;
# the ping-pong line carries the engine/raw ratio; busy polling off works
bench raw --peer 10.77.1.1:7700 --key-file "$TMP/key" --sizes 64K --iters 1 --rtt-iters 100 --baseline \
    --raw-buffers 64K,1M --busy-poll 0 --json
check_run '[ $rc = 0 ] && grep -q "\"mode\":\"raw_stream\".*\"buffer_bytes\":65536.*\"interleaved\":true" "$TMP/raw.json" &&
    grep -q "\"mode\":\"raw_stream\".*\"buffer_bytes\":1048576.*\"interleaved\":false" "$TMP/raw.json" &&
    grep -q "\"mode\":\"raw_pingpong\".*\"rtt_us\":[0-9.]*,\"ratio\":[0-9.]*" "$TMP/raw.json" &&
    [ $(grep -c "\"cpu_busy\":[0-9.]*" "$TMP/raw.json") = 3 ] && grep -q "\"mode\":\"rtt\"" "$TMP/raw.json"' \
    "raw streams per buffer size, cpu_busy reported, --busy-poll 0" raw
cat "$TMP/raw.json"

# the server survives all of that: one more short run
bench again --peer 10.77.2.1:7700 --key-file "$TMP/key" --sizes 64K --iters 1 --rtt-iters 50 --json
check_run '[ $rc = 0 ] && sane "$TMP/again.json" 1 0' "server still serves after a refused peer" again

# --backend verbs with no data path here falls back to tcp: the JSON names
# the backend that ran and the one asked for
bench verbs --peer 10.77.1.1:7700 --key-file "$TMP/key" --backend verbs --sizes 4K --iters 1 --rtt-iters 10 --json
check_run '[ $rc = 0 ] && sane "$TMP/verbs.json" 1 0 && [ $(grep -c "\"backend\":\"tcp\",\"requested\":\"verbs\"" "$TMP/verbs.json") = 2 ]' \
    "verbs falls back to tcp and the JSON says so" verbs

[ $fail = 0 ] && echo "xfer netns: all checks passed"
exit $fail
