#!/usr/bin/env python3
"""Requests and bytes a remote read costs: cowimg (and qemu-img's curl driver, where
installed: Debian's qemu-block-extra) reading 1 GiB images over HTTP with Range from
a server on 127.0.0.1 that counts what it answers. Times are wall-clock, one run each,
warm page cache on the server side.

Usage: python3 bench/remote.py   (needs rangehttpserver: pip install rangehttpserver)
Prints a Markdown table.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from RangeHTTPServer import RangeRequestHandler

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def take(self):
        with self.lock:
            out = (self.requests, self.bytes)
            self.requests = self.bytes = 0
            return out


def serve(root: Path, counter: Counter):
    class Counting(RangeRequestHandler):
        def send_header(self, keyword, value):
            if keyword.lower() == "content-length" and self.command == "GET":
                with counter.lock:
                    counter.bytes += int(value)
            super().send_header(keyword, value)

        def log_message(self, *args):
            with counter.lock:
                counter.requests += 1

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_images(work: Path):
    """The suite's mixed 1 GiB disk: random, text, zeros written out and a hole, in
    64 MiB stripes; as plain qcow2, zlib-compressed qcow2, and 4 KiB-cluster qcow2
    with three snapshots."""
    raw = work / "mixed.raw"
    with open(raw, "wb") as f:
        for stripe in range(4):
            f.write(os.urandom(64 * MIB))
            line = f"cowimg benchmark line {stripe}, compressible text\n".encode()
            f.write((line * (64 * MIB // len(line) + 1))[: 64 * MIB])
            f.write(bytes(64 * MIB))
            f.seek(64 * MIB, os.SEEK_CUR)
        f.truncate(1 << 30)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "mixed.qcow2"))
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(work / "zlib.qcow2"))
    snaps = work / "snapshots.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", str(raw), str(snaps))
    for s in (1, 2, 3):
        run("qemu-img", "snapshot", "-c", f"snap{s}", str(snaps))
        run("qemu-io", "-f", "qcow2", "-c", f"write -P {s} {s * 100}M 64M", str(snaps))
    raw.unlink()
    return ["mixed.qcow2", "zlib.qcow2", "snapshots.qcow2"]


def main():
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    cowimg = str(ROOT / "target/release/cowimg")
    have_curl = subprocess.run(
        ["sh", "-c", "ls /usr/lib/*/qemu/block-curl.so"], capture_output=True
    ).returncode == 0
    work = Path(tempfile.mkdtemp(prefix="cowimg-remote-"))
    counter = Counter()
    try:
        names = make_images(work)
        served = work / "served"
        served.mkdir()
        for n in names:
            os.rename(work / n, served / n)
        httpd, base = serve(served, counter)
        out = work / "out.raw"
        rows = []

        def measure(tool, what, image, args):
            counter.take()
            start = time.monotonic()
            run(*args)
            seconds = time.monotonic() - start
            requests, sent = counter.take()
            size = (served / image).stat().st_size
            rows.append((image, size, what, tool, requests, sent, seconds))
            if out.exists():
                out.unlink()

        for image in names:
            url = f"{base}/{image}"
            measure("cowimg", "info", image, [cowimg, "info", url])
            if have_curl:
                measure("qemu-img", "info", image, ["qemu-img", "info", url])
            hash_args = ["--snapshot", "all"] if image == "snapshots.qcow2" else []
            measure("cowimg", "hash" + (" (+3 snapshots)" if hash_args else ""), image,
                    [cowimg, "hash", *hash_args, url])
            measure("cowimg", "convert -O raw", image, [cowimg, "convert", "-O", "raw", url, str(out)])
            if have_curl:
                measure("qemu-img", "convert -O raw", image,
                        ["qemu-img", "convert", "-O", "raw", url, str(out)])
        httpd.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("| image (file size) | command | tool | requests | bytes transferred | ÷ file size | time |")
    print("|---|---|---|---:|---:|---:|---:|")
    for image, size, what, tool, requests, sent, seconds in rows:
        print(f"| {image} ({size / MIB:.0f} MiB) | {what} | {tool} | {requests} | "
              f"{sent / MIB:.2f} MiB | {sent / size:.3f} | {seconds:.2f} s |")
    if not have_curl:
        print("\n(qemu-img's curl driver is not installed here: qemu-block-extra)", file=sys.stderr)


if __name__ == "__main__":
    main()
