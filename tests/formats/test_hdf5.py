"""HDF5 reader and writer: samples equal h5py's rows, direct chunk reads, the chunk index, errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3dlio_loader.formats as formats
from s3dlio_loader.errors import ConfigError, FormatError, MissingDependencyError
from s3dlio_loader.formats import hdf5 as H
from s3dlio_loader.storage import Store

h5py = pytest.importorskip("h5py")


def _uri(tmp_path: Path, name: str = "d.h5") -> str:
    return f"file://{tmp_path}/{name}"


def _path(uri: str) -> str:
    return uri.removeprefix("file://")


def _assert_rows_match(reader: H.HDF5Reader, path: str, rows: list[int]) -> None:
    """Every sample of ``rows`` equals h5py's ``f[name][row]`` (value, dtype and shape)."""
    got = reader.read_batch(rows)
    assert len(got) == len(rows)
    with h5py.File(path, "r") as f:
        for sample, row in zip(got, rows, strict=True):
            for name in reader.names:
                expected = f[name][row]
                value = sample[name]
                if isinstance(expected, np.ndarray):
                    assert isinstance(value, np.ndarray)
                    assert value.dtype == expected.dtype and value.shape == expected.shape, name
                    assert np.array_equal(value, expected), (name, row)
                else:
                    assert type(value) is type(expected) and value == expected, (name, row)


def _data(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "S":
        return rng.integers(97, 123, (*shape, dt.itemsize), dtype=np.uint8).view(dt).reshape(shape)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind == "c":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dt)
    # small integers in every dtype: compressible, so gzip/lzf really transform the chunks
    return rng.integers(0, 50, shape).astype(dt)


LAYOUTS: dict[str, dict[str, Any]] = {
    "contiguous": {},
    "chunked": {"chunks": 16},
    "gzip": {"chunks": 16, "compression": "gzip"},
    "gzip-shuffle": {"chunks": 16, "compression": "gzip", "compression_opts": 9, "shuffle": True},
    "lzf": {"chunks": 16, "compression": "lzf"},
    "lzf-shuffle": {"chunks": 16, "compression": "lzf", "shuffle": True},
    "fletcher32": {"chunks": 16, "fletcher32": True},
    "shuffle-gzip-fletcher32": {"chunks": 16, "compression": "gzip", "shuffle": True, "fletcher32": True},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype,shape", [
    ("<f4", (100,)), (">f8", (100, 3)), ("<i2", (100, 4, 5)), ("u1", (100, 7)), ("?", (100,)),
    ("S5", (100, 2)), ("<c8", (100, 3)), ("<u8", (100,)),
])  # fmt: skip
def test_round_trip_equals_h5py(tmp_path: Path, layout: str, dtype: str, shape: tuple[int, ...]) -> None:
    uri = _uri(tmp_path)
    arr = _data(dtype, shape)
    H.write_hdf5(uri, {"x": arr}, store=Store.from_uri(uri), **LAYOUTS[layout])
    reader = H.HDF5Reader(uri)
    assert len(reader) == 100 and reader.names == ("x",)
    expected_layout = "contiguous" if layout == "contiguous" else "chunked"
    assert reader.direct_datasets() == {"x": expected_layout}
    # 100 rows in chunks of 16: the last chunk is a partial edge chunk (rows 96..99)
    _assert_rows_match(reader, _path(uri), [0, 99, 15, 16, 17, 50, 97, 3, 3, -1])
    _assert_rows_match(reader, _path(uri), list(range(100)))
    assert np.array_equal(np.stack([reader[i]["x"] for i in range(100)]), arr)


def test_several_datasets_in_groups_are_zipped_by_name(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    arrays = {
        "images": _data("u1", (70, 4, 4, 3)),
        "grp/labels": _data("<i8", (70,)),
        "grp/sub/emb": _data("<f4", (70, 8)),
        "meta/other_length": _data("<f4", (5,)),
    }
    H.write_hdf5(uri, arrays, store=Store.from_uri(uri), chunks=8, compression="gzip", shuffle=True)
    reader = H.HDF5Reader(uri)
    # default: every dataset whose axis-0 length equals the first one's (in name order)
    assert reader.names == ("grp/labels", "grp/sub/emb", "images")
    _assert_rows_match(reader, _path(uri), [0, 69, 8, 7, 33])
    sample = reader[5]
    assert set(sample) == {"grp/labels", "grp/sub/emb", "images"}
    assert int(sample["grp/labels"]) == arrays["grp/labels"][5]

    chosen = H.HDF5Reader(uri, datasets=["/grp/sub/emb", "images"])
    assert chosen.names == ("/grp/sub/emb", "images")
    assert np.array_equal(chosen[3]["/grp/sub/emb"], arrays["grp/sub/emb"][3])

    single = H.HDF5Reader(uri, datasets="grp/labels")
    assert [int(v) for v in single.read_batch([2, 1])] == list(arrays["grp/labels"][[2, 1]])


def test_formats_registry_write_and_open(tmp_path: Path) -> None:
    uri = _uri(tmp_path, "r.hdf5")
    arr = _data("<f4", (10, 2))
    formats.write(uri, arr)  # a bare array is written as dataset "data"
    reader = formats.open(uri, datasets="data")
    assert isinstance(reader, H.HDF5Reader)
    assert np.array_equal(np.stack(reader.read_batch(range(10))), arr)


@pytest.mark.parametrize("kind", ["chunked-2d", "chunked-3d-inner", "contiguous", "lzf"])
def test_chunk_index_equals_h5py_chunk_info(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "i.h5"
    arr = _data("<f4", (50, 9, 4))
    with h5py.File(path, "w") as f:
        if kind == "chunked-2d":
            f.create_dataset("x", data=arr[:, :, 0], chunks=(7, 9), compression="gzip")
        elif kind == "chunked-3d-inner":
            f.create_dataset("x", data=arr, chunks=(8, 4, 3), compression="gzip", shuffle=True)
        elif kind == "contiguous":
            f.create_dataset("x", data=arr)
        else:
            f.create_dataset("x", data=arr, chunks=(10, 9, 4), compression="lzf")
    reader = H.HDF5Reader(f"file://{path}")
    idx = reader.index
    assert isinstance(idx, H.HDF5Index)
    lo, hi = int(idx.chunk_start[0]), int(idx.chunk_start[1])
    with h5py.File(path, "r") as f:
        dset = f["x"]
        assert idx.dataset_shape(0) == dset.shape
        assert idx.dtypes == (dset.dtype.str,)
        if kind == "contiguous":
            assert idx.layouts == ("contiguous",)
            assert idx.chunk_addr[lo:hi].tolist() == [dset.id.get_offset()]
            assert idx.chunk_nbytes[lo:hi].tolist() == [dset.id.get_storage_size()]
            return
        assert idx.layouts == ("chunked",)
        assert idx.dataset_chunk_shape(0) == dset.chunks
        dcpl = dset.id.get_create_plist()
        assert [code for code, _, _ in H._decode_pipeline(idx.filters[0])] == \
            [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
        infos = [dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks())]
        grid = tuple(-(-n // c) for n, c in zip(dset.shape, dset.chunks, strict=True))
        expected = sorted(
            (int(np.ravel_multi_index(tuple(o // c for o, c in zip(i.chunk_offset, dset.chunks, strict=True)),
                                      grid)), i.byte_offset, i.size, i.filter_mask)
            for i in infos
        )
    assert hi - lo == len(infos)
    got = list(zip(idx.chunk_grid[lo:hi].tolist(), idx.chunk_addr[lo:hi].tolist(),
                   idx.chunk_nbytes[lo:hi].tolist(), idx.chunk_mask[lo:hi].tolist(), strict=True))
    assert got == expected
    for name in ("chunk_grid", "chunk_addr", "chunk_nbytes", "chunk_mask", "chunk_start", "shapes"):
        assert getattr(idx, name).dtype == np.int64


def test_index_round_trips_through_dict_and_pickle(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    H.write_hdf5(uri, {"a": _data("<f4", (40, 3)), "b": _data("<i4", (40,))}, store=Store.from_uri(uri),
                 chunks=8, compression="gzip")
    reader = H.HDF5Reader(uri)
    idx = reader.index
    assert H.HDF5Index.from_dict(idx.to_dict()) == idx
    assert pickle.loads(pickle.dumps(idx)) == idx
    # a reader built from a cached index makes no metadata request
    store = Store.from_uri(uri)
    again = H.HDF5Reader(uri, index=idx, store=store)
    _assert_rows_match(again, _path(uri), [1, 39])
    assert store.stats.snapshot()["by_op"] == {"get_range": 1}
    # a pickled reader (as sent to a worker process) reads without rebuilding its index
    clone = pickle.loads(pickle.dumps(reader))
    _assert_rows_match(clone, _path(uri), [0, 20])


def test_batch_of_64_rows_uses_few_direct_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _uri(tmp_path)
    arr = _data("<f4", (512, 256))
    H.write_hdf5(uri, {"x": arr, "y": arr[:, 0].copy()}, store=Store.from_uri(uri), chunks=64,
                 compression="gzip", shuffle=True)
    store = Store.from_uri(uri)
    reader = H.HDF5Reader(uri, store=store)
    reader.index  # noqa: B018 - build it before counting
    assert reader.direct_datasets() == {"x": "chunked", "y": "chunked"}

    def no_h5py_reads(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("read through the block-cached h5py file instead of direct chunk requests")

    monkeypatch.setattr(H.BlockCachedFile, "pread_into", no_h5py_reads)
    store.stats.reset()
    batch = reader.read_batch(range(128, 192))
    stats = store.stats.snapshot()
    assert len(batch) == 64
    assert stats["by_op"] == {"get_range": 1}  # two chunks (one per dataset), coalesced
    assert np.array_equal(np.stack([s["x"] for s in batch]), arr[128:192])

    # rows straddling two chunks: still one coalesced request, and the decoded chunks are reused
    store.stats.reset()
    batch = reader.read_batch(range(160, 224))
    assert store.stats.snapshot()["requests"] <= 1
    assert np.array_equal(np.stack([s["x"] for s in batch]), arr[160:224])
    store.stats.reset()
    reader.read_batch(range(224, 230))  # inside the newest chunk decoded above: no request
    assert store.stats.snapshot()["requests"] == 0
    reader.read_batch(range(170, 180))  # an older chunk: by default only the newest one is kept
    assert store.stats.snapshot()["requests"] == 1

    roomy = H.HDF5Reader(uri, store=store, index=reader.index, chunk_cache_bytes=64 << 20)
    roomy.read_batch(range(128, 256))
    store.stats.reset()
    roomy.read_batch([130, 250, 170, 200])
    assert store.stats.snapshot()["requests"] == 0


def test_contiguous_batch_is_one_request_per_run(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    arr = _data("<f8", (1000, 16))
    H.write_hdf5(uri, {"x": arr}, store=Store.from_uri(uri))
    store = Store.from_uri(uri)
    reader = H.HDF5Reader(uri, datasets="x", store=store)
    reader.index  # noqa: B018
    store.stats.reset()
    rows = list(range(300, 364))
    got = reader.read_batch(rows)
    assert store.stats.snapshot()["requests"] == 1
    assert np.array_equal(np.stack(got), arr[300:364])
    assert not got[0].flags.writeable  # a view into the fetched bytes, shared: read-only


def test_inner_chunks_missing_chunks_and_fill_value(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    full = _data("<i4", (30, 10, 6))
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=(30, 10, 6), dtype="<i4", chunks=(4, 3, 4), fillvalue=-7,
                             compression="gzip")
        d[0:8, 0:3] = full[0:8, 0:3]  # only some chunks are ever written
        d[20:30] = full[20:30]
        e = f.create_dataset("y", shape=(30,), dtype="<f4", fillvalue=2.5)  # contiguous, never written
        assert e.id.get_offset() is None
        # grown along axis 0 after writing: chunk (5, 8) wider than the 6 columns
        g = f.create_dataset("z", data=full[:25, 0, :], chunks=(5, 8), maxshape=(None, None))
        g.resize((30, 6))
    reader = H.HDF5Reader(f"file://{path}")
    assert reader.direct_datasets() == {"x": "chunked", "y": "contiguous", "z": "chunked"}
    _assert_rows_match(reader, str(path), list(range(30)))
    assert reader[1]["x"][5, 0] == -7 and float(reader[1]["y"]) == 2.5


def test_fallback_datasets_read_through_h5py(tmp_path: Path) -> None:
    path = tmp_path / "fb.h5"
    n = 40
    with h5py.File(path, "w") as f:
        comp = np.zeros(n, dtype=[("a", "<i4"), ("b", "<f8")])
        comp["a"] = np.arange(n)
        f.create_dataset("compound", data=comp, chunks=(8,), compression="gzip")
        f.create_dataset("vlen", data=[f"s{i}" * (i % 5) for i in range(n)], dtype=h5py.string_dtype())
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create_simple((n,))
        dsid = h5py.h5d.create(f.id, b"compact", h5py.h5t.NATIVE_INT32, space, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(n, dtype=np.int32) * 3)
        f.create_dataset("plain", data=np.arange(n, dtype="<f4"), chunks=(8,), compression="lzf")
    reader = H.HDF5Reader(f"file://{path}")
    assert reader.direct_datasets() == {"compact": "h5py", "compound": "h5py", "plain": "chunked",
                                        "vlen": "h5py"}
    _assert_rows_match(reader, str(path), [0, 39, 5, 6, 7, 20])
    reader.close()


def test_user_block_file(tmp_path: Path) -> None:
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=1024) as f:
        f.create_dataset("x", data=_data("<f4", (20, 3)), chunks=(4, 3), compression="gzip")
    with open(path, "r+b") as fh:
        fh.write(b"user block text")
    _assert_rows_match(H.HDF5Reader(f"file://{path}"), str(path), list(range(20)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 40),
    inner=st.lists(st.integers(1, 5), max_size=2),
    chunk_rows=st.integers(1, 12),
    inner_chunk=st.integers(1, 5),
    filters=st.sampled_from([{}, {"compression": "gzip"}, {"compression": "lzf", "shuffle": True},
                             {"shuffle": True, "fletcher32": True}, None]),
    rows=st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
)
def test_property_random_layouts_equal_h5py(tmp_path: Path, n: int, inner: list[int], chunk_rows: int,
                                            inner_chunk: int, filters: dict[str, Any] | None,
                                            rows: list[int]) -> None:
    path = tmp_path / "p.h5"
    shape = (n, *inner)
    arr = _data("<i2", shape, seed=n)
    with h5py.File(path, "w") as f:
        if filters is None:
            f.create_dataset("x", data=arr)
        else:
            chunks = (min(chunk_rows, n), *(min(inner_chunk, k) for k in inner))
            f.create_dataset("x", data=arr, chunks=chunks, **filters)
    reader = H.HDF5Reader(f"file://{path}", chunk_cache_bytes=0)
    _assert_rows_match(reader, str(path), [r % n for r in rows])


# ---------------------------------------------------------------------- backends


def test_read_and_write_on_every_backend(backend: Any) -> None:
    uri = backend.uri("data", "b.h5")
    store = Store.from_uri(uri, backend.storage_options)
    arrays = {"x": _data("<f4", (200, 32)), "grp/y": _data("<i8", (200,)), "c": _data("u1", (200, 5))}
    H.write_hdf5(uri, arrays, store=store, chunks=64, compression="gzip", shuffle=True)
    H.write_hdf5(uri + ".plain.h5", {"c": arrays["c"]}, store=store)  # contiguous
    counted = Store.from_uri(uri, backend.storage_options)
    reader = H.HDF5Reader(uri, store=counted, datasets=["x", "grp/y"])
    assert len(reader) == 200
    index_requests = counted.stats.snapshot()["requests"]
    assert index_requests <= 2  # a stat and one 1 MiB block holding all the metadata
    got = reader.read_batch(range(64, 128))
    assert counted.stats.snapshot()["requests"] - index_requests == 1  # both datasets' chunks, coalesced
    assert np.array_equal(np.stack([s["x"] for s in got]), arrays["x"][64:128])
    assert [int(s["grp/y"]) for s in got] == arrays["grp/y"][64:128].tolist()
    plain = formats.open(uri + ".plain.h5", storage_options=backend.storage_options, datasets="c")
    assert np.array_equal(np.stack(plain.read_batch([199, 0, 5])), arrays["c"][[199, 0, 5]])


# ---------------------------------------------------------------------- bad input


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    uri = _uri(tmp_path, "bad.h5")
    Path(_path(uri)).write_bytes(b"PAR1" + b"\0" * 5000)
    with pytest.raises(FormatError) as err:
        len(H.HDF5Reader(uri))
    assert err.value.format == "hdf5" and err.value.uri == uri and err.value.offset == 0
    assert uri in str(err.value) and "signature" in str(err.value)


def test_empty_object(tmp_path: Path) -> None:
    uri = _uri(tmp_path, "empty.h5")
    Path(_path(uri)).write_bytes(b"")
    with pytest.raises(FormatError, match="not an HDF5 file"):
        H.HDF5Reader(uri).build_index()


def test_truncated_file(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    H.write_hdf5(uri, {"x": _data("<f4", (1000, 10))}, store=Store.from_uri(uri))
    data = Path(_path(uri)).read_bytes()
    Path(_path(uri)).write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated") as err:
        H.HDF5Reader(uri).build_index()
    assert err.value.format == "hdf5" and err.value.offset == len(data) // 2


def _corrupt_chunk(uri: str, chunk: int, **create: Any) -> int:
    path = _path(uri)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=_data("<f4", (64, 50)), chunks=(16, 50), **create)
    with h5py.File(path, "r") as f:
        info = f["x"].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 2)
        fh.write(b"\xff" * 16)
    return int(info.byte_offset)


@pytest.mark.parametrize("create,message", [
    ({"compression": "gzip"}, "deflate"),
    ({"compression": "gzip", "shuffle": True}, "deflate"),
    ({"compression": "lzf"}, "does not decode"),
    ({"fletcher32": True}, "fletcher32"),
])  # fmt: skip
def test_corrupted_chunk(tmp_path: Path, create: dict[str, Any], message: str) -> None:
    uri = _uri(tmp_path)
    offset = _corrupt_chunk(uri, 1, **create)
    reader = H.HDF5Reader(uri, datasets="x")
    assert reader.direct_datasets() == {"x": "chunked"}
    assert reader[0].shape == (50,)  # chunk 0 is intact
    with pytest.raises(FormatError, match=message) as err:
        reader[17]
    assert err.value.format == "hdf5" and err.value.offset == offset and uri in str(err.value)
    with pytest.raises(FormatError):
        reader.read_batch([0, 20])

    skipping = H.HDF5Reader(uri, datasets="x", on_error="skip")
    got = skipping.read_batch([0, 16, 31, 32, 63])  # rows 16 and 31 are in the corrupted chunk
    assert len(got) == 3 and skipping.skipped == 2


def test_chunk_past_end_of_object_is_truncation(tmp_path: Path) -> None:
    # HDF5 rejects a file shorter than its recorded end at open; the index step also checks every
    # chunk against the object's size (an object rewritten under a stale size, a lying header).
    uri = _uri(tmp_path)
    path = _path(uri)
    H.write_hdf5(uri, {"x": _data("<f4", (32, 8))}, store=Store.from_uri(uri), chunks=16, compression="gzip")
    size = Path(path).stat().st_size
    with h5py.File(path, "r") as f, pytest.raises(FormatError, match="truncated") as err:
        H._describe(h5py, f["x"], "x", uri, size - 1)
    assert err.value.offset is not None


# ---------------------------------------------------------------------- configuration errors


def test_dataset_selection_errors(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    H.write_hdf5(uri, {"a": np.zeros((10, 2)), "b": np.zeros(7), "g/c": np.zeros(10), "s": np.float64(3.0)},
                 store=Store.from_uri(uri))
    with pytest.raises(ConfigError, match=r"'nope' does not exist.*\['a', 'b', 'g/c', 's'\]"):
        len(H.HDF5Reader(uri, datasets=["a", "nope"]))
    with pytest.raises(ConfigError, match="group"):
        len(H.HDF5Reader(uri, datasets="g"))
    with pytest.raises(ConfigError, match="scalar"):
        len(H.HDF5Reader(uri, datasets="s"))
    with pytest.raises(ConfigError, match=r"'a': 10.*'b': 7"):
        len(H.HDF5Reader(uri, datasets=["a", "b"]))
    with pytest.raises(ConfigError, match="twice"):
        H.HDF5Reader(uri, datasets=["a", "/a"])
    with pytest.raises(ConfigError, match="datasets"):
        H.HDF5Reader(uri, datasets=[])
    with pytest.raises(ConfigError, match="block_size"):
        H.HDF5Reader(uri, block_size=0)
    with pytest.raises(ConfigError, match="does not cover"):
        len(H.HDF5Reader(uri, datasets="b", index=H.HDF5Reader(uri, datasets="a").index))
    assert H.HDF5Reader(uri).names == ("a", "g/c")  # "b" (7 rows) and the scalar are left out


def test_writer_argument_errors(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    store = Store.from_uri(uri)
    with pytest.raises(ConfigError, match="compression"):
        H.write_hdf5(uri, {"x": np.zeros(3)}, store=store, compression="zstd")
    with pytest.raises(ConfigError, match="compression_opts"):
        H.write_hdf5(uri, {"x": np.zeros(3)}, store=store, compression_opts=4)
    with pytest.raises(ConfigError, match="non-empty"):
        H.write_hdf5(uri, {}, store=store)
    with pytest.raises(ConfigError, match="'x'"):
        H.write_hdf5(uri, {"x": np.array(["unicode"])}, store=store)
    assert not Path(_path(uri)).exists()


def test_missing_h5py_raises_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    uri = _uri(tmp_path)
    with pytest.raises(MissingDependencyError, match=r"pip install 's3dlio-loader\[hdf5\]'"):
        H.write_hdf5(uri, {"x": np.zeros(3)}, store=Store.from_uri(uri))
    with pytest.raises(MissingDependencyError):
        H.HDF5Reader(uri).build_index()


def test_importing_the_module_does_not_import_h5py() -> None:
    code = "import sys, s3dlio_loader.formats.hdf5; assert 'h5py' not in sys.modules, 'h5py imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- helpers


def test_fletcher32_and_unshuffle_helpers() -> None:
    data = np.arange(10, dtype="<u4")
    shuffled = data.view(np.uint8).reshape(10, 4).T.copy().tobytes()
    assert np.array_equal(H.unshuffle(shuffled, 4).view("<u4"), data)
    assert H.unshuffle(b"\x01\x02\x03", 4).tobytes() == b"\x01\x02\x03"  # fewer bytes than one element
    assert H.fletcher32(b"") == 0
    # HDF5 folds sums with (x & 0xffff) + (x >> 16): a positive multiple of 65535 stays 65535
    assert H.fletcher32(b"\xff\xff") == 0xFFFFFFFF
