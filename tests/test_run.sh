#!/usr/bin/env bash
# test_run.sh - `cellm run` and `cellm logits` end to end on a tiny synthetic
# model: seeded runs repeat exactly, -n and the context limit are respected,
# logits prints well-formed JSON lines with the right counts, its greedy ids
# are the ones `run --temp 0` generates, chat formatting and stop strings
# reach the model and the output, and bad flags fail with a message.
#   CELLM_BIN  the cellm binary (set by ctest)   CELLM_TMP  scratch space
source "$(dirname "$0")/lib.sh"
scratch run
synth_model f16

# ids after "generated ids:" / "prompt N tokens:" in a -v run's stderr
gen_ids() { grep -a 'generated ids:' "$1" | sed 's/.*generated ids://' | xargs; }
prompt_ids() { grep -a 'prompt [0-9]* tokens:' "$1" | sed 's/.*tokens://' | xargs; }
count() { echo $#; }

# --- seeded runs repeat exactly, another seed gives another text ---
"$bin" run -m "$model" -p "Hello world" -n 12 --seed 5 -v >"$tmp/a.out" 2>"$tmp/a.err"
rc_a=$?
"$bin" run -m "$model" -p "Hello world" -n 12 --seed 5 -v >"$tmp/b.out" 2>"$tmp/b.err"
"$bin" run -m "$model" -p "Hello world" -n 12 --seed 6 -v >"$tmp/c.out" 2>"$tmp/c.err"
check "run exits 0" test "$rc_a" -eq 0
check "same seed, same text" cmp -s "$tmp/a.out" "$tmp/b.out"
check "same seed, same ids" test "$(gen_ids "$tmp/a.err")" = "$(gen_ids "$tmp/b.err")"
check "another seed, other ids" test "$(gen_ids "$tmp/a.err")" != "$(gen_ids "$tmp/c.err")"
check "timing line on stderr" grep -aqE 'prompt [0-9]+ tokens in .* tok/s.*generated [0-9]+ tokens in .* tok/s' "$tmp/a.err"
check "timing line not on stdout" bash -c "! grep -aq 'tok/s' '$tmp/a.out'"

# --- -n is respected ---
"$bin" run -m "$model" -p "Hello world" -n 7 --seed 9 -v >"$tmp/n7.out" 2>"$tmp/n7.err"
n7=$(count $(gen_ids "$tmp/n7.err"))
if grep -aq 'stopped: reached -n' "$tmp/n7.err"; then
  check "-n 7 gives 7 tokens" test "$n7" -eq 7
else # the model may end its answer first
  check "-n 7 gives at most 7 tokens (ended early)" test "$n7" -lt 7
fi
"$bin" run -m "$model" -p "Hello world" -n 0 >"$tmp/n0.out" 2>/dev/null
check "-n 0 prints nothing" test ! -s "$tmp/n0.out"

# --- the context limit: a 10-token prompt in a 12-token context ---
"$bin" run -m "$model" -p "Hello world" -c 12 -n 50 --seed 3 -v >/dev/null 2>"$tmp/ctx.err"
np=$(count $(prompt_ids "$tmp/ctx.err"))
nc=$(count $(gen_ids "$tmp/ctx.err"))
if grep -aq 'stopped: end of generation' "$tmp/ctx.err"; then
  check "context: ended before the limit" test "$nc" -le $((12 - np + 1))
else
  check "context full is said" grep -aq 'context is full' "$tmp/ctx.err"
  check "context full after $((12 - np + 1)) tokens" test "$nc" -eq $((12 - np + 1))
fi

# --- logits: JSON lines with the right counts ---
"$bin" logits -m "$model" -p "Hello world" -k 4 -n 6 >"$tmp/l.out" 2>"$tmp/l.err"
check "logits exits 0" test $? -eq 0
if command -v python3 >/dev/null; then
  check "logits JSON lines are well formed" python3 - "$tmp/l.out" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
objs = [json.loads(l) for l in lines]
toks = objs[0]["tokens"]
assert all(isinstance(t, int) and 0 <= t < 512 for t in toks), toks
assert len(objs) == 1 + len(toks) + 1, (len(objs), len(toks))
for i, o in enumerate(objs[1:-1]):
    assert o["pos"] == i, o
    top = o["top"]
    assert len(top) == 4, top
    assert all(isinstance(e[0], int) and 0 <= e[0] < 512 for e in top), top
    assert len({e[0] for e in top}) == 4, top
    vals = [e[1] for e in top]
    assert vals == sorted(vals, reverse=True), vals
greedy = objs[-1]["greedy"]
assert len(greedy) == 6 and all(0 <= t < 512 for t in greedy), greedy
# the first greedy token is the best logit at the last prompt position
assert greedy[0] == objs[-2]["top"][0][0], (greedy, objs[-2])
EOF
else
  echo "skip logits JSON check: python3 is not installed"
fi
ltoks=$(head -1 "$tmp/l.out" | sed 's/.*\[//; s/\].*//; s/,/ /g')
lgreedy=$(tail -1 "$tmp/l.out" | sed 's/.*\[//; s/\].*//; s/,/ /g')
check "logits tokens = run's prompt ids" test "$ltoks" = "$(prompt_ids "$tmp/a.err")"

# --- greedy ids of logits = what run --temp 0 generates ---
"$bin" run -m "$model" -p "Hello world" -n 6 --temp 0 -v >"$tmp/g.out" 2>"$tmp/g.err"
rgreedy=$(gen_ids "$tmp/g.err")
nr=$(count $rgreedy)
if [ "$nr" -eq 6 ]; then
  check "logits greedy = run --temp 0" test "$lgreedy" = "$rgreedy"
else # run stops at the end-of-generation token; logits goes on
  check "logits greedy starts with run --temp 0" test "$(echo $lgreedy | cut -d' ' -f1-"$nr")" = "$rgreedy"
fi
# the prompt in batches of 4 tokens generates the same
"$bin" run -m "$model" -p "Hello world" -n 6 --temp 0 -b 4 -v >/dev/null 2>"$tmp/gb.err"
check "run with -b 4 = one batch" test "$(gen_ids "$tmp/gb.err")" = "$rgreedy"
# greedy does not depend on the seed
"$bin" run -m "$model" -p "Hello world" -n 6 --temp 0 --seed 123 >"$tmp/g2.out" 2>/dev/null
check "greedy ignores the seed" cmp -s "$tmp/g.out" "$tmp/g2.out"
# a prompt split into several batches gives the same logits as one batch
"$bin" logits -m "$model" -p "Hello world" -k 4 -n 6 -b 3 >"$tmp/l3.out" 2>/dev/null
check "logits with -b 3 = one batch" cmp -s "$tmp/l.out" "$tmp/l3.out"

# --- stop strings: cut at the first occurrence of a generated character ---
"$bin" run -m "$model" -p "Hello world" -n 24 --temp 0 >"$tmp/s0.out" 2>/dev/null
# first printable ASCII byte after the first one (not quote or backslash)
pos=$(od -An -v -tu1 "$tmp/s0.out" | tr -s ' ' '\n' | grep -v '^$' |
      awk 'NR > 1 && $1 >= 48 && $1 <= 122 && $1 != 92 { print NR - 1; exit }')
if [ -n "$pos" ]; then
  ch=$(dd if="$tmp/s0.out" bs=1 skip="$pos" count=1 2>/dev/null)
  first=$(od -An -v -tu1 "$tmp/s0.out" | tr -s ' ' '\n' | grep -v '^$' |
          awk -v c="$(printf '%d' "'$ch")" '$1 == c { print NR - 1; exit }')
  "$bin" run -m "$model" -p "Hello world" -n 24 --temp 0 --stop "$ch" -v >"$tmp/s1.out" 2>"$tmp/s1.err"
  head -c "$first" "$tmp/s0.out" >"$tmp/s0.prefix"
  check "--stop '$ch' cuts before its first occurrence" cmp -s "$tmp/s1.out" "$tmp/s0.prefix"
  check "--stop is said on stderr" grep -aq 'stopped: stop string' "$tmp/s1.err"
else
  echo "skip stop-string check: the greedy text has no printable ASCII character"
fi

# --- chat formatting reaches the tokenizer; stdin prompts ---
"$bin" run -m "$model" -p "hi" --chat --chat-template chatml -n 1 -v >/dev/null 2>"$tmp/chat.err"
"$bin" logits -m "$model" -p $'<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n' -n 0 >"$tmp/chat.l" 2>/dev/null
ctoks=$(head -1 "$tmp/chat.l" | sed 's/.*\[//; s/\].*//; s/,/ /g')
check "--chat renders the ChatML prompt" test "$(prompt_ids "$tmp/chat.err")" = "$ctoks"
"$bin" run -m "$model" -p "hi" --chat -n 1 >/dev/null 2>"$tmp/chat2.err"
check "no template: warns and names --chat-template" grep -aq -- '--chat-template NAME' "$tmp/chat2.err"
printf 'Hello world' | "$bin" run -m "$model" -n 3 --seed 5 -v >/dev/null 2>"$tmp/stdin.err"
check "prompt from stdin" test "$(prompt_ids "$tmp/stdin.err")" = "$(prompt_ids "$tmp/a.err")"

# --- real chat templates: models carrying Llama 3's and Qwen3's tokenizer and template ---
hf=${CELLM_TESTDATA:-}/hf-tokenizers
if [ -n "${CELLM_TESTDATA:-}" ] && [ -f "$hf/llama3-tokenizer.json" ] && [ -f "$hf/qwen3-tokenizer.json" ]; then
  for fam in llama3 qwen3; do
    arch=llama; [ $fam = qwen3 ] && arch=qwen3
    "$bin" model import-tokenizer "$hf/$fam-tokenizer.json" --config "$hf/$fam-tokenizer_config.json" \
      -o "$tmp/$fam-vocab.gguf" >/dev/null 2>&1 &&
    "$bin" model synth -o "$tmp/$fam.gguf" --arch $arch --embd 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
      --vocab-from "$tmp/$fam-vocab.gguf" --type f16 --seed 1 >/dev/null 2>&1 ||
      bad "$fam: could not build a model with the $fam tokenizer"
    "$bin" run -m "$tmp/$fam.gguf" --chat --system "Be brief." -p "Hello there" -n 2 --seed 1 -v \
      >/dev/null 2>"$tmp/$fam.err"
    rm -f "$tmp/$fam.gguf" "$tmp/$fam-vocab.gguf"
  done
  # the special tokens land where each template puts them:
  # Llama 3: <|begin_of_text|> <|start_header_id|> system <|end_header_id|> \n\n ... <|eot_id|>
  check "llama3: template detected" grep -aq 'chat template llama3' "$tmp/llama3.err"
  check "llama3: chat prompt ids" test "$(prompt_ids "$tmp/llama3.err")" = \
    "128000 128006 9125 128007 271 3513 10015 13 128009 128006 882 128007 271 9906 1070 128009 128006 78191 128007 271"
  # Qwen3 (ChatML, no BOS): <|im_start|> system \n ... <|im_end|> \n
  check "qwen3: template detected as chatml" grep -aq 'chat template chatml' "$tmp/qwen3.err"
  check "qwen3: chat prompt ids" test "$(prompt_ids "$tmp/qwen3.err")" = \
    "151644 8948 198 3430 9814 13 151645 198 151644 872 198 9707 1052 151645 198 151644 77091 198"
else
  echo "skip real chat templates: CELLM_TESTDATA/hf-tokenizers is absent"
fi

# --- interactive chat keeps the KV cache across turns (needs a pty) ---
if command -v script >/dev/null && command -v timeout >/dev/null; then
  (printf 'hello\n'; sleep 1; printf 'and again\n'; sleep 1; printf '/exit\n'; sleep 1) |
    timeout 60 script -qec "'$bin' run -m '$model' --chat-template chatml -n 4 --temp 0 -v" /dev/null \
    >"$tmp/ia.out" 2>&1
  kept=$(grep -a 'kept [0-9]* cached' "$tmp/ia.out" | sed -n 2p | sed 's/.*kept \([0-9]*\).*/\1/')
  check "interactive: second turn reuses the cache" test "${kept:-0}" -gt 0
  # the second answer, computed on a cache that kept the first turn, must be
  # what a fresh pass over the whole conversation gives
  turn2=$(grep -a '(generated ids:' "$tmp/ia.out" | sed -n 2p | sed 's/.*ids:\(.*\)).*/\1/' | xargs)
  "$bin" run -m "$model" --chat-template chatml -p hello -n 4 --temp 0 >"$tmp/answer1" 2>/dev/null
  { printf '<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n'; cat "$tmp/answer1"
    printf '<|im_end|>\n<|im_start|>user\nand again<|im_end|>\n<|im_start|>assistant\n'; } >"$tmp/conv.txt"
  fresh=$("$bin" logits -m "$model" -k 1 -n 4 <"$tmp/conv.txt" 2>/dev/null | tail -1 | sed 's/.*\[//; s/\].*//; s/,/ /g')
  nt=$(count $turn2)
  if [ "$nt" -gt 0 ]; then
    check "interactive: second answer = fresh pass over the conversation" \
      test "$turn2" = "$(echo $fresh | cut -d' ' -f1-"$nt")"
  else
    check "interactive: empty second answer means end of generation first" grep -aq '(generated ids:)' "$tmp/ia.out"
  fi
else
  echo "skip interactive chat check: needs script(1) and timeout(1)"
fi

# --- bad flags: non-zero exit and a message naming the problem ---
expect_fail() { # expect_fail 'message part' args...
  local want=$1; shift
  "$bin" "$@" >"$tmp/bad.out" 2>"$tmp/bad.err"
  local rc=$? args="$*"
  args=${args//$tmp/TMP}
  if [ $rc -ne 0 ] && grep -aqF -- "$want" "$tmp/bad.err"; then ok "rejects: $args"; else
    bad "rejects: $args (exit $rc, stderr: $(head -c 300 "$tmp/bad.err"))"; fi
}
expect_fail "--top-p must be in (0, 1], got 3" run -m "$model" -p x --top-p 3
expect_fail "--top-p must be in (0, 1], got 0" run -m "$model" -p x --top-p=0
expect_fail "--temp must be >= 0" run -m "$model" -p x --temp -1
expect_fail "--top-k needs an integer, got 'many'" run -m "$model" -p x --top-k many
expect_fail "--min-p must be in [0, 1], got 2" run -m "$model" -p x --min-p 2
expect_fail "--repeat-penalty must be > 0" run -m "$model" -p x --repeat-penalty 0
expect_fail "--repeat-last-n must be in [-1" run -m "$model" -p x --repeat-last-n -5
expect_fail "--presence-penalty must be in [-2, 2]" run -m "$model" -p x --presence-penalty 9
expect_fail "-n must be in [-1" run -m "$model" -p x -n -3
expect_fail "--seed needs a non-negative integer" run -m "$model" -p x --seed -1
expect_fail "unknown template 'nonsense'" run -m "$model" -p x --chat-template nonsense
expect_fail "--stop needs a non-empty string" run -m "$model" -p x --stop ''
expect_fail "unknown option '--bogus'" run -m "$model" -p x --bogus
expect_fail "--top-p needs a value" run -m "$model" -p x --top-p
expect_fail "no model" run -p x
expect_fail "$tmp/missing.gguf" run -m "$tmp/missing.gguf" -p x
expect_fail "-k must be in [1" logits -m "$model" -p x -k 0
expect_fail "unknown option '--temp'" logits -m "$model" -p x --temp 1
"$bin" run --help >"$tmp/help.out" 2>&1
check "run --help exits 0 and lists flags" grep -q -- '--repeat-last-n' "$tmp/help.out"
"$bin" logits --help >"$tmp/help.out" 2>&1
check "logits --help exits 0" grep -q -- '"greedy"' "$tmp/help.out"

summary
