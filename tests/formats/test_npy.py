"""NPY: header parsing without eval, zero-copy reads (whole array, rows, mmap), the writer, bad input."""

from __future__ import annotations

import io
import pickle
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3dlio_loader import formats
from s3dlio_loader.errors import ConfigError, FormatError
from s3dlio_loader.formats import npy
from s3dlio_loader.formats.npy import (
    HEAD_FETCH,
    NpyHeader,
    NpyIndex,
    NpyReader,
    array_to_npy_bytes,
    dtype_from_descr,
    parse_literal,
    parse_npy_header,
    read_npy_index,
    write_npy,
)
from s3dlio_loader.storage import Store

RNG = np.random.default_rng(0)


OFFSET_DTYPE = np.dtype({"names": ["x", "y"], "formats": ["<i2", "<f8"], "offsets": [0, 8], "itemsize": 24})


def _dtypes_and_arrays() -> list[tuple[str, np.ndarray]]:
    cases = [
        ("f8-2d", RNG.standard_normal((5, 7))),
        ("f4", RNG.standard_normal(11).astype(np.float32)),
        ("f2", RNG.standard_normal((3, 4)).astype(np.float16)),
        ("longdouble", np.arange(6, dtype=np.longdouble)),
        ("i1", np.arange(-5, 5, dtype=np.int8)),
        ("u2", np.arange(9, dtype=np.uint16).reshape(3, 3)),
        ("i8", np.arange(24, dtype=np.int64).reshape(2, 3, 4)),
        ("big-endian-i4", np.arange(10, dtype=">i4")),
        ("big-endian-f8", np.linspace(0, 1, 6, dtype=">f8").reshape(2, 3)),
        ("bool", np.array([True, False, True, True])),
        ("complex64", (RNG.standard_normal(5) + 1j * RNG.standard_normal(5)).astype(np.complex64)),
        ("complex128", RNG.standard_normal((2, 2)) * (1 + 2j)),
        ("datetime64", np.array(["2024-01-01T12:00", "1999-12-31T23:59"], dtype="datetime64[m]")),
        ("timedelta64", np.array([1, 2, 3], dtype="timedelta64[ns]")),
        ("unicode", np.array(["a", "bcd", "é"])),
        ("bytes", np.array([b"xy", b"z"])),
        ("void", np.array([b"\x01\x02\x03"], dtype="V3")),
        ("structured", np.array([(1, 2.5, b"ab"), (3, -1.0, b"c")], dtype=[("a", "<i4"), ("b", ">f8"), ("c", "S2")])),
        ("structured-subarray", np.zeros(3, dtype=[("x", "<f4", (2, 3)), ("y", "u1")])),
        ("structured-nested", np.zeros(2, dtype=[("p", [("q", "<i2"), ("r", "<f8", (2,))]), ("s", "?")])),
        ("structured-aligned", np.zeros(4, dtype=np.dtype([("a", "u1"), ("b", "<f8")], align=True))),
        ("structured-titles", np.zeros(2, dtype=[(("a title", "t"), "<i4")])),
        ("structured-offsets", np.zeros(2, dtype=OFFSET_DTYPE)),
        ("unicode-field-name", np.zeros(2, dtype=[("名前", "<i4")])),  # a version 3.0 header
        ("fortran", np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))),
        ("fortran-3d", np.asfortranarray(np.arange(24, dtype=np.int32).reshape(2, 3, 4))),
        ("0-d", np.array(3.5)),
        ("0-d-structured", np.array((1, 2.0), dtype=[("a", "<i4"), ("b", "<f8")])),
        ("empty", np.zeros((0, 3), dtype=np.float32)),
        ("empty-1d", np.zeros(0, dtype=np.int16)),
        ("zero-itemsize", np.zeros(3, dtype="V0")),
    ]
    return cases


CASES = _dtypes_and_arrays()
IDS = [name for name, _ in CASES]


def np_save(target, arr: np.ndarray) -> None:
    """np.save, quiet about the version 2.0/3.0 headers it warns about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Stored array in format", UserWarning)
        np.save(target, arr)


def np_save_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np_save(buf, arr)
    return buf.getvalue()


def np_load_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), max_header_size=1 << 22)  # type: ignore[no-any-return]


def assert_same(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == ref.dtype
    assert ours.shape == ref.shape
    if ref.dtype.itemsize:
        assert ours.tobytes() == ref.tobytes()  # exact, also for NaN and padding bytes
    if ref.dtype.fields is None:
        np.testing.assert_array_equal(ours, ref)


# ---------------------------------------------------------------------- interop with numpy


@pytest.mark.parametrize(("name", "arr"), CASES, ids=IDS)
def test_numpy_files_read_identical_and_index_matches_numpy(tmp_path, name, arr):
    path = tmp_path / f"{name}.npy"
    np_save(path, arr)
    uri = f"file://{path}"
    store = Store.from_uri(uri)
    ours = NpyReader(uri, store=store)[0]
    ref = np.load(path)
    assert_same(ours, ref)
    assert not ours.flags.writeable

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0  # fmt: skip
        shape, fortran, dtype = read_header(f)
        data_offset = f.tell()
    index = read_npy_index(uri, store=store)
    assert index.shape_tuple == shape
    assert index.shape.dtype == np.int64
    assert index.fortran_order == fortran
    assert index.dtype == ref.dtype
    if version != (3, 0):  # numpy's public header readers decode latin-1 (no UTF-8 reader is public)
        assert index.dtype == dtype
    assert index.data_offset == data_offset
    assert index.header_len == data_offset - (10 if version == (1, 0) else 12)
    assert index.version == version[0]
    assert index.size == path.stat().st_size
    assert index.nbytes == ref.nbytes


@pytest.mark.parametrize(("name", "arr"), CASES, ids=IDS)
def test_our_files_are_numpy_files(tmp_path, name, arr):
    uri = f"file://{tmp_path}/{name}.npy"
    write_npy(uri, arr, store=Store.from_uri(uri))
    data = (tmp_path / f"{name}.npy").read_bytes()
    assert data == np_save_bytes(arr)  # byte for byte what np.save writes
    assert_same(np.load(tmp_path / f"{name}.npy"), arr)
    assert_same(NpyReader(uri)[0], arr)


def test_long_structured_header_uses_version_2_and_a_second_request(tmp_path):
    arr = np.zeros(3, dtype=[(f"field_{i:04d}", "<f4") for i in range(400)])
    uri = f"file://{tmp_path}/wide.npy"
    store = Store.from_uri(uri)
    write_npy(uri, arr, store=store)
    index_ref = np_save_bytes(arr)
    assert index_ref == (tmp_path / "wide.npy").read_bytes()
    store.stats.reset()
    index = read_npy_index(uri, store=store)
    assert index.data_offset > HEAD_FETCH
    assert store.stats.snapshot()["by_op"] == {"stat": 1, "get_range": 2}
    assert_same(NpyReader(uri, store=store, index=index)[0], arr)

    huge = np.zeros(1, dtype=[(f"f{i:05d}", "u1") for i in range(4000)])  # header > 64 KiB
    assert np_save_bytes(huge)[6:8] == b"\x02\x00"
    assert parse_npy_header(np_save_bytes(huge)).version == (2, 0)


def test_header_request_count(tmp_path):
    uri = f"file://{tmp_path}/a.npy"
    np_save(tmp_path / "a.npy", np.arange(1000.0))
    store = Store.from_uri(uri)
    read_npy_index(uri, store=store)
    assert store.stats.snapshot()["by_op"] == {"stat": 1, "get_range": 1}
    assert store.stats.bytes_read <= HEAD_FETCH


def test_whole_array_without_index_is_one_get(tmp_path):
    arr = np.arange(100, dtype=np.int32).reshape(10, 10)
    np_save(tmp_path / "a.npy", arr)
    uri = f"file://{tmp_path}/a.npy"
    store = Store.from_uri(uri)
    reader = NpyReader(uri, store=store)
    assert len(reader) == 1
    assert_same(reader[0], arr)
    assert store.stats.snapshot()["by_op"] == {"get": 1}
    assert reader.index.shape_tuple == (10, 10)
    assert reader.index.etag is None
    assert reader.read_batch([0, -1]) and len(reader.read_batch([0, 0, 0])) == 3


# ---------------------------------------------------------------------- rows


@pytest.mark.parametrize("dtype", ["<f4", ">i8", "bool", [("a", "<i2"), ("b", "<f8", (2,))]])
def test_rows_match_numpy_and_batches_coalesce(tmp_path, dtype):
    arr = np.zeros((200, 3, 5), dtype=dtype)
    raw = RNG.integers(0, 255, arr.nbytes, dtype=np.uint8)
    if arr.dtype == np.bool_:
        raw %= 2
    arr = np.frombuffer(raw.tobytes(), dtype=arr.dtype).reshape(arr.shape)
    np_save(tmp_path / "rows.npy", arr)
    uri = f"file://{tmp_path}/rows.npy"
    store = Store.from_uri(uri, coalesce_gap=4096)
    reader = NpyReader(uri, rows=True, store=store)
    assert len(reader) == 200
    store.stats.reset()
    indices = [*range(10, 74), 150, 151, 3, 150]
    batch = reader.read_batch(indices)
    assert len(batch) == len(indices)
    for i, row in zip(indices, batch, strict=True):
        assert_same(row, arr[i])
    requests = store.stats.snapshot()["requests"]
    assert requests <= 3 < len(indices)  # rows 10..73 / 150,151 / 3: three blocks at most
    assert_same(reader[-1], arr[-1])
    assert reader.read_batch([]) == []
    with pytest.raises(IndexError, match="out of range"):
        reader.read_batch([200])


def test_rows_refuse_fortran_and_0d(tmp_path):
    np_save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 3))))
    with pytest.raises(ConfigError, match="Fortran order"):
        len(NpyReader(f"file://{tmp_path}/f.npy", rows=True))
    np_save(tmp_path / "z.npy", np.array(1.0))
    with pytest.raises(ConfigError, match="0-d"):
        NpyReader(f"file://{tmp_path}/z.npy", rows=True).read_batch([0])
    # a 1-d array has contiguous rows whatever the flag says
    assert len(NpyReader(f"file://{tmp_path}/z.npy")) == 1


def test_rows_of_empty_and_zero_width_arrays(tmp_path):
    np_save(tmp_path / "e.npy", np.zeros((0, 4)))
    assert len(NpyReader(f"file://{tmp_path}/e.npy", rows=True)) == 0
    np_save(tmp_path / "w.npy", np.zeros((5, 0), np.int32))
    reader = NpyReader(f"file://{tmp_path}/w.npy", rows=True)
    rows = reader.read_batch([0, 4])
    assert [r.shape for r in rows] == [(0,), (0,)]


# ---------------------------------------------------------------------- mmap


def test_mmap_whole_and_rows(tmp_path):
    arr = RNG.standard_normal((50, 8)).astype(np.float32)
    np_save(tmp_path / "m.npy", arr)
    uri = f"file://{tmp_path}/m.npy"
    store = Store.from_uri(uri)
    whole = NpyReader(uri, mmap=True, store=store)
    assert_same(whole[0], arr)
    assert not whole[0].flags.writeable
    rows = NpyReader(uri, mmap=True, rows=True, store=store)
    assert len(rows) == 50
    for i, row in zip([7, 0, 49], rows.read_batch([7, 0, 49]), strict=True):
        assert_same(row, arr[i])
    assert store.stats.requests == 0  # nothing went through the Store
    assert rows.index == read_npy_index(uri)  # the same index as the Store path builds
    clone = pickle.loads(pickle.dumps(rows))  # a worker re-maps the file itself
    assert_same(clone[3], arr[3])
    with pytest.raises(ConfigError, match="file://"):
        NpyReader("s3://bucket/a.npy", mmap=True, store=Store("s3"))


def test_mmap_fortran_array(tmp_path):
    arr = np.asfortranarray(np.arange(20).reshape(4, 5))
    np_save(tmp_path / "f.npy", arr)
    assert_same(NpyReader(f"file://{tmp_path}/f.npy", mmap=True)[0], arr)


# ---------------------------------------------------------------------- writer


def test_array_to_npy_bytes_does_not_copy_contiguous_data():
    arr = RNG.standard_normal((64, 32))
    header, data = array_to_npy_bytes(arr)
    assert isinstance(data, memoryview)
    assert np.shares_memory(np.frombuffer(data, np.uint8), arr)
    assert bytes(header) + bytes(data) == np_save_bytes(arr)

    fortran = np.asfortranarray(arr)
    header, data = array_to_npy_bytes(fortran)
    assert np.shares_memory(np.frombuffer(data, np.uint8), fortran)
    assert bytes(header) + bytes(data) == np_save_bytes(fortran)

    strided = arr[::2, ::3]  # neither C nor Fortran contiguous: one copy, in C order
    header, data = array_to_npy_bytes(strided)
    assert not np.shares_memory(np.frombuffer(data, np.uint8), arr)
    assert bytes(header) + bytes(data) == np_save_bytes(strided)

    dates = np.arange(5).astype("datetime64[D]")
    assert np.shares_memory(np.frombuffer(array_to_npy_bytes(dates)[1], np.uint8), dates)
    assert len(array_to_npy_bytes(np.zeros((0, 2)))) == 1  # no data piece for an empty array


def test_write_npy_streams_pieces_through_open_writer(tmp_path, monkeypatch):
    arr = np.arange(1 << 16, dtype=np.float64)
    uri = f"file://{tmp_path}/w.npy"
    store = Store.from_uri(uri)
    written: list[object] = []
    real_open_writer = store.open_writer

    def spy(u, **kw):
        writer = real_open_writer(u, **kw)
        real_write = writer.write

        def write(data):
            written.append(data)
            return real_write(data)

        writer.write = write  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(store, "open_writer", spy)
    write_npy(uri, arr, store=store)
    assert len(written) == 2
    assert isinstance(written[1], memoryview) and np.shares_memory(np.frombuffer(written[1], np.uint8), arr)
    assert_same(np.load(tmp_path / "w.npy"), arr)


def test_writer_refuses_object_arrays(tmp_path):
    with pytest.raises(ConfigError, match="pickle"):
        write_npy(f"file://{tmp_path}/o.npy", np.array([1, "a", None], dtype=object))
    assert not (tmp_path / "o.npy").exists()


def test_registry_open_and_write(tmp_path):
    uri = f"file://{tmp_path}/reg.npy"
    arr = np.arange(12).reshape(3, 4)
    formats.write(uri, arr)
    reader = formats.open(uri, rows=True)
    assert isinstance(reader, NpyReader)
    assert_same(reader[2], arr[2])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.index == reader.index
    assert NpyIndex.from_dict(reader.index.to_dict()) == reader.index


# ---------------------------------------------------------------------- every backend


def test_roundtrip_on_every_backend(backend):
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    arr = RNG.standard_normal((300, 16)).astype(np.float32)
    uri = backend.uri("data/arr.npy")
    write_npy(uri, arr, store=store)
    assert_same(np_load_bytes(store.get(uri)), arr)
    assert_same(NpyReader(uri, store=store)[0], arr)

    store.stats.reset()
    rows = NpyReader(uri, rows=True, store=store)
    assert len(rows) == 300
    index = rows.index
    assert index.etag == store.stat(uri).etag
    if backend.scheme in ("s3", "gs", "az"):
        assert index.etag
    store.stats.reset()
    wanted = list(range(40, 104))
    batch = rows.read_batch(wanted)
    for i, row in zip(wanted, batch, strict=True):
        assert_same(row, arr[i])
    assert 1 <= store.stats.requests < len(wanted)

    numpy_uri = backend.uri("data/numpy.npy")
    ref = np.asfortranarray(np.arange(30, dtype=">i4").reshape(5, 6))
    store.put(numpy_uri, np_save_bytes(ref))
    assert_same(NpyReader(numpy_uri, store=store)[0], ref)
    assert_same(formats.open(numpy_uri, storage_options=backend.storage_options)[0], ref)


# ---------------------------------------------------------------------- bad input


def _bad(tmp_path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return f"file://{tmp_path}/{name}"


def test_bad_files_raise_format_error_naming_uri_format_offset(tmp_path):
    good = np_save_bytes(np.arange(10.0))
    cases = {
        "magic.npy": (b"\x93NUMPX" + good[6:], 0),
        "version.npy": (good[:6] + b"\x09\x00" + good[8:], 6),
        "truncated-data.npy": (good[:-8], len(good) - 8),
        "truncated-header.npy": (good[:60], 60),
        "tiny.npy": (good[:5], 5),
        "empty.npy": (b"", 0),
        "object.npy": (np_save_bytes(np.array([None, 1], dtype=object)), 10),
        "malformed.npy": (good.replace(b"'shape': (10,)", b"'shape': (1O,)"), None),
        "evil.npy": (good.replace(b"'descr': '<f8'", b"'descr': __import__('os')"), None),
        "keys.npy": (good.replace(b"'fortran_order'", b"'fortran_ordex'"), 10),
    }
    for name, (data, offset) in cases.items():
        uri = _bad(tmp_path, name, data)
        for make in (lambda u: NpyReader(u)[0], lambda u: read_npy_index(u), lambda u: NpyReader(u, mmap=True)[0]):
            with pytest.raises(FormatError) as info:
                make(uri)
            err = info.value
            assert err.uri == uri and err.format == "npy", name
            assert uri in str(err)
            if offset is not None:
                assert err.offset == offset, (name, err)
            else:
                assert err.offset is not None and 10 <= err.offset < 128, (name, err)


def test_truncated_rows_file_fails_at_index_time(tmp_path):
    good = np_save_bytes(np.zeros((100, 10)))
    uri = _bad(tmp_path, "t.npy", good[:-1])
    with pytest.raises(FormatError, match="truncated"):
        len(NpyReader(uri, rows=True))


def test_on_error_skip(tmp_path):
    uri = _bad(tmp_path, "bad.npy", b"not an npy file at all")
    reader = NpyReader(uri, on_error="skip")
    assert reader.read_batch([0]) == []
    assert reader.skipped == 1
    with pytest.raises(FormatError):
        NpyReader(uri).read_batch([0])


def test_config_errors():
    with pytest.raises(ConfigError):
        NpyReader("file:///x.npy", max_header_size=0)
    with pytest.raises(ConfigError, match="NpyIndex"):
        NpyReader("file:///x.npy", index=object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the literal parser


def test_literal_parser_reads_what_numpy_writes_and_nothing_else():
    assert parse_literal("{'a': (1, 2,), \"b\": [('x', '<i4', (2,))], 'c': True, 'd': None, 'e': (3)}") == {
        "a": (1, 2), "b": [("x", "<i4", (2,))], "c": True, "d": None, "e": 3}  # fmt: skip
    assert parse_literal("()") == ()
    assert parse_literal(r"'\x41\u00e9\n\'\\'") == "Aé\n'\\"
    assert parse_literal("(3L, 4L)") == (3, 4)  # Python 2 era headers
    for bad in ["__import__('os')", "1 + 1", "{'a': 1.5}", "[1, 2", "{'a' 1}", "{1: 2}", "{'a': 1, 'a': 2}",
                "'\\N{DIGIT ONE}'", "(" * 100 + ")" * 100, "1" * 30, "{'a': 1} x", "b'x'", "'unterminated"]:
        with pytest.raises(ValueError):
            parse_literal(bad)


def test_descr_strings_round_trip():
    for dt in ["<f8", ">i4", "|b1", "<M8[ns]", "|S3", "<U2", "|V4"]:
        assert dtype_from_descr(dt) == np.dtype(dt)
    structured = np.dtype([("a", "<i4"), ("b", [("c", ">f2", (2, 2))])])
    descr = repr(np.lib.format.dtype_to_descr(structured))
    assert dtype_from_descr(descr) == structured
    for bad in ["|O", "<O8", "[('a', '|O')]", "i4,f8", "float64; import os", "(2,)i4", "|T"]:
        with pytest.raises(ValueError):
            dtype_from_descr(bad)
    assert dtype_from_descr("|a3") == np.dtype("S3")  # the deprecated alias, without a warning


# ---------------------------------------------------------------------- property tests

_VALID = [np_save_bytes(a) for _, a in CASES]


def _check_header(data: bytes) -> None:
    try:
        header = parse_npy_header(data, max_header_size=1 << 16)
    except FormatError as err:
        assert err.format == "npy"
        assert err.offset is None or 0 <= err.offset <= max(len(data), 12)
        return
    assert isinstance(header, NpyHeader)
    assert header.data_offset <= len(data)
    assert all(d >= 0 for d in header.shape)
    assert not header.dtype.hasobject
    assert header.nbytes >= 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_header_parser_on_arbitrary_bytes(data):
    _check_header(data)
    _check_header(npy.MAGIC + data)
    _check_header(npy.MAGIC + b"\x01\x00" + struct.pack("<H", len(data)) + data)


_HEADER_PIECES = st.sampled_from([
    "{", "}", "(", ")", "[", "]", ",", ":", " ", "'descr'", "'shape'", "'fortran_order'", "True", "False",
    "None", "'<f8'", "'|O'", "'>i4'", "'<U3'", "'|V0'", "0", "1", "-1", "99999999999999999999", "'a'",
    "('x', '<i4')", "('', '|V4')", "(2, 3)", "\\n", "'\\x00'", "\"", "'", "é", "\n",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_HEADER_PIECES, max_size=40))
def test_header_parser_on_header_like_text(pieces):
    text = "".join(pieces).encode("utf8")
    for version in (b"\x01\x00", b"\x03\x00"):
        fmt = "<H" if version == b"\x01\x00" else "<I"
        _check_header(npy.MAGIC + version + struct.pack(fmt, len(text)) + text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(_VALID))), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                                       min_size=1, max_size=6))
def test_header_parser_on_mutated_valid_files(which, edits):
    data = bytearray(_VALID[which])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    _check_header(bytes(data))
    _check_header(bytes(data[: edits[0][0]]))  # and truncated


def test_huge_header_is_bounded():
    text = b"{'descr': '<f8', 'fortran_order': False, 'shape': (" + b"1, " * 400_000 + b"), }"
    data = npy.MAGIC + b"\x02\x00" + struct.pack("<I", len(text)) + text
    with pytest.raises(FormatError, match="max_header_size") as info:
        parse_npy_header(data)  # refused from the length field alone, before any parsing
    assert info.value.offset == 8
    text = text[:60] + text[-200_000:]  # 600 KB of header: parsed in linear time, and valid
    data = npy.MAGIC + b"\x02\x00" + struct.pack("<I", len(text)) + text
    header = parse_npy_header(data)
    assert len(header.shape) > 60_000 and set(header.shape) == {1}
