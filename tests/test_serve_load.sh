#!/bin/bash
# test_serve_load.sh - 32 concurrent streaming clients through the OpenAI SDK,
# several requests each, against one server with 8 sequence slots: zero
# failed requests, every slot free afterwards, metrics still valid, a clean
# exit 0 after SIGTERM (no leaks under ASan).
source "$(dirname "$0")/serve/common.sh"
serve_need_node
serve_model
fail=0
serve_start -c 512 --parallel 8 --max-queue 64
LOAD_CLIENTS=32 LOAD_REQUESTS=4 serve_node load.mjs 600 || fail=1
serve_promtool || fail=1
curl -s "$CELLM_URL/metrics" | grep -E '^cellm_(requests_total\{code="200"\}|generated_tokens_total|decode_steps_total|batch_tokens_total) '
serve_stop || fail=1
[ $fail = 0 ] && echo "test_serve_load: all passed" || echo "test_serve_load: FAILED"
exit $fail
