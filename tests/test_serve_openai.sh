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

serve_start -c 8192 --parallel 4 --max-queue 16 --max-body 65536
export CELLM_MAX_BODY=65536 CELLM_LONG=8000
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
serve_start -c 16384 --parallel 1 --max-queue 1 --timeout 0.5 --api-key "$CELLM_API_KEY"
serve_node limits.mjs || fail=1
serve_stop || fail=1

# A real vocabulary and chat template (Qwen3's), when the shared test data is there.
unset CELLM_API_KEY
HF=${CELLM_TESTDATA:-$CELLM_SRC/../shared/testdata}/hf-tokenizers
if [ -f "$HF/qwen3-tokenizer.json" ]; then
    QV=$CELLM_TMP/serve-qwen3-vocab.gguf
    QM=$CELLM_TMP/serve-qwen3-tiny.gguf
    if [ ! -s "$QM" ]; then
        "$CELLM_BIN" model import-tokenizer "$HF/qwen3-tokenizer.json" --config "$HF/qwen3-tokenizer_config.json" \
            -o "$QV" >/dev/null 2>&1 &&
            "$CELLM_BIN" model synth -o "$QM" --arch qwen3 --embd 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
                --vocab-from "$QV" --type f16 --seed 3 >/dev/null 2>&1 || { echo "FAIL: qwen3 test model"; fail=1; }
    fi
    if [ -s "$QM" ]; then
        SPECIAL_PROMPT_TOKENS=$("$CELLM_BIN" tokenize -m "$QM" --special "$(printf '<|im_start|>user\nhi<|im_end|>')" | wc -w)
        export SPECIAL_PROMPT_TOKENS
        SERVE_MODEL=$QM
        export CELLM_MODEL=serve-qwen3-tiny
        serve_start -c 512 --parallel 2
        if grep -q "chat template" "$SERVER_LOG"; then echo "FAIL: Qwen3's chat template was not recognised"; fail=1; fi
        serve_node realvocab.mjs || fail=1
        serve_stop || fail=1
    fi
else
    echo "SKIP real-vocabulary part: $HF is absent"
fi

[ $fail = 0 ] && echo "test_serve_openai: all passed" || echo "test_serve_openai: FAILED"
exit $fail
