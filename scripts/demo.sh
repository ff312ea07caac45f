#!/usr/bin/env bash
# The main job on one machine: installs the build dependencies, builds cellm,
# writes a synthetic model (random weights, so the text is gibberish by
# design: it shows the engine working, not a trained model), prints what the
# model is, and generates from it.
#   CELLM_DEMO_DIR   where the build and model go (default ./out)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${CELLM_DEMO_DIR:-out}
bash scripts/deps.sh
cmake -S . -B "$out/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$out/build" -j"$(nproc)"
cellm="$out/build/cellm"
model="$out/demo-q4_0.gguf"
if [ ! -f "$model" ]; then
  # A small Llama-shaped model: 8 layers, 512 wide, 4-bit.
  "$cellm" model synth -o "$model" --arch llama --embd 512 --layers 8 --heads 8 \
    --kv-heads 2 --ffn 1408 --vocab 4096 --type q4_0 --seed 7
fi
"$cellm" model info "$model"
"$cellm" run -m "$model" -p "Once upon a time" -n 64 --seed 1
echo
"$cellm" bench -m "$model" -p 128 -n 32 -r 3
