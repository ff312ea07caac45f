#!/usr/bin/env bash
# Cross-builds the kernel and model layers for 64-bit ARM Linux and runs
# their tests under qemu-aarch64: the NEON and NEON+dotprod kernels against
# the reference, and the whole forward pass (test_model, about 3 minutes
# under qemu) against the test's naive model. Needs gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross and qemu-user (apt-get install them). Builds only
# base, gguf, kernels and model (cmake/kernels-only), which need no
# third-party libraries.
#   scripts/cross-arm.sh [BUILD_DIR]     (default build-arm64)
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$src/build-arm64}"
for tool in aarch64-linux-gnu-gcc qemu-aarch64 cmake; do
    command -v "$tool" >/dev/null || { echo "cross-arm.sh: $tool not found (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user cmake)" >&2; exit 1; }
done
cmake -S "$src/cmake/kernels-only" -B "$build" -DCMAKE_TOOLCHAIN_FILE="$src/cmake/aarch64-linux-gnu.cmake" \
    -DCELLM_WERROR=ON >/dev/null
cmake --build "$build" -j2
ctest --test-dir "$build" --output-on-failure
