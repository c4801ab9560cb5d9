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


class RangeServer:
    """An HTTP server honouring Range (rangehttpserver's handler) over `root`, on
    127.0.0.1, in a thread of this process; it counts the requests it answers."""

    def __init__(self, root: Path) -> None:
        import functools
        import threading
        from http.server import ThreadingHTTPServer

        from RangeHTTPServer import RangeRequestHandler

        server = self

        class Counting(RangeRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 (http.server's name)
                server.requests.append(self.command)

        self.requests: list = []
        handler = functools.partial(Counting, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def range_server(tmp_path):
    """A RangeServer over a fresh folder (`.root`); stopped after the test."""
    root = tmp_path / "served"
    root.mkdir()
    server = RangeServer(root)
    server.root = root
    yield server
    server.stop()


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with bucket `evidence`, and the environment that
    points boto3 and cowimg at it. Yields a function that uploads a file as a key."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "cowimg-test-key",
        "AWS_SECRET_ACCESS_KEY": "cowimg-test-secret",
        "AWS_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="evidence")
    yield lambda path, key: client.upload_file(str(path), "evidence", key)
    server.stop()


# Azurite's well-known development account (public, in Microsoft's documentation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@pytest.fixture
def azure(monkeypatch, tmp_path):
    """An Azurite blob server on 127.0.0.1:10000 (`azurite-blob` on PATH: npm's
    azurite) with container `evidence`, and the environment that points cowimg at it.
    Yields a function that uploads a file as a blob."""
    import shutil
    import socket
    import time

    from azure.storage.blob import BlobServiceClient

    program = shutil.which("azurite-blob")
    assert program, "azurite-blob is needed: npm install azurite (.ci/run does)"
    server = subprocess.Popen(
        [program, "--blobHost", "127.0.0.1", "--blobPort", "10000", "--silent",
         "--skipApiVersionCheck", "--location", str(tmp_path / "azurite")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", 10000)).close()
                break
            except OSError:
                time.sleep(0.05)
        monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
        service = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:10000/{AZURITE_ACCOUNT};"
        )
        container = service.create_container("evidence")

        def upload(path, name):
            with open(path, "rb") as f:
                container.upload_blob(name, f)

        yield upload
    finally:
        server.terminate()
        server.wait()
