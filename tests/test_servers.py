"""The storage emulators and the ``backend`` fixture work, using the fsspec filesystems directly."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import pytest
from servers import AzuriteServer, FakeGcsServer, MotoServer, Server

MiB = 1 << 20


def _payload(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def _make_fs(kind: str, server: Server) -> Any:
    if kind == "s3":
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())
    if kind == "az":
        import adlfs

        return adlfs.AzureBlobFileSystem(skip_instance_cache=True, **server.storage_options())
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True, **server.storage_options())


@pytest.fixture(params=["s3", "az", "gs"])
def kind_server(request: pytest.FixtureRequest) -> tuple[str, Server]:
    fixture = {"s3": "moto_server", "az": "azurite_server", "gs": "gcs_server"}[request.param]
    return request.param, request.getfixturevalue(fixture)


def test_server_basics(kind_server: tuple[str, Server]) -> None:
    _kind, server = kind_server
    assert server.running
    assert server.endpoint == f"http://127.0.0.1:{server.port}"
    assert server.log_path.exists()
    assert isinstance(server.log_tail(), str)


def test_object_store_roundtrip(kind_server: tuple[str, Server]) -> None:
    kind, server = kind_server
    fs = _make_fs(kind, server)
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    assert server.make_bucket(bucket) == f"{kind}://{bucket}"
    assert fs.exists(bucket)

    small = _payload(1000, 1)
    fs.pipe(f"{bucket}/dir/a.bin", small)
    with fs.open(f"{bucket}/dir/b.txt", "wb") as f:
        f.write(b"hello world")
    assert fs.cat(f"{bucket}/dir/a.bin") == small
    with fs.open(f"{bucket}/dir/b.txt", "rb") as f:
        assert f.read() == b"hello world"

    fs.invalidate_cache()
    assert sorted(fs.ls(f"{bucket}/dir", detail=False)) == [f"{bucket}/dir/a.bin", f"{bucket}/dir/b.txt"]
    assert sorted(fs.find(bucket)) == [f"{bucket}/dir/a.bin", f"{bucket}/dir/b.txt"]
    assert fs.info(f"{bucket}/dir/a.bin")["size"] == 1000

    # 12 MiB through the multipart / block / resumable upload paths (5 MiB blocks).
    big = _payload(12 * MiB, 2)
    with fs.open(f"{bucket}/big.bin", "wb", block_size=5 * MiB) as f:
        for off in range(0, len(big), 3 * MiB):
            f.write(big[off : off + 3 * MiB])
    fs.invalidate_cache()
    assert fs.info(f"{bucket}/big.bin")["size"] == len(big)

    # Range reads: cat_file with start/end, cat_ranges, seek + read.
    a, b = 5 * MiB - 7, 5 * MiB + 9  # across the first upload block boundary
    assert fs.cat_file(f"{bucket}/big.bin", start=a, end=b) == big[a:b]
    ranges = [(0, 10), (MiB, MiB + 4096), (len(big) - 100, len(big))]
    got = fs.cat_ranges([f"{bucket}/big.bin"] * 3, [r[0] for r in ranges], [r[1] for r in ranges])
    assert got == [big[a:b] for a, b in ranges]
    with fs.open(f"{bucket}/big.bin", "rb") as f:
        f.seek(11 * MiB + 3)
        assert f.read(1000) == big[11 * MiB + 3 : 11 * MiB + 1003]
    assert hashlib.sha256(fs.cat(f"{bucket}/big.bin")).digest() == hashlib.sha256(big).digest()

    # Delete.
    fs.rm(f"{bucket}/dir/a.bin")
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/dir/a.bin")
    fs.rm(bucket, recursive=True)
    fs.invalidate_cache()
    assert not fs.exists(bucket)


def test_storage_options_shapes(moto_server: MotoServer, azurite_server: AzuriteServer,
                                gcs_server: FakeGcsServer) -> None:  # fmt: skip
    assert moto_server.storage_options() == {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_server.endpoint},
    }
    assert azurite_server.storage_options() == {"connection_string": azurite_server.connection_string}
    assert f"BlobEndpoint={azurite_server.endpoint}/devstoreaccount1;" in azurite_server.connection_string
    gs_opts = {"endpoint_url": gcs_server.endpoint, "token": "anon", "project": "test"}
    assert gcs_server.storage_options() == gs_opts
    assert moto_server.storage_options("http://x:1")["client_kwargs"]["endpoint_url"] == "http://x:1"
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"


def test_backend_fixture(backend: Any) -> None:
    assert backend.scheme in ("file", "direct", "s3", "az", "gs")
    assert backend.root_uri.startswith(f"{backend.scheme}://")
    fs = backend.fs()
    if backend.scheme in ("file", "direct"):
        assert backend.storage_options == {}
        assert backend.local_path is not None and backend.local_path.is_dir()
        assert backend.root_uri == f"{backend.scheme}://{backend.local_path}"
        assert list(backend.local_path.iterdir()) == []
    else:
        assert backend.root_uri == f"{backend.scheme}://{backend.bucket}"
        assert backend.bucket.startswith("test-") and len(backend.bucket) == 13
        assert backend.storage_options == backend.server.storage_options()
        assert fs.exists(backend.bucket)
        assert fs.ls(backend.bucket) == []
    fs.pipe(backend.path("x", "y.bin"), b"abc")
    assert fs.cat(backend.path("x", "y.bin")) == b"abc"
    assert backend.uri("x", "y.bin") == backend.root_uri + "/x/y.bin"
