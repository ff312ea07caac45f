#!/usr/bin/env bash
# Cross-builds the kernel layer for 64-bit ARM Linux and runs its tests
# under qemu-aarch64: the NEON and NEON+dotprod kernels against the
# reference. Needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and
# qemu-user (apt-get install them). Builds only base, gguf and kernels
# (cmake/kernels-only), which need no third-party libraries.
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
