"""The Dask recipe (`cowimg.dask`) on a real LocalCluster over a dozen QEMU-made
images, some local and some served over HTTP: every row checked against qemu-img."""

import hashlib
import shutil
import subprocess

import pytest

import cowimg.dask
from conftest import qemu_img, qemu_io, qemu_json, qemu_raw


def dozen(root, served):
    """Twelve images of every kind QEMU makes; the last three copied to `served`."""
    made = []
    for n in range(4):  # qcow2 with n snapshots
        p = root / f"snaps{n}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(p), "8M")
        for s in range(n):
            qemu_io(p, f"write -P {0x10 + s} {s}M 64k")
            qemu_img("snapshot", "-c", f"s{s}", str(p))
        qemu_io(p, f"write -P 0x7e {n}M 4k")
        made.append(p)
    for n, opts in enumerate(("compression_type=zlib", "compression_type=zstd")):
        p = root / f"packed{n}.qcow2"
        qemu_img("convert", "-c", "-O", "qcow2", "-o", opts, str(made[3]), str(p))
        made.append(p)
    for n, fmt in enumerate(("raw", "qcow", "raw", "qcow")):
        p = root / f"other{n}.{fmt}"
        qemu_img("convert", "-O", fmt, str(made[n]), str(p))
        made.append(p)
    p = root / "v2.qcow2"
    qemu_img("convert", "-O", "qcow2", "-o", "compat=0.10", str(made[2]), str(p))
    made.append(p)
    p = root / "small.qcow2"
    qemu_img("convert", "-O", "qcow2", "-o", "cluster_size=512", str(made[1]), str(p))
    made.append(p)
    for p in made[-3:]:
        shutil.copy(p, served / p.name)
    return made


@pytest.fixture(scope="module")
def client():
    import distributed
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None,
        host="127.0.0.1",
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def test_a_dozen_images_hashed_inspected_and_converted_on_a_local_cluster(
    client, range_server, tmp_path
):
    made = dozen(tmp_path, range_server.root)
    names = [str(p) for p in made[:-3]] + [f"{range_server.url}/{p.name}" for p in made[-3:]]
    local = dict(zip(names, made))
    assert len(names) == 12

    rows = cowimg.dask.run(names + [str(tmp_path / "absent.qcow2")], "hash", client=client)
    assert rows[-1]["image"].endswith("absent.qcow2") and "error" in rows[-1]
    rows = rows[:-1]
    snapshots = {n: [s["name"] for s in qemu_json("info", str(p)).get("snapshots", [])]
                 for n, p in local.items()}
    assert [(r["image"], r["snapshot"]) for r in rows] == [
        (n, s) for n in names for s in [None] + snapshots[n]]
    for r in rows:
        extra = ("-l", r["snapshot"]) if r["snapshot"] else ()
        raw = qemu_raw(local[r["image"]], tmp_path, *extra)
        assert r["sha256"] == hashlib.sha256(raw).hexdigest(), r
        assert r["virtual_size"] == len(raw)

    rows = cowimg.dask.run(names, "inspect", client=client)
    assert [r["image"] for r in rows] == names
    for r in rows:
        info = qemu_json("info", str(local[r["image"]]))
        assert (r["format"], r["virtual_size"], r["cluster_size"], r["snapshots"]) == (
            info["format"], info["virtual-size"], info.get("cluster-size"),
            len(info.get("snapshots", []))), r
        if r["format"] == "qcow2":
            assert r["check_errors"] == 0 and r["corruptions"] == 0

    out = tmp_path / "converted"
    out.mkdir()
    rows = cowimg.dask.run(names, "convert", client=client, target_dir=str(out))
    assert len({r["target"] for r in rows}) == 12
    for r in rows:
        source = local[r["image"]]
        done = subprocess.run(["qemu-img", "compare", str(source), r["target"]],
                              capture_output=True, text=True)
        assert done.returncode == 0, (r, done.stdout, done.stderr)
        qemu_img("check", r["target"])
