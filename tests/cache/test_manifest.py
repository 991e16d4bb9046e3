"""Manifests: JSON Lines and Parquet, converted with pyarrow, read once per version."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s3dlio_loader import FormatError, ObjectInfo, Store
from s3dlio_loader import cache as cache_module
from s3dlio_loader.cache.manifest import parse_manifest, serialize_manifest
from s3dlio_loader.engine.dataset import Manifest

OBJECTS = [
    ObjectInfo("s3://bucket/data/a.npz", 10, "e1", 1700000000.25),
    ObjectInfo('s3://bucket/data/quote"and\\back.npz', 0, None, None),
    ObjectInfo("s3://bucket/data/ünïcode/b.npz", 123456789012, "e-3", None),
]


@pytest.mark.parametrize("name", ["m.jsonl", "m.pq"])
def test_round_trip(tmp_path, name):
    uri = f"file://{tmp_path}/{name}"
    Manifest(OBJECTS, samples=[3, 0, 7]).write(uri)
    back = Manifest.read(uri)
    assert list(back.objects) == OBJECTS and back.samples is not None and back.samples.tolist() == [3, 0, 7]
    assert back.source == uri and len(back) == 3
    plain = Manifest(OBJECTS[:1])
    other = f"file://{tmp_path}/plain-{name}"
    plain.write(other)
    again = Manifest.read(other)
    assert list(again.objects) == OBJECTS[:1] and again.samples is None


def test_json_lines_are_plain_json_per_line(tmp_path):
    data = serialize_manifest(Manifest(OBJECTS, samples=[1, 2, 3]).objects, np.array([1, 2, 3]), "jsonl")
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert rows[0] == {"uri": OBJECTS[0].uri, "size": 10, "etag": "e1", "mtime": 1700000000.25, "samples": 1}
    assert rows[1] == {"uri": OBJECTS[1].uri, "size": 0, "etag": None, "samples": 2}
    control = Manifest([ObjectInfo("s3://b/tab\there", 1)]).objects
    assert json.loads(serialize_manifest(control, None, "jsonl"))["uri"] == "s3://b/tab\there"


def test_errors_name_the_line(tmp_path):
    cases = {
        '{"uri": "x"}\n': "line 1",
        '\n{"uri": "a", "size": 1}\n\n{"uri": "b", "size": -4}\n': "line 4",
        '{"uri": "a", "size": 1}\n{not json\n': "line 2",
        '{"uri": "a", "size": 1.5}\n': "line 1",
        '{"uri": "a", "size": 1, "samples": 2}\n{"uri": "b", "size": 1}\n': "some entries only",
        "[1, 2]\n": "line 1",
    }
    for k, (text, match) in enumerate(cases.items()):
        path = tmp_path / f"bad{k}.jsonl"
        path.write_text(text)
        with pytest.raises(FormatError, match=match):
            Manifest.read(f"file://{path}")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(FormatError, match="Parquet"):
        Manifest.read(f"file://{tmp_path}/bad.parquet")


def test_empty_manifest(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    assert len(Manifest.read(f"file://{tmp_path}/e.jsonl")) == 0


def test_a_manifest_is_trusted_for_the_ttl_then_checked_with_one_stat(tmp_path):
    uri = f"file://{tmp_path}/m.jsonl"
    Manifest(OBJECTS).write(uri)
    store = Store("file")
    Manifest.read(uri, store=store)
    Manifest.read(uri, store=store)
    assert store.stats.snapshot()["by_op"] == {"stat": 1, "get": 1}
    cache_module.configure()  # a new process, same cache directory, within the TTL: no request
    store.stats.reset()
    assert list(Manifest.read(uri, store=store).objects) == OBJECTS
    assert store.stats.snapshot()["by_op"] == {}
    checking = cache_module.configure(listing_ttl=0)  # past the TTL: one stat says it is unchanged
    assert len(Manifest.read(uri, store=store)) == 3
    assert store.stats.snapshot()["by_op"] == {"stat": 1}
    Manifest(OBJECTS[:2]).write(uri)  # a new version is fetched again
    store.stats.reset()
    assert len(Manifest.read(uri, store=store)) == 2
    assert store.stats.snapshot()["by_op"] == {"stat": 1, "get": 1}
    Manifest(OBJECTS[:1]).write(uri)
    cache_module.configure()  # within the TTL the old version is trusted until refresh()
    assert len(Manifest.read(uri, store=store)) == 2
    cache_module.get_cache().refresh(uri)
    assert len(Manifest.read(uri, store=store)) == 1
    assert checking is not cache_module.get_cache()


def test_large_manifest_is_converted_without_python_objects_per_row():
    n = 200_000
    uris = [f"s3://bucket/train/part-{i:07d}.npz" for i in range(n)]
    m = Manifest.from_columns(uris, np.arange(n), [f"{i:032x}" for i in range(n)], samples=np.ones(n, np.int64))
    data = serialize_manifest(m.objects, m.samples, "jsonl")
    table, samples = parse_manifest(data, "x.jsonl")
    assert table.identical(m.objects) and samples is not None and int(samples.sum()) == n
    assert table.prefix == "s3://bucket/train/part-0" and table.uri_data.nbytes == n * len("000000.npz")
    pq_table, _ = parse_manifest(serialize_manifest(m.objects, None, "parquet"), "x.parquet")
    assert pq_table.identical(m.objects)
