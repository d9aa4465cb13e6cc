#!/usr/bin/env bash
# Builds fhirgate.wasm (the one module, every stage) for wasm32-wasip1, with any instruments
# asked for in the same cargo invocation (std is built or linked once), and copies the modules
# to build/wasm/.
#
# Toolchain, in order of preference (FHIRGATE_WASM_TOOLCHAIN=rustup|debian forces one):
#   1. rustup's wasm32-wasip1 target, installed now if missing and installable;
#   2. Debian's rustc-web + rust-web-src + wasi-libc, building std with -Zbuild-std.
set -euo pipefail
cd "$(dirname "$0")/.."

FILTERS=(fhirgate-gateway)
# Test and benchmark instruments (fhirgate-fault, fhirgate-bench-floor) only when asked for.
read -r -a extra <<< "${FHIRGATE_EXTRA_FILTERS:-}"
FILTERS+=("${extra[@]}")
OUT=build/wasm
mode=${FHIRGATE_WASM_TOOLCHAIN:-auto}
pkgs=()
for f in "${FILTERS[@]}"; do pkgs+=(-p "$f"); done
# Wasm's 128-bit vectors (simd128, in V8 since 2021): memchr and the compiler use them for the
# byte scans over response bodies.
WASM_FLAGS="-C target-feature=+simd128"

have_rustup_target() {
  command -v rustup >/dev/null 2>&1 || return 1
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 && return 0
  echo "build-wasm: adding rustup target wasm32-wasip1" >&2
  timeout 300 rustup target add wasm32-wasip1 >&2 2>&1
}

debian_packages=(rustc-web cargo-web rust-web-src lld-22 wasi-libc)
ensure_debian_toolchain() {
  local missing=()
  for p in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "build-wasm: installing ${missing[*]} from Debian" >&2
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >&2
  fi
}

if [ "$mode" = rustup ] || { [ "$mode" = auto ] && have_rustup_target; }; then
  [ "$mode" = rustup ] && have_rustup_target
  echo "build-wasm: using rustup's wasm32-wasip1 target" >&2
  RUSTFLAGS="$WASM_FLAGS" cargo build --release --target wasm32-wasip1 "${pkgs[@]}" --target-dir target/wasm-rustup
  dir=target/wasm-rustup/wasm32-wasip1/release
else
  ensure_debian_toolchain
  echo "build-wasm: using Debian's rustc-web with -Zbuild-std" >&2
  PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 RUSTFLAGS="-L /usr/lib/wasm32-wasi $WASM_FLAGS" \
    cargo build --release --target wasm32-wasip1 -Zbuild-std=std,panic_abort "${pkgs[@]}" --target-dir target/wasm-debian
  dir=target/wasm-debian/wasm32-wasip1/release
fi

mkdir -p "$OUT"
for f in "${FILTERS[@]}"; do
  name=${f//-/_}.wasm
  [ "$f" = fhirgate-gateway ] && name=fhirgate.wasm
  cp "$dir/$name" "$OUT/$name.tmp" && mv "$OUT/$name.tmp" "$OUT/$name"
  echo "build-wasm: $OUT/$name ($(stat -c %s "$OUT/$name") bytes)" >&2
done
