# lib.sh - what the shell tests of cellm's subcommands share: the cellm
# binary, a scratch folder removed on exit, pass/fail counting and a tiny
# synthetic model. Sourced by tests/test_*.sh; not a test itself (ctest
# registers only files named test_*.sh).
#   CELLM_BIN  the cellm binary (set by ctest)   CELLM_TMP  scratch space
set -uo pipefail
bin=${CELLM_BIN:?CELLM_BIN must point at the cellm binary}
fails=0
passes=0
ok() { passes=$((passes + 1)); echo "ok   $1"; }
bad() { fails=$((fails + 1)); echo "FAIL $1"; }
check() { # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then ok "$name"; else bad "$name"; fi
}

# scratch NAME: $tmp becomes a fresh folder under CELLM_TMP, removed on exit.
scratch() {
  tmp=$(mktemp -d "${CELLM_TMP:-/tmp}/$1.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
}

# synth_model TYPE: $model becomes a tiny llama model ($tmp/x.gguf) with
# weights of TYPE (f16, q4_0, ...); the test ends here if it cannot be made.
synth_model() {
  model=$tmp/x.gguf
  if ! "$bin" model synth -o "$model" --arch llama --embd 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
      --vocab 512 --type "$1" --seed 1 >"$tmp/synth.log" 2>&1; then
    cat "$tmp/synth.log"
    echo "FAIL synth: could not write the test model"
    exit 1
  fi
}

# summary: the counts, and the test's exit status (0 only when nothing failed).
summary() {
  echo "$passes passed, $fails failed"
  [ "$fails" -eq 0 ]
}
