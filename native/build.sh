#!/usr/bin/env bash
# Build the policy agent (wasm32, no imports) from native/src with Rust's std only, no
# crates, and install it as package data: node/policyagent/policy_agent.wasm.
# Debian: apt-get install rustc libstd-rust-dev-wasm32 lld-14. The build is reproducible
# (no debug info, symbols stripped, the source path remapped): the same rustc gives the
# same bytes, which .ci/run checks against the shipped file. RUSTC overrides the compiler
# (default: Debian's /usr/bin/rustc, the one the shipped file was built with).
# native/rustc-version names the rustc version the shipped file was built with: another
# one gives other bytes, so the build stops naming both. To ship a build made with
# another rustc: RECORD_RUSTC=1 native/build.sh (records its version), commit both files.
set -euo pipefail
cd "$(dirname "$0")"
RUSTC="${RUSTC:-$(command -v /usr/bin/rustc || command -v rustc)}"
OUT="${1:-../node/policyagent/policy_agent.wasm}"
EXPECTED="$(cat rustc-version)"
FOUND="$("$RUSTC" --version | awk '{print $2}')"
if [ "$FOUND" != "$EXPECTED" ] && [ "${RECORD_RUSTC:-0}" != 1 ]; then
  echo "native/build.sh: $RUSTC is rustc $FOUND, but the shipped policy_agent.wasm was" \
    "built with rustc $EXPECTED (native/rustc-version): its bytes would differ." \
    "Use rustc $EXPECTED (Debian 12's), or RECORD_RUSTC=1 to rebuild with $FOUND" \
    "and commit the module and native/rustc-version." >&2
  exit 3
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$RUSTC" --target wasm32-unknown-unknown --crate-type cdylib --crate-name policy_agent \
  --edition 2021 -C opt-level=3 -C panic=abort -C debuginfo=0 -C strip=symbols \
  -C codegen-units=1 --remap-path-prefix="$PWD=native" \
  src/lib.rs -o "$TMP/policy_agent.wasm"
mkdir -p "$(dirname "$OUT")"
cp "$TMP/policy_agent.wasm" "$OUT"
if [ "${RECORD_RUSTC:-0}" = 1 ]; then echo "$FOUND" >rustc-version; fi
echo "built $OUT ($(wc -c <"$OUT") bytes, $("$RUSTC" --version))"
