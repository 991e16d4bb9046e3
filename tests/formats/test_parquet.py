"""Parquet reader/writer: index from one tail request, coalesced column-chunk fetches, decode modes."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3dlio_loader import formats
from s3dlio_loader.errors import ConfigError, FormatError
from s3dlio_loader.formats.parquet import (
    ParquetIndex,
    ParquetReader,
    RawRowGroup,
    _needs_dictionary_padding,
    _SparseFile,
    write_parquet,
)
from s3dlio_loader.storage import ObjectInfo, Store

N_ROWS = 1000


def make_table(n: int = N_ROWS, seed: int = 0) -> pa.Table:
    """Numeric, string (dictionary-encoded), list and struct columns."""
    rng = np.random.default_rng(seed)
    return pa.table({
        "i": np.arange(n, dtype=np.int64),
        "f": rng.random(n),
        "s": pa.array([f"cat{k % 7}" for k in range(n)]),
        "l": pa.array([list(range(k % 4)) for k in range(n)], type=pa.list_(pa.int32())),
        "st": pa.array([{"x": k, "y": f"v{k}"} for k in range(n)]),
        "tag": pa.array([["a", "b"][k % 2] for k in range(n)]).dictionary_encode(),
    })


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.from_uri(f"file://{tmp_path}")


def write_local(path: Path, table: pa.Table, **kw: Any) -> str:
    pq.write_table(table, str(path), **kw)
    return f"file://{path}"


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", ["none", "snappy", "zstd", "gzip"])
def test_round_trip_row_groups(tmp_path: Path, store: Store, compression: str) -> None:
    table = make_table()
    uri = f"file://{tmp_path}/t.parquet"
    write_parquet(uri, table, store=store, row_group_size=128, compression=compression)
    reader = ParquetReader(uri, store=store)
    assert len(reader) == 8
    parts = [reader[i] for i in range(len(reader))]
    assert pa.concat_tables(parts).equals(pq.read_table(str(tmp_path / "t.parquet")))
    assert pa.concat_tables(parts).cast(table.schema).equals(table)
    assert reader.read_batch([7, 0, 3]) == [parts[7], parts[0], parts[3]]


def test_decode_modes(tmp_path: Path, store: Store) -> None:
    table = make_table()
    uri = write_local(tmp_path / "t.parquet", table, row_group_size=300)
    arrow = ParquetReader(uri, store=store)[1]
    numpy = ParquetReader(uri, store=store, decode="numpy")[1]
    raw = ParquetReader(uri, store=store, decode="raw")[1]
    assert arrow.equals(table.slice(300, 300))
    assert list(numpy) == table.column_names
    np.testing.assert_array_equal(numpy["i"], np.arange(300, 600))
    assert numpy["f"].dtype == np.float64
    assert list(numpy["l"][3]) == list(range(303 % 4))
    assert numpy["st"][0] == {"x": 300, "y": "v300"}
    assert isinstance(raw, RawRowGroup)
    assert raw.num_rows == 300 and raw.row_group == 1
    assert all(isinstance(c, memoryview) for c in raw.chunks)
    assert raw.decode().equals(arrow)
    again = pickle.loads(pickle.dumps(raw))
    assert again.decode().equals(arrow)


def test_numpy_row_groups_are_writable_views_that_outlive_the_reader(tmp_path: Path, store: Store) -> None:
    import gc

    table = make_table().append_column("n", pa.array([None if k % 5 == 0 else k for k in range(N_ROWS)]))
    uri = write_local(tmp_path / "t.parquet", table, row_group_size=300, compression="snappy")
    reader = ParquetReader(uri, store=store, decode="numpy")
    first, again, other = reader.read_batch([1, 1, 2])
    del reader
    gc.collect()
    for name in ("i", "f"):  # numeric, no nulls: the decoded buffer, writable (no copy for torch)
        assert first[name].flags.writeable and again[name].flags.writeable
        assert not np.shares_memory(first[name], again[name]), "a repeated row group gets its own arrays"
    np.testing.assert_array_equal(first["i"], np.arange(300, 600))
    np.testing.assert_array_equal(first["f"], table.column("f").to_numpy()[300:600])
    first["i"][:] = -1  # the caller owns the arrays: writing into one changes no other sample
    np.testing.assert_array_equal(again["i"], np.arange(300, 600))
    np.testing.assert_array_equal(other["i"], np.arange(600, 900))
    assert np.isnan(first["n"][0]) and first["n"][1] == 301  # nulls: pyarrow's conversion, as before
    assert list(first["s"][:2]) == ["cat6", "cat0"]
    rows = ParquetReader(uri, store=store, decode="numpy", items="row")
    assert rows[301]["i"] == 301 and rows.row_group(1)["i"].flags.writeable


def test_pyarrow_threads_only_outside_forked_workers(tmp_path: Path, store: Store) -> None:
    import multiprocessing

    uri = write_local(tmp_path / "t.parquet", make_table(), row_group_size=300)
    reader = ParquetReader(uri, store=store, decode="numpy")
    assert reader.decodes_with_threads(), "the main process decodes with pyarrow's threads"
    with multiprocessing.get_context("fork").Pool(1) as pool:
        in_child = pool.apply(_threads_and_first_id, (reader,))
    assert in_child == (False, 0), "a forked worker decodes on its own thread"
    assert not ParquetReader(uri, store=store, use_threads=False).decodes_with_threads()


def _threads_and_first_id(reader: ParquetReader) -> tuple[bool, int]:
    return reader.decodes_with_threads(), int(reader[0]["i"][0])


def test_mmap_decodes_the_same_from_a_private_map(tmp_path: Path, store: Store, moto_server: Any) -> None:
    import os

    table = make_table()
    uri = write_local(tmp_path / "t.parquet", table, row_group_size=300, compression="snappy")
    before = (tmp_path / "t.parquet").read_bytes()
    mapped = ParquetReader(uri, store=store, decode="numpy", mmap=True)
    assert mapped.index.num_row_groups == 4  # the index: a stat and the footer, as without mmap
    store.stats.reset()
    batch = mapped.read_batch([0, 2, 3])
    assert store.stats.requests == 0, "row groups come from the map, not from requests"
    read = ParquetReader(uri, store=store, decode="numpy").read_batch([0, 2, 3])
    for got, want in zip(batch, read, strict=True):
        np.testing.assert_array_equal(got["i"], want["i"])
        np.testing.assert_array_equal(got["f"], want["f"])
        assert list(got["s"]) == list(want["s"])
    batch[0]["i"][:] = -1  # writable, and private: the file does not change
    assert (tmp_path / "t.parquet").read_bytes() == before
    arrow = ParquetReader(uri, store=store, mmap=True, items="row", columns=["i"])
    assert arrow[301]["i"][0].as_py() == 301
    again = pickle.loads(pickle.dumps(mapped))  # a worker maps the file itself
    np.testing.assert_array_equal(again[1]["i"], np.arange(300, 600))

    with pytest.raises(ConfigError, match="mmap=True needs a file://"):
        ParquetReader("s3://bucket/t.parquet", storage_options=moto_server.storage_options(), mmap=True)
    shrunk = ParquetReader(uri, store=store, decode="numpy", mmap=True)
    assert shrunk.index.size == len(before)  # indexed at the full size
    os.truncate(tmp_path / "t.parquet", len(before) // 2)
    with pytest.raises(FormatError, match="rewritten since"):
        shrunk[0]


def test_rows_are_items(tmp_path: Path, store: Store) -> None:
    table = make_table()
    uri = write_local(tmp_path / "t.parquet", table, row_group_size=100)
    reader = ParquetReader(uri, store=store, items="row")
    assert len(reader) == N_ROWS
    row = reader[250]
    assert isinstance(row, pa.Table) and row.num_rows == 1
    assert row.to_pylist() == table.slice(250, 1).to_pylist()
    assert reader[-1].column("i")[0].as_py() == N_ROWS - 1

    before = store.stats.snapshot()["requests"]
    rows = [reader[k] for k in range(200, 300)]  # one row group: fetched once, then cached
    assert store.stats.snapshot()["requests"] - before == 1
    assert [r.column("i")[0].as_py() for r in rows] == list(range(200, 300))

    nrows = ParquetReader(uri, store=store, items="row", decode="numpy", columns=["i", "st"])
    assert nrows[42] == {"i": 42, "st": {"x": 42, "y": "v42"}}
    batch = nrows.read_batch([5, 950, 6, 951, 5])
    assert [r["i"] for r in batch] == [5, 950, 6, 951, 5]


def test_read_batch_rows_fetches_each_row_group_once(tmp_path: Path, store: Store) -> None:
    uri = write_local(tmp_path / "t.parquet", make_table(), row_group_size=100)
    reader = ParquetReader(uri, store=store, items="row", decode="numpy")
    reader.index  # noqa: B018
    store.stats.reset()
    out = reader.read_batch(list(range(0, N_ROWS, 3)))
    assert [int(r["i"]) for r in out] == list(range(0, N_ROWS, 3))
    assert store.stats.snapshot()["requests"] == 1  # all ten row groups in one coalesced request


def test_many_row_groups_and_formats_api(tmp_path: Path) -> None:
    table = pa.table({"x": np.arange(10_000, dtype=np.int32)})
    uri = f"file://{tmp_path}/many.parquet"
    formats.write(uri, table, row_group_size=10)
    reader = formats.open(uri, decode="numpy")
    assert isinstance(reader, ParquetReader) and len(reader) == 1000
    got = np.concatenate([b["x"] for b in reader.read_batch(range(1000))])
    np.testing.assert_array_equal(got, np.arange(10_000))


@pytest.mark.parametrize("data", [
    {"a": [1, 2, 3], "b": ["x", "y", "z"]},
    {"a": np.array([1, 2, 3]), "b": pa.array(["x", "y", "z"])},
    [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": "z"}],
])
def test_writer_inputs(tmp_path: Path, store: Store, data: Any) -> None:
    uri = f"file://{tmp_path}/w.parquet"
    write_parquet(uri, data, store=store, compression=None)
    assert pq.read_table(str(tmp_path / "w.parquet")).to_pydict() == {"a": [1, 2, 3], "b": ["x", "y", "z"]}


def test_writer_rejects_bad_input_and_leaves_no_object(tmp_path: Path, store: Store) -> None:
    with pytest.raises(ConfigError):
        write_parquet(f"file://{tmp_path}/w.parquet", 42, store=store)
    with pytest.raises(ConfigError):
        write_parquet(f"file://{tmp_path}/w.parquet", {"a": [1]}, store=store, compression="bogus")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- index


def test_index_matches_pyarrow_metadata(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "t.parquet"
    uri = write_local(path, make_table(), row_group_size=128, compression="snappy")
    idx = ParquetReader(uri, store=store).index
    md = pq.ParquetFile(str(path)).metadata
    assert isinstance(idx, ParquetIndex)
    assert idx.size == path.stat().st_size
    assert idx.num_rows.dtype == np.int64 and idx.chunk_start.dtype == np.int64
    assert idx.num_rows.tolist() == [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert idx.columns == ("i", "f", "s", "l.list.element", "st.x", "st.y", "tag")
    assert idx.fields == ("i", "f", "s", "l", "st", "tag")
    assert idx.column_field.tolist() == [0, 1, 2, 3, 4, 4, 5]
    for i in range(md.num_row_groups):
        for j in range(md.num_columns):
            col = md.row_group(i).column(j)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            assert idx.chunk_start[i, j] == start
            assert idx.chunk_length[i, j] == col.total_compressed_size
    assert idx.metadata().equals(md)
    assert ParquetIndex.from_dict(idx.to_dict()) == idx
    assert pickle.loads(pickle.dumps(idx)) == idx


def test_index_takes_one_request(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "t.parquet"
    uri = write_local(path, make_table(), row_group_size=100)
    info = store.stat(uri)
    store.stats.reset()
    ParquetReader(uri, store=store, info=info).index  # noqa: B018 - size known from a listing
    assert store.stats.snapshot()["by_op"] == {"get_range": 1}
    store.stats.reset()
    ParquetReader(uri, store=store).index  # noqa: B018 - size unknown: a stat, then the tail
    assert store.stats.snapshot()["by_op"] == {"stat": 1, "get_range": 1}


def test_footer_larger_than_cap_takes_a_second_request(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "t.parquet"
    uri = write_local(path, make_table(), row_group_size=50)
    info = store.stat(uri)
    store.stats.reset()
    reader = ParquetReader(uri, store=store, info=info, footer_cap=64)
    assert reader.index == ParquetReader(uri, store=store, info=info).index
    assert store.stats.snapshot()["by_op"] == {"get_range": 3}  # 2 for the small cap, 1 for the default
    assert reader[3].equals(pq.read_table(str(path)).slice(150, 50))


def test_index_from_cache_needs_no_request(tmp_path: Path, store: Store) -> None:
    uri = write_local(tmp_path / "t.parquet", make_table(), row_group_size=100)
    idx = ParquetReader(uri, store=store).index
    store.stats.reset()
    reader = ParquetReader(uri, store=store, index=ParquetIndex.from_dict(idx.to_dict()))
    assert len(reader) == 10
    assert store.stats.snapshot()["requests"] == 0
    reader[0]
    assert store.stats.snapshot()["requests"] == 1


# ---------------------------------------------------------------------- projection and coalescing


def test_projection_fetches_only_selected_chunks(tmp_path: Path) -> None:
    # Small coalesce gap: the skipped chunks here are smaller than the default 256 KiB gap.
    store = Store.from_uri(f"file://{tmp_path}", coalesce_gap=1024)
    table = make_table(20_000)
    uri = write_local(tmp_path / "t.parquet", table, row_group_size=5000, compression="none")
    full = ParquetReader(uri, store=store)
    one = ParquetReader(uri, store=store, columns=["st.y"])
    two = ParquetReader(uri, store=store, columns=["i", "st.y"])
    by_index = ParquetReader(uri, store=store, columns=[0, -2], decode="numpy")
    idx = full.index
    one.index, two.index, by_index.index  # noqa: B018

    store.stats.reset()
    whole = full[1]
    full_bytes = store.stats.snapshot()["bytes_read"]
    store.stats.reset()
    part = one[1]
    one_bytes = store.stats.snapshot()["bytes_read"]
    assert full_bytes == idx.chunk_length[1].sum()
    assert one_bytes == idx.chunk_length[1, 5]  # the leaf "st.y" only
    assert one_bytes < full_bytes / 3
    assert part.column_names == ["st"]
    assert part.column("st").type == pa.struct([("y", pa.string())])
    assert part.column("st").combine_chunks().field("y").equals(
        whole.column("st").combine_chunks().field("y"))

    store.stats.reset()
    pair = two[1]
    assert store.stats.snapshot()["bytes_read"] == idx.chunk_length[1, [0, 5]].sum()
    assert pair.column_names == ["i", "st"]
    assert pair.column("i").equals(whole.column("i"))
    assert list(by_index[1]) == ["i", "st"]


def test_field_names_with_dots(tmp_path: Path, store: Store) -> None:
    table = pa.table({"a.b": [1, 2], "a": pa.array([{"b": 3, "c": 4}, {"b": 5, "c": 6}])})
    uri = write_local(tmp_path / "t.parquet", table)
    reader = ParquetReader(uri, store=store, columns=["a.b"])
    assert reader.index.fields == ("a.b", "a")
    assert reader.index.column_field.tolist() == [0, 1, 1]
    assert reader[0].column_names == ["a.b"]
    assert ParquetReader(uri, store=store, columns=[1])[0].equals(table.select(["a"]))


def test_unknown_columns_raise(tmp_path: Path, store: Store) -> None:
    uri = write_local(tmp_path / "t.parquet", make_table(), row_group_size=500)
    with pytest.raises(ConfigError, match="nope"):
        ParquetReader(uri, store=store, columns=["nope"])[0]
    with pytest.raises(ConfigError, match="out of range"):
        ParquetReader(uri, store=store, columns=[99])[0]
    with pytest.raises(ConfigError):
        ParquetReader(uri, store=store, columns="i")
    with pytest.raises(ConfigError):
        ParquetReader(uri, store=store, items="row", decode="raw")
    with pytest.raises(ConfigError):
        ParquetReader(uri, store=store, decode="pandas")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ParquetReader(uri, store=store, footer_cap=4)
    with pytest.raises(ConfigError):
        ParquetReader(uri, store=store, max_fetch_bytes=0)


def test_read_batch_coalesces_row_groups(tmp_path: Path, store: Store) -> None:
    uri = write_local(tmp_path / "t.parquet", make_table(4000), row_group_size=250)
    reader = ParquetReader(uri, store=store)
    assert len(reader) == 16
    reader.index  # noqa: B018
    store.stats.reset()
    batch = reader.read_batch([4, 5, 6, 7])
    snap = store.stats.snapshot()
    assert snap["requests"] == 1  # 4 row groups x 7 column chunks, adjacent: one range request
    assert [t.column("i")[0].as_py() for t in batch] == [1000, 1250, 1500, 1750]


def test_read_batch_fetches_in_runs_of_max_fetch_bytes(tmp_path: Path, store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    uri = write_local(tmp_path / "t.parquet", make_table(4000), row_group_size=250)
    calls: list[list[tuple[int, int]]] = []
    real = store.get_ranges

    def spy(u: str, ranges: list[tuple[int, int]]) -> list[memoryview]:
        calls.append(list(ranges))
        return real(u, ranges)

    monkeypatch.setattr(store, "get_ranges", spy)
    reader = ParquetReader(uri, store=store, columns=["i"])
    idx = reader.index
    out = reader.read_batch([9, 0, 15, 8])
    assert [t.column("i")[0].as_py() for t in out] == [2250, 0, 3750, 2000]
    assert calls == [[(int(idx.chunk_start[g, 0]), int(idx.chunk_length[g, 0])) for g in (0, 8, 9, 15)]]

    calls.clear()
    largest = int(idx.chunk_length[[0, 8, 9, 15], 0].max())
    smallest = int(idx.chunk_length[[0, 8, 9, 15], 0].min())
    assert 3 * smallest > 2 * largest
    small = ParquetReader(uri, store=store, columns=["i"], index=idx, max_fetch_bytes=2 * largest)
    small.read_batch([9, 0, 15, 8])
    assert [len(c) for c in calls] == [2, 2]  # groups (0, 8) then (9, 15): at most 2 chunks per fetch


# ---------------------------------------------------------------------- backends


def test_backends_round_trip(backend: Any) -> None:
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    table = make_table(3000)
    uri = backend.uri("data", "t.parquet")
    write_parquet(uri, table, store=store, row_group_size=500, compression="zstd")
    info = store.list(backend.uri("data") + "/")[0]
    store.stats.reset()
    reader = ParquetReader(uri, store=store, info=info)
    assert len(reader) == 6
    assert store.stats.snapshot()["requests"] == 1
    assert reader.index.etag == info.etag
    store.stats.reset()
    parts = reader.read_batch(range(6))
    assert store.stats.snapshot()["requests"] == 1
    assert pa.concat_tables(parts).cast(table.schema).equals(table)
    rows = ParquetReader(uri, storage_options=backend.storage_options, items="row", decode="numpy",
                         columns=["f"])
    assert rows[2999]["f"] == table.column("f")[2999].as_py()


# ---------------------------------------------------------------------- bad input


def _put(store: Store, tmp_path: Path, data: bytes) -> str:
    uri = f"file://{tmp_path}/bad.parquet"
    store.put(uri, data)
    return uri


def _valid_bytes(**kw: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(make_table(200), buf, row_group_size=50, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["empty", "tiny", "bad_magic", "bad_head", "truncated", "footer_too_long",
                                  "garbage_footer", "encrypted"])
def test_bad_input_is_format_error(tmp_path: Path, store: Store, case: str) -> None:
    good = _valid_bytes()
    data = {
        "empty": b"",
        "tiny": b"PAR1PAR1",
        "bad_magic": good[:-4] + b"XXXX",
        "bad_head": b"XXXX" + good[4:],
        "truncated": good[: len(good) // 2],
        "footer_too_long": good[:-8] + struct.pack("<I", len(good)) + b"PAR1",
        "garbage_footer": good[:-200] + b"\xff" * 192 + good[-8:],
        "encrypted": good[:-4] + b"PARE",
    }[case]
    uri = _put(store, tmp_path, data)
    with pytest.raises(FormatError) as err:
        ParquetReader(uri, store=store).index  # noqa: B018
    assert err.value.uri == uri and err.value.format == "parquet" and err.value.offset is not None
    assert uri in str(err.value)


def test_corrupt_row_group_raises_or_is_skipped(tmp_path: Path, store: Store) -> None:
    good = bytearray(_valid_bytes(compression="snappy"))
    uri = _put(store, tmp_path, bytes(good))
    idx = ParquetReader(uri, store=store).index
    start = int(idx.chunk_start[1, 0])
    good[start : start + 64] = b"\xff" * 64  # the first page header of row group 1
    uri = _put(store, tmp_path, bytes(good))
    reader = ParquetReader(uri, store=store, on_error="skip")
    with pytest.raises(FormatError) as err:
        reader[1]
    assert err.value.offset == start
    out = reader.read_batch([0, 1, 2])
    assert [t.column("i")[0].as_py() for t in out] == [0, 100]
    assert reader.skipped == 1
    rows = ParquetReader(uri, store=store, on_error="skip", items="row", columns=["i"])
    got = rows.read_batch([49, 50, 51, 100])
    assert [t.column("i")[0].as_py() for t in got] == [49, 100]
    assert rows.skipped == 2
    with pytest.raises(FormatError):
        ParquetReader(uri, store=store).read_batch([0, 1])


def test_chunk_outside_file_is_format_error(tmp_path: Path, store: Store) -> None:
    good = _valid_bytes(compression="none")
    uri = _put(store, tmp_path, good)
    size = len(good)
    info = ObjectInfo(uri, size - 10)  # a stale listing: the footer is read at the wrong place
    with pytest.raises(FormatError):
        ParquetReader(uri, store=store, info=info).index  # noqa: B018


def test_sparse_file_refuses_unfetched_bytes() -> None:
    data = memoryview(b"0123456789")
    f = _SparseFile("file:///x", 100, [(50, data[5:]), (10, data[:5])])
    f.seek(11)
    assert bytes(f.read_buffer(3)) == b"123"
    f.seek(52)
    assert f.read(3) == b"789"
    f.seek(-2, 2)
    with pytest.raises(FormatError) as err:
        f.read(1)
    assert err.value.offset == 98
    f.seek(13)
    with pytest.raises(FormatError):
        f.read(5)
    adjacent = _SparseFile("file:///x", 100, [(0, data[:5]), (5, data[5:])])
    adjacent.seek(3)
    assert adjacent.read(4) == b"3456"


def test_old_parquet_mr_padding() -> None:
    assert _needs_dictionary_padding("parquet-mr version 1.2.8 (build abc)")
    assert not _needs_dictionary_padding("parquet-mr version 1.2.9 (build abc)")
    assert not _needs_dictionary_padding("parquet-mr version 1.12.3 (build abc)")
    assert not _needs_dictionary_padding("parquet-cpp-arrow version 26.0.1")


_GOOD = _valid_bytes(compression="snappy")


def _try_all(tmp_path: Path, data: bytes) -> None:
    store = Store.from_uri(f"file://{tmp_path}")
    uri = f"file://{tmp_path}/h.parquet"
    store.put(uri, data)
    try:
        reader = ParquetReader(uri, store=store, footer_cap=256)
        n = len(reader)
        for decode in ("arrow", "numpy"):
            ParquetReader(uri, store=store, index=reader.index, decode=decode).read_batch(range(min(n, 4)))
        if n:
            reader[n - 1]
    except FormatError as exc:
        assert exc.uri == uri and exc.format == "parquet"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    _try_all(tmp_path, data)
    _try_all(tmp_path, data + struct.pack("<I", len(data) // 2) + b"PAR1")


_ANYWHERE = st.integers(0, len(_GOOD) - 1)
_IN_FOOTER = st.integers(max(0, len(_GOOD) - 1000), len(_GOOD) - 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(_ANYWHERE, _IN_FOOTER), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 64))
def test_mutated_file(tmp_path: Path, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_GOOD)
    for pos, value in edits:
        data[pos] = value
    _try_all(tmp_path, bytes(data[: len(data) - cut]) if cut else bytes(data))


def test_footer_that_aborts_pyarrow_metadata_accessors(tmp_path: Path) -> None:
    # Found by fuzzing (pyarrow 26): with this byte changed, the footer parses, but
    # RowGroupMetaData.column() throws a C++ exception ("Definition level histogram size
    # mismatch") that Cython does not translate, and the process aborts. The index is read
    # from the Thrift bytes instead, so this must end in a FormatError or a valid result.
    data = bytearray(_GOOD)
    data[len(data) - 3442] = 22
    _try_all(tmp_path, bytes(data))


# ---------------------------------------------------------------------- interop


def test_reader_pickles_for_worker_processes(tmp_path: Path, store: Store) -> None:
    uri = write_local(tmp_path / "t.parquet", make_table(), row_group_size=100)
    reader = ParquetReader(uri, store=store, items="row", columns=["i"])
    reader[5]
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.index == reader.index
    assert clone[555].column("i")[0].as_py() == 555


def test_polars_written_file(tmp_path: Path, store: Store) -> None:
    pl = pytest.importorskip("polars")
    path = tmp_path / "pl.parquet"
    pl.DataFrame({"a": list(range(100)), "b": [str(k) for k in range(100)]}).write_parquet(
        str(path), row_group_size=10)
    reader = ParquetReader(f"file://{path}", store=store, decode="numpy")
    np.testing.assert_array_equal(np.concatenate([reader[i]["a"] for i in range(len(reader))]), np.arange(100))


def test_duckdb_written_file(tmp_path: Path, store: Store) -> None:
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "dd.parquet"
    duckdb.sql(f"COPY (SELECT range AS a FROM range(1000)) TO '{path}' (FORMAT PARQUET, ROW_GROUP_SIZE 100)")
    reader = ParquetReader(f"file://{path}", store=store, decode="numpy")
    np.testing.assert_array_equal(np.concatenate([reader[i]["a"] for i in range(len(reader))]),
                                  np.arange(1000))
