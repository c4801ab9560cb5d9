#!/usr/bin/env bash
# Fuzz one target (or all) for a while: fuzz/run.sh [TARGET] [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). With a nightly toolchain installed the
# targets run under AddressSanitizer; on stable alone they run without a sanitizer
# (`-s none`), which still finds panics, hangs and runaway allocations.
# New inputs go to fuzz/corpus/TARGET; crashes to fuzz/artifacts/TARGET. A crash, once
# fixed, is kept in fuzz/regressions/TARGET so the replay test (cargo test) runs it.
set -euo pipefail
cd "$(dirname "$0")"
targets=${1:-"qcow2_header qcow_header cow_header image check write_path nbd"}
seconds=${2:-600}
if rustup toolchain list 2>/dev/null | grep -q nightly; then
  fuzz=(cargo +nightly fuzz run)
else
  fuzz=(cargo fuzz run -s none)
fi
for t in $targets; do
  mkdir -p "corpus/$t"
  "${fuzz[@]}" "$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -max_len=262144 -print_final_stats=1
done
