"""Many images at once on a Dask cluster: one task per image, one table of results.

    from dask.distributed import Client, LocalCluster
    import cowimg.dask

    images = ["s3://evidence/case-17/disk.qcow2", "https://mirror/img/base.qcow2",
              "/srv/images/vm3.qcow2"]
    with LocalCluster(n_workers=4) as cluster, Client(cluster) as client:
        rows = cowimg.dask.run(images, "hash", client=client)
    table = cowimg.dask.to_dataframe(rows)        # with pandas installed

Each task runs on a worker: it opens its image there (a local path the worker can
see, or a URL read where it lies, with the worker's credentials from the usual
environment variables), read-only, and returns rows of plain values. ``run`` gathers
every task's rows into one list, in the order the images were given. An image that
cannot be read gives one row with its ``error`` rather than failing the others.

The tasks:

``hash``
    One row per disk state: the current disk (``snapshot`` None) and each internal
    snapshot (its ``snapshot`` name and ``snapshot_id``), with ``virtual_size`` and a
    column per digest algorithm (``algorithms=("sha256",)``).
``inspect``
    One row per image: ``format``, ``virtual_size``, ``cluster_size``,
    ``backing_file``, ``snapshots`` (a count), ``chain_length``, and for qcow2 what
    ``qemu-img check`` counts (``check_errors``, ``leaks``, ``corruptions``).
``convert``
    Writes each image into ``target_dir`` (``format="qcow2"``, ``compress=False``) as
    ``<name>.<format>``: one row with ``target`` and its ``bytes``.

``task`` may also be any function ``f(image, **options) -> list[dict]``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import cowimg

Row = Dict[str, Any]
Task = Callable[..., List[Row]]


def hash_image(image: str, algorithms: Iterable[str] = ("sha256",), **open_options: Any) -> List[Row]:
    """Digests of the disk and of each internal snapshot."""
    algorithms = tuple(algorithms)
    rows = []
    with cowimg.open(image, **open_options) as disk:
        rows.append(
            {"image": image, "snapshot": None, "snapshot_id": None,
             "virtual_size": disk.size, **disk.hash(*algorithms)}
        )
        for snap in disk.snapshots:
            with snap.open() as old:
                rows.append(
                    {"image": image, "snapshot": snap.name, "snapshot_id": snap.id,
                     "virtual_size": old.size, **old.hash(*algorithms)}
                )
    return rows


def inspect_image(image: str, **open_options: Any) -> List[Row]:
    """What ``qemu-img info`` and (for qcow2) ``qemu-img check`` say of the image."""
    with cowimg.open(image, **open_options) as disk:
        info = disk.info()
        row = {
            "image": image,
            "format": info["format"],
            "virtual_size": info["virtual-size"],
            "cluster_size": info.get("cluster-size"),
            "backing_file": info.get("backing-filename"),
            "snapshots": len(info.get("snapshots", [])),
            "chain_length": len(disk.chain),
            "check_errors": None,
            "leaks": None,
            "corruptions": None,
        }
        if info["format"] == "qcow2":
            check = disk.check()
            row["check_errors"] = check.get("check-errors", 0)
            row["leaks"] = check.get("leaks", 0)
            row["corruptions"] = check.get("corruptions", 0)
    return [row]


def convert_image(
    image: str,
    target_dir: Union[str, "os.PathLike[str]"],
    format: str = "qcow2",
    compress: bool = False,
    **open_options: Any,
) -> List[Row]:
    """The image's disk written into ``target_dir`` as a new image."""
    name = image.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    target = os.path.join(os.fspath(target_dir), f"{stem}.{format}")
    cowimg.convert(image, target, format=format, compress=compress,
                   source_format=open_options.get("format"))
    return [{"image": image, "target": target, "format": format,
             "bytes": os.path.getsize(target)}]


TASKS: Dict[str, Task] = {
    "hash": hash_image,
    "inspect": inspect_image,
    "convert": convert_image,
}


def _guarded(task: Task, options: Dict[str, Any], image: str) -> List[Row]:
    # One unreadable image is a row saying why, not a failed computation.
    try:
        return task(image, **options)
    except (cowimg.Error, OSError) as e:
        return [{"image": image, "error": f"{type(e).__name__}: {e}"}]


def run(
    images: Iterable[Union[str, "os.PathLike[str]"]],
    task: Union[str, Task] = "hash",
    client: Optional[Any] = None,
    **options: Any,
) -> List[Row]:
    """Runs ``task`` on every image on the Dask cluster of ``client`` (the current
    client when None) and returns every row, in the order the images were given."""
    if isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
        task = TASKS[task]
    if client is None:
        from distributed import get_client

        client = get_client()
    names = [os.fspath(i) for i in images]
    # pure=False: the same image listed twice is read twice, never served from a cache.
    futures = client.map(functools.partial(_guarded, task, options), names, pure=False)
    return [row for rows in client.gather(futures) for row in rows]


def to_dataframe(rows: List[Row]) -> Any:
    """The rows as a pandas DataFrame (pandas must be installed)."""
    import pandas

    return pandas.DataFrame(rows)
