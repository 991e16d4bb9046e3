"""Dataset: sources resolved to cached catalogs; metadata requests per epoch, process and change."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from s3dlio_loader import ConfigError, ObjectNotFoundError, Store
from s3dlio_loader import cache as cache_module
from s3dlio_loader.cache import ObjectTable
from s3dlio_loader.engine.dataset import Dataset, Manifest
from s3dlio_loader.engine.loader import Loader
from s3dlio_loader.formats import write
from s3dlio_loader.formats.npy import read_npy_index
from s3dlio_loader.storage.oplog import read_oplog

TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def metadata_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[cache_module.MetadataCache]:
    """A fresh process-global cache persisting under ``tmp_path`` (and for subprocesses, via the environment)."""
    monkeypatch.setenv("S3DLIO_CACHE_DIR", str(tmp_path / "metadata-cache"))
    for var in ("S3DLIO_CACHE_PERSIST", "S3DLIO_LISTING_TTL", "S3DLIO_OPLOG"):
        monkeypatch.delenv(var, raising=False)
    previous = cache_module._cache
    yield cache_module.configure()
    cache_module._cache = previous


def ops(store: Store) -> dict[str, int]:
    return store.stats.snapshot()["by_op"]


# ---------------------------------------------------------------------- file://


@pytest.fixture
def npy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for k in range(5):
        np.save(d / f"part-{k}.npy", np.arange(3 * (4 + k), dtype=np.float64).reshape(4 + k, 3) + 1000 * k)
    return d


def test_sizes_starts_objects_and_reads(npy_dir):
    ds = Dataset(f"file://{npy_dir}/", format="npy", rows=True)
    assert len(ds) == 4 + 5 + 6 + 7 + 8 and ds.num_objects == 5
    assert ds.sizes.tolist() == [4, 5, 6, 7, 8] and ds.starts.tolist() == [0, 4, 9, 15, 22, 30]
    assert isinstance(ds.objects, ObjectTable) and ds.objects[2].uri == f"file://{npy_dir}/part-2.npy"
    assert not ds.sizes.flags.writeable  # mapped from the cache file
    assert [s[0] for s in ds.read_samples([0, 4, 29])] == [0.0, 1000.0, 4000.0 + 21]
    obj, local = ds.locate(np.array([3, 4, 29]))
    assert obj.tolist() == [0, 1, 4] and local.tolist() == [3, 0, 7]
    assert ds.reader(3).index == read_npy_index(ds.objects[3].uri)
    assert repr(ds) == "Dataset(5 objects, 30 samples, format='npy')"


def test_added_and_removed_objects_index_only_what_is_new(npy_dir):
    store = Store("file")
    Dataset(f"file://{npy_dir}/", format="npy", rows=True, store=store)
    (npy_dir / "part-1.npy").unlink()
    np.save(npy_dir / "part-9.npy", np.zeros((2, 3)))
    cache_module.get_cache().refresh(f"file://{npy_dir}/")
    store.stats.reset()
    ds = Dataset(f"file://{npy_dir}/", format="npy", rows=True, store=store)
    assert ops(store) == {"list": 1, "get_range": 1}  # the header of part-9 only
    assert ds.sizes.tolist() == [4, 6, 7, 8, 2] and ds.objects[4].uri.endswith("part-9.npy")
    assert ds.read_samples([4, 25])[0].tolist() == [2000.0, 2001.0, 2002.0]  # part-2, after part-0


def test_format_options_are_part_of_the_key(npy_dir):
    rows = Dataset(f"file://{npy_dir}/", format="npy", rows=True)
    whole = Dataset(f"file://{npy_dir}/", format="npy")
    assert len(rows) == 30 and len(whole) == 5 and rows.catalog is not whole.catalog


def write_objects(d: Path, fmt: str) -> None:
    store = Store("file")
    for k in range(3):
        rows = 3 + k
        uri = f"file://{d}/o-{k}.{ {'hdf5': 'h5'}.get(fmt, fmt) }"
        if fmt == "parquet":
            write(uri, pa.table({"v": np.arange(rows) + 100 * k}), store=store, row_group_size=2)
        elif fmt == "tfrecord":
            write(uri, [b"%d" % (100 * k + i) for i in range(rows)], store=store)
        elif fmt == "hdf5":
            write(uri, {"v": np.arange(rows) + 100 * k}, store=store, chunks=True)
        else:
            write(uri, {"v": np.arange(rows) + 100 * k}, store=store)


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord", "hdf5", "npz"])
def test_every_format_starts_from_the_persisted_cache_without_requests(tmp_path, fmt):
    options = {"npz": {"rows": True}, "hdf5": {"datasets": "v"}}.get(fmt, {})
    data = tmp_path / "data"
    data.mkdir()
    write_objects(data, fmt)
    first = Dataset(f"file://{data}/", format=fmt, **options)
    expected = first.read_samples(range(len(first)))
    cache_module.configure()  # a new process
    store = Store("file")
    again = Dataset(f"file://{data}/", format=fmt, store=store, **options)
    assert ops(store) == {} and again.sizes.tolist() == first.sizes.tolist()
    got = again.read_samples(range(len(again)))
    assert ops(store).keys() <= {"get", "get_range"}  # data only: no stat, list or index read
    assert len(got) == len(expected) and all(repr(a) == repr(b) for a, b in zip(got, expected, strict=True))


def test_raw_objects_from_bare_uris_need_no_request(tmp_path):
    uris = []
    for k in range(3):
        (tmp_path / f"blob{k}").write_bytes(b"x" * (k + 1))
        uris.append(f"file://{tmp_path}/blob{k}")
    store = Store("file")
    ds = Dataset(uris, format="raw", store=store)
    assert len(ds) == 3 and ops(store) == {}
    assert ds.read_samples([2, 0]) == [b"xxx", b"x"] and ops(store) == {"get": 2}


def test_raw_local_objects_are_read_once_per_batch_in_order(tmp_path):
    root = tmp_path / "objects"
    root.mkdir()
    for k in range(4):
        (root / f"blob{k}").write_bytes(bytes([k]) * (k + 1))
    store = Store("file")
    ds = Dataset(f"file://{root}/", format="raw", store=store)
    store.stats.reset()
    assert ds.read_samples([3, 1, 3, 0]) == [b"\x03" * 4, b"\x01" * 2, b"\x03" * 4, b"\x00"]
    assert ops(store) == {"get": 3}, "a sample asked twice in one batch is read once"
    with pytest.raises(IndexError, match="outside"):
        ds.read_samples([4])
    decoded = Dataset(f"file://{root}/", format="raw", decode=len, store=store)  # through the readers
    assert decoded.read_samples([3, 0]) == [4, 1]
    (root / "blob2").unlink()
    with pytest.raises(ObjectNotFoundError, match="blob2"):
        ds.read_samples([1, 2])


def test_bare_uris_are_stat_once(npy_dir):
    store = Store("file")
    uris = [f"file://{npy_dir}/part-{k}.npy" for k in range(5)]
    first = Dataset(uris, store=store, rows=True)
    assert ops(store) == {"stat": 5, "get_range": 5} and first.format == "npy"
    store.stats.reset()
    Dataset(uris, store=store, rows=True)
    cache_module.configure()  # a new process
    again = Dataset(uris, store=store, rows=True)
    assert ops(store) == {} and again.sizes.tolist() == first.sizes.tolist()


def test_manifest_from_a_dataset_starts_without_any_request(npy_dir, tmp_path):
    ds = Dataset(f"file://{npy_dir}/", format="npy", rows=True)
    ds.manifest().write(f"file://{tmp_path}/m.parquet")
    store = Store("file")
    m = Manifest.read(f"file://{tmp_path}/m.parquet", store=store)
    assert m.samples is not None and m.samples.tolist() == ds.sizes.tolist()
    assert ops(store) == {"stat": 1, "get": 1}  # the manifest itself
    store.stats.reset()
    from_manifest = Dataset(m, store=store, format="npy", rows=True)
    assert ops(store) == {} and len(from_manifest) == 30 and from_manifest.catalog.pack is None
    assert from_manifest.read_samples([29])[0][0] == 4000.0 + 21  # the index is built on first read
    assert ops(store) == {"get_range": 2}


def test_errors(npy_dir, tmp_path):
    with pytest.raises(ObjectNotFoundError):
        Dataset(f"file://{tmp_path}/empty/")
    with pytest.raises(ConfigError, match="bad option"):
        Dataset(f"file://{npy_dir}/", format="npy", no_such_option=1)
    with pytest.raises(ConfigError, match="unknown format"):
        Dataset(f"file://{npy_dir}/", format="nope")


def test_spawned_workers_map_the_same_catalog(npy_dir):
    ds = Dataset(f"file://{npy_dir}/", format="npy", rows=True)
    data = pickle.dumps(ds)
    assert len(data) - len(pickle.dumps(ds.store)) < 1500  # the catalog travels as a file name
    back = pickle.loads(data)
    assert back.catalog.path == ds.catalog.path
    assert back.read_samples([5])[0].tolist() == ds.read_samples([5])[0].tolist()


# ---------------------------------------------------------------------- s3:// (moto)


@pytest.fixture
def s3(moto_server) -> tuple[str, dict]:
    root = moto_server.make_bucket(f"ds-{uuid.uuid4().hex[:8]}")
    return root, moto_server.storage_options()


def put_parquet(store: Store, uri: str, rows: int, group: int) -> None:
    table = pa.table({"x": np.arange(rows, dtype=np.int64), "y": np.linspace(0, 1, rows)})
    write(uri, table, store=store, row_group_size=group)


def run_fresh(code: str, env: dict[str, str]) -> dict:
    """Run ``code`` in a new Python process (same cache directory); it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env}, cwd=str(TESTS),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


FRESH = """
    import json, sys
    from s3dlio_loader import Dataset, Store
    store = Store("s3", json.loads(sys.argv[1]) if len(sys.argv) > 1 else {so})
    ds = Dataset("{prefix}", store=store)
    print(json.dumps({{"sizes": ds.sizes.tolist(), "ops": store.stats.snapshot()["by_op"]}}))
"""


def test_epoch_two_and_a_fresh_process_make_no_metadata_requests(s3, tmp_path):
    root, so = s3
    store = Store("s3", so)
    for k in range(4):
        put_parquet(store, f"{root}/train/p{k}.parquet", 40 + 10 * k, 10)
    store.stats.reset()
    first = Dataset(f"{root}/train/", store=store)
    assert first.sizes.tolist() == [4, 5, 6, 7]
    assert ops(store) == {"list": 1, "get_range": 4}  # one LIST, one footer read per object: no HEAD
    store.stats.reset()
    second = Dataset(f"{root}/train/", store=store)  # epoch 2 in this process
    assert ops(store) == {} and second.catalog is first.catalog
    second.read_samples([0, 21])  # reading needs only the row groups' bytes
    assert ops(store) == {"get_range": 2}

    oplog = tmp_path / "fresh.oplog.zst"
    code = FRESH.format(so=repr(so), prefix=f"{root}/train/")
    fresh = run_fresh(code, {"S3DLIO_OPLOG": str(oplog)})
    assert fresh == {"sizes": [4, 5, 6, 7], "ops": {}}  # within the listing TTL: no request at all
    assert read_oplog(oplog) == []
    expired = run_fresh(code, {"S3DLIO_OPLOG": str(oplog), "S3DLIO_LISTING_TTL": "0"})
    assert expired == {"sizes": [4, 5, 6, 7], "ops": {"list": 1}}  # the listing validates every index
    assert [r.op for r in read_oplog(oplog)] == ["list"]


def test_an_object_rewritten_between_runs_is_indexed_again(s3):
    root, so = s3
    store = Store("s3", so)
    for k in range(3):
        put_parquet(store, f"{root}/d/p{k}.parquet", 30, 10)
    assert Dataset(f"{root}/d/", store=store).sizes.tolist() == [3, 3, 3]
    put_parquet(store, f"{root}/d/p1.parquet", 50, 5)  # same name, new content, new etag
    code = FRESH.format(so=repr(so), prefix=f"{root}/d/")
    fresh = run_fresh(code, {"S3DLIO_LISTING_TTL": "0"})
    assert fresh == {"sizes": [3, 10, 3], "ops": {"list": 1, "get_range": 1}}  # only p1's footer
    # this process still trusts its listing (TTL) until refresh(); then it sees the new version
    assert Dataset(f"{root}/d/", store=store).sizes.tolist() == [3, 3, 3]
    cache_module.get_cache().refresh(f"{root}/d/")
    store.stats.reset()
    assert Dataset(f"{root}/d/", store=store).sizes.tolist() == [3, 10, 3]
    assert ops(store) == {"list": 1}  # the fresh process already indexed p1: read from the cache file


def test_manifest_dataset_makes_no_list_and_workers_no_metadata_request(s3, tmp_path):
    root, so = s3
    store = Store("s3", so)
    for k in range(4):
        write(f"{root}/npz/s{k}.npz", {"x": np.full((2, 2), k, np.float32), "y": np.array(k)}, store=store)
    objects = store.list(f"{root}/npz/")
    Manifest(objects).write(f"{root}/manifest.jsonl", store=store)
    store.stats.reset()
    oplog = tmp_path / "op.zst"
    logged = Store("s3", so, oplog=str(oplog))
    ds = Dataset(Manifest.read(f"{root}/manifest.jsonl", store=logged), store=logged)
    assert len(ds) == 4 and ds.format == "npz"
    assert logged._oplog is not None
    logged._oplog.flush()
    counts = Counter(r.op for r in read_oplog(oplog))
    assert counts == {"stat": 1, "get": 1, "get_range": 4}  # the manifest; then one index read per object
    worker_log = tmp_path / "workers.zst"
    in_workers = Store("s3", so, oplog=str(worker_log))
    loader = Loader(Dataset(Manifest.read(f"{root}/manifest.jsonl", store=in_workers), store=in_workers),
                    batch_size=2, num_workers=2)  # fmt: skip
    for epoch in range(2):
        loader.set_epoch(epoch)
        labels = sorted(int(v) for batch in loader for v in batch["y"])
        assert labels == [0, 1, 2, 3]
    loader.close()
    assert in_workers._oplog is not None
    in_workers._oplog.flush()
    rows = read_oplog(worker_log)
    worker_ops = Counter(r.op for r in rows if r.pid != os.getpid())
    assert worker_ops == {"get_range": 8}  # each object's members read once per epoch: no stat, list or index
