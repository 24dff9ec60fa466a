#!/usr/bin/env bash
# Build the policy agent (wasm32, no imports) from native/src with Rust's std only, no
# crates, and install it as package data: node/policyagent/policy_agent.wasm.
# Debian: apt-get install rustc libstd-rust-dev-wasm32 lld-14. The build is reproducible
# (no debug info, symbols stripped, the source path remapped): the same rustc gives the
# same bytes, which .ci/run checks against the shipped file. RUSTC overrides the compiler
# (default: Debian's /usr/bin/rustc, the one the shipped file was built with).
set -euo pipefail
cd "$(dirname "$0")"
RUSTC="${RUSTC:-$(command -v /usr/bin/rustc || command -v rustc)}"
OUT="${1:-../node/policyagent/policy_agent.wasm}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$RUSTC" --target wasm32-unknown-unknown --crate-type cdylib --crate-name policy_agent \
  --edition 2021 -C opt-level=3 -C panic=abort -C debuginfo=0 -C strip=symbols \
  -C codegen-units=1 --remap-path-prefix="$PWD=native" \
  src/lib.rs -o "$TMP/policy_agent.wasm"
mkdir -p "$(dirname "$OUT")"
cp "$TMP/policy_agent.wasm" "$OUT"
echo "built $OUT ($(wc -c <"$OUT") bytes, $("$RUSTC" --version))"
