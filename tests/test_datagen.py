"""Synthetic data: dedup/compression ratios, streams, datasets of every format, templated puts."""

from __future__ import annotations

import argparse
import hashlib
import io
import mmap
import os

import numpy as np
import pytest
import zstandard

from s3dlio_loader import ConfigError, Store
from s3dlio_loader.datagen import (
    BLOCK_SIZE,
    DataGenerator,
    DatasetSpec,
    add_gen_arguments,
    expand_template,
    generate_data,
    generate_dataset,
    put_template,
    run_gen,
)
from s3dlio_loader.formats import open as open_reader

MiB = 1 << 20


def zstd_ratio(data) -> float:
    raw = bytes(data)
    return len(raw) / len(zstandard.ZstdCompressor(level=3).compress(raw))


def block_dedup_ratio(data) -> float:
    raw = bytes(data)
    blocks = [raw[i : i + BLOCK_SIZE] for i in range(0, len(raw) - len(raw) % BLOCK_SIZE, BLOCK_SIZE)]
    return len(blocks) / len({hashlib.blake2b(b, digest_size=16).digest() for b in blocks})


# ---------------------------------------------------------------- generate_data / DataGenerator


def test_generate_data_returns_a_bytearray_of_the_size():
    for size in (0, 1, 7, 4095, 4096, 4097, 3 * BLOCK_SIZE + 5, MiB):
        data = generate_data(size)
        assert isinstance(data, bytearray) and len(data) == size


def test_calls_without_seed_differ_and_seeded_calls_repeat():
    a, b = generate_data(MiB), generate_data(MiB)
    assert a != b
    assert generate_data(MiB, seed=3) == generate_data(MiB, seed=3)
    assert generate_data(MiB, seed=3) != generate_data(MiB, seed=4)
    # also for compressible, deduplicated data
    assert generate_data(MiB, dedup=2, compress=3) != generate_data(MiB, dedup=2, compress=3)


@pytest.mark.parametrize("compress", [1, 1.5, 2, 3, 4, 8, 16])
def test_compression_ratio_with_zstd(compress):
    data = generate_data(8 * MiB, compress=compress)
    assert zstd_ratio(data) == pytest.approx(compress, rel=0.15)
    assert block_dedup_ratio(data) == 1.0  # compressible blocks are still all unique


@pytest.mark.parametrize("dedup", [1, 2, 3, 4, 7, 10])
def test_dedup_ratio_by_block_hashes(dedup):
    data = generate_data(8 * MiB, dedup=dedup)
    assert block_dedup_ratio(data) == pytest.approx(dedup, rel=0.15)
    if dedup > 1:  # repeats lie 8/dedup MiB apart: at 4 MiB and beyond, out of zstd's window
        assert zstd_ratio(data) < dedup


@pytest.mark.parametrize(("dedup", "compress"), [(2, 2), (3, 4), (4, 1.5)])
def test_dedup_and_compress_together(dedup, compress):
    data = generate_data(8 * MiB + 1234, dedup=dedup, compress=compress)
    assert block_dedup_ratio(data) == pytest.approx(dedup, rel=0.15)
    assert zstd_ratio(data) == pytest.approx(compress, rel=0.2)
    # small buffers: the repeats fall within zstd's window, which removes them too
    small = generate_data(MiB, dedup=dedup, compress=compress)
    assert zstd_ratio(small) == pytest.approx(dedup * compress, rel=0.2)


def test_incompressible_data_stays_incompressible_across_calls_and_streams():
    gen = DataGenerator(seed=11)
    parts = [gen.generate(MiB) for _ in range(4)] + [gen.fork(1).generate(MiB), gen.fork(2).generate(MiB)]
    joined = b"".join(parts)
    assert zstd_ratio(joined) < 1.01
    assert block_dedup_ratio(joined) == 1.0  # no 4 KiB block repeats anywhere


def test_fill_reuses_caller_buffers_of_any_kind():
    gen = DataGenerator(seed=5)
    ba = bytearray(3 * BLOCK_SIZE + 100)
    assert gen.fill(ba) == len(ba)
    arr = np.zeros((100, 33), dtype=np.float32)  # any contiguous writable array
    assert gen.fill(arr) == arr.nbytes
    assert arr.view(np.uint8).any()
    mv = memoryview(bytearray(5000))[1000:3000]  # a view into the middle, unaligned
    assert gen.fill(mv) == 2000
    with mmap.mmap(-1, 2 * MiB) as m:
        assert gen.fill(m) == 2 * MiB
        assert m[:16] != b"\0" * 16
    assert gen.fill(bytearray()) == 0


def test_fill_continues_the_stream_and_never_repeats_a_block():
    gen = DataGenerator(seed=2)
    buf = bytearray(64 * BLOCK_SIZE)
    seen = set()
    for _ in range(8):
        gen.fill(buf)
        for i in range(0, len(buf), BLOCK_SIZE):
            digest = hashlib.blake2b(buf[i : i + BLOCK_SIZE], digest_size=16).digest()
            assert digest not in seen
            seen.add(digest)
    assert gen.blocks == 8 * 64


def test_streams_are_reproducible_whatever_the_order():
    base = DataGenerator(dedup=2, compress=2, seed=9)
    first = base.fork(7).generate(100_000)
    base.generate(MiB)  # using the parent does not change its forks
    assert DataGenerator(dedup=2, compress=2, seed=9).fork(7).generate(100_000) == first
    assert base.fork(8).generate(100_000) != first


def test_partial_last_block_and_tiny_sizes_are_filled():
    for size in (1, 8, 100, BLOCK_SIZE - 1, BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 17):
        data = generate_data(size, seed=1)
        assert any(data), size
    # a partial block that is a repeat copies the start of its unique block
    data = generate_data(4 * BLOCK_SIZE + 100, dedup=4, seed=1)  # 5 blocks, 2 unique
    assert data[4 * BLOCK_SIZE :] == data[:100]


@pytest.mark.parametrize(
    "kwargs",
    [{"dedup": 0}, {"dedup": 0.5}, {"compress": 0}, {"compress": float("nan")}, {"compress": float("inf")},
     {"dedup": True}, {"compress": "2"}, {"seed": -1}, {"seed": 1.5}],
)
def test_invalid_arguments_name_the_value(kwargs):
    with pytest.raises(ConfigError) as info:
        DataGenerator(**kwargs)
    assert next(iter(kwargs)) in str(info.value)


def test_fill_refuses_read_only_buffers():
    gen = DataGenerator()
    with pytest.raises(ConfigError, match="read-only"):
        gen.fill(b"immutable")
    with pytest.raises(ConfigError):
        gen.fill(np.zeros(10)[::2])
    with pytest.raises(ConfigError):
        gen.generate(-1)


def test_generator_is_fast():
    """A loose floor (CI machines are busy); benchmarks/datagen.py measures properly."""
    import time

    gen = DataGenerator()
    buf = np.empty(16 * MiB, np.uint8)
    gen.fill(buf)
    best = min(_timed(gen, buf, time) for _ in range(5))
    assert buf.nbytes / best > 1e9


def _timed(gen, buf, time) -> float:
    t0 = time.perf_counter()
    gen.fill(buf)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- datasets


def _local(uri: str) -> str:
    assert uri.startswith("file://")
    return uri[len("file://"):]


def _read(uri: str) -> bytes:
    with open(_local(uri), "rb") as f:
        return f.read()


def test_dataset_spec_content_is_deterministic_and_described():
    spec = DatasetSpec("npz", num_objects=4, samples_per_object=5, sample_shape=(3, 2), dtype="int16",
                       num_classes=3, seed=1)
    a = spec.arrays(2)
    assert a["data"].shape == (5, 3, 2) and a["data"].dtype == np.int16
    assert a["label"].tolist() == spec.arrays(2)["label"].tolist()
    assert set(a["label"].tolist()) <= {0, 1, 2}
    assert a["id"].tolist() == [10, 11, 12, 13, 14]
    assert np.array_equal(a["data"], spec.arrays(2)["data"])
    assert not np.array_equal(a["data"], spec.arrays(3)["data"])
    floats = DatasetSpec("npy", 1, 4, sample_shape=(8,), dtype="float32").arrays(0)["data"]
    assert floats.dtype == np.float32 and ((floats >= 0) & (floats < 1)).all()
    assert spec.object_name(3) == "part-00003.npz"
    assert DatasetSpec("raw", 123456, 1).object_name(7) == "part-000007.bin"


@pytest.mark.parametrize(
    "kwargs",
    [{"format": "csv"}, {"num_objects": 0}, {"samples_per_object": -1}, {"dtype": "complex64"},
     {"dtype": "float32", "compress": 2}, {"sample_shape": (-1,)}, {"row_group_size": 0},
     {"parquet_schema": "wide"}, {"name": "a/b"}, {"seed": None}, {"row_group_size": 10},
     {"format": "parquet", "parquet_schema": "columns", "sample_shape": (64, 65)}],
)
def test_dataset_spec_validation(kwargs):
    args = {"format": "npy", "num_objects": 1, "samples_per_object": 1, **kwargs}
    with pytest.raises(ConfigError):
        DatasetSpec(**args)


@pytest.mark.parametrize("schema", ["binary", "list", "columns"])
def test_parquet_dataset(tmp_path, schema):
    import pyarrow.parquet as pq

    spec_args = {"sample_shape": (4, 2), "dtype": "int32", "seed": 4, "parquet_schema": schema}
    uris = generate_dataset(tmp_path, "parquet", 3, 50, row_group_size=16, **spec_args)
    spec = DatasetSpec("parquet", 3, 50, row_group_size=16, **spec_args)
    assert uris == [f"file://{tmp_path}/part-0000{i}.parquet" for i in range(3)]
    for i, uri in enumerate(uris):
        pf = pq.ParquetFile(_local(uri))
        assert pf.metadata.num_row_groups == 4  # 16 + 16 + 16 + 2 rows
        table = pf.read()
        expected = spec.arrays(i)
        assert table.column("id").to_pylist() == expected["id"].tolist()
        assert table.column("label").to_pylist() == expected["label"].tolist()
        flat = expected["data"].reshape(50, -1)
        if schema == "binary":
            got = np.frombuffer(b"".join(table.column("data").to_pylist()), np.int32).reshape(50, -1)
        elif schema == "list":
            got = np.array(table.column("data").to_pylist(), dtype=np.int32)
        else:
            assert table.column_names == ["id", "label", *[f"f{j}" for j in range(8)]]
            got = np.stack([table.column(f"f{j}").to_numpy() for j in range(8)], axis=1)
        assert np.array_equal(got, flat)
    # the project's own reader serves the row groups
    assert len(open_reader(uris[0])) == 4


def test_npy_npz_hdf5_raw_tfrecord_datasets_read_back(tmp_path):
    import h5py

    kw = {"sample_shape": (6,), "dtype": "uint16", "seed": 8, "num_classes": 5}
    for fmt in ("npy", "npz", "hdf5", "raw", "tfrecord"):
        uris = generate_dataset(f"file://{tmp_path}/{fmt}", fmt, 2, 7, **kw)
        spec = DatasetSpec(fmt, 2, 7, **kw)
        for i, uri in enumerate(uris):
            exp = spec.arrays(i)
            path = _local(uri)
            if fmt == "npy":
                assert np.array_equal(np.load(path), exp["data"])
            elif fmt == "npz":
                with np.load(path) as z:
                    assert sorted(z.files) == ["data", "id", "label"]
                    for key in ("data", "label", "id"):
                        assert np.array_equal(z[key], exp[key])
            elif fmt == "hdf5":
                with h5py.File(path, "r") as f:
                    for key in ("data", "label", "id"):
                        assert np.array_equal(f[key][()], exp[key])
            elif fmt == "raw":
                assert _read(uri) == exp["data"].tobytes()
            else:
                from s3dlio_loader.formats.tfrecord import TFRecordReader

                reader = TFRecordReader(uri, features={"data": ("bytes", ()), "label": ("int64", ()),
                                                       "id": ("int64", ())})
                assert len(reader) == 7
                for j in range(7):
                    rec = reader[j]
                    assert rec["data"] == exp["data"][j].tobytes()
                    assert int(rec["label"]) == exp["label"][j] and int(rec["id"]) == exp["id"][j]


def test_record_size_and_raw_ratios(tmp_path):
    uris = generate_dataset(tmp_path, "raw", 2, 64, record_size=32 * 1024, dedup=4, compress=2, seed=1)
    data = (tmp_path / "part-00000.bin").read_bytes()
    assert len(data) == 64 * 32 * 1024 and len(uris) == 2
    assert block_dedup_ratio(data) == pytest.approx(4, rel=0.2)
    with pytest.raises(ConfigError, match="not both"):
        generate_dataset(tmp_path, "raw", 1, 1, record_size=10, sample_shape=(10,))


def test_content_does_not_depend_on_workers(tmp_path):
    a = generate_dataset(tmp_path / "a", "npz", 6, 3, sample_shape=(100,), workers=1, seed=2)
    b = generate_dataset(tmp_path / "b", "npz", 6, 3, sample_shape=(100,), workers=4, seed=2)
    for ua, ub in zip(a, b, strict=True):
        assert _read(ua) == _read(ub)


def test_writer_options_reach_the_format_writer(tmp_path):
    import pyarrow.parquet as pq

    (uri,) = generate_dataset(tmp_path, "parquet", 1, 10, writer_options={"compression": "zstd"})
    assert pq.ParquetFile(_local(uri)).metadata.row_group(0).column(0).compression == "ZSTD"
    with pytest.raises(ConfigError, match="writer_options"):
        generate_dataset(tmp_path, "raw", 1, 1, writer_options={"compression": "zstd"})


def test_dataset_on_every_backend(backend):
    uris = generate_dataset(backend.uri("ds"), "npz", 3, 4, sample_shape=(16,), seed=6,
                            storage_options=backend.storage_options, workers=3)
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    listed = [o.uri for o in store.list(backend.uri("ds") + "/")]
    assert listed == uris
    spec = DatasetSpec("npz", 3, 4, sample_shape=(16,), seed=6)
    with np.load(io.BytesIO(store.get(uris[1]))) as z:
        assert np.array_equal(z["data"], spec.arrays(1)["data"])


def test_progress_bar_only_when_asked(tmp_path, capsys):
    generate_dataset(tmp_path / "quiet", "raw", 3, 1, record_size=10)
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    generate_dataset(tmp_path / "loud", "raw", 3, 1, record_size=10, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_write_errors_propagate(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")  # a file where the prefix directory should be
    with pytest.raises(OSError):
        generate_dataset(blocker, "raw", 4, 1, record_size=10)


# ---------------------------------------------------------------- put_template


def test_expand_template():
    assert list(expand_template("s3://b/o-{}.bin", 3)) == ["s3://b/o-0.bin", "s3://b/o-1.bin", "s3://b/o-2.bin"]
    assert list(expand_template("s3://b/o-{:04d}", 1, start=12)) == ["s3://b/o-0012"]
    for bad in ("s3://b/plain", "s3://b/{name}", "s3://b/{"):
        with pytest.raises(ConfigError):
            expand_template(bad, 1)


def test_put_template_on_every_backend(backend):
    uris = put_template(backend.uri("obj-{:03d}.bin"), 5, 10_000, start=3, seed=1,
                        storage_options=backend.storage_options, max_in_flight=3)
    assert uris == [backend.uri(f"obj-{i:03d}.bin") for i in range(3, 8)]
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    contents = [store.get(u) for u in uris]
    assert all(len(c) == 10_000 for c in contents)
    assert len(set(contents)) == 5
    # with a seed, object i is stream i: reproducible
    assert contents[0] == bytes(DataGenerator(seed=1).fork(3).generate(10_000))


def test_put_template_streams_large_objects_and_keeps_ratios(tmp_path):
    uris = put_template(f"file://{tmp_path}/big-{{}}", 2, 3 * MiB + 5, dedup=2, compress=2,
                        chunk_size=MiB, seed=3)
    for uri in uris:
        data = _read(uri)
        assert len(data) == 3 * MiB + 5
        assert block_dedup_ratio(data) == pytest.approx(2, rel=0.2)
        assert zstd_ratio(data) == pytest.approx(4, rel=0.2)  # 1 MiB pieces: repeats within zstd's window
    assert _read(uris[0]) != _read(uris[1])


def test_put_template_unseeded_runs_differ_and_zero_sizes_work(tmp_path):
    put_template(f"{tmp_path}/a-{{}}", 2, 5000)
    first = (tmp_path / "a-0").read_bytes()
    put_template(f"{tmp_path}/a-{{}}", 2, 5000)
    assert (tmp_path / "a-0").read_bytes() != first
    put_template(f"{tmp_path}/z-{{}}", 2, 0)
    assert (tmp_path / "z-1").read_bytes() == b""
    assert put_template(f"{tmp_path}/none-{{}}", 0, 10) == []
    for bad in ({"num": -1}, {"size": -5}, {"start": -1}, {"max_in_flight": 0}):
        args = {"num": 1, "size": 1, **bad}
        with pytest.raises(ConfigError):
            put_template(f"{tmp_path}/x-{{}}", **args)


# ---------------------------------------------------------------- CLI hook


def _gen_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_gen_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_gen_dataset_and_template(tmp_path):
    out = io.StringIO()
    store = Store.from_uri(str(tmp_path))
    args = _gen_args(f"file://{tmp_path}/ds", "--format", "npy", "-n", "3", "--samples", "4", "--shape", "8,2",
                     "--dtype", "float32")
    assert run_gen(args, store, out=out) == 0
    assert "wrote 3 object(s), " in out.getvalue()
    assert np.load(tmp_path / "ds" / "part-00002.npy").shape == (4, 8, 2)
    out = io.StringIO()
    args = _gen_args(f"file://{tmp_path}/t/o-{{}}.bin", "-n", "4", "--size", "8KiB", "--compress", "4")
    assert run_gen(args, store, out=out) == 0
    assert "wrote 4 object(s), 32768 bytes" in out.getvalue()
    assert sorted(os.listdir(tmp_path / "t")) == [f"o-{i}.bin" for i in range(4)]


@pytest.mark.parametrize(
    "argv",
    [["PREFIX"], ["PREFIX", "--format", "npy", "--size", "10"], ["T-{}"], ["T-{}", "--size", "1", "--format", "raw"]],
)
def test_run_gen_usage_errors(tmp_path, argv):
    argv = [a.replace("PREFIX", f"{tmp_path}/p").replace("T-", f"{tmp_path}/t-") for a in argv]
    with pytest.raises(ConfigError):
        run_gen(_gen_args(*argv), Store.from_uri(str(tmp_path)), out=io.StringIO())
