#!/usr/bin/env bash
# `cowimg hash` beside what an examiner would otherwise run, in one run: qemu-img
# convert to a raw file, then sha256sum of it (qemu-img cannot write to a pipe), on a 1 GiB compressed qcow2 image (a quarter
# each of random data, repetitive text and written zeros, and a hole). Rounds alternate
# the order; the medians are reported as a ratio (pipeline ÷ cowimg: above 1 means
# cowimg is faster). The two digests must agree.
# Usage: bench/hash.sh [rounds]   (default 3)
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$0")/.."
cargo build --release -q
cowimg=$PWD/target/release/cowimg
work=$(mktemp -d "${TMPDIR:-/tmp}/cowimg-hash.XXXXXX")
trap 'rm -rf "$work"' EXIT
mib=$((1 << 20))
raw=$work/mixed.raw
dd if=/dev/urandom of="$raw" bs=1M count=256 status=none
{ yes "cowimg hash benchmark line" || true; } | head -c $((256 * mib)) |
  dd of="$raw" bs=1M iflag=fullblock seek=256 conv=notrunc status=none
dd if=/dev/zero of="$raw" bs=1M seek=512 count=256 conv=notrunc status=none
truncate -s 1G "$raw"
img=$work/mixed.qcow2
qemu-img convert -c -f raw -O qcow2 "$raw" "$img"
rm "$raw"

ns() { date +%s%N; }
pipeline() {
  qemu-img convert -f qcow2 -O raw "$img" "$work/out.raw"
  sha256sum "$work/out.raw" | cut -d' ' -f1
  rm -f "$work/out.raw"
}
ours() { "$cowimg" hash "$img" | awk '{print $2}'; }
p=() c=()
for r in $(seq "$rounds"); do
  if (( r % 2 )); then
    s=$(ns); a=$(ours); c+=($(( $(ns) - s ))); s=$(ns); b=$(pipeline); p+=($(( $(ns) - s )))
  else
    s=$(ns); b=$(pipeline); p+=($(( $(ns) - s ))); s=$(ns); a=$(ours); c+=($(( $(ns) - s )))
  fi
  [ "$a" = "$b" ] || { echo "digests differ: $a vs $b" >&2; exit 1; }
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pm=$(printf '%s\n' "${p[@]}" | median); cm=$(printf '%s\n' "${c[@]}" | median)
awk -v p="$pm" -v c="$cm" -v f="$(stat -c %s "$img")" 'BEGIN {
  printf "sha256 of a 1 GiB compressed qcow2 (%d MiB file), median of rounds:\n", f / 1048576
  printf "  qemu-img convert + sha256sum  %6.2f s\n  cowimg hash                   %6.2f s\n  ratio (pipeline / cowimg)     %6.2f\n", p / 1e9, c / 1e9, p / c }'
