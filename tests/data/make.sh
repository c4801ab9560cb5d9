#!/usr/bin/env bash
# Makes the golden images in this folder with qemu-img / qemu-io (QEMU 10.0.2). They are
# checked in so tests and insta snapshots see the same bytes everywhere; run this only to
# add or remake images, then review the snapshot changes. Our own code never writes them.
set -euo pipefail
cd "$(dirname "$0")"
export TZ=UTC
qi() { qemu-img "$@" >/dev/null; }
io() { qemu-io "$@" >/dev/null; }

rm -f ./*.qcow2 ./*.qcow ./*.raw ./*.data

# A raw base with a recognisable pattern, for the backing-file images.
qi create -f raw base.raw 64K
io -f raw -c 'write -P 0xba 0 64K' base.raw

# qcow2 version 3 with some data: the README's sample.
qi create -f qcow2 -o cluster_size=4096 sample.qcow2 1M
io -f qcow2 -c 'write -P 0x11 0 8K' -c 'write -c -P 0x12 8K 4K' -c 'write -z 64K 4K' sample.qcow2

# qcow2 version 2 (compat 0.10) over a raw backing file, with the backing-format extension.
qi create -f qcow2 -o compat=0.10,cluster_size=4096 -b base.raw -F raw v2-backing.qcow2 64K

# Two internal snapshots over written data.
qi create -f qcow2 -o cluster_size=4096 snapshots.qcow2 1M
io -f qcow2 -c 'write -P 0x22 0 4K' snapshots.qcow2
qi snapshot -c first snapshots.qcow2
io -f qcow2 -c 'write -P 0x33 4K 4K' snapshots.qcow2
qi snapshot -c second snapshots.qcow2

# A persistent dirty bitmap.
qi create -f qcow2 -o cluster_size=4096 bitmaps.qcow2 1M
qi bitmap --add -g 65536 bitmaps.qcow2 bitmap0
# Writes while the bitmap is enabled give it a table entry with data.
io -f qcow2 -c 'write -P 0x21 0 64K' -c 'write -P 0x21 512K 4K' bitmaps.qcow2

# zstd compression type and extended L2 entries (needs clusters of 16 KiB or more).
qi create -f qcow2 -o cluster_size=16384,compression_type=zstd,extended_l2=on zstd-extl2.qcow2 1M
io -f qcow2 -c 'write -P 0x55 0 4K' -c 'write -c -P 0x56 16K 16K' -c 'write -z 32K 2K' zstd-extl2.qcow2

# An external raw data file.
qi create -f qcow2 -o cluster_size=4096,data_file=datafile.data,data_file_raw=on datafile.qcow2 64K

# 1-bit refcounts and lazy refcounts.
qi create -f qcow2 -o cluster_size=4096,refcount_bits=1,lazy_refcounts=on refcount1.qcow2 1M

# qcow version 1, alone and over a backing file.
qi create -f qcow qcow1.qcow 1M
io -f qcow -c 'write -P 0x44 0 4K' -c 'write -c -P 0x45 4K 4K' qcow1.qcow
qi create -f qcow -b base.raw -F raw qcow1-backing.qcow 64K
