"""Writes, create and convert through the binding leave images qemu-img accepts and reads
back as the test computed."""

import io
import subprocess

import pytest

import cowimg
from conftest import qemu_img, qemu_raw


def test_writes_through_the_file_object_reach_the_image(images, tmp_path):
    path = images.qcow2("writable.qcow2", size="8M")
    model = bytearray(8 << 20)
    with cowimg.open(path, format="qcow2", writable=True) as disk:
        for at, byte, n in [(0, 0xA1, 70_000), (3 << 20, 0xB2, 4096), ((8 << 20) - 100, 0xC3, 100)]:
            disk.seek(at)
            assert disk.write(bytes([byte]) * n) == n
            model[at : at + n] = bytes([byte]) * n
        disk.flush()
    qemu_img("check", str(path))
    assert qemu_raw(path, tmp_path) == bytes(model)


def test_a_read_only_disk_refuses_writes(corpus):
    with cowimg.open(corpus["v3"][0]) as disk:
        assert not disk.writable()
        with pytest.raises(io.UnsupportedOperation):
            disk.write(b"x")


def test_writing_needs_the_format_stated(images):
    path = images.qcow2("unstated.qcow2")
    with pytest.raises(cowimg.BadArgument):
        cowimg.open(path, writable=True)


def test_create_makes_images_qemu_accepts(tmp_path):
    path = tmp_path / "new.qcow2"
    cowimg.create(path, 3 << 20, cluster_size=4096, lazy_refcounts=True, compression="zstd")
    info = qemu_img("info", "--output=json", str(path))
    assert '"cluster-size": 4096' in info and '"lazy-refcounts": true' in info
    assert '"compression-type": "zstd"' in info
    qemu_img("check", str(path))
    with pytest.raises(cowimg.BadArgument):
        cowimg.create(tmp_path / "bad.qcow2", 1 << 20, compat="2.0")


@pytest.mark.parametrize("fmt", ["qcow2", "luks"])
def test_create_makes_luks_images_qemu_unlocks(tmp_path, fmt):
    path = tmp_path / f"enc.{fmt}"
    cowimg.create(path, 1 << 20, format=fmt, encryption="luks", passphrase=b"pw", iter_time=10)
    with cowimg.open(path, format=fmt, writable=True, passphrase=b"pw") as disk:
        disk.seek(4096)
        disk.write(b"\x5a" * 8192)
    key = "encrypt.key-secret" if fmt == "qcow2" else "key-secret"
    out = subprocess.run(
        ["qemu-io", "--object", "secret,id=s0,data=pw", "--image-opts", "-c", "read -P 0x5a 4096 8192",
         f"driver={fmt},{key}=s0,file.filename={path}"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert "read 8192/8192" in out and "failed" not in out
    with pytest.raises(cowimg.BadArgument):
        cowimg.create(tmp_path / "nokey.qcow2", 1 << 20, encryption="luks")


@pytest.mark.parametrize("fmt,compress", [("qcow2", False), ("qcow2", True), ("raw", False), ("qcow", False)])
def test_convert_copies_the_disk_with_progress(corpus, tmp_path, fmt, compress):
    source = corpus["chain"][0]
    out = tmp_path / f"out.{fmt}"
    seen = []
    cowimg.convert(source, out, format=fmt, compress=compress, progress=lambda d, t: seen.append((d, t)))
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", fmt, str(source), str(out)], check=True,
                   capture_output=True)
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_convert_refuses_to_overwrite_its_source(corpus):
    source = corpus["v3"][0]
    before = source.read_bytes()
    with pytest.raises(cowimg.BadArgument):
        cowimg.convert(source, source, format="raw")
    assert source.read_bytes() == before
