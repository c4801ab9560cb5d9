#!/usr/bin/env bash
# The benchmark suite: every case runs qemu-img and cowimg with the same arguments on
# the same inputs, in one run, alternating, warm page cache; the median (and best) of
# the rounds and one run's peak memory are reported as ratios (qemu-img ÷ cowimg:
# above 1 means cowimg is faster or smaller). Outputs of the two tools are compared
# where there are any.
# Usage: bench/suite.sh [rounds]   (default 3); SUITE_ONLY=REGEX runs the cases whose
# names match.
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$0")/.."
cargo build --release -q
cowimg=$PWD/target/release/cowimg
work=$(mktemp -d "${TMPDIR:-/tmp}/cowimg-suite.XXXXXX")
trap 'rm -rf "$work"' EXIT
mib=$((1 << 20))

# --- inputs, all made by qemu-img / qemu-io / dd -------------------------------------
# 1 GiB raw in 64 MiB stripes: random, text-like, zeros written out, a hole; four times.
raw=$work/mixed.raw
: > "$raw"
for stripe in 0 1 2 3; do
  base=$((stripe * 256))
  dd if=/dev/urandom of="$raw" bs=1M seek=$base count=64 conv=notrunc status=none
  { yes "cowimg benchmark line $stripe, compressible text" || true; } | head -c $((64 * mib)) |
    dd of="$raw" bs=1M iflag=fullblock seek=$((base + 64)) conv=notrunc status=none
  dd if=/dev/zero of="$raw" bs=1M seek=$((base + 128)) count=64 conv=notrunc status=none
done
truncate -s 1G "$raw"
# The same as qcow2, with compressed and zero clusters on top.
img=$work/mixed.qcow2
qemu-img convert -f raw -O qcow2 "$raw" "$img"
qemu-io -f qcow2 -c "write -c -P 0x5c 200M 32M" -c "write -z 600M 32M" "$img" >/dev/null
# The raw file compressed by qemu-img, once with each compression type.
zlib=$work/zlib.qcow2
zstd=$work/zstd.qcow2
qemu-img convert -c -f raw -O qcow2 -o compression_type=zlib "$raw" "$zlib"
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$raw" "$zstd"
# Many clusters and snapshots: 4 KiB clusters, three snapshots with writes between.
snaps=$work/snapshots.qcow2
qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$raw" "$snaps"
for s in 1 2 3; do
  qemu-img snapshot -c "snap$s" "$snaps"
  qemu-io -f qcow2 -c "write -P $s $((s * 100))M 64M" "$snaps" >/dev/null
done
# 4 TiB, sparse: data in 256 scattered places.
big=$work/big.qcow2
qemu-img create -q -f qcow2 "$big" 4T
cmds=()
for i in $(seq 0 255); do cmds+=(-c "write -P $((i % 255 + 1)) $((i * 16381))M 192k"); done
qemu-io -f qcow2 "${cmds[@]}" "$big" >/dev/null
# LUKS at qemu-img's defaults (aes-256-xts-plain64, sha256, iter-time 2000 ms): the
# mixed disk encrypted in qcow2, and a small raw luks volume to time unlocking alone.
secret="secret,id=k,data=cowimg-bench"
luks=$work/luks.qcow2
qemu-img convert --object "$secret" -f raw -O qcow2 -o encrypt.format=luks,encrypt.key-secret=k "$raw" "$luks"
luks_raw=$work/small.luks
qemu-img create -q -f luks --object "$secret" -o key-secret=k "$luks_raw" 1M

# --- measuring ----------------------------------------------------------------------
now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
peak_kib() { # peak RSS of one run, KiB (GNU time: a small parent, unlike python)
  /usr/bin/time -f %M -o "$work/peak" "$@" >/dev/null
  cat "$work/peak"
}
prep=:
timed() { # tool args… → nanoseconds of one run, after the case's preparation
  local t0 t1
  $prep "$1"
  sync
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  echo $((t1 - t0))
}
printf '%-34s %9s %9s %7s %7s %10s %10s %7s\n' case qemu-img cowimg "time×" "best×" "qemu KiB" "cowimg KiB" "mem×"
# bench_case NAME ARGS…: ARGS are given to both tools; the word OUT stands for an
# output path of each tool's own.
bench_case() {
  local name=$1 q=() c=() qa=() ca=() qm cm qb cb qk ck
  shift
  [[ -z ${SUITE_ONLY:-} || $name =~ $SUITE_ONLY ]] || return 0
  for a in "$@"; do
    qa+=("${a//OUT/$work/q.out}")
    ca+=("${a//OUT/$work/c.out}")
  done
  for r in $(seq "$rounds"); do
    # Who goes first alternates: the second writer of a round finds the page cache
    # fuller, which on this kind of machine costs up to 2x.
    if ((r % 2)); then
      q+=("$(timed qemu-img "${qa[@]}")")
      c+=("$(timed "$cowimg" "${ca[@]}")")
    else
      c+=("$(timed "$cowimg" "${ca[@]}")")
      q+=("$(timed qemu-img "${qa[@]}")")
    fi
  done
  qm=$(printf '%s\n' "${q[@]}" | median)
  cm=$(printf '%s\n' "${c[@]}" | median)
  qb=$(printf '%s\n' "${q[@]}" | sort -n | head -n1)
  cb=$(printf '%s\n' "${c[@]}" | sort -n | head -n1)
  $prep qemu-img; qk=$(peak_kib qemu-img "${qa[@]}")
  $prep "$cowimg"; ck=$(peak_kib "$cowimg" "${ca[@]}")
  printf '%-34s %8.3fs %8.3fs %7.2f %7.2f %10d %10d %7.2f\n' "$name" \
    "$(echo "$qm / 10^9" | bc -l)" "$(echo "$cm / 10^9" | bc -l)" "$(echo "$qm / $cm" | bc -l)" \
    "$(echo "$qb / $cb" | bc -l)" "$qk" "$ck" "$(echo "$qk / $ck" | bc -l)"
  if [[ -e $work/q.out && -e $work/c.out ]]; then
    qemu-img compare -q "$work/q.out" "$work/c.out" || echo "  outputs DIFFER"
    if [[ $(qemu-img info "$work/c.out" | sed -n 's/^file format: //p') == qcow2 ]]; then
      qemu-img check -q "$work/c.out" || echo "  cowimg output does not check clean"
      echo "  file size: qemu-img $(stat -c %s "$work/q.out"), cowimg $(stat -c %s "$work/c.out")"
    fi
  fi
  rm -f "$work/q.out" "$work/c.out"
}
fresh_out() { # this tool's output, gone
  if [[ $1 == qemu-img ]]; then rm -f "$work/q.out"; else rm -f "$work/c.out"; fi
}
fresh_target() { # a new empty 1 GiB qcow2 to write into
  fresh_out "$1"
  qemu-img create -q -f qcow2 "$work/w.qcow2" 1G
}

prep=fresh_out
bench_case "convert qcow2 -> raw (1 GiB mixed)" convert -O raw "$img" OUT
bench_case "convert raw -> qcow2" convert -f raw -O qcow2 "$raw" OUT
bench_case "convert raw -> qcow2 -c zlib" convert -c -f raw -O qcow2 -o compression_type=zlib "$raw" OUT
bench_case "convert raw -> qcow2 -c zstd" convert -c -f raw -O qcow2 -o compression_type=zstd "$raw" OUT
bench_case "convert qcow2 -> qcow2" convert -O qcow2 "$img" OUT
bench_case "convert zlib qcow2 -> raw" convert -O raw "$zlib" OUT
bench_case "convert zstd qcow2 -> raw" convert -O raw "$zstd" OUT
bench_case "convert luks qcow2 -> raw (1 GiB)" convert --object "$secret" --image-opts \
  "driver=qcow2,file.filename=$luks,encrypt.key-secret=k" -O raw OUT
prep=:
bench_case "unlock luks (2000 ms iter-time)" map --output=json --object "$secret" --image-opts \
  "driver=luks,file.filename=$luks_raw,key-secret=k"
bench_case "compare zlib qcow2 with raw" compare -f qcow2 -F raw "$zlib" "$raw"
bench_case "check (262144 clusters, 3 snaps)" check "$snaps"
bench_case "map 4 TiB sparse (json)" map --output=json "$big"
# Scattered requests: each 7919 × 4 KiB past the last, wrapping at the end.
step=$((7919 * 4096))
bench_case "bench 4 KiB reads (100000)" bench -c 100000 -s 4096 -S $step -f qcow2 "$img"
prep=fresh_target
bench_case "bench 4 KiB writes (20000, alloc)" bench -w -c 20000 -s 4096 -S $step -f qcow2 "$work/w.qcow2"
echo "$rounds rounds, $(nproc) cores, $(qemu-img --version | head -n1)"
