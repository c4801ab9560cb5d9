#!/usr/bin/env bash
# The exports beside qemu-nbd, in one run: qemu-img convert of a 1 GiB qcow2 image
# read over NBD from cowimg nbd and from qemu-nbd; 4 KiB reads spread over the image
# through qemu-img bench over NBD; and sequential reading of the FUSE-mounted disk
# beside reading the converted raw file. Rounds alternate which server goes first;
# medians are reported as ratios (qemu-nbd ÷ cowimg, or raw ÷ mount: above 1 means
# cowimg is faster). Needs qemu-nbd, and for the mount root, /dev/fuse and fusermount3.
# Usage: bench/exports.sh [rounds]   (default 3)
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$0")/.."
cargo build --release -q
cowimg=$PWD/target/release/cowimg
work=$(mktemp -d "${TMPDIR:-/tmp}/cowimg-exports.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -u "$work/mnt" || true
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT
mib=$((1 << 20))

# 1 GiB in quarters: random, text, zeros written out, a hole; as qcow2.
raw=$work/mixed.raw
: > "$raw"
dd if=/dev/urandom of="$raw" bs=1M count=256 status=none
{ yes "cowimg exports benchmark line" || true; } | head -c $((256 * mib)) |
  dd of="$raw" bs=1M iflag=fullblock seek=256 conv=notrunc status=none
dd if=/dev/zero of="$raw" bs=1M seek=512 count=256 conv=notrunc status=none
truncate -s 1G "$raw"
img=$work/mixed.qcow2
qemu-img convert -f raw -O qcow2 "$raw" "$img"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; exit 1; }
ours=$(port); "$cowimg" nbd -r -t -e 4 -f qcow2 -b 127.0.0.1 -p "$ours" "$img" 2>/dev/null & pids+=($!)
theirs=$(port); qemu-nbd -r -t -e 4 -f qcow2 -b 127.0.0.1 -p "$theirs" "$img" & pids+=($!)
wait_port "$ours"; wait_port "$theirs"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
seconds() { local s; s=$(date +%s%N); "$@" >/dev/null; echo "$(( $(date +%s%N) - s ))"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
report() { # name, their ns list, our ns list
  local t c; t=$(printf '%s\n' $2 | median); c=$(printf '%s\n' $3 | median)
  printf '%-42s %8.2f s %8.2f s %7s\n' "$1" "$(ratio "$t" 1e9)" "$(ratio "$c" 1e9)" "$(ratio "$t" "$c")"
}
printf '%-42s %10s %10s %7s\n' case other cowimg "time×"

case_pair() { # name, command template with PORT
  local name=$1; shift; local t=() c=()
  for r in $(seq "$rounds"); do
    if (( r % 2 )); then
      c+=("$(seconds "${@//PORT/$ours}")"); t+=("$(seconds "${@//PORT/$theirs}")")
    else
      t+=("$(seconds "${@//PORT/$theirs}")"); c+=("$(seconds "${@//PORT/$ours}")")
    fi
    rm -f "$work/out.raw"
  done
  report "$name (qemu-nbd vs cowimg nbd)" "${t[*]}" "${c[*]}"
}
case_pair "convert 1 GiB over NBD to raw" qemu-img convert -f raw -O raw nbd://127.0.0.1:PORT/ "$work/out.raw"
case_pair "bench 4 KiB reads over NBD (60,000)" qemu-img bench -f raw -c 60000 -s 4096 -S $((7919 * 4096)) -d 16 nbd://127.0.0.1:PORT/

# FUSE: the mounted disk read sequentially, beside the converted raw file (page cache
# warm for both inputs).
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
  mkdir -p "$work/mnt"
  "$cowimg" mount -d -f qcow2 "$img" "$work/mnt"
  cat "$raw" > /dev/null
  t=() c=()
  for r in $(seq "$rounds"); do
    c+=("$(seconds dd if="$work/mnt/disk" of=/dev/null bs=1M status=none)")
    t+=("$(seconds dd if="$raw" of=/dev/null bs=1M status=none)")
  done
  report "read 1 GiB sequentially (raw file vs mount)" "${t[*]}" "${c[*]}"
  fusermount3 -u "$work/mnt"
fi
