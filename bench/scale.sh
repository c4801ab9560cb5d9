#!/usr/bin/env bash
# The scale suite: how time and peak memory grow with the image, for qemu-img and
# cowimg side by side in one run, on the same inputs (made by qemu-img, qemu-io, dd).
#   data      1, 2, 4, 8 GiB of mixed data (random, text, zeros written, a hole)
#   virtual   1, 16, 64 TiB sparse, 256 scattered writes of 192 KiB
#   snapshots 1, 10, 100, 500 internal snapshots, 1 MiB written between them
#   chain     1, 4, 16, 64 layers, 4 MiB written in each overlay
#   cluster   512 B, 64 KiB, 2 MiB clusters over 1 GiB of mixed data
# Each point runs each tool ROUNDS times (who goes first alternating) under GNU time:
# the median wall time (ns clock, GNU time's start-up included, ~1 ms) and the
# largest peak RSS are kept. Needs bc and GNU time; gnuplot for the plots. Writes
# $OUT/scale.tsv (series, x, case, tool, seconds, KiB), $OUT/scale.md (the table with
# ratios and growth exponents) and, with gnuplot, one PNG per series.
# Usage: bench/scale.sh [rounds] [outdir]   (defaults: 1, docs/scale)
# SCALE_SERIES="data virtual" limits the series; SCALE_MAX_GIB=4 the data sizes.
set -euo pipefail
rounds=${1:-1}
cd "$(dirname "$0")/.."
out=$(realpath -m "${2:-docs/scale}")
mkdir -p "$out"
cargo build --release -q
cowimg=$PWD/target/release/cowimg
work=$(mktemp -d "${TMPDIR:-/tmp}/cowimg-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT
series=${SCALE_SERIES:-data virtual snapshots chain cluster}
max_gib=${SCALE_MAX_GIB:-8}
mib=$((1 << 20))
tsv=$out/scale.tsv
printf 'series\tx\tcase\ttool\tseconds\tkib\n' > "$tsv"

# mixed FILE GIB: GIB GiB of raw data in 256 MiB stripes of random, text, zeros and
# a hole (the same mix as bench/suite.sh).
mixed() {
  local file=$1 gib=$2 base
  : > "$file"
  for ((stripe = 0; stripe < gib * 4; stripe++)); do
    base=$((stripe * 256))
    dd if=/dev/urandom of="$file" bs=1M seek=$base count=64 conv=notrunc status=none
    { yes "cowimg scale line $stripe, compressible text" || true; } | head -c $((64 * mib)) |
      dd of="$file" bs=1M iflag=fullblock seek=$((base + 64)) conv=notrunc status=none
    dd if=/dev/zero of="$file" bs=1M seek=$((base + 128)) count=64 conv=notrunc status=none
  done
  truncate -s "${gib}G" "$file"
}

# point SERIES X CASE ARGS…: both tools with ARGS (OUT: each tool's own output path).
point() {
  local s=$1 x=$2 name=$3 qa=() ca=() tool args r order
  shift 3
  for a in "$@"; do
    qa+=("${a//OUT/$work/q.out}")
    ca+=("${a//OUT/$work/c.out}")
  done
  declare -A secs=() kib=()
  for ((r = 0; r < rounds; r++)); do
    if ((r % 2)); then order="cowimg qemu-img"; else order="qemu-img cowimg"; fi
    for tool in $order; do
      rm -f "$work/q.out" "$work/c.out"
      sync
      t0=$(date +%s%N)
      if [[ $tool == qemu-img ]]; then
        /usr/bin/time -f '%M' -o "$work/t" qemu-img "${qa[@]}" >/dev/null
      else
        /usr/bin/time -f '%M' -o "$work/t" "$cowimg" "${ca[@]}" >/dev/null
      fi
      t1=$(date +%s%N)
      read -r m < "$work/t"
      secs[$tool]+="$(echo "scale=3; ($t1 - $t0) / 10^9" | bc -l) "
      if ((m > ${kib[$tool]:-0})); then kib[$tool]=$m; fi
    done
  done
  for tool in qemu-img cowimg; do
    t=$(printf '%s\n' ${secs[$tool]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$x" "$name" "$tool" "$t" "${kib[$tool]}" >> "$tsv"
  done
  # A wrong answer is worse than a slow one: outputs must agree.
  if [[ -e $work/q.out && -e $work/c.out ]]; then
    qemu-img compare -q "$work/q.out" "$work/c.out" || echo "  $s $x $name: outputs DIFFER" >&2
  fi
  rm -f "$work/q.out" "$work/c.out"
  echo "  $s $x $name done" >&2
}

for s in $series; do
  echo "series $s" >&2
  case $s in
  data)
    for gib in 1 2 4 8; do
      ((gib <= max_gib)) || continue
      mixed "$work/d.raw" $gib
      qemu-img convert -f raw -O qcow2 "$work/d.raw" "$work/d.qcow2"
      qemu-img convert -c -f raw -O qcow2 "$work/d.raw" "$work/z.qcow2"
      point data $gib "convert raw->qcow2" convert -f raw -O qcow2 "$work/d.raw" OUT
      point data $gib "convert qcow2->raw" convert -O raw "$work/d.qcow2" OUT
      point data $gib "convert raw->qcow2 -c" convert -c -f raw -O qcow2 "$work/d.raw" OUT
      point data $gib "convert zlib qcow2->raw" convert -O raw "$work/z.qcow2" OUT
      point data $gib "check" check "$work/d.qcow2"
      point data $gib "map" map --output=json "$work/d.qcow2"
      point data $gib "info" info --output=json "$work/d.qcow2"
      rm -f "$work/d.raw" "$work/d.qcow2" "$work/z.qcow2"
    done
    ;;
  virtual)
    for tib in 1 16 64; do
      qemu-img create -q -f qcow2 "$work/v.qcow2" "${tib}T"
      cmds=()
      step=$((tib * 1024 * 1024 / 256))
      for i in $(seq 0 255); do cmds+=(-c "write -P $((i % 255 + 1)) $((i * step))M 192k"); done
      qemu-io -f qcow2 "${cmds[@]}" "$work/v.qcow2" >/dev/null
      point virtual $tib "convert qcow2->qcow2" convert -O qcow2 "$work/v.qcow2" OUT
      point virtual $tib "check" check "$work/v.qcow2"
      point virtual $tib "map" map --output=json "$work/v.qcow2"
      point virtual $tib "info" info --output=json "$work/v.qcow2"
      rm -f "$work/v.qcow2"
    done
    ;;
  snapshots)
    qemu-img create -q -f qcow2 "$work/s.qcow2" 1G
    qemu-io -f qcow2 -c "write -P 1 0 256M" "$work/s.qcow2" >/dev/null
    made=0
    for n in 1 10 100 500; do
      while ((made < n)); do
        made=$((made + 1))
        qemu-img snapshot -c "s$made" "$work/s.qcow2"
        qemu-io -f qcow2 -c "write -P $((made % 255 + 1)) $(((made * 7) % 1000))M 1M" "$work/s.qcow2" >/dev/null
      done
      point snapshots $n "convert qcow2->raw" convert -O raw "$work/s.qcow2" OUT
      point snapshots $n "check" check "$work/s.qcow2"
      point snapshots $n "snapshot -l" snapshot -l "$work/s.qcow2"
      point snapshots $n "info" info --output=json "$work/s.qcow2"
    done
    rm -f "$work/s.qcow2"
    ;;
  chain)
    qemu-img create -q -f qcow2 "$work/c0.qcow2" 1G
    qemu-io -f qcow2 -c "write -P 1 0 256M" "$work/c0.qcow2" >/dev/null
    top=$work/c0.qcow2
    layers=1
    for n in 1 4 16 64; do
      while ((layers < n)); do
        next=$work/c$layers.qcow2
        qemu-img create -q -f qcow2 -b "$top" -F qcow2 "$next"
        qemu-io -f qcow2 -c "write -P $((layers % 255 + 1)) $(((layers * 13) % 1000))M 4M" "$next" >/dev/null
        top=$next
        layers=$((layers + 1))
      done
      point chain $n "convert qcow2->raw" convert -O raw "$top" OUT
      point chain $n "map" map --output=json "$top"
      point chain $n "info --backing-chain" info --backing-chain --output=json "$top"
      point chain $n "check" check "$top"
    done
    rm -f "$work"/c*.qcow2
    ;;
  cluster)
    mixed "$work/k.raw" 1
    for cs in 512 65536 2097152; do
      qemu-img convert -f raw -O qcow2 -o cluster_size=$cs "$work/k.raw" "$work/k.qcow2"
      point cluster $cs "convert raw->qcow2" convert -f raw -O qcow2 -o cluster_size=$cs "$work/k.raw" OUT
      point cluster $cs "convert qcow2->raw" convert -O raw "$work/k.qcow2" OUT
      point cluster $cs "check" check "$work/k.qcow2"
      point cluster $cs "map" map --output=json "$work/k.qcow2"
      rm -f "$work/k.qcow2"
    done
    rm -f "$work/k.raw"
    ;;
  esac
done

bench/scale-report.py "$tsv" "$out" "$rounds"
