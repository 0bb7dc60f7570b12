#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after another, starting from the
# committed seeds (fixtures and a header example) in a scratch corpus. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); uses RUSTC_BOOTSTRAP=1 because libFuzzer's sanitizer flags are
# unstable and the machine has only the stable toolchain. A crash leaves its input in
# fuzz/artifacts/<target>/ and stops with a non-zero exit: turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-600}
export RUSTC_BOOTSTRAP=1
for target in signature_header stripe_envelope stripe_billing provider_envelopes provider_headers; do
  corpus=$(mktemp -d)
  cp -r "seeds/$target/." "$corpus/"
  echo "fuzz: $target for ${SECONDS_EACH}s"
  cargo fuzz run "$target" "$corpus" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::|==|SUMMARY|artifact_prefix|Test unit written)" || true
  status=${PIPESTATUS[0]}
  rm -rf "$corpus"
  [ "$status" -eq 0 ] || { echo "fuzz: $target failed (see fuzz/artifacts/$target/)" >&2; exit "$status"; }
done
echo "fuzz: all targets ran ${SECONDS_EACH}s without a crash"
