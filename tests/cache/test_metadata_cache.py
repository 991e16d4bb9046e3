"""MetadataCache: listings with a TTL, stat results, catalogs; persisted, shared, refreshable."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle

import numpy as np
import pytest

from s3dlio_loader import ConfigError, ObjectInfo, Store
from s3dlio_loader import cache as cache_module
from s3dlio_loader.cache import CacheOptions, MetadataCache
from s3dlio_loader.cache.catalog import make_catalog
from s3dlio_loader.cache.table import ObjectTable
from s3dlio_loader.engine.dataset import Dataset


@pytest.fixture
def npy_files(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for k in range(4):
        np.save(d / f"part-{k}.npy", np.full((5 + k, 3), k, dtype=np.float32))
    return d


def ops(store: Store) -> dict[str, int]:
    return store.stats.snapshot()["by_op"]


def test_options_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("S3DLIO_CACHE_PERSIST", "0")
    monkeypatch.setenv("S3DLIO_LISTING_TTL", "12.5")
    opts = CacheOptions.from_env()
    assert opts.cache_persist is False and opts.listing_ttl == 12.5
    assert opts.directory == str(tmp_path / "metadata-cache")  # S3DLIO_CACHE_DIR (set by the fixture)
    monkeypatch.delenv("S3DLIO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert CacheOptions.from_env().directory == str(tmp_path / "xdg" / "s3dlio-loader")
    assert MetadataCache(opts).directory is None
    with pytest.raises(ConfigError, match="listing_ttl"):
        CacheOptions(listing_ttl=-1)
    with pytest.raises(ConfigError, match="max_indexes"):
        CacheOptions(max_indexes=0)


def test_listing_is_served_from_memory_then_from_disk_within_the_ttl(npy_files, metadata_cache):
    store = Store("file")
    prefix = f"file://{npy_files}/"
    first = metadata_cache.list_table(store, prefix)
    assert metadata_cache.list_table(store, prefix) is first
    assert ops(store) == {"list": 1} and len(first) == 4
    fresh = cache_module.configure()  # as a new process would
    again = fresh.list_table(store, prefix)
    assert ops(store) == {"list": 1} and again.identical(first) and again.token == first.token
    assert [o.uri for o in fresh.list(store, prefix)] == first.uris()
    short = cache_module.configure(listing_ttl=0)  # a TTL of 0: list every time, persist nothing
    short.list_table(store, prefix)
    short.list_table(store, prefix)
    assert ops(store) == {"list": 3}


def test_refresh_forgets_listings_in_memory_and_on_disk(npy_files, metadata_cache):
    store = Store("file")
    prefix = f"file://{npy_files}/"
    metadata_cache.list_table(store, prefix)
    np.save(npy_files / "part-9.npy", np.zeros((1, 3), np.float32))
    assert len(metadata_cache.list_table(store, prefix)) == 4  # trusted within the TTL
    metadata_cache.refresh(f"file://{npy_files}/")
    assert len(metadata_cache.list_table(store, prefix)) == 5
    metadata_cache.refresh("file:///somewhere/else/")
    assert len(cache_module.configure().list_table(store, prefix)) == 5
    assert ops(store) == {"list": 2}


def test_stat_results_of_an_object_list_are_cached(npy_files, metadata_cache):
    store = Store("file")
    table = ObjectTable.from_columns([f"file://{npy_files}/part-{k}.npy" for k in range(4)])
    filled = metadata_cache.stat_table(store, table)
    assert filled.sizes.min() > 0 and filled.same_uris(table)
    assert metadata_cache.stat_table(store, table) is filled
    assert cache_module.configure().stat_table(store, table).identical(filled)
    assert ops(store) == {"stat": 4}


def test_without_persistence_nothing_is_written(npy_files, tmp_path, monkeypatch):
    monkeypatch.setenv("S3DLIO_CACHE_PERSIST", "0")
    cache = cache_module.configure()
    ds = Dataset(f"file://{npy_files}/", format="npy", rows=True)
    assert len(ds) == 5 + 6 + 7 + 8 and ds.catalog.path is None and cache.directory is None
    assert not (tmp_path / "metadata-cache").exists()
    assert Dataset(f"file://{npy_files}/", format="npy", rows=True).catalog is ds.catalog


def test_an_unusable_cache_directory_falls_back_to_memory(npy_files, tmp_path, caplog):
    (tmp_path / "a-file").write_text("not a directory")
    cache = cache_module.configure(cache_dir=str(tmp_path / "a-file" / "cache"))
    with caplog.at_level(logging.WARNING, logger="s3dlio_loader.cache"):
        ds = Dataset(f"file://{npy_files}/", format="npy", rows=True)
        ds2 = Dataset(f"file://{npy_files}/", format="npy", rows=True)
    assert len(ds) == 26 and ds2.catalog is ds.catalog and cache.misses >= 2
    assert any("in-memory cache only" in r.message for r in caplog.records)


def test_catalog_pickles_as_its_file_name(npy_files):
    ds = Dataset(f"file://{npy_files}/", format="npy", rows=True)
    cat = ds.catalog
    assert cat.path is not None and cat.path.startswith(str(cache_module.get_cache().directory))
    data = pickle.dumps(cat)
    assert len(data) < 1000  # not the arrays
    back = pickle.loads(data)
    assert back.path == cat.path and back.token == cat.token and np.array_equal(back.starts, cat.starts)
    assert not back.counts.flags.writeable and back.index(2) == cat.index(2)
    shipped = pickle.loads(pickle.dumps(ds))
    assert shipped.catalog.path == cat.path and shipped.read_samples([0])[0].tolist() == [0.0] * 3


def test_processes_starting_together_list_and_index_once(npy_files):
    """Three processes build the same dataset at once: one lists and indexes, the others read its result."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()

    def child() -> None:
        store = Store("file")
        barrier.wait()
        ds = Dataset(f"file://{npy_files}/", format="npy", rows=True, store=store)
        results.put((len(ds), ops(store)))

    procs = [ctx.Process(target=child) for _ in range(3)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(n == 26 for n, _ in got)
    total: dict[str, int] = {}
    for _, by_op in got:
        for op, count in by_op.items():
            total[op] = total.get(op, 0) + count
    assert total == {"list": 1, "get_range": 4}  # one LIST, one header read per object, over all three


def test_indexes_that_cannot_be_packed_stay_in_memory(npy_files):
    store = Store("file")
    from s3dlio_loader.formats.npy import read_npy_index

    table = ObjectTable.from_infos(store.list(f"file://{npy_files}/"))
    real = [read_npy_index(table.uri(k), store=store) for k in range(len(table))]
    odd = [dataclasses.replace(x, shape=np.array([tuple(x.shape)], dtype=object)) for x in real]

    def build(rows):
        return [odd[int(r)] for r in rows], np.ones(len(rows), np.int64)

    cat = make_catalog(table, build, None)
    assert cat.pack is None and cat.index(1) is odd[1] and cat.counts.tolist() == [1, 1, 1, 1]


def test_single_indexes_are_bounded_lru(metadata_cache):
    cache = cache_module.configure(max_indexes=2)
    built = []

    def build(name):
        def make():
            built.append(name)
            return name

        return make

    infos = [ObjectInfo(f"s3://b/{k}", 1, "e") for k in range(3)]
    for info in infos:
        cache.index(info, "k", build(info.uri))
    cache.index(infos[2], "k", build("again"))
    cache.index(infos[0], "k", build("rebuilt"))
    assert built == ["s3://b/0", "s3://b/1", "s3://b/2", "rebuilt"]
    assert cache.index(infos[2]._replace(etag="new"), "k", build("changed")) == "changed"


def test_fork_child_gets_fresh_locks():
    cache = cache_module.get_cache()
    cache._lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            ok = cache_module.get_cache()._lock.acquire(timeout=5)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        cache._lock.release()
