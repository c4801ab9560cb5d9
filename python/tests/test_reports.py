"""info(), map() and check() answer with what qemu-img prints as JSON."""

import pytest

import cowimg
from conftest import qemu_json

KINDS = ["v3", "v2", "zstd-extl2", "compressed", "chain", "qcow1", "raw"]


@pytest.mark.parametrize("kind", KINDS)
def test_info_is_qemu_img_info(corpus, kind):
    path, options, _ = corpus[kind]
    with cowimg.open(path, **options) as disk:
        assert disk.info() == qemu_json("info", str(path))
        assert disk.info(backing_chain=True) == qemu_json("info", "--backing-chain", str(path))


@pytest.mark.parametrize("kind", KINDS)
def test_map_is_qemu_img_map(corpus, kind):
    path, options, _ = corpus[kind]
    with cowimg.open(path, **options) as disk:
        assert disk.map() == qemu_json("map", str(path))


@pytest.mark.parametrize("kind", ["v3", "v2", "zstd-extl2", "compressed", "chain"])
def test_check_is_qemu_img_check(corpus, kind):
    path, _, _ = corpus[kind]
    with cowimg.open(path) as disk:
        assert disk.check() == qemu_json("check", str(path))


def test_check_refuses_formats_without_checks(corpus):
    with cowimg.open(corpus["raw"][0]) as disk, pytest.raises(cowimg.Unsupported):
        disk.check()


def test_chain_lists_every_file(corpus):
    overlay, _, _ = corpus["chain"]
    with cowimg.open(overlay) as disk:
        assert disk.chain == [
            {"filename": str(overlay), "format": "qcow2"},
            {"filename": str(overlay.parent / "base.qcow2"), "format": "qcow2"},
        ]
