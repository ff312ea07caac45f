#!/usr/bin/env bash
# Installs what cellm needs to build and test on Debian 12 (run as root, or
# with sudo available). Safe to run again.
set -euo pipefail
pkgs=(build-essential cmake pkg-config git
      libpcre2-dev libsodium-dev libmicrohttpd-dev libcjson-dev
      libibverbs-dev librdmacm-dev libfabric-dev
      iproute2 clang libclang-rt-14-dev curl)
if [ "${1:-}" = "--test" ]; then
  pkgs+=(prometheus iperf3 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
  # The serve tests drive the server with the official openai npm package.
  command -v node >/dev/null && command -v npm >/dev/null || pkgs+=(nodejs npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
