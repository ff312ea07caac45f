#!/usr/bin/env bash
# Builds cellm (warnings as errors) and runs every test with ctest.
#   CELLM_BUILD_DIR  build folder (default build-test)
#   CELLM_SANITIZE   e.g. address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CELLM_BUILD_DIR:-build-test}
jobs=$(nproc)
cmake -S . -B "$dir" -DCELLM_WERROR=ON -DCELLM_SANITIZE="${CELLM_SANITIZE:-}" >/dev/null
cmake --build "$dir" -j"$jobs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd "$dir" && ctest --output-on-failure -j"$jobs"
