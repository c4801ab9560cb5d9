"""QEMU's disk images (qcow2, qcow, UML cow, raw) as Python file objects.

    import cowimg, hashlib
    with cowimg.open("disk.qcow2") as disk:           # the backing chain followed
        digest = hashlib.file_digest(disk, "sha256")  # the guest disk's bytes
        for snap in disk.snapshots:
            with snap.open() as old:
                print(snap.name, hashlib.file_digest(old, "sha256").hexdigest())

A disk is an ``io.RawIOBase``: ``read``, ``readinto``, ``seek``, ``tell``, ``write``
(when opened writable), ``flush``, ``close``, and a context manager. Its reads may run
from several threads at once; cowimg releases the GIL while it works.

``info()``, ``map()`` and ``check()`` return what ``qemu-img info``, ``map`` and
``check`` print with ``--output=json``, as Python objects with the same keys.

Errors are raised as ``cowimg.Error`` subclasses (``InvalidFormat``, ``Unsupported``,
``Corrupt``, ``BadArgument``, ``InUse``); failures of the storage underneath as
``OSError``.
"""

from __future__ import annotations

import datetime
import errno
import io
import json
import os
from typing import Any, Callable, Dict, List, Optional, Union

from . import _cowimg
from ._cowimg import BadArgument, Corrupt, Error, InUse, InvalidFormat, Unsupported

__all__ = [
    "open",
    "create",
    "convert",
    "Disk",
    "Snapshot",
    "Error",
    "InvalidFormat",
    "Unsupported",
    "Corrupt",
    "BadArgument",
    "InUse",
]

Source = Union[str, "os.PathLike[str]", io.RawIOBase, io.BufferedIOBase, Any]


class Snapshot:
    """An internal snapshot of a qcow2 image, as its snapshot table records it."""

    def __init__(self, disk: "Disk", fields: tuple) -> None:
        (
            self.id,
            self.name,
            self.date_sec,
            self.date_nsec,
            self.vm_clock_nsec,
            self.vm_state_size,
            self.disk_size,
            self.icount,
        ) = fields
        self._disk = disk

    @property
    def date(self) -> datetime.datetime:
        """When the snapshot was taken (UTC)."""
        when = datetime.datetime.fromtimestamp(self.date_sec, tz=datetime.timezone.utc)
        return when + datetime.timedelta(microseconds=self.date_nsec // 1000)

    def open(self) -> "Disk":
        """The disk as it was when the snapshot was taken (read-only)."""
        return self._disk._reopen(snapshot=self.id)

    def __repr__(self) -> str:
        return f"Snapshot(id={self.id!r}, name={self.name!r}, disk_size={self.disk_size})"


class Disk(io.RawIOBase):
    """The guest disk of an image (its backing chain resolved) as a binary file."""

    def __init__(self, native: Any, source: Source, options: dict) -> None:
        super().__init__()
        self._native = native
        self._source = source
        self._options = options
        self._pos = 0

    # -- the file object -------------------------------------------------------------

    @property
    def size(self) -> int:
        """The virtual disk's size in bytes."""
        return self._native.size

    @property
    def name(self) -> str:
        """The path the disk was opened from (or the file object's name)."""
        if isinstance(self._source, (str, bytes, os.PathLike)):
            return os.fsdecode(self._source)
        return str(getattr(self._source, "name", "<file object>"))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._native.writable

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        data = self._native.read_at(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: Optional[int] = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            size = max(self.size - self._pos, 0)
        data = self._native.read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def write(self, data: Any) -> int:
        self._check_open()
        if not self.writable():
            raise io.UnsupportedOperation("the disk was opened read-only")
        written = self._native.write_at(bytes(data), self._pos)
        self._pos += written
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if target < 0:
            # As io.FileIO (lseek) refuses it.
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._pos = target
        return target

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def flush(self) -> None:
        if not self.closed and self.writable():
            self._native.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes first
            self._native.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed disk")

    # -- what qemu-img reports ----------------------------------------------------------

    def info(self, backing_chain: bool = False) -> Union[dict, List[dict]]:
        """``qemu-img info --output=json``: the image's own file, or with
        ``backing_chain`` every file of the chain, the image first."""
        chain = json.loads(self._native.info_json())
        return chain if backing_chain else chain[0]

    def hash(self, *algorithms: str) -> Dict[str, str]:
        """Digests of the guest disk as lower-case hex, by algorithm (``sha256`` unless
        named; ``sha1``, ``md5``): what ``cowimg hash`` prints, decompressing on every
        core, without the GIL."""
        self._check_open()
        return dict(self._native.hash(list(algorithms or ("sha256",))))

    def map(self) -> List[dict]:
        """``qemu-img map --output=json``: where each range of the disk is stored."""
        return json.loads(self._native.map_json())

    def check(self) -> dict:
        """``qemu-img check --output=json`` of the image's own file (qcow2; nothing is
        repaired)."""
        return json.loads(self._native.check_json(self.name))

    @property
    def chain(self) -> List[dict]:
        """Every file of the backing chain, the image first: ``filename`` and ``format``."""
        return [
            {"filename": os.fspath(path), "format": fmt} for path, fmt in self._native.chain()
        ]

    @property
    def snapshots(self) -> List[Snapshot]:
        """The image's internal snapshots (qcow2; none for other formats)."""
        return [Snapshot(self, fields) for fields in self._native.snapshots()]

    def _reopen(self, **changes: Any) -> "Disk":
        options = dict(self._options, writable=False, **changes)
        return open(self._source, **options)


def open(
    source: Source,
    format: Optional[str] = None,
    passphrase: Union[str, bytes, None] = None,
    snapshot: Optional[str] = None,
    backing: Union[str, "os.PathLike[str]"] = "follow",
    writable: bool = False,
    data_file: Union[str, "os.PathLike[str]", None] = None,
) -> Disk:
    """Opens an image from a path, or from a file object with ``read`` and ``seek``.

    ``format`` is probed when not given (writing needs it stated). ``passphrase`` opens
    legacy AES images. ``snapshot`` (an ID or a name) opens an internal snapshot,
    read-only. ``backing`` is ``"follow"`` (the chain the headers name; for a file
    object, ``"ignore"``), ``"ignore"``, or the path of a backing file to use instead.
    """
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    options = {
        "format": format,
        "passphrase": passphrase,
        "snapshot": snapshot,
        "backing": backing,
        "writable": writable,
        "data_file": data_file,
    }
    is_path = isinstance(source, (str, bytes, os.PathLike))
    native = _cowimg.open(
        os.fspath(source) if is_path else source,
        format=format,
        passphrase=passphrase,
        snapshot=snapshot,
        backing=None if (backing == "follow" and not is_path) else os.fspath(backing),
        writable=writable,
        data_file=None if data_file is None else os.fspath(data_file),
    )
    return Disk(native, source, options)


def create(
    path: Union[str, "os.PathLike[str]"],
    size: int,
    format: str = "qcow2",
    **options: Any,
) -> None:
    """Creates an empty image file, as ``qemu-img create``. Options: ``cluster_size``,
    ``backing_file``, ``backing_format``, ``compat`` ("0.10" or "1.1"),
    ``preallocation``, ``lazy_refcounts``, ``extended_l2``, ``compression`` ("zlib" or
    "zstd")."""
    _cowimg.create(os.fspath(path), size, format, **options)


def convert(
    source: Union[str, "os.PathLike[str]"],
    destination: Union[str, "os.PathLike[str]"],
    format: str = "qcow2",
    compress: bool = False,
    progress: Optional[Callable[[int, int], Any]] = None,
    cluster_size: Optional[int] = None,
    source_format: Optional[str] = None,
) -> None:
    """Copies an image's disk into a new image file, as ``qemu-img convert``.
    ``progress(done, total)`` is called with bytes of the disk covered so far."""
    _cowimg.convert_file(
        os.fspath(source),
        os.fspath(destination),
        format=format,
        compress=compress,
        cluster_size=cluster_size,
        progress=progress,
        source_format=source_format,
    )
