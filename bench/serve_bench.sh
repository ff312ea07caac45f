#!/bin/bash
# serve_bench.sh - starts `cellm serve` with 16 slots on a model and runs
# bench/serve_bench.mjs at 1, 4, 8 and 16 concurrent requests (one JSON line
# per level). A benchmark, not a test: it asserts nothing.
#
#   bench/serve_bench.sh [MODEL.gguf] [max_tokens] [extra serve flags...]
#
# Without a model it writes a synthetic one (~170M parameters, q8_0) next to
# the binary: big enough that decode reads weights rather than waits on
# bookkeeping, which is where batching pays off.
set -eu
BIN=${CELLM_BIN:-$(dirname "$0")/../build/cellm}
TMP=${CELLM_TMP:-$(dirname "$BIN")/tmp}
mkdir -p "$TMP"
MODEL=${1:-}
MAXTOK=${2:-64}
shift 2 2>/dev/null || shift $# 2>/dev/null || true
if [ -z "$MODEL" ]; then
    MODEL=$TMP/serve-bench.gguf
    [ -s "$MODEL" ] || "$BIN" model synth -o "$MODEL" --arch llama --embd 1024 --layers 8 --heads 16 --kv-heads 4 \
        --ffn 2816 --vocab 32000 --type q8_0 --seed 7 >/dev/null 2>&1
fi
LOG=$TMP/serve-bench-$$.log
"$BIN" serve -m "$MODEL" --port 0 --parallel 16 -c 512 --max-queue 64 "$@" >"$LOG" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for i in $(seq 1 600); do
    PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$LOG")
    [ -n "$PORT" ] && break
    kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 0.1
done
node "$(dirname "$0")/serve_bench.mjs" "http://127.0.0.1:$PORT" "${LEVELS:-1,4,8,16}" "$MAXTOK" "${ROUNDS:-1}"
