"""The guest disk read through the binding equals what qemu-img reads, for every kind
of image QEMU makes; and the file object behaves as io.FileIO does on the raw copy."""

import hashlib
import io
import os
import random
import shutil
import threading

import pytest

import cowimg
from conftest import expected, qemu_img, qemu_raw

KINDS = ["v3", "v2", "small-clusters", "zstd-extl2", "compressed", "chain", "aes", "qcow1", "raw"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_disk_reads_as_qemu_reads_it(corpus, tmp_path, kind):
    path, options, _ = corpus[kind]
    want = expected(corpus[kind], tmp_path)
    with cowimg.open(path, **options) as disk:
        assert disk.size == len(want)
        assert disk.read() == want
        # Through the buffered layer and the stdlib helpers that take file objects.
        disk.seek(0)
        assert hashlib.file_digest(disk, "sha256").digest() == hashlib.sha256(want).digest()
        disk.seek(0)
        copy = io.BytesIO()
        shutil.copyfileobj(io.BufferedReader(disk), copy)
        assert copy.getvalue() == want


def test_a_file_object_opens_like_a_path(corpus, tmp_path):
    path, _, _ = corpus["compressed"]
    want = expected(corpus["compressed"], tmp_path)
    with open(path, "rb") as f, cowimg.open(f) as disk:
        assert disk.read() == want
    with cowimg.open(io.BytesIO(path.read_bytes())) as disk:
        assert disk.info()["format"] == "qcow2"
        assert disk.read() == want


def test_a_file_object_overlay_takes_its_backing_file_by_path(corpus, tmp_path):
    overlay, _, _ = corpus["chain"]
    base = overlay.parent / "base.qcow2"
    with open(overlay, "rb") as f:
        alone = cowimg.open(f)
        with_base = cowimg.open(f, backing=base)
        assert with_base.read() == expected(corpus["chain"], tmp_path)
        # Without it, what the base holds reads as zeros.
        with_base.seek(0)
        assert (alone.read(1), with_base.read(1)) == (b"\0", b"\x55")
        assert len(with_base.chain) == 2 and len(alone.chain) == 1


def test_seek_read_and_readinto_follow_file_semantics(corpus, tmp_path):
    path, _, _ = corpus["v3"]
    raw = tmp_path / "copy.raw"
    raw.write_bytes(qemu_raw(path, tmp_path))
    rng = random.Random(7)
    size = raw.stat().st_size
    with cowimg.open(path) as disk, io.FileIO(raw, "rb") as ref:
        for _ in range(300):
            op = rng.choice(["seek", "read", "readinto", "tell"])
            if op == "seek":
                whence = rng.choice([0, 1, 2])
                offset = rng.randrange(-size // 2, size + 4096)
                outcome = []
                for f in (disk, ref):
                    try:
                        outcome.append(("ok", f.seek(offset, whence)))
                    except OSError as e:
                        outcome.append(("err", e.errno))
                assert outcome[0] == outcome[1], (offset, whence)
            elif op == "read":
                n = rng.choice([0, 1, 511, 4096, 100_000])
                assert disk.read(n) == ref.read(n)
            elif op == "readinto":
                a, b = bytearray(rng.randrange(1, 70_000)), None
                b = bytearray(len(a))
                assert disk.readinto(a) == ref.readinto(b)
                assert a == b
            assert disk.tell() == ref.tell()
        # At and past the end: empty reads, as a file gives.
        for f in (disk, ref):
            f.seek(size + 10)
        assert disk.read(10) == ref.read(10) == b""
    assert disk.closed
    with pytest.raises(ValueError):
        disk.read(1)


def test_snapshots_read_as_qemu_reads_them(images, tmp_path):
    path = images.qcow2("snaps.qcow2", writes=("write -P 0x01 0 1M",))
    qemu_img("snapshot", "-c", "first", str(path))
    from conftest import qemu_io

    qemu_io(path, "write -P 0x02 512k 1M")
    qemu_img("snapshot", "-c", "second", str(path))
    qemu_io(path, "write -z 0 256k")
    with cowimg.open(path) as disk:
        snaps = disk.snapshots
        assert [s.name for s in snaps] == ["first", "second"]
        listed = {s["name"]: s for s in disk.info()["snapshots"]}
        for s in snaps:
            assert (s.id, s.date_sec, s.vm_state_size) == (
                listed[s.name]["id"],
                listed[s.name]["date-sec"],
                listed[s.name]["vm-state-size"],
            )
            want = qemu_raw(path, tmp_path, "-l", f"snapshot.name={s.name}")
            with s.open() as old:
                assert old.read() == want
                assert not old.writable()
        assert disk.read() == qemu_raw(path, tmp_path)
        # By ID too, as qemu-img's -l takes either.
        with cowimg.open(path, snapshot="1") as first:
            assert first.read() == qemu_raw(path, tmp_path, "-l", "snapshot.name=first")


def test_parallel_reads_from_threads_see_the_right_bytes(corpus, tmp_path):
    path, _, _ = corpus["compressed"]
    want = expected(corpus["compressed"], tmp_path)
    disk = cowimg.open(path)
    native = disk._native
    errors = []

    def reader(seed):
        rng = random.Random(seed)
        for _ in range(200):
            at = rng.randrange(0, len(want))
            n = rng.randrange(1, 200_000)
            got = native.read_at(at, n)
            if got != want[at : at + n]:
                errors.append((seed, at, n))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    disk.close()
    assert errors == []
