"""NPZ: the zip directory read by ranges, stored members without copies, deflated members with CRC
checks, rows across members, the streaming writer, interop with numpy and bad input."""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3dlio_loader import formats
from s3dlio_loader.errors import ConfigError, FormatError
from s3dlio_loader.formats import npz as npzmod
from s3dlio_loader.formats.npz import (
    NpzIndex,
    NpzReader,
    index_from_bytes,
    read_npz_index,
    write_npz,
)
from s3dlio_loader.storage import Store

RNG = np.random.default_rng(1)
N = 40  # rows of every member in ARRAYS

ARRAYS = {
    "f8": RNG.standard_normal((N, 3)),
    "i2": np.arange(N * 4, dtype=np.int16).reshape(N, 4),
    "be": np.arange(N, dtype=">i4"),
    "f2": RNG.standard_normal(N).astype(np.float16),
    "c": (RNG.standard_normal(N) * 1j).astype(np.complex64),
    "b": RNG.integers(0, 2, N).astype(bool),
    "t": np.arange(N).astype("datetime64[s]"),
    "u": np.array([f"s{i}" for i in range(N)]),
    "rec": np.zeros(N, dtype=[("a", "<i4"), ("b", ">f8", (2,))]),
    "img": RNG.integers(0, 255, (N, 8, 8, 3), dtype=np.uint8),
    "empty": np.zeros((N, 0), np.float32),
    "名": np.arange(N, dtype=np.uint64),
}
EXTRA = {  # members that cannot be read row by row
    "scalar": np.array(7.5),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "none": np.zeros((0,), np.int8),
}


def assert_same(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    if ref.dtype.itemsize:
        assert ours.tobytes() == ref.tobytes()


def assert_sample(sample: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert list(sample) == list(ref)
    for key in ref:
        assert_same(sample[key], ref[key])


def row(i: int) -> dict[str, np.ndarray]:
    """Row i of every member of ARRAYS, as arrays (a row of a 1-d array is a 0-d array, not a scalar)."""
    return {k: a[i, ...] for k, a in ARRAYS.items()}


def savez_bytes(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Stored array in format", UserWarning)
        (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def load_all(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------- interop


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_numpy_files_read_identical(tmp_path, compressed):
    arrays = {**ARRAYS, **EXTRA}
    data = savez_bytes(arrays, compressed)
    (tmp_path / "a.npz").write_bytes(data)
    uri = f"file://{tmp_path}/a.npz"
    store = Store.from_uri(uri)
    sample = NpzReader(uri, store=store)[0]
    assert_sample(sample, load_all(data))
    assert all(not a.flags.writeable for a in sample.values())
    # again with an index built by range requests
    index = read_npz_index(uri, store=store)
    assert_sample(NpzReader(uri, store=store, index=index)[0], load_all(data))


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_our_files_are_numpy_files(tmp_path, compressed):
    arrays = {**ARRAYS, **EXTRA}
    uri = f"file://{tmp_path}/ours.npz"
    write_npz(uri, arrays, store=Store.from_uri(uri), compress=compressed)
    path = tmp_path / "ours.npz"
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every CRC right
        assert [i.compress_type for i in zf.infolist()] == [8 if compressed else 0] * len(arrays)
    assert_sample(load_all(path.read_bytes()), arrays)
    assert_sample(NpzReader(uri)[0], arrays)
    index = read_npz_index(uri)
    if not compressed:  # stored array data is 64-byte aligned in the file
        assert np.all((index.data_offset + index.npy_data_offset) % 64 == 0)
    assert write_npz is formats.writer_function("npz")


def test_index_matches_zipfile_and_numpy(tmp_path):
    data = savez_bytes({**ARRAYS, **EXTRA})
    (tmp_path / "a.npz").write_bytes(data)
    index = read_npz_index(f"file://{tmp_path}/a.npz")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert index.names == tuple(i.filename for i in infos)
        with np.load(io.BytesIO(data)) as z:
            assert index.keys == tuple(z.files)
        assert list(index.method) == [i.compress_type for i in infos]
        assert list(index.crc32) == [i.CRC for i in infos]
        assert list(index.file_size) == [i.file_size for i in infos]
        assert list(index.compressed_size) == [i.compress_size for i in infos]
        for m, info in enumerate(infos):
            nlen, elen = struct.unpack_from("<HH", data, info.header_offset + 26)
            assert index.data_offset[m] == info.header_offset + 30 + nlen + elen
            member = zf.read(info)
            f = io.BytesIO(member)
            version = np.lib.format.read_magic(f)
            assert version == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            assert index.npy_data_offset[m] == f.tell()
            assert index.member_shape(m) == shape
            assert bool(index.fortran_order[m]) == fortran
            assert index.member_dtype(m) == dtype
    assert index.size == len(data) and index.etag is None
    assert NpzIndex.from_dict(index.to_dict()) == index
    assert index_from_bytes(data, uri=index.uri) == index


def test_zip64_written_and_read(tmp_path, monkeypatch):
    monkeypatch.setattr(npzmod, "_ZIP64_LIMIT", 100)  # every size and offset above it needs zip64 fields
    for compress in (False, True):
        uri = f"file://{tmp_path}/z{compress}.npz"
        write_npz(uri, ARRAYS, compress=compress)
        data = (tmp_path / f"z{compress}.npz").read_bytes()
        assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert zf.testzip() is None
        assert_sample(load_all(data), ARRAYS)
        assert_sample(NpzReader(uri)[0], ARRAYS)
        assert_sample(NpzReader(uri, index=read_npz_index(uri))[0], ARRAYS)


def test_zipfile_quirks_comment_prefix_and_data_descriptors(tmp_path):
    arrays = {"x": np.arange(10), "y": np.ones((2, 2))}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.comment = b"c" * 65535  # the longest comment: the end record is 64 KiB from the end
        for k, a in arrays.items():
            with zf.open(f"{k}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a)
    data = buf.getvalue()
    assert_sample(index_and_read(tmp_path, "comment.npz", data), arrays)
    assert_sample(index_and_read(tmp_path, "prefixed.npz", b"#!/bin/sh\n" * 100 + data), arrays)

    class Unseekable(io.RawIOBase):  # zipfile writes data descriptors to a stream it cannot seek
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[override]
            self.parts.append(bytes(b))
            return len(b)

    out = Unseekable()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, a in arrays.items():
            with zf.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, a)
    assert_sample(index_and_read(tmp_path, "stream.npz", b"".join(out.parts)), arrays)


def index_and_read(tmp_path, name: str, data: bytes) -> dict[str, np.ndarray]:
    (tmp_path / name).write_bytes(data)
    uri = f"file://{tmp_path}/{name}"
    ranged = NpzReader(uri, index=read_npz_index(uri))[0]
    whole = NpzReader(uri)[0]
    assert_sample(whole, ranged)
    return ranged


# ---------------------------------------------------------------------- requests


class GetRangesSpy:
    def __init__(self, store: Store) -> None:
        self.calls: list[int] = []
        real = store.get_ranges

        def spy(uri, ranges):
            self.calls.append(len(ranges))
            return real(uri, ranges)

        store.get_ranges = spy  # type: ignore[method-assign]


def test_index_requests_small_and_large_archives(tmp_path):
    small = f"file://{tmp_path}/small.npz"
    write_npz(small, {"a": np.arange(100), "b": np.zeros(10)})
    store = Store.from_uri(small)
    read_npz_index(small, store=store)
    assert store.stats.snapshot()["by_op"] == {"stat": 1, "get_range": 1}  # the tail holds everything

    big = f"file://{tmp_path}/big.npz"
    arrays = {f"m{i}": RNG.standard_normal(1 << 17) for i in range(8)}  # 1 MiB members
    np.savez(tmp_path / "big.npz", **arrays)
    store = Store.from_uri(big)
    spy = GetRangesSpy(store)
    index = read_npz_index(big, store=store)
    assert spy.calls == [1, 8]  # the tail, then every member's local + .npy header in one pass
    assert store.stats.bytes_read < 8 * 8192 + 70_000

    store.stats.reset()
    sample = NpzReader(big, store=store, index=index)[0]
    assert_sample(sample, arrays)
    assert store.stats.requests == 1  # contiguous members: one coalesced request

    fresh = Store.from_uri(big)
    assert_sample(NpzReader(big, store=fresh)[0], arrays)
    assert fresh.stats.snapshot()["by_op"] == {"get": 1}  # no index: one GET, index built from it


def test_rows_coalesce_across_members_and_rows(tmp_path):
    uri = f"file://{tmp_path}/rows.npz"
    write_npz(uri, ARRAYS)
    store = Store.from_uri(uri)
    reader = NpzReader(uri, rows=True, store=store)
    assert len(reader) == N
    store.stats.reset()
    wanted = [5, 6, 7, 8, 30, 2, 5]
    batch = reader.read_batch(wanted)
    for i, sample in zip(wanted, batch, strict=True):
        assert_sample(sample, row(i))
    assert store.stats.requests <= 2 < len(wanted) * len(ARRAYS)
    assert_sample(reader[-1], row(N - 1))
    with pytest.raises(IndexError):
        reader[N]


def test_rows_of_deflated_members_are_inflated_once(tmp_path):
    data = savez_bytes(ARRAYS, compressed=True)
    (tmp_path / "c.npz").write_bytes(data)
    uri = f"file://{tmp_path}/c.npz"
    store = Store.from_uri(uri)
    reader = NpzReader(uri, rows=True, store=store)
    assert len(reader) == N
    first = reader.read_batch([1, 2])
    requests = store.stats.requests
    again = reader.read_batch([3, 1])
    assert store.stats.requests == requests  # served from the inflated arrays
    for i, sample in zip([1, 2, 3, 1], first + again, strict=True):
        assert_sample(sample, row(i))
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._inflated == {}  # a worker inflates on its own
    assert_sample(clone[0], row(0))


def test_rows_config_errors(tmp_path):
    for name, arrays, match in [
        ("len.npz", {"a": np.zeros(3), "b": np.zeros(4)}, "same length"),
        ("0d.npz", {"a": np.zeros(3), "s": np.array(1)}, "0-d"),
        ("f.npz", {"f": np.asfortranarray(np.zeros((3, 2)))}, "Fortran"),
    ]:
        uri = f"file://{tmp_path}/{name}"
        write_npz(uri, arrays)
        with pytest.raises(ConfigError, match=match):
            len(NpzReader(uri, rows=True))
        assert_sample(NpzReader(uri)[0], arrays)  # whole-archive mode reads them
    write_npz(f"file://{tmp_path}/none.npz", {})
    assert len(NpzReader(f"file://{tmp_path}/none.npz", rows=True)) == 0
    assert NpzReader(f"file://{tmp_path}/none.npz")[0] == {}
    with pytest.raises(ConfigError):
        write_npz(f"file://{tmp_path}/x.npz", {"": np.zeros(1)})
    with pytest.raises(ConfigError):
        write_npz(f"file://{tmp_path}/x.npz", np.zeros(1), compress=True, level=10)


def test_positional_arrays_registry_and_pickle(tmp_path):
    uri = f"file://{tmp_path}/pos.npz"
    formats.write(uri, [np.arange(3), np.ones(3)], compress=True)
    with np.load(tmp_path / "pos.npz") as z:
        assert z.files == ["arr_0", "arr_1"]
    reader = formats.open(uri)
    assert isinstance(reader, NpzReader) and reader.keys == ("arr_0", "arr_1")
    clone = pickle.loads(pickle.dumps(reader))
    assert_sample(clone[0], {"arr_0": np.arange(3), "arr_1": np.ones(3)})


def test_stored_members_are_not_copied(tmp_path):
    uri = f"file://{tmp_path}/nc.npz"
    write_npz(uri, {"a": np.arange(1000.0), "b": np.arange(10)})
    sample = NpzReader(uri, index=read_npz_index(uri))[0]
    a, b = sample["a"], sample["b"]
    assert a.base is not None and b.base is not None  # views of the fetched buffer
    assert not a.flags.owndata and a.flags.aligned


# ---------------------------------------------------------------------- every backend


def test_roundtrip_on_every_backend(backend):
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    uri = backend.uri("d/ours.npz")
    write_npz(uri, ARRAYS, store=store)
    assert_sample(load_all(store.get(uri)), ARRAYS)
    assert_sample(NpzReader(uri, store=store)[0], ARRAYS)
    index = read_npz_index(uri, store=store)
    assert index.etag == store.stat(uri).etag
    rows = NpzReader(uri, rows=True, store=store, index=index)
    store.stats.reset()
    batch = rows.read_batch(list(range(10, 30)))
    assert store.stats.requests < 20
    for i, sample in zip(range(10, 30), batch, strict=True):
        assert_sample(sample, row(i))

    theirs = backend.uri("d/numpy.npz")
    store.put(theirs, savez_bytes({**ARRAYS, **EXTRA}, compressed=True))
    assert_sample(NpzReader(theirs, store=store, index=read_npz_index(theirs, store=store))[0],
                  {**ARRAYS, **EXTRA})  # fmt: skip
    theirs_rows = backend.uri("d/numpy-rows.npz")
    store.put(theirs_rows, savez_bytes(ARRAYS, compressed=True))
    assert_sample(formats.open(theirs_rows, storage_options=backend.storage_options, rows=True)[3], row(3))


# ---------------------------------------------------------------------- bad input


def _cd_offset(data: bytes) -> int:
    pos = data.rfind(b"PK\x05\x06")
    return struct.unpack_from("<L", data, pos + 16)[0]


def _expect_error(tmp_path, name: str, data: bytes, match: str) -> FormatError:
    (tmp_path / name).write_bytes(data)
    uri = f"file://{tmp_path}/{name}"
    errors = []
    for read in (lambda: NpzReader(uri)[0],
                 lambda: NpzReader(uri, index=read_npz_index(uri)).read_batch([0])):  # fmt: skip
        with pytest.raises(FormatError, match=match) as info:
            read()
        err = info.value
        assert err.uri == uri and err.format == "npz" and uri in str(err)
        assert err.offset is None or 0 <= err.offset <= len(data)
        errors.append(err)
    return errors[0]


def test_bad_archives(tmp_path):
    stored = savez_bytes(ARRAYS)
    deflated = savez_bytes(ARRAYS, compressed=True)
    cd = _cd_offset(deflated)

    err = _expect_error(tmp_path, "notzip.npz", b"hello world" * 10, "end-of-central-directory")
    assert err.offset is not None
    _expect_error(tmp_path, "empty.npz", b"", "truncated")
    _expect_error(tmp_path, "cut-tail.npz", stored[:-10], "end-of-central-directory")
    _expect_error(tmp_path, "cut-middle.npz", stored[: len(stored) // 2] + stored[-200:], ".")

    bad_crc = bytearray(deflated)
    struct.pack_into("<L", bad_crc, cd + 16, struct.unpack_from("<L", bad_crc, cd + 16)[0] ^ 1)
    err = _expect_error(tmp_path, "crc.npz", bytes(bad_crc), "CRC-32 mismatch")
    assert err.offset is not None and 0 < err.offset < cd

    flipped = bytearray(deflated)
    first = zipfile.ZipFile(io.BytesIO(deflated)).infolist()[0]
    assert first.compress_size > 400
    flipped[first.header_offset + 30 + len(first.filename) + 300] ^= 0xFF  # inside the compressed array data
    _expect_error(tmp_path, "flip.npz", bytes(flipped), "CRC-32 mismatch|corrupt deflate|deflate stream")

    cd = _cd_offset(stored)
    bad_sig = bytearray(stored)
    bad_sig[cd : cd + 4] = b"XXXX"
    _expect_error(tmp_path, "cdsig.npz", bytes(bad_sig), "central directory entry signature")
    bad_local = bytearray(stored)
    bad_local[0:4] = b"XXXX"
    _expect_error(tmp_path, "lfh.npz", bytes(bad_local), "local header signature")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("a.npy", savez_bytes({"a": np.zeros(3)}))
    _expect_error(tmp_path, "bz2.npz", buf.getvalue(), "compression method 12")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"not an array")
    _expect_error(tmp_path, "txt.npz", buf.getvalue(), "not an .npy file")

    obj = savez_bytes({"o": np.array([None, {}], dtype=object)})
    _expect_error(tmp_path, "object.npz", obj, "pickle")

    encrypted = bytearray(stored)
    struct.pack_into("<H", encrypted, cd + 8, 1)
    _expect_error(tmp_path, "enc.npz", bytes(encrypted), "encrypted")


def test_on_error_skip(tmp_path):
    deflated = bytearray(savez_bytes({"a": np.arange(100)}, compressed=True))
    cd = _cd_offset(bytes(deflated))
    deflated[cd + 16] ^= 0x55
    (tmp_path / "bad.npz").write_bytes(bytes(deflated))
    reader = NpzReader(f"file://{tmp_path}/bad.npz", on_error="skip")
    assert reader.read_batch([0, 0]) == []
    assert reader.skipped == 2


# ---------------------------------------------------------------------- property tests

_VALID = [savez_bytes({"a": np.arange(5), "b": np.ones((2, 2), ">f4")}, c) for c in (False, True)]
_VALID.append(savez_bytes({"x": np.zeros(3, dtype=[("p", "<i2")])}))


def _check_archive(data: bytes) -> None:
    try:
        index = index_from_bytes(data, uri="file:///nowhere.npz")
    except FormatError as err:
        assert err.format == "npz"
        assert err.offset is None or 0 <= err.offset <= len(data) + 12
        return
    assert isinstance(index, NpzIndex)
    assert len(index.names) == len(index.method) == len(index.data_offset) == len(index.descr)
    assert np.all(index.data_offset + index.compressed_size <= len(data))
    # a valid index always reads, or fails with FormatError (e.g. a bad CRC)
    reader = NpzReader("file:///nowhere.npz", index=index, store=_MemoryStore(data))
    with contextlib.suppress(FormatError):
        reader[0]


class _MemoryStore(Store):
    """A Store serving one in-memory object (for property tests)."""

    def __init__(self, data: bytes) -> None:
        super().__init__("file")
        self._data = data

    def get(self, uri: str, *, size: int | None = None) -> bytes:
        return self._data

    def get_ranges(self, uri, ranges):  # type: ignore[no-untyped-def]
        view = memoryview(self._data)
        return [view[o : o + n] for o, n in ranges]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_zip_parser_on_arbitrary_bytes(data):
    _check_archive(data)
    _check_archive(data + b"PK\x05\x06" + bytes(18))
    _check_archive(_VALID[0][:200] + data + _VALID[0][-22:])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(_VALID))), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                                       min_size=1, max_size=6), st.integers(0, 2000))
def test_zip_parser_on_mutated_archives(which, edits, cut):
    data = bytearray(_VALID[which])
    for pos, value in edits:
        data[(len(data) - 1 - pos) % len(data) if pos % 2 else pos % len(data)] = value  # head and tail
    _check_archive(bytes(data))
    _check_archive(bytes(data[: max(0, len(data) - cut)]))
    _check_archive(bytes(data[cut:]))
