"""Images read where they lie: over HTTP with Range (rangehttpserver), from S3 (moto)
and from Azure blob storage (Azurite), on 127.0.0.1, compared with what qemu-img
reads from the local copies."""

import hashlib
import json
import shutil
import subprocess

import pytest

import cowimg
from conftest import qemu_img, qemu_io, qemu_json, qemu_raw


def chain(root):
    """A QEMU-made chain in `root`: top.qcow2 (a snapshot, then more writes) over
    base.qcow2, named relatively; and packed.qcow2, compressed."""
    base, top, packed = root / "base.qcow2", root / "top.qcow2", root / "packed.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    qemu_io(base, "write -P 0x11 0 3M", "write -P 0x22 8M 1M")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
        cwd=root, check=True,
    )
    qemu_io(top, "write -P 0x33 1M 1M")
    qemu_img("snapshot", "-c", "before", str(top))
    qemu_io(top, "write -P 0x44 2M 64k", "write -z 8M 64k")
    qemu_img("convert", "-c", "-O", "qcow2", str(top), str(packed))
    return top, packed


def facts(info: dict) -> dict:
    return {k: v for k, v in info.items()
            if k not in ("filename", "full-backing-filename", "actual-size", "children")}


def same_as_qemu(url: str, local, tmp_path) -> None:
    expected = qemu_raw(local, tmp_path)
    with cowimg.open(url) as disk:
        assert disk.read() == expected
        assert disk.hash() == {"sha256": hashlib.sha256(expected).hexdigest()}
        assert facts(disk.info()) == facts(qemu_json("info", str(local)))
        assert disk.map() == qemu_json("map", str(local))
        for snap in disk.snapshots:
            with snap.open() as old:
                assert old.read() == qemu_raw(local, tmp_path, "-l", snap.name)


def test_http_images_read_as_qemu_img_reads_the_local_copies(range_server, tmp_path):
    top, packed = chain(range_server.root)
    for image in (top, packed):
        same_as_qemu(f"{range_server.url}/{image.name}", image, tmp_path)
    with cowimg.open(f"{range_server.url}/top.qcow2") as disk:
        assert [c["filename"] for c in disk.chain] == [
            f"{range_server.url}/top.qcow2", f"{range_server.url}/base.qcow2"]


def bucket_reads_as_qemu(upload, prefix, tmp_path):
    """Uploads the chain as `case/NAME` with `upload`, reads each image from
    `prefix/case/NAME` against qemu-img; returns the local top image."""
    top, packed = chain(tmp_path)
    for image in (top, packed, tmp_path / "base.qcow2"):
        upload(image, f"case/{image.name}")
    for image in (top, packed):
        same_as_qemu(f"{prefix}/case/{image.name}", image, tmp_path)
    return top


def test_s3_images_read_as_qemu_img_reads_the_local_copies(s3, tmp_path):
    top = bucket_reads_as_qemu(s3, "s3://evidence", tmp_path)
    target = tmp_path / "copy.qcow2"
    cowimg.convert("s3://evidence/case/top.qcow2", target)
    assert subprocess.run(["qemu-img", "compare", str(top), str(target)]).returncode == 0


def test_azure_images_read_as_qemu_img_reads_the_local_copies(azure, tmp_path):
    bucket_reads_as_qemu(azure, "az://evidence", tmp_path)


def test_missing_objects_and_writes_are_refused_by_name(range_server, s3):
    with pytest.raises(OSError, match=r"absent\.qcow2'.*not found"):
        cowimg.open(f"{range_server.url}/absent.qcow2")
    with pytest.raises(OSError, match=r"s3://evidence/none\.qcow2'.*not found"):
        cowimg.open("s3://evidence/none.qcow2")
    chain(range_server.root)
    with pytest.raises(cowimg.Error, match="remote images are read-only"):
        cowimg.open(f"{range_server.url}/top.qcow2", format="qcow2", writable=True)
