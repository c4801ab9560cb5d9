#!/usr/bin/env bash
# Benchmark: qcow2 → raw conversion, cowimg against qemu-img, side by side in one run.
# Makes a 1 GiB qcow2 of mixed content (random data, compressible data, zeros written
# as data, explicit zero clusters, compressed clusters, holes), then converts it with
# each tool in turn, warm cache, several rounds, and prints medians and the ratio
# (qemu-img time / cowimg time: above 1 means cowimg is faster).
# Usage: bench/convert-raw.sh [rounds]   (default 5)
set -euo pipefail
rounds=${1:-5}
cd "$(dirname "$0")/.."
cargo build --release -q
cowimg=$PWD/target/release/cowimg
work=$(mktemp -d "${TMPDIR:-/tmp}/cowimg-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

mib=$((1 << 20))
raw=$work/src.raw
: > "$raw"
# 1 GiB in 64 MiB stripes: random, text-like, zeros, hole (sparse), repeated 4 times.
for stripe in 0 1 2 3; do
  base=$((stripe * 256))
  dd if=/dev/urandom of="$raw" bs=1M seek=$base count=64 conv=notrunc status=none
  { yes "cowimg benchmark line $stripe, compressible text" || true; } | head -c $((64 * mib)) |
    dd of="$raw" bs=1M iflag=fullblock seek=$((base + 64)) conv=notrunc status=none
  dd if=/dev/zero of="$raw" bs=1M seek=$((base + 128)) count=64 conv=notrunc status=none
done
truncate -s 1G "$raw"
img=$work/mixed.qcow2
qemu-img convert -f raw -O qcow2 "$raw" "$img"
# Compressed clusters and zero clusters on top.
qemu-io -f qcow2 -c "write -c -P 0x5c 200M 32M" -c "write -z 600M 32M" "$img" >/dev/null
rm -f "$raw"

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # tool → nanoseconds; each run starts with no output file and no writeback pending
  local t0 t1
  rm -f "$work/out.raw"
  sync
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  echo $((t1 - t0))
}
peak_kib() { # peak RSS of one run, KiB
  python3 - "$@" <<'PY'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
PY
}

q=() c=()
for _ in $(seq "$rounds"); do
  q+=("$(run qemu-img convert -O raw "$img" "$work/out.raw")")
  c+=("$(run "$cowimg" convert -O raw "$img" "$work/out.raw")")
done
qemu-img convert -O raw "$img" "$work/q.raw" && "$cowimg" convert -O raw "$img" "$work/c.raw"
cmp "$work/q.raw" "$work/c.raw" >/dev/null && same=identical || same=DIFFERENT
rm -f "$work/q.raw" "$work/c.raw"
qm=$(printf '%s\n' "${q[@]}" | median)
cm=$(printf '%s\n' "${c[@]}" | median)
qk=$(peak_kib qemu-img convert -O raw "$img" "$work/out.raw")
ck=$(peak_kib "$cowimg" convert -O raw "$img" "$work/out.raw")
echo "convert qcow2 -> raw, 1 GiB mixed, $rounds rounds, $(nproc) cores, $(qemu-img --version | head -n1)"
printf 'qemu-img: %8.3f s  peak %6d KiB\n' "$(echo "$qm / 1000000000" | bc -l)" "$qk"
printf 'cowimg:   %8.3f s  peak %6d KiB\n' "$(echo "$cm / 1000000000" | bc -l)" "$ck"
printf 'time ratio (qemu-img / cowimg): %.2f   memory ratio (qemu-img / cowimg): %.2f   outputs %s\n' \
  "$(echo "$qm / $cm" | bc -l)" "$(echo "$qk / $ck" | bc -l)" "$same"
