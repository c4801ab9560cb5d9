#!/usr/bin/env python3
"""Requests and bytes a remote read costs: cowimg (and qemu-img's curl driver, where
installed: qemu-block-extra, from bookworm-backports beside qemu-utils 10) reading
1 GiB images over HTTP with Range from nginx on 127.0.0.1, whose log counts what it
sent. qemu-img's curl driver sometimes stops making progress (about one run in three
here); its runs are limited to 60 s and tried up to three times, and the table says
how many hung. Times are wall-clock, one run each,
warm page cache on the server side.

Usage: python3 bench/remote.py   (needs nginx: apt-get install nginx-light)
Prints a Markdown table.
"""

import os
import shutil
import subprocess
import sys
import socket
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


NGINX_CONF = """
user root;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  log_format counted '$request_method $status $body_bytes_sent';
  server {{
    listen 127.0.0.1:{port};
    access_log {work}/requests.log counted;
    root {root};
  }}
}}
"""


class Counter:
    """Reads nginx's log: requests and body bytes sent since last asked."""

    def __init__(self, log: Path):
        self.log = log
        self.seen = 0

    def take(self):
        time.sleep(0.2)  # nginx writes a line when the response is done
        lines = self.log.read_text().splitlines()
        new, self.seen = lines[self.seen:], len(lines)
        return len(new), sum(int(l.split()[2]) for l in new)


def serve(root: Path, work: Path):
    """nginx (Debian's nginx-light) over `root` on 127.0.0.1, logging each request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, root=root))
    (work / "requests.log").write_text("")
    proc = subprocess.Popen(["nginx", "-c", str(conf)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=600)


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
    try:
        names = make_images(work)
        served = work / "served"
        served.mkdir()
        for n in names:
            os.rename(work / n, served / n)
        server, base = serve(served, work)
        counter = Counter(work / "requests.log")
        out = work / "out.raw"
        rows = []

        def measure(tool, what, image, args):
            hung = 0
            while True:
                counter.take()
                start = time.monotonic()
                try:
                    subprocess.run(args, check=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=60)
                except subprocess.TimeoutExpired:
                    hung += 1
                    if hung < 3:
                        continue
                seconds = time.monotonic() - start
                break
            requests, sent = counter.take()
            size = (served / image).stat().st_size
            note = f" ({hung} hung before)" if hung and hung < 3 else (" (hung 3 times)" if hung else "")
            rows.append((image, size, what, tool + note, requests, sent, seconds))
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
        server.terminate()
        server.wait()
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
