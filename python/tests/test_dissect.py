"""The same images through dissect.hypervisor, the reader Python forensic pipelines use
today: equal bytes wherever dissect reads an image, and the images only cowimg reads
named (each with what dissect does instead)."""

import io

import pytest

import cowimg
from conftest import expected

qcow2 = pytest.importorskip("dissect.hypervisor.disk.qcow2")

BOTH = ["v3", "v2", "small-clusters", "compressed", "chain"]

# Images dissect.hypervisor cannot read correctly, and what it does instead (seen with
# dissect.hypervisor 3.x): it refuses them, fails part-way, or returns other bytes.
ONLY_COWIMG = {
    "aes": "legacy AES: no cipher, ciphertext returned as data",
    "zstd-extl2": "extended L2 entries: fails reading the subcluster bitmap",
    "qcow1": "qcow version 1: not a format it knows",
}


def dissect_read(path):
    backing = None
    if path.name == "overlay.qcow2":
        backing = open(path.parent / "base.qcow2", "rb")
    with open(path, "rb") as fh:
        disk = qcow2.QCow2(fh, backing_file=qcow2.QCow2(backing).open() if backing else None)
        return disk.open().read()


@pytest.mark.parametrize("kind", BOTH)
def test_dissect_and_cowimg_read_the_same_bytes(corpus, tmp_path, kind):
    path, options, _ = corpus[kind]
    with cowimg.open(path, **options) as disk:
        ours = disk.read()
    assert ours == expected(corpus[kind], tmp_path)
    assert dissect_read(path) == ours


@pytest.mark.parametrize("kind", sorted(ONLY_COWIMG))
def test_images_only_cowimg_reads(corpus, tmp_path, kind):
    path, options, _ = corpus[kind]
    want = expected(corpus[kind], tmp_path)
    with cowimg.open(path, **options) as disk:
        assert disk.read() == want
    try:
        theirs = dissect_read(path)
    except Exception:
        return
    assert theirs != want, f"dissect now reads {kind}: {ONLY_COWIMG[kind]} no longer holds"
