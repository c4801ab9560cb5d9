"""Images made by qemu-img and qemu-io at test time, and their contents as qemu-img
converts them to raw: what every binding test compares against."""

import json
import subprocess
from pathlib import Path

import pytest


def qemu_img(*args: str) -> str:
    return subprocess.run(
        ["qemu-img", *args], check=True, capture_output=True, text=True
    ).stdout


def qemu_io(image: Path, *commands: str, fmt: str = "qcow2", extra=()) -> None:
    args = ["qemu-io", "-f", fmt, *extra]
    for c in commands:
        args += ["-c", c]
    subprocess.run([*args, str(image)], check=True, capture_output=True)


def qemu_raw(image: Path, tmp: Path, *extra: str) -> bytes:
    """The guest disk as qemu-img reads it."""
    out = tmp / (image.name + ".raw")
    qemu_img("convert", *extra, "-O", "raw", str(image), str(out))
    return out.read_bytes()


def qemu_json(*args: str):
    return json.loads(qemu_img(*args, "--output=json"))




class Images:
    """A folder of images, each made by QEMU and described by how QEMU reads it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def qcow2(self, name: str, *opts: str, size: str = "4M", writes=()) -> Path:
        p = self.path(name)
        qemu_img("create", "-q", "-f", "qcow2", *opts, str(p), size)
        if writes:
            qemu_io(p, *writes)
        return p


WRITES = (
    "write -P 0x11 0 64k",
    "write -P 0x22 1M 4k",
    "write -z 2M 128k",
    "write -P 0x33 3M 1000",
)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Images:
    return Images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def corpus(images: Images) -> dict:
    """name -> (path, the options `cowimg.open` needs, what qemu-img convert needs)."""
    out = {}
    out["v3"] = (images.qcow2("v3.qcow2", writes=WRITES), {}, ())
    out["v2"] = (images.qcow2("v2.qcow2", "-o", "compat=0.10", writes=WRITES), {}, ())
    out["small-clusters"] = (
        images.qcow2("small.qcow2", "-o", "cluster_size=512,refcount_bits=1", writes=WRITES),
        {},
        (),
    )
    out["zstd-extl2"] = (
        images.qcow2(
            "zx.qcow2",
            "-o",
            "compression_type=zstd,extended_l2=on,cluster_size=64k",
            writes=WRITES + ("write -P 0x44 2M 3k",),
        ),
        {},
        (),
    )
    # Compressed clusters, as convert -c writes them.
    compressed = images.path("compressed.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", str(out["v3"][0]), str(compressed))
    out["compressed"] = (compressed, {}, ())
    # A chain: an overlay over a base, each holding part of the disk.
    base = images.qcow2("base.qcow2", writes=("write -P 0x55 0 2M",))
    overlay = images.qcow2(
        "overlay.qcow2", "-b", str(base), "-F", "qcow2", writes=("write -P 0x66 1M 64k",)
    )
    out["chain"] = (overlay, {}, ())
    # Legacy AES (qemu-img refuses to create it new, but converts into it).
    aes = images.path("aes.qcow2")
    subprocess.run(
        [
            "qemu-img", "convert", "--object", "secret,id=s0,data=hunter2", "-O", "qcow2",
            "-o", "encrypt.format=aes,encrypt.key-secret=s0", str(out["v3"][0]), str(aes),
        ],
        check=True,
        capture_output=True,
    )
    out["aes"] = (
        aes,
        {"passphrase": "hunter2"},
        ("--object", "secret,id=s0,data=hunter2", "--image-opts",
         f"driver=qcow2,file.filename={aes},encrypt.key-secret=s0"),
    )
    qcow1 = images.path("v1.qcow")
    qemu_img("convert", "-O", "qcow", str(out["v3"][0]), str(qcow1))
    out["qcow1"] = (qcow1, {}, ())
    raw = images.path("plain.raw")
    qemu_img("convert", "-O", "raw", str(out["v3"][0]), str(raw))
    out["raw"] = (raw, {}, ())
    return out


def expected(entry, tmp: Path) -> bytes:
    path, _, convert_args = entry
    if convert_args:
        out = tmp / (path.name + ".raw")
        qemu_img("convert", *convert_args[:-1], "-O", "raw", convert_args[-1], str(out))
        return out.read_bytes()
    return qemu_raw(path, tmp)
