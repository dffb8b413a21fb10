#!/usr/bin/env bash
# Builds the fuzz targets on stable Rust with libFuzzer's coverage instrumentation
# (cargo-fuzz's flags, without a sanitizer) and runs each for SECONDS (default 30),
# printing its run count. A crash stops the run with the input saved as crash-*.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
target=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --bins --target "$target" --target-dir ../target/fuzz
for t in config route normalize jwt; do
  mkdir -p "corpus/$t"
  echo "== $t"
  status=0
  "../target/fuzz/$target/release/$t" -max_total_time="$secs" -rss_limit_mb=4096 -max_len=65536 \
    -artifact_prefix="./" "corpus/$t" "seeds/$t" > "corpus/$t.log" 2>&1 || status=$?
  grep -E '^Done|SUMMARY|panicked' "corpus/$t.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "corpus/$t.log"
    exit "$status"
  fi
done
