#!/usr/bin/env bash
# Cross-compiles the standalone kernel harness for aarch64 and runs it under qemu-user, once on an
# emulated CPU with the dot-product extension (sdot path) and once without it (plain NEON path).
# Needs the Debian packages g++-aarch64-linux-gnu and qemu-user. On an aarch64 host, build
# gemv_harness.cpp natively instead: g++ -std=c++17 -O2 gemv_harness.cpp && ./a.out
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$(mktemp -d)}/gemv_harness_aarch64"
CXX="${CXX_AARCH64:-aarch64-linux-gnu-g++}"
QEMU="${QEMU_AARCH64:-qemu-aarch64}"
for tool in "$CXX" "$QEMU"; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install g++-aarch64-linux-gnu qemu-user)" >&2; exit 2; }
done
"$CXX" -std=c++17 -O2 -static -Wall "$here/gemv_harness.cpp" -o "$out"
echo "== emulated CPU with FEAT_DotProd (-cpu max)"
"$QEMU" -cpu max "$out"
echo "== emulated CPU without it (-cpu cortex-a57)"
"$QEMU" -cpu cortex-a57 "$out"
