"""Raw objects: one object, one sample (bytes or decode(bytes)); write_raw is store.put."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from s3dlio_loader import formats
from s3dlio_loader.errors import ConfigError, FormatError
from s3dlio_loader.formats.raw import RawIndex, RawReader, write_raw
from s3dlio_loader.storage import Store


def parse_json(data: bytes) -> object:
    return json.loads(data)


def test_roundtrip_on_every_backend(backend):
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    uri = backend.uri("raw/blob.bin")
    payload = bytes(range(256)) * 1000
    write_raw(uri, payload, store=store)
    assert store.get(uri) == payload

    store.stats.reset()
    reader = RawReader(uri, store=store)
    assert len(reader) == 1
    assert reader[0] == payload
    assert store.stats.snapshot()["by_op"] == {"get": 1}  # no stat before the read
    assert reader.index == RawIndex(uri=uri, size=len(payload), etag=None)

    indexed = RawReader(uri, store=store, index=reader.build_index())
    info = store.stat(uri)
    assert indexed.index.size == info.size and indexed.index.etag == info.etag
    assert indexed.index.matches(info)
    assert indexed.read_batch([0, -1]) == [payload, payload]


def test_decode_and_pickle(tmp_path):
    uri = f"file://{tmp_path}/a.json"
    write_raw(uri, b'{"x": [1, 2]}')
    reader = RawReader(uri, parse_json)
    assert reader[0] == {"x": [1, 2]}
    clone = pickle.loads(pickle.dumps(reader))
    assert clone[0] == {"x": [1, 2]}
    assert formats.open(uri, format="raw", decode=parse_json)[0] == {"x": [1, 2]}


def test_decode_errors_become_format_errors_and_can_be_skipped(tmp_path):
    uri = f"file://{tmp_path}/bad.json"
    write_raw(uri, b"{not json")
    with pytest.raises(FormatError, match="decode failed: JSONDecodeError") as info:
        RawReader(uri, decode=parse_json)[0]
    assert info.value.uri == uri and info.value.format == "raw"
    skipping = RawReader(uri, decode=parse_json, on_error="skip")
    assert skipping.read_batch([0]) == []
    assert skipping.skipped == 1


def test_write_raw_accepts_buffers_without_copy(tmp_path):
    arr = np.arange(1000, dtype=np.float32)
    uri = f"file://{tmp_path}/arr.bin"
    formats.write(uri, arr, format="raw")
    assert (tmp_path / "arr.bin").read_bytes() == arr.tobytes()
    write_raw(uri, memoryview(b"abcdef")[1:4])
    assert RawReader(uri)[0] == b"bcd"
    write_raw(uri, bytearray(b"xyz"))
    assert RawReader(uri, store=Store.from_uri(uri))[0] == b"xyz"
    with pytest.raises(ConfigError, match="encode"):
        write_raw(uri, "text")
    with pytest.raises(ConfigError, match="bytes-like"):
        write_raw(uri, 42)
    with pytest.raises(ConfigError, match="contiguous"):
        write_raw(uri, arr[::2])
    with pytest.raises(ConfigError, match="callable"):
        RawReader(uri, decode="utf8")  # type: ignore[arg-type]


def test_empty_object_and_bounds(tmp_path):
    uri = f"file://{tmp_path}/empty"
    write_raw(uri, b"")
    reader = RawReader(uri)
    assert reader[0] == b""
    assert reader.read_batch([]) == []
    with pytest.raises(IndexError):
        reader[1]
