#!/usr/bin/env python3
"""Hashing a compressed qcow2 image from Python, three ways in one run: through the
cowimg binding, through dissect.hypervisor, and with `qemu-img convert -O raw` then
hashing the raw file. The rounds alternate the order; medians are reported as ratios
(other ÷ cowimg: above 1 means cowimg is faster). All three digests must agree.

Usage: bench/python.py [size_mib] [rounds]   (default 1024 MiB, 3 rounds)
Needs the binding built (python/test does it) and `pip install dissect.hypervisor`.
"""

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import cowimg
from dissect.hypervisor.disk.qcow2 import QCow2

MIB = 1 << 20


def make_image(folder: str, size_mib: int) -> str:
    """A mixed raw disk (random, text, zeros, a hole in quarters), compressed by qemu-img."""
    raw = os.path.join(folder, "mixed.raw")
    quarter = size_mib // 4
    with open(raw, "wb") as f:
        f.write(os.urandom(quarter * MIB))
        line = b"cowimg python benchmark: compressible text\n"
        f.write((line * (quarter * MIB // len(line) + 1))[: quarter * MIB])
        f.write(bytes(quarter * MIB))
        f.truncate(size_mib * MIB)
    img = os.path.join(folder, "mixed.qcow2")
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, img], check=True)
    os.remove(raw)
    return img


def via_cowimg(img: str, folder: str) -> str:
    with cowimg.open(img) as disk:
        return hashlib.file_digest(disk, "sha256").hexdigest()


def via_dissect(img: str, folder: str) -> str:
    with open(img, "rb") as fh:
        stream = QCow2(fh).open()
        h = hashlib.sha256()
        while chunk := stream.read(4 * MIB):
            h.update(chunk)
        return h.hexdigest()


def via_qemu_img(img: str, folder: str) -> str:
    raw = os.path.join(folder, "converted.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", img, raw], check=True)
    with open(raw, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    os.remove(raw)
    return digest


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    ways = {"cowimg": via_cowimg, "dissect.hypervisor": via_dissect, "qemu-img + hashlib": via_qemu_img}
    with tempfile.TemporaryDirectory() as folder:
        img = make_image(folder, size_mib)
        times = {name: [] for name in ways}
        digests = {}
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                start = time.perf_counter()
                digests[name] = ways[name](img, folder)
                times[name].append(time.perf_counter() - start)
        if len(set(digests.values())) != 1:
            raise SystemExit(f"the digests differ: {digests}")
        base = statistics.median(times["cowimg"])
        print(f"hashing a {size_mib} MiB compressed qcow2 ({os.path.getsize(img) // MIB} MiB file), "
              f"{rounds} rounds, median seconds:")
        for name, t in times.items():
            m = statistics.median(t)
            print(f"  {name:<20} {m:8.2f} s   {m / base:6.2f}× cowimg's time")


if __name__ == "__main__":
    main()
