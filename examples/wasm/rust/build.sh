#!/usr/bin/env bash
# Build word_count.wasm (WASI preview 1) from source with Rust's std only, no crates.
# Debian: apt-get install rustc libstd-rust-dev-wasm32 lld-14 (the target is called
# wasm32-wasi there; rustup toolchains since 1.78 call it wasm32-wasip1).
set -euo pipefail
cd "$(dirname "$0")"
RUSTC="${RUSTC:-$(command -v /usr/bin/rustc || command -v rustc)}"
for target in wasm32-wasip1 wasm32-wasi; do
  if "$RUSTC" --target "$target" -O --edition 2021 -C strip=symbols \
      word_count.rs -o word_count.wasm 2>/dev/null; then
    echo "built word_count.wasm ($target, $("$RUSTC" --version))"
    exit 0
  fi
done
"$RUSTC" --target wasm32-wasi -O --edition 2021 word_count.rs -o word_count.wasm  # show why
