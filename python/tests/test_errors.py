"""Errors arrive as the documented exceptions; hostile bytes raise, never crash."""

import errno
import io
import os
import random

import pytest

import cowimg


def test_a_missing_file_is_an_oserror_with_its_errno(tmp_path):
    with pytest.raises(OSError) as e:
        cowimg.open(tmp_path / "nope.qcow2")
    assert e.value.errno == errno.ENOENT


def test_kinds_map_to_exceptions(tmp_path, corpus):
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"QFI\xfb" + b"\0\0\0\x09" + bytes(100))
    with pytest.raises(cowimg.Unsupported) as e:
        cowimg.open(junk)
    assert "version 9" in str(e.value)
    with pytest.raises(cowimg.InvalidFormat):
        cowimg.open(io.BytesIO(b"QFI\xfb"), format="qcow2")
    with pytest.raises(cowimg.BadArgument):
        cowimg.open(corpus["v3"][0], format="vmdk")
    with pytest.raises(cowimg.BadArgument):
        cowimg.open(corpus["v3"][0], snapshot="no-such-snapshot")
    assert issubclass(cowimg.Corrupt, cowimg.Error) and issubclass(cowimg.InUse, cowimg.Error)


def test_damaged_metadata_is_corrupt(images):
    path = images.qcow2("damaged.qcow2", writes=("write -P 1 0 64k",))
    data = bytearray(path.read_bytes())
    l1 = int.from_bytes(data[40:48], "big")
    # The first L1 entry names an unaligned L2 table.
    entry = int.from_bytes(data[l1 : l1 + 8], "big") | 0x200
    data[l1 : l1 + 8] = entry.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    with cowimg.open(path) as disk, pytest.raises(cowimg.Corrupt):
        disk.read(512)


def test_hostile_images_raise_and_never_crash(corpus):
    rng = random.Random(1)
    seeds = [corpus[k][0].read_bytes()[:65536] for k in ("v3", "v2", "qcow1", "zstd-extl2")]
    for i in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 16)):
            at = rng.randrange(0, 512)
            data[at] = rng.randrange(256)
        try:
            with cowimg.open(io.BytesIO(bytes(data)), format=rng.choice([None, "qcow2"])) as disk:
                disk.read(min(disk.size, 1 << 20))
                disk.map() if disk.size < (1 << 30) else None
        except (cowimg.Error, OSError):
            pass
