#!/bin/bash
# test_serve_openai.sh - cellm serve driven by the official OpenAI SDK (node):
# chat and completions, streaming and not, logprobs, stop strings, seeds,
# errors; misbehaving clients; promtool on /metrics; API key, 429 and
# timeouts on a second server; graceful shutdown with a stream in flight.
# Every server must exit 0 after SIGTERM.
source "$(dirname "$0")/serve/common.sh"
serve_need_node
serve_model
fail=0

serve_start -c 4096 --parallel 4 --max-queue 16 --max-body 65536
export CELLM_MAX_BODY=65536
serve_node openai.mjs || fail=1
serve_node abuse.mjs || fail=1
serve_promtool || fail=1
# Graceful shutdown: SIGTERM while a stream runs; the stream still ends well.
(cd "$NODE_DIR" && timeout 120 node shutdown.mjs >"$CELLM_TMP/serve-shutdown-$$.log" 2>&1) &
client=$!
for i in $(seq 1 200); do grep -q streaming "$CELLM_TMP/serve-shutdown-$$.log" 2>/dev/null && break; sleep 0.05; done
serve_stop || fail=1
wait $client || { echo "FAIL shutdown.mjs:"; fail=1; }
cat "$CELLM_TMP/serve-shutdown-$$.log"

export CELLM_API_KEY=secret-$$
serve_start -c 4096 --parallel 1 --max-queue 1 --timeout 1 --api-key "$CELLM_API_KEY"
serve_node limits.mjs || fail=1
serve_stop || fail=1

[ $fail = 0 ] && echo "test_serve_openai: all passed" || echo "test_serve_openai: FAILED"
exit $fail
