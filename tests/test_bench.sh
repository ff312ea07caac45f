#!/usr/bin/env bash
# test_bench.sh - `cellm bench` on a tiny synthetic model: --json prints one
# well-formed object per test with the documented keys and sane values
# (positive speeds and sizes, min <= median <= max, roofline only on
# generation tests and equal to tok_s * bytes_per_token / bandwidth), the
# table mode prints every test, -d runs them at a depth, and bad flags fail
# with exit code 2.
#   CELLM_BIN  the cellm binary (set by ctest)   CELLM_TMP  scratch space
source "$(dirname "$0")/lib.sh"
scratch bench
synth_model q4_0

"$bin" bench -m "$model" -p 16,32 -n 8 -t 2 -r 3 --json >"$tmp/out.jsonl" 2>"$tmp/err.log"
check "bench --json exits 0" test $? -eq 0
check "one line per test (pp16, pp32, tg8)" test "$(wc -l <"$tmp/out.jsonl")" -eq 3

python3 - "$tmp/out.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
tests = [o["test"] for o in lines]
assert tests == ["pp16", "pp32", "tg8"], tests
for o in lines:
    for k in ("tok_s", "tok_s_min", "tok_s_max", "bytes_per_token", "bandwidth_gb_s"):
        assert k in o, (o["test"], k)
    assert o["tok_s"] > 0 and o["bandwidth_gb_s"] > 0 and o["bytes_per_token"] > 0, o
    assert o["tok_s_min"] <= o["tok_s"] <= o["tok_s_max"], o
    if o["test"].startswith("tg"):
        want = o["tok_s"] * o["bytes_per_token"] / (o["bandwidth_gb_s"] * 1e9)
        assert abs(o["roofline"] - want) <= 1e-3 * max(want, 1e-9) + 1e-4, (o["roofline"], want)
    else:
        assert "roofline" not in o, o
print("json ok")
PY
check "json keys and values" test $? -eq 0

"$bin" bench -m "$model" -p 16 -n 4 -r 1 >"$tmp/table.txt" 2>&1
check "table mode exits 0" test $? -eq 0
check "table lists pp16 and tg4" grep -q "pp16" "$tmp/table.txt"
check "table has tg4 with a roofline" grep -Eq "tg4 +\|.*\| +[0-9.]+ +\|$" "$tmp/table.txt"

"$bin" bench -m "$model" -p x >/dev/null 2>"$tmp/bad.log"
check "bad -p value exits 2" test $? -eq 2
check "bad -p value says why" grep -q "needs an integer" "$tmp/bad.log"
# -d: every test again after D tokens already in the cache
"$bin" bench -m "$model" -p 8 -n 4 -d 0,40 -t 2 -r 2 --json >"$tmp/depth.jsonl" 2>"$tmp/depth.log"
check "bench -d exits 0" test $? -eq 0
python3 - "$tmp/depth.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [o["test"] for o in lines] == ["pp8", "tg4", "pp8 @ d40", "tg4 @ d40"], lines
assert [o["depth"] for o in lines] == [0, 0, 40, 40], lines
assert all(o["tok_s"] > 0 and o["bandwidth_best_gb_s"] >= o["bandwidth_gb_s"] for o in lines), lines
print("depth ok")
PY
check "depth tests named and tagged" test $? -eq 0
"$bin" bench -m "$model" -d x >/dev/null 2>&1
check "bad -d value exits 2" test $? -eq 2

"$bin" bench -p 16 >/dev/null 2>&1
check "missing -m exits 2" test $? -eq 2
"$bin" bench -m "$tmp/missing.gguf" -p 16 -n 0 >/dev/null 2>"$tmp/missing.log"
check "missing model exits 1 with a message" test $? -eq 1 -a -s "$tmp/missing.log"

summary
