"""IndexPack: the real format indexes of many objects packed into flat arrays and read back equal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from s3dlio_loader.cache.packing import IndexPack, UnpackableError
from s3dlio_loader.cache.persist import open_arrays, write_arrays
from s3dlio_loader.cache.table import ObjectTable
from s3dlio_loader.formats import open as open_reader
from s3dlio_loader.formats import write
from s3dlio_loader.storage import Store


def build_indexes(tmp_path, fmt: str, count: int = 3, **options):
    """(indexes, table) of ``count`` small objects of ``fmt`` with varying contents."""
    store = Store("file")
    ext = {"npy": "npy", "npz": "npz", "parquet": "parquet", "tfrecord": "tfrecord", "hdf5": "h5"}[fmt]
    uris = []
    for k in range(count):
        uri = f"file://{tmp_path}/obj-{k}.{ext}"
        rows = 4 + 3 * k
        if fmt == "npy":
            write(uri, np.arange(rows * 2, dtype=np.float32).reshape(rows, 2), store=store)
        elif fmt == "npz":
            write(uri, {"x": np.zeros((rows, 3), np.int16), "label": np.arange(rows)}, store=store)
        elif fmt == "parquet":
            write(uri, pa.table({"a": np.arange(rows), "s": [str(i) for i in range(rows)]}), store=store,
                  row_group_size=3)
        elif fmt == "tfrecord":
            write(uri, [b"r%d" % i * (i + 1) for i in range(rows)], store=store)
        else:
            write(uri, {"a": np.arange(rows * 2.0).reshape(rows, 2), "b": np.arange(rows)}, store=store, chunks=True)
        uris.append(uri)
    infos = [store.stat(u) for u in uris]
    indexes = [open_reader(u, store=store, **options).build_index() for u in uris]
    return indexes, ObjectTable.from_infos(infos)


@pytest.mark.parametrize("fmt", ["npy", "npz", "parquet", "tfrecord", "hdf5"])
def test_real_indexes_round_trip_through_a_cache_file(tmp_path, fmt):
    if fmt == "hdf5":
        pytest.importorskip("h5py")
    indexes, table = build_indexes(tmp_path, fmt)
    pack = IndexPack.build(indexes, list(table))
    assert pack.compatible() and len(pack) == 3
    for i, idx in enumerate(indexes):
        assert pack.get(i, table) == idx
    assert pack.columns["uri"].kind == "ref"  # equal to the table: not stored twice
    meta, arrays = pack.to_arrays()
    path = str(tmp_path / "pack.s3dc")
    write_arrays(path, {**arrays, **table.arrays()}, {"pack": meta, "prefix": table.prefix})
    m = open_arrays(path)
    assert m is not None
    back = IndexPack.from_arrays(m.meta["pack"], m.arrays)
    mapped_table = ObjectTable.from_arrays(m.arrays, m.meta["prefix"], None)
    for i, idx in enumerate(indexes):
        got = back.get(i, mapped_table)
        assert got == idx and type(got) is type(idx)
    arrays_in = [getattr(back.get(0, mapped_table), f.name) for f in dataclasses.fields(indexes[0])]
    assert all(not a.flags.writeable for a in arrays_in if isinstance(a, np.ndarray) and a.size)  # views of the map


def test_merge_reorders_and_combines_parts(tmp_path):
    indexes, table = build_indexes(tmp_path, "npz", count=4)
    infos = list(table)
    first = IndexPack.build([indexes[3], indexes[1]], [infos[3], infos[1]])
    second = IndexPack.build([indexes[0], None, indexes[2]], [infos[0], infos[1], infos[2]])
    merged = IndexPack.merge(5, [(np.array([3, 1]), first), (np.array([0, 4, 2]), second)],
                             ObjectTable.from_infos([*infos, infos[1]]))
    assert [merged.present[i] for i in range(5)] == [True, True, True, True, False]
    for i in range(4):
        assert merged.get(i, table) == indexes[i]
    assert merged.get(4, table) is None
    taken = merged.take(np.array([2, 0]))  # its rows follow a table of those two objects
    two = ObjectTable.from_infos([infos[2], infos[0]])
    assert taken.get(0, two) == indexes[2] and taken.get(1, two) == indexes[0] and len(taken) == 2


def test_ref_columns_become_stored_when_parts_disagree(tmp_path):
    indexes, table = build_indexes(tmp_path, "npy", count=2)
    infos = list(table)
    a = IndexPack.build([indexes[0]], [infos[0]])
    renamed = dataclasses.replace(indexes[1], etag="not-the-listed-etag")
    b = IndexPack.build([renamed], [infos[1]])
    assert a.columns["etag"].kind == "ref" and b.columns["etag"].kind == "json"
    merged = IndexPack.merge(2, [(np.array([0]), a), (np.array([1]), b)], table)
    assert merged.get(0, table) == indexes[0] and merged.get(1, table).etag == "not-the-listed-etag"


def test_unpackable_values_are_refused(tmp_path):
    indexes, table = build_indexes(tmp_path, "npy", count=2)
    weird = dataclasses.replace(indexes[0], shape=np.array([object()], dtype=object))
    with pytest.raises(UnpackableError):
        IndexPack.build([weird], [table[0]])
    mixed_rank = dataclasses.replace(indexes[1], shape=np.zeros((1, 1), np.int64))
    with pytest.raises(UnpackableError, match="ranks"):
        IndexPack.build([indexes[0], mixed_rank], list(table))
    with pytest.raises(UnpackableError):
        IndexPack.build([None, None], list(table))
