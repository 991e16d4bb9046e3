"""TFRecord: framing and CRCs, the one-pass index, index files, coalesced reads, GZIP/ZLIB, bad input,
every backend, and interop with TensorFlow.

The TensorFlow tests are marked ``slow`` and named ``*tensorflow*`` (select with ``-k tensorflow``).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3dlio_loader import formats
from s3dlio_loader.errors import ConfigError, FormatError
from s3dlio_loader.formats import tfrecord
from s3dlio_loader.formats.tfrecord import (
    TFRecordIndex,
    TFRecordReader,
    frame_record,
    masked_crc32c,
    read_index,
    resolve_compression,
    scan_records,
    write_index,
    write_tfrecord,
)
from s3dlio_loader.storage import Store

RECORDS = [b"", b"a", b"hello world", bytes(range(256)) * 40, b"x" * 70_000] + [b"r%05d" % i for i in range(200)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.from_uri(f"file://{tmp_path}")


@pytest.fixture(scope="module")
def tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def dali_index(data: bytes) -> bytes:
    """What DALI's tfrecord2idx writes: '<offset> <framed size>' per record."""
    lines, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        size = 8 + 4 + length + 4
        lines.append(f"{pos} {size}\n")
        pos += size
    return "".join(lines).encode()


def requests(store: Store) -> dict[str, int]:
    return dict(store.stats.snapshot()["by_op"])


# ---------------------------------------------------------------------- framing


def test_masked_crc_and_framing() -> None:
    # CRC32C("123456789") = 0xE3069283 (the standard check value), then TFRecord's mask.
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    framed = frame_record(b"abc")
    assert framed[:8] == struct.pack("<Q", 3) and framed[12:15] == b"abc" and len(framed) == 19
    assert struct.unpack("<I", framed[8:12])[0] == masked_crc32c(framed[:8])
    assert struct.unpack("<I", framed[15:])[0] == masked_crc32c(b"abc")
    offsets, lengths = scan_records(framed * 3)
    assert offsets.tolist() == [0, 19, 38] and lengths.tolist() == [3, 3, 3]
    assert offsets.dtype == lengths.dtype == np.int64


@given(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=50))
def test_vectorised_length_crcs_match_the_c_library(fields: list[bytes]) -> None:
    rows = np.frombuffer(b"".join(fields), dtype=np.uint8).reshape(-1, 8)
    assert tfrecord._masked_crcs_of_lengths(rows).tolist() == [masked_crc32c(f) for f in fields]


@pytest.mark.parametrize(("uri", "arg", "expected"), [
    ("a.tfrecord", None, ""), ("a.tfrecord.gz", None, "GZIP"), ("A.TFRECORD.ZLIB", None, "ZLIB"),
    ("a.tfrecord.gz", "", ""), ("a.tfrecord.gz", "none", ""), ("a.tfrecord", "gzip", "GZIP"),
])  # fmt: skip
def test_compression_inference(uri: str, arg: str | None, expected: str) -> None:
    assert resolve_compression(uri, arg) == expected


def test_bad_arguments_are_config_errors(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/a.tfrecord"
    with pytest.raises(ConfigError):
        TFRecordReader(uri, compression="snappy")
    with pytest.raises(ConfigError):
        TFRecordReader(uri, decode="numpy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TFRecordReader(uri, decode=len, features={"a": "int64"})
    with pytest.raises(ConfigError):
        TFRecordReader(uri, scan_chunk=4)
    with pytest.raises(ConfigError):
        write_tfrecord(uri, b"one record", store=store)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        write_tfrecord(uri + ".gz", [b"x"], store=store, level=12)
    with pytest.raises(ConfigError, match="record 1 is a str"):
        write_tfrecord(uri, [b"x", "text"], store=store)  # type: ignore[list-item]
    assert list(tmp_path.iterdir()) == []  # a failed write leaves no object (nor a temporary file)


# ---------------------------------------------------------------------- round trips


def test_round_trip_and_random_access(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, iter(RECORDS), store=store)
    assert (tmp_path / "d.tfrecord").read_bytes() == b"".join(frame_record(r) for r in RECORDS)
    reader = TFRecordReader(uri, store=store)
    assert len(reader) == len(RECORDS)
    assert [reader[i] for i in range(len(RECORDS))] == RECORDS
    assert reader[-1] == RECORDS[-1]
    assert reader.read_batch([7, 3, 3, -1, 0]) == [RECORDS[7], RECORDS[3], RECORDS[3], RECORDS[-1], RECORDS[0]]
    assert list(reader) == RECORDS
    assert reader.read_batch([]) == []
    with pytest.raises(IndexError, match="out of range"):
        reader[len(RECORDS)]
    index = reader.tfindex
    assert isinstance(index, TFRecordIndex) and index.compression == ""
    assert index.size == index.data_size == (tmp_path / "d.tfrecord").stat().st_size
    assert index.lengths.tolist() == [len(r) for r in RECORDS]


def test_write_in_small_pieces_gives_the_same_bytes(tmp_path: Path, store: Store) -> None:
    write_tfrecord(f"file://{tmp_path}/a.tfrecord", RECORDS, store=store)
    write_tfrecord(f"file://{tmp_path}/b.tfrecord", [bytearray(r) for r in RECORDS[:3]]
                   + [memoryview(r) for r in RECORDS[3:]], store=store, buffer_size=100)  # fmt: skip
    assert (tmp_path / "a.tfrecord").read_bytes() == (tmp_path / "b.tfrecord").read_bytes()


def test_examples_with_a_feature_spec(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/ex.tfrecord"
    samples = [{"image": b"img%d" % i, "label": i, "vec": np.full(4, i, np.float32)} for i in range(50)]
    formats.write(uri, samples, store=store)
    reader = formats.open(uri, store=store, features={"label": ("int64", ()), "vec": ("float32", (2, 2))})
    assert isinstance(reader, TFRecordReader)
    out = reader.read_batch([10, 3])
    assert [o["label"] for o in out] == [10, 3] and out[0]["vec"].shape == (2, 2)
    plain = TFRecordReader(uri, decode="example", store=store)[4]
    assert plain["image"].tolist() == [b"img4"] and plain["label"].tolist() == [4]
    assert TFRecordReader(uri, decode=len, store=store)[0] == len(TFRecordReader(uri, store=store)[0])


def test_missing_feature_is_format_error_with_record_offset(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/ex.tfrecord"
    write_tfrecord(uri, [{"a": 1}, {"b": 2}], store=store)
    reader = TFRecordReader(uri, features={"a": "int64"}, store=store)
    with pytest.raises(FormatError, match="'a' is missing") as info:
        reader[1]
    assert info.value.offset == reader.tfindex.offsets[1] and info.value.uri == uri
    skipping = TFRecordReader(uri, features={"a": "int64"}, store=store, on_error="skip")
    assert [o["a"].tolist() for o in skipping.read_batch([0, 1])] == [[1]]
    assert skipping.skipped == 1


@pytest.mark.parametrize(("name", "compression", "magic"), [
    ("c.tfrecord.gz", None, b"\x1f\x8b"), ("c.tfrecord.zlib", None, b"\x78"), ("c.bin", "GZIP", b"\x1f\x8b"),
])  # fmt: skip
def test_compressed_round_trip(tmp_path: Path, store: Store, name: str, compression: str | None,
                               magic: bytes) -> None:  # fmt: skip
    uri = f"file://{tmp_path}/{name}"
    write_tfrecord(uri, RECORDS, store=store, compression=compression, buffer_size=1000)
    raw = (tmp_path / name).read_bytes()
    assert raw.startswith(magic)
    plain = b"".join(frame_record(r) for r in RECORDS)
    assert (gzip.decompress(raw) if magic == b"\x1f\x8b" else zlib.decompress(raw)) == plain
    store.stats.reset()
    reader = TFRecordReader(uri, compression=compression, store=store)
    assert len(reader) == len(RECORDS)
    assert reader.tfindex.data_size == len(plain) and reader.tfindex.size == len(raw)
    assert requests(store) == {"stat": 1, "get": 1}
    assert reader.read_batch([5, 0, 4]) == [RECORDS[5], RECORDS[0], RECORDS[4]]
    assert list(reader) == RECORDS
    assert requests(store) == {"stat": 1, "get": 1}  # records come from the decompressed cache
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._plain is None and clone.index == reader.index
    assert clone[4] == RECORDS[4]  # decompresses again in the new process


def test_reader_with_features_pickles(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/ex.tfrecord"
    write_tfrecord(uri, [{"x": np.arange(4)}], store=store)
    reader = TFRecordReader(uri, store=store, features={"x": ("int64", (2, 2))})
    clone = pickle.loads(pickle.dumps(reader))
    assert clone[0]["x"].tolist() == [[0, 1], [2, 3]]


def test_compressed_streams_in_chunks_and_concatenated_gzip_members(tmp_path: Path, store: Store) -> None:
    plain = b"".join(frame_record(r) for r in RECORDS)
    half = len(plain) // 2
    (tmp_path / "m.tfrecord.gz").write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:]))
    store.stats.reset()
    reader = TFRecordReader(f"file://{tmp_path}/m.tfrecord.gz", store=store, scan_chunk=1000)
    assert list(reader) == RECORDS
    assert requests(store)["get_range"] == -(-(tmp_path / "m.tfrecord.gz").stat().st_size // 1000)


def test_empty_object(tmp_path: Path, store: Store) -> None:
    for name in ("e.tfrecord", "e.tfrecord.gz"):
        write_tfrecord(f"file://{tmp_path}/{name}", [], store=store)
        reader = TFRecordReader(f"file://{tmp_path}/{name}", store=store)
        assert len(reader) == 0 and list(reader) == []
    (tmp_path / "zero.tfrecord.gz").write_bytes(b"")
    assert len(TFRecordReader(f"file://{tmp_path}/zero.tfrecord.gz", store=store)) == 0


# ---------------------------------------------------------------------- requests


def test_index_is_one_get_and_a_batch_is_one_range(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, [b"%d" % i * 50 for i in range(2000)], store=store)
    store.stats.reset()
    reader = TFRecordReader(uri, store=store)
    assert len(reader) == 2000
    assert requests(store) == {"stat": 1, "get": 1}
    store.stats.reset()
    assert len(reader.read_batch(range(100, 400))) == 300
    assert requests(store) == {"get_range": 1}
    store.stats.reset()
    reader[1999]
    assert requests(store) == {"get_range": 1}


def test_large_batches_are_split_into_capped_requests(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    records = [os.urandom(1000) for _ in range(100)] + [os.urandom(10_000)] + [os.urandom(1000) for _ in range(50)]
    write_tfrecord(uri, records, store=store)
    reader = TFRecordReader(uri, store=store)
    len(reader)
    with mock.patch.object(tfrecord, "READ_BLOCK", 8192):
        store.stats.reset()
        batch = list(range(150, -1, -1))
        assert reader.read_batch(batch) == [records[i] for i in batch]
        blocks = requests(store)["get_range"]
        # about 1016 * 151 bytes in blocks of at most 8 records, the 10 kB record alone
        assert 151 // 8 <= blocks <= 151 // 8 + 3
        store.stats.reset()
        assert reader.read_batch([0, 1, 149, 150]) == [records[i] for i in (0, 1, 149, 150)]
        assert requests(store) == {"get_range": 2}  # the span is above the cap
    store.stats.reset()
    assert reader.read_batch([0, 1, 149, 150]) == [records[i] for i in (0, 1, 149, 150)]
    assert requests(store) == {"get_range": 1}  # within coalesce_gap (256 KiB) and below the cap


def test_large_objects_are_scanned_in_chunks(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, [os.urandom(1000) for _ in range(1000)], store=store)
    size = (tmp_path / "d.tfrecord").stat().st_size
    store.stats.reset()
    reader = TFRecordReader(uri, store=store, scan_chunk=64 * 1024)
    assert len(reader) == 1000
    stats = store.stats.snapshot()
    assert stats["by_op"]["get_range"] <= size // (64 * 1024) + 2  # not one request per record
    assert stats["bytes_read"] <= size  # each byte at most once (data past a chunk end is skipped)
    assert reader.index == TFRecordReader(uri, store=store).index


def test_records_longer_than_a_chunk_are_skipped_not_fetched(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/big.tfrecord"
    big = [os.urandom(200_000) for _ in range(10)]
    write_tfrecord(uri, big, store=store)
    store.stats.reset()
    reader = TFRecordReader(uri, store=store, scan_chunk=4096, scan_ahead=1)
    assert len(reader) == 10
    assert requests(store) == {"stat": 1, "get_range": 10}
    assert store.stats.snapshot()["bytes_read"] <= 10 * 4096
    store.stats.reset()
    ahead = TFRecordReader(uri, store=store, scan_chunk=4096, scan_ahead=4)
    assert ahead.index == reader.index
    assert store.stats.snapshot()["bytes_read"] <= 10 * 4 * 4096  # at most the chunks requested ahead
    assert reader.read_batch([9, 0]) == [big[9], big[0]]


# ---------------------------------------------------------------------- index files


def test_index_file_matches_dali_and_replaces_the_scan(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, RECORDS, store=store, index_uri=f"file://{tmp_path}/written.idx")
    assert write_index(uri, store=store) == len(RECORDS)
    expected = dali_index((tmp_path / "d.tfrecord").read_bytes())
    assert (tmp_path / "d.tfrecord.idx").read_bytes() == expected
    assert (tmp_path / "written.idx").read_bytes() == expected
    offsets, sizes = read_index(f"file://{tmp_path}/d.tfrecord.idx", store=store)
    assert offsets.dtype == sizes.dtype == np.int64 and len(offsets) == len(RECORDS)
    store.stats.reset()
    reader = TFRecordReader(uri, index_uri=f"file://{tmp_path}/d.tfrecord.idx", store=store)
    assert reader.index == TFRecordReader(uri, store=store).index
    store.stats.reset()
    reader = TFRecordReader(uri, index_uri=f"file://{tmp_path}/d.tfrecord.idx", store=store)
    assert len(reader) == len(RECORDS)
    assert requests(store) == {"stat": 1, "get": 1}  # the index file; the records are not read
    assert reader.read_batch([4, 1]) == [RECORDS[4], RECORDS[1]]


def test_index_file_of_a_compressed_object(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/c.tfrecord.gz"
    write_tfrecord(uri, RECORDS, store=store)
    write_index(uri, f"file://{tmp_path}/c.idx", store=store)
    assert (tmp_path / "c.idx").read_bytes() == dali_index(gzip.decompress((tmp_path / "c.tfrecord.gz").read_bytes()))
    reader = TFRecordReader(uri, index_uri=f"file://{tmp_path}/c.idx", store=store)
    assert reader.read_batch([3, 2]) == [RECORDS[3], RECORDS[2]]


@pytest.mark.parametrize(("text", "needle"), [
    (b"0 16\n16 1x\n", "line 2"), (b"0 16 3\n", "line 1"), (b"0\n", "line 1"), (b"-1 16\n", "line 1"),
    (b"0 15\n", "below the 16 bytes"), (b"0 99999999999999999999\n", "int64"),
])  # fmt: skip
def test_bad_index_files(tmp_path: Path, store: Store, text: bytes, needle: str) -> None:
    (tmp_path / "bad.idx").write_bytes(text)
    with pytest.raises(FormatError, match=needle) as info:
        read_index(f"file://{tmp_path}/bad.idx", store=store)
    assert info.value.uri == f"file://{tmp_path}/bad.idx"


def test_index_file_of_another_object(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, RECORDS[:5], store=store)
    (tmp_path / "other.idx").write_bytes(b"0 16\n16 1000000\n")
    with pytest.raises(FormatError, match="ends past the end"):
        len(TFRecordReader(uri, index_uri=f"file://{tmp_path}/other.idx", store=store))
    (tmp_path / "shifted.idx").write_bytes(b"1 16\n")
    with pytest.raises(FormatError, match="CRC"):
        TFRecordReader(uri, index_uri=f"file://{tmp_path}/shifted.idx", store=store)[0]
    (tmp_path / "wrong.idx").write_bytes(b"0 17\n")
    with pytest.raises(FormatError, match="index says 1"):
        TFRecordReader(uri, index_uri=f"file://{tmp_path}/wrong.idx", store=store)[0]


# ---------------------------------------------------------------------- bad input


def _good() -> bytes:
    return b"".join(frame_record(r) for r in RECORDS[:6])


def _offset(k: int) -> int:
    return sum(len(r) + 16 for r in RECORDS[:k])


@pytest.mark.parametrize(("case", "needle", "offset"), [
    ("garbage", "length CRC mismatch", 0),
    ("truncated_data", "truncated record 5", _offset(5)),
    ("truncated_header", "truncated record header", _offset(5)),
    ("bad_length_crc", "length CRC mismatch in the header of record 3", _offset(3)),
    ("huge_length", "length CRC mismatch", _offset(2)),
])  # fmt: skip
def test_bad_framing_fails_the_index(tmp_path: Path, store: Store, case: str, needle: str, offset: int) -> None:
    data = bytearray(_good())
    if case == "garbage":
        data = bytearray(os.urandom(1000))
    elif case == "truncated_data":
        data = data[:-10]
    elif case == "truncated_header":
        data = data[: _offset(5) + 7]
    elif case == "bad_length_crc":
        data[_offset(3) + 9] ^= 0x40
    elif case == "huge_length":
        data[_offset(2) + 7] = 0x7F
    uri = f"file://{tmp_path}/bad.tfrecord"
    store.put(uri, bytes(data))
    for chunk in (1 << 26, 100):
        with pytest.raises(FormatError, match=needle) as info:
            len(TFRecordReader(uri, store=store, scan_chunk=chunk))
        assert (info.value.uri, info.value.format, info.value.offset) == (uri, "tfrecord", offset)


def test_huge_length_without_crc_checks_is_a_truncation(tmp_path: Path, store: Store) -> None:
    data = bytearray(_good())
    data[_offset(2) + 7] = 0x7F
    store.put(f"file://{tmp_path}/bad.tfrecord", bytes(data))
    with pytest.raises(FormatError, match="truncated record 2") as info:
        len(TFRecordReader(f"file://{tmp_path}/bad.tfrecord", store=store, verify_crc=False))
    assert info.value.offset == _offset(2)


def test_bad_data_crc_raises_or_is_skipped(tmp_path: Path, store: Store) -> None:
    data = bytearray(_good())
    data[_offset(3) + 12 + 5] ^= 1  # a data byte of record 3
    uri = f"file://{tmp_path}/bad.tfrecord"
    store.put(uri, bytes(data))
    reader = TFRecordReader(uri, store=store)
    assert len(reader) == 6  # the headers are intact
    with pytest.raises(FormatError, match="record 3: data CRC mismatch") as info:
        reader[3]
    assert (info.value.uri, info.value.format, info.value.offset) == (uri, "tfrecord", _offset(3))
    with pytest.raises(FormatError):
        reader.read_batch([2, 3])
    skipping = TFRecordReader(uri, store=store, on_error="skip")
    assert skipping.read_batch([2, 3, 4]) == [RECORDS[2], RECORDS[4]]
    assert skipping.skipped == 1
    assert list(skipping) == [r for k, r in enumerate(RECORDS[:6]) if k != 3]
    unchecked = TFRecordReader(uri, store=store, verify_crc=False)
    assert unchecked[3] == bytes(data[_offset(3) + 12 : _offset(3) + 12 + len(RECORDS[3])])


def test_batch_checks_catch_every_kind_of_damage(tmp_path: Path, store: Store) -> None:
    records = [b"%04d" % i * (i % 7 + 1) for i in range(60)]
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, records, store=store)
    index = TFRecordReader(uri, store=store).tfindex
    data = bytearray((tmp_path / "d.tfrecord").read_bytes())
    data[int(index.offsets[20]) + 12] ^= 1  # data byte of record 20
    data[int(index.offsets[30]) + 9] ^= 1  # length CRC of record 30
    data[int(index.offsets[40]) + 12 + len(records[40])] ^= 1  # data CRC of record 40
    store.put(uri, bytes(data))
    # A 41-byte record 50 in the index where the header says otherwise.
    lengths = index.lengths.copy()
    lengths[50] += 1
    wrong = TFRecordIndex(uri=uri, size=index.size, etag=None, offsets=index.offsets, lengths=lengths)
    for batch in (list(range(60)), [50, 40, 30, 20, 0, 1, 2, 3, 4, 5]):  # contiguous, and scattered
        skipping = TFRecordReader(uri, store=store, index=wrong, on_error="skip")
        got = skipping.read_batch(batch)
        assert got == [records[i] for i in batch if i not in (20, 30, 40, 50)] and skipping.skipped == 4
    strict = TFRecordReader(uri, store=store, index=wrong)
    for row, needle in ((20, "record 20: data CRC mismatch"), (30, "record 30: length CRC mismatch"),
                        (40, "record 40: data CRC mismatch"), (50, "record 50: its header says")):  # fmt: skip
        for batch in ([row], list(range(row - 5, row + 5))):
            with pytest.raises(FormatError, match=needle) as info:
                strict.read_batch(batch)
            assert info.value.offset == index.offsets[row]
    unchecked = TFRecordReader(uri, store=store, index=index, verify_crc=False)
    assert len(unchecked.read_batch(range(60))) == 60


def test_batch_indices(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, RECORDS, store=store)
    reader = TFRecordReader(uri, store=store)
    n = len(RECORDS)
    assert reader.read_batch(np.array([-1, 0, n - 1])) == [RECORDS[-1], RECORDS[0], RECORDS[-1]]
    assert reader.read_batch(range(n - 3, n)) == RECORDS[-3:]
    with pytest.raises(IndexError, match=f"sample {n} out of range"):
        reader.read_batch([0, n])
    with pytest.raises(IndexError):
        reader.read_batch(np.array([-n - 1]))


def test_rewritten_object_is_detected(tmp_path: Path, store: Store) -> None:
    uri = f"file://{tmp_path}/d.tfrecord"
    write_tfrecord(uri, [b"aaaa", b"bbbb"], store=store)
    reader = TFRecordReader(uri, store=store)
    len(reader)
    write_tfrecord(uri, [b"aa", b"bbbbbb"], store=store)
    with pytest.raises(FormatError):
        reader[1]


@pytest.mark.parametrize("name", ["bad.tfrecord.gz", "bad.tfrecord.zlib"])
def test_bad_compressed_streams(tmp_path: Path, store: Store, name: str) -> None:
    uri = f"file://{tmp_path}/{name}"
    write_tfrecord(uri, RECORDS, store=store)
    good = (tmp_path / name).read_bytes()
    for data, needle in ((good[:-20], "truncated"), (good[:30] + bytes(30) + good[60:], "corrupt|CRC|truncated"),
                         (b"not compressed at all", "corrupt"), (good + b"junk", "corrupt|after the end")):  # fmt: skip
        store.put(uri, data)
        with pytest.raises(FormatError, match=needle) as info:
            len(TFRecordReader(uri, store=store))
        assert info.value.uri == uri and info.value.format == "tfrecord"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_scanner_on_arbitrary_bytes(data: bytes, verify: bool) -> None:
    try:
        offsets, lengths = scan_records(data, verify_crc=verify)
    except FormatError as exc:
        assert exc.format == "tfrecord" and exc.offset is not None and 0 <= exc.offset <= len(data)
    else:  # a valid result tiles the buffer exactly
        ends = (offsets + lengths + 16).tolist()
        assert offsets.tolist() == [0, *ends[:-1]][: len(ends)] and ends[-1:] in ([], [len(data)])


_GOOD = _good()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), max_size=4),
       st.integers(0, 40), st.sampled_from(["", "GZIP"]), st.sampled_from([1, 1000]))  # fmt: skip
def test_mutated_files_read_or_format_error(tmp_path: Path, edits: list[tuple[int, int]], cut: int,
                                            compression: str, vector_min: int) -> None:  # fmt: skip
    with mock.patch.object(tfrecord, "_VECTOR_MIN", vector_min):  # the numpy and the per-record checks
        _read_mutated(tmp_path, edits, cut, compression)


def _read_mutated(tmp_path: Path, edits: list[tuple[int, int]], cut: int, compression: str) -> None:
    data = bytearray(_GOOD)
    for pos, value in edits:
        data[pos] = value
    raw = bytes(data[: len(data) - cut])
    if compression:
        raw = gzip.compress(raw)
        if edits:
            raw = raw[: len(raw) - cut]
    store = Store.from_uri(f"file://{tmp_path}")
    uri = f"file://{tmp_path}/fuzz.tfrecord"
    store.put(uri, raw)
    reader = TFRecordReader(uri, store=store, compression=compression, on_error="skip", scan_chunk=64)
    try:
        n = len(reader)
    except FormatError as exc:
        assert exc.uri == uri
        return
    got = reader.read_batch(range(n))
    assert len(got) + reader.skipped == n
    strict = TFRecordReader(uri, store=store, compression=compression, index=reader.index)
    for i in range(n):
        try:
            strict[i]
        except FormatError as exc:
            assert exc.offset == reader.tfindex.offsets[i]


# ---------------------------------------------------------------------- backends


def test_backends(backend: Any) -> None:
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    records = [os.urandom(i % 700) for i in range(3000)]
    uri = backend.uri("data", "d.tfrecord")
    write_tfrecord(uri, records, store=store, index_uri=backend.uri("data", "d.tfrecord.idx"))
    store.stats.reset()
    reader = TFRecordReader(uri, store=store)
    assert len(reader) == 3000
    assert requests(store) == {"stat": 1, "get": 1}
    store.stats.reset()
    assert reader.read_batch(range(1000, 1200)) == records[1000:1200]
    assert requests(store) == {"get_range": 1}
    assert reader[2999] == records[2999]
    by_file = TFRecordReader(uri, storage_options=backend.storage_options,
                             index_uri=backend.uri("data", "d.tfrecord.idx"))  # fmt: skip
    assert by_file.index == reader.index
    assert by_file.read_batch([5, 2500]) == [records[5], records[2500]]
    gz = backend.uri("data", "d.tfrecord.gz")
    formats.write(gz, [{"i": i} for i in range(100)], storage_options=backend.storage_options)
    ex = formats.open(gz, storage_options=backend.storage_options, features={"i": ("int64", ())})
    assert [s["i"] for s in ex.read_batch([99, 0])] == [99, 0]


# ---------------------------------------------------------------------- interop with TensorFlow


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["", "GZIP", "ZLIB"])
def test_tensorflow_files_read_identically(tf: Any, tmp_path: Path, store: Store, compression: str) -> None:
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type=compression)) as writer:
        for r in RECORDS:
            writer.write(r)
    seen = [t.numpy() for t in tf.data.TFRecordDataset(path, compression_type=compression)]
    reader = TFRecordReader(f"file://{path}", compression=compression, store=store)
    assert len(reader) == len(seen)  # the index agrees with what TensorFlow sees
    assert [reader[i] for i in range(len(reader))] == seen == RECORDS
    assert list(reader) == RECORDS
    if not compression:  # our writer produces TensorFlow's bytes exactly
        ours = tmp_path / "ours.tfrecord"
        write_tfrecord(f"file://{ours}", RECORDS, store=store)
        assert ours.read_bytes() == Path(path).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ours.tfrecord", "ours.tfrecord.gz", "ours.tfrecord.zlib"])
def test_tensorflow_reads_our_files(tf: Any, tmp_path: Path, store: Store, name: str) -> None:
    rng = np.random.default_rng(0)
    samples = [{"image": rng.bytes(int(rng.integers(0, 3000))), "label": int(i),
                "vec": rng.random(8, dtype=np.float32), "ids": rng.integers(-(1 << 62), 1 << 62, 30)}
               for i in range(300)]  # fmt: skip
    uri = f"file://{tmp_path}/{name}"
    write_tfrecord(uri, samples, store=store)
    compression = resolve_compression(name, None)
    spec = {"image": tf.io.FixedLenFeature((), tf.string), "label": tf.io.FixedLenFeature((), tf.int64),
            "vec": tf.io.FixedLenFeature((8,), tf.float32), "ids": tf.io.FixedLenFeature((30,), tf.int64)}  # fmt: skip
    dataset = tf.data.TFRecordDataset(str(tmp_path / name), compression_type=compression)
    parsed = [tf.io.parse_single_example(r, spec) for r in dataset]
    assert len(parsed) == len(samples)
    ours = TFRecordReader(uri, store=store, features={"image": ("bytes", ()), "label": ("int64", ()),
                                                      "vec": ("float32", (8,)), "ids": ("int64", (30,))})  # fmt: skip
    for theirs, mine, sample in zip(parsed, list(ours), samples, strict=True):
        assert theirs["image"].numpy() == mine["image"] == sample["image"]
        assert theirs["label"].numpy() == mine["label"] == sample["label"]
        assert np.array_equal(theirs["vec"].numpy(), mine["vec"]) and np.array_equal(mine["vec"], sample["vec"])
        assert np.array_equal(theirs["ids"].numpy(), mine["ids"]) and np.array_equal(mine["ids"], sample["ids"])
