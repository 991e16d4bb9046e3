"""Tests of the direct:// filesystem (s3dlio_loader/storage/direct.py).

All files live under pytest's tmp_path, which must be on a real disk (ext4 here): tmpfs
(/dev/shm) accepts O_DIRECT without enforcing alignment and would prove nothing.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import pickle
import threading

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3dlio_loader.errors import (
    ConfigError,
    DirectIOError,
    InvalidRangeError,
    ObjectNotFoundError,
    StorageError,
)
from s3dlio_loader.storage import direct
from s3dlio_loader.storage.direct import (
    DirectFileSystem,
    DirectReadFile,
    DirectWriteFile,
    aligned_buffer,
    register,
)

MiB = 1 << 20
SIZES = [0, 1, 511, 4095, 4096, 4097, MiB + 3, 9 * MiB + 123]  # the last crosses the 8 MiB chunk


def _data(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed + n).integers(0, 256, n, dtype=np.uint8).tobytes()


def _plain(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def fs() -> DirectFileSystem:
    return DirectFileSystem(skip_instance_cache=True)


@pytest.fixture
def small_chunk_fs() -> DirectFileSystem:
    """Two-block chunks: multi-chunk reads and writes on small files."""
    return DirectFileSystem(chunk_size=8192, skip_instance_cache=True)


@pytest.fixture
def sample(tmp_path) -> tuple[str, bytes]:
    data = _data(MiB + 3)
    path = tmp_path / "sample.bin"
    path.write_bytes(data)
    return str(path), data


# ---- paths and registration --------------------------------------------------------------


def test_strip_and_unstrip_protocol(tmp_path) -> None:
    p = str(tmp_path / "a.bin")
    assert DirectFileSystem._strip_protocol(f"direct://{p}") == p
    assert DirectFileSystem._strip_protocol(f"direct://{p}/") == p
    assert DirectFileSystem._strip_protocol(p) == p
    assert DirectFileSystem._strip_protocol(tmp_path / "a.bin") == p
    assert DirectFileSystem._strip_protocol(f"file://{p}") == p
    assert DirectFileSystem._strip_protocol("direct:///") == "/"
    assert DirectFileSystem(skip_instance_cache=True).unstrip_protocol(p) == f"direct://{p}"
    assert DirectFileSystem(skip_instance_cache=True).unstrip_protocol(f"direct://{p}") == f"direct://{p}"


def test_register_is_idempotent() -> None:
    register()
    register()
    assert fsspec.get_filesystem_class("direct") is DirectFileSystem
    assert isinstance(fsspec.filesystem("direct"), DirectFileSystem)


def test_options_are_validated() -> None:
    for bad in (0, 100, 1000, 256, "4096"):
        with pytest.raises(ConfigError):
            DirectFileSystem(alignment=bad, skip_instance_cache=True)
    with pytest.raises(ConfigError):
        DirectFileSystem(chunk_size=0, skip_instance_cache=True)
    f = DirectFileSystem(alignment=512, chunk_size=1000, skip_instance_cache=True)
    assert f.chunk_size == 1024  # rounded up to the alignment
    assert f.storage_options == {"alignment": 512, "chunk_size": 1000}


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_pipe_and_cat_round_trip(fs, tmp_path, size) -> None:
    data = _data(size)
    path = str(tmp_path / f"f{size}.bin")
    fs.pipe_file(f"direct://{path}", data)
    with open(path, "rb") as f:
        assert f.read() == data
    assert os.path.getsize(path) == size
    assert fs.cat_file(f"direct://{path}") == data
    assert fs.cat_file(path) == data
    assert fs.read_range(path, 0, size) == data


@pytest.mark.parametrize("size", SIZES)
def test_open_write_and_read_round_trip(fs, tmp_path, size) -> None:
    data = _data(size, seed=1)
    path = str(tmp_path / f"w{size}.bin")
    piece = 100_003  # unaligned pieces
    with fs.open(path, "wb") as f:
        assert isinstance(f, DirectWriteFile)
        assert f.direct
        for i in range(0, size, piece):
            f.write(data[i : i + piece])
        assert f.tell() == size
    with open(path, "rb") as f:
        assert f.read() == data
    with fs.open(path, "rb") as f:
        assert isinstance(f, DirectReadFile)
        assert f.size == size
        assert f.read() == data


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 8192 + 5])
def test_multi_chunk_round_trip_small_chunks(small_chunk_fs, tmp_path, size) -> None:
    data = _data(size, seed=2)
    path = str(tmp_path / "c.bin")
    small_chunk_fs.pipe_file(path, data)
    with open(path, "rb") as f:
        assert f.read() == data
    assert small_chunk_fs.cat_file(path) == data
    with small_chunk_fs.open(path, "wb") as f:
        f.write(memoryview(data))
    assert small_chunk_fs.cat_file(path) == data


@pytest.mark.parametrize("alignment", [512, 8192])
def test_other_alignments(tmp_path, alignment) -> None:
    """512 (the device's logical block) and 8192 (above the page size: over-allocated buffers)."""
    dfs = DirectFileSystem(alignment=alignment, chunk_size=4 * alignment, skip_instance_cache=True)
    data = _data(10 * alignment + 77, seed=alignment)
    path = str(tmp_path / "a.bin")
    dfs.pipe_file(path, data)
    assert dfs.cat_file(path) == data
    assert dfs.read_range(path, alignment - 1, 5 * alignment + 3) == data[alignment - 1 : 6 * alignment + 2]
    buf = direct.aligned_buffer(3 * alignment, alignment)
    assert direct._address(buf) % alignment == 0
    assert dfs.read_range_into(path, alignment, buf) == 3 * alignment
    assert bytes(buf) == data[alignment : 4 * alignment]


def test_write_sources_memoryview_bytearray_numpy_aligned(fs, tmp_path) -> None:
    data = _data(3 * MiB + 17, seed=3)
    cases = {
        "memoryview": memoryview(data),
        "bytearray": bytearray(data),
        "memoryview_slice": memoryview(b"xx" + data)[2:],
        "numpy": np.frombuffer(data, dtype=np.uint8).copy(),
        "numpy_2d_uint32": np.frombuffer(data[: 4 * 1000 * 64], dtype=np.uint32).reshape(1000, 64).copy(),
    }
    aligned = aligned_buffer(len(data))
    aligned[:] = data
    cases["aligned"] = aligned  # written straight from the caller's memory
    for name, value in cases.items():
        expected = bytes(memoryview(value).cast("B"))
        path = str(tmp_path / f"{name}.bin")
        fs.pipe_file(path, value)
        with open(path, "rb") as f:
            assert f.read() == expected, name
        with fs.open(path + ".2", "wb") as f:
            assert f.write(value) == len(expected)
        with open(path + ".2", "rb") as f:
            assert f.read() == expected, name


def test_write_mixes_aligned_and_unaligned_pieces(fs, tmp_path) -> None:
    data = _data(5 * 4096 * 1000 + 999, seed=4)
    src = aligned_buffer(len(data))
    src[:] = data
    path = str(tmp_path / "mix.bin")
    cuts = [0, 4096 * 300, 4096 * 300 + 5, 4096 * 2000, 4096 * 2000 + 4096 * 7, len(data)]
    with fs.open(path, "wb") as f:
        for a, b in itertools.pairwise(cuts):
            f.write(src[a:b])
    with open(path, "rb") as f:
        assert f.read() == data


def test_overwrite_truncates_and_create_mode_is_exclusive(fs, tmp_path) -> None:
    path = str(tmp_path / "o.bin")
    fs.pipe_file(path, _data(100_000))
    fs.pipe_file(path, b"short")
    assert _plain(path) == b"short"
    with pytest.raises(StorageError):
        fs.pipe_file(path, b"again", mode="create")
    with pytest.raises(StorageError):
        fs.open(path, "xb")
    fs.pipe_file(str(tmp_path / "new.bin"), b"created", mode="create")
    with fs.open(str(tmp_path / "new2.bin"), "xb") as f:
        f.write(b"x" * 5000)
    assert os.path.getsize(tmp_path / "new2.bin") == 5000


# ---- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 1),
        (1, 1),
        (511, 2),
        (4095, 2),
        (4096, 4096),
        (4097, 4095),
        (100, 50_000),
        (12_345, 777_777),
        (MiB - 1, 4),
        (MiB, 3),
        (0, MiB + 3),
        (7, MiB - 4),
    ],
)
def test_range_reads_match_plain_reads(fs, sample, offset, length) -> None:
    path, _ = sample
    with open(path, "rb") as f:
        f.seek(offset)
        expected = f.read(length)
    assert fs.read_range(path, offset, length) == expected
    assert fs.cat_file(path, offset, offset + length) == expected
    buf = bytearray(length)
    assert fs.read_range_into(path, offset, buf) == len(expected)
    assert bytes(buf) == expected


def test_ranges_crossing_chunks(fs, small_chunk_fs, tmp_path) -> None:
    data = _data(9 * MiB + 123, seed=5)
    path = str(tmp_path / "big.bin")
    with open(path, "wb") as f:
        f.write(data)
    for off, n in [(1, 9 * MiB), (8 * MiB - 5, 10), (3, 9 * MiB + 200), (8 * MiB, MiB + 123)]:
        assert fs.read_range(path, off, n) == data[off : off + n]
    for off, n in [(1, 20_000), (8190, 8195), (8192 * 3 - 1, 2)]:
        assert small_chunk_fs.read_range(path, off, n) == data[off : off + n]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 70_000), length=st.integers(0, 70_000))
def test_random_ranges(small_chunk_fs, sample, offset, length) -> None:
    path, data = sample
    size = 65_536 + 321
    sub = path + ".sub"
    if not os.path.exists(sub):
        with open(sub, "wb") as f:
            f.write(data[:size])
    assert small_chunk_fs.read_range(sub, offset, length) == data[:size][offset : offset + length]


def test_cat_file_semantics_match_local_filesystem(fs, sample) -> None:
    path, _ = sample
    local = LocalFileSystem()
    for start, end in [
        (None, None),
        (10, None),
        (None, 10),
        (-100, None),
        (-100, -10),
        (5, -5),
        (MiB + 3, None),
        (MiB + 100, MiB + 200),
        (-(10**9), 10),
    ]:
        assert fs.cat_file(path, start, end) == local.cat_file(path, start, end), (start, end)
    # an inverted range is empty (LocalFileSystem raises ValueError from read(-50))
    assert fs.cat_file(path, 100, 50) == b""


def test_reads_past_eof_are_short(fs, sample) -> None:
    path, data = sample
    size = len(data)
    assert fs.read_range(path, size - 10, 100) == data[-10:]
    assert fs.read_range(path, size, 100) == b""
    assert fs.read_range(path, size + 12_345, 5) == b""
    assert fs.read_range(path, 5, 0) == b""
    buf = bytearray(b"\xee" * 100)
    assert fs.read_range_into(path, size - 10, buf) == 10
    assert bytes(buf[:10]) == data[-10:]
    assert buf[10:] == b"\xee" * 90  # untouched
    assert fs.read_range_into(path, size + 1, bytearray(10)) == 0
    assert fs.read_range_into(path, 0, bytearray(0)) == 0


def test_read_range_into_aligned_buffer_reads_without_copy(fs, sample, monkeypatch) -> None:
    path, data = sample
    buf = aligned_buffer(MiB // 2)
    scratch_used: list[int] = []
    real_scratch = direct._scratch
    monkeypatch.setattr(direct, "_scratch", lambda n, a: scratch_used.append(n) or real_scratch(n, a))
    assert fs.read_range_into(path, 4096, buf) == MiB // 2
    assert bytes(buf) == data[4096 : 4096 + MiB // 2]
    assert scratch_used == []  # straight from disk into the caller's buffer
    # whole file into an aligned buffer: body direct, only the 3-byte tail through scratch
    whole = aligned_buffer(len(data))
    assert fs.read_range_into(path, 0, whole) == len(data)
    assert bytes(whole) == data
    assert scratch_used == [4096]
    # past EOF with an aligned buffer
    big = aligned_buffer(2 * MiB)
    assert fs.read_range_into(path, 0, big) == len(data)
    assert bytes(big[: len(data)]) == data


def test_large_results_are_prefaulted_by_a_joined_helper_thread(fs, sample, monkeypatch) -> None:
    path, data = sample
    callers: list[str] = []
    real_prefault = direct._prefault

    def prefault(view: memoryview) -> None:
        callers.append(threading.current_thread().name)
        real_prefault(view)

    monkeypatch.setattr(direct, "_prefault", prefault)
    monkeypatch.setattr(direct, "_PREFAULT_THREAD_MIN_BYTES", 512 * 1024)
    threads_before = threading.active_count()
    assert fs.cat_file(path) == data
    assert fs.read_range(path, 5, 100_000) == data[5:100_005]
    assert callers == ["direct-prefault", threading.current_thread().name]
    assert threading.active_count() == threads_before


def test_read_range_into_numpy_and_mmap(fs, sample) -> None:
    path, data = sample
    arr = np.zeros(1000, dtype=np.float64)
    assert fs.read_range_into(path, 3, arr) == 8000
    assert arr.tobytes() == data[3:8003]
    mm = mmap.mmap(-1, 3 * 4096)
    assert fs.read_range_into(path, 8192, mm) == 3 * 4096
    assert mm[:] == data[8192 : 8192 + 3 * 4096]
    mm.close()


def test_scratch_buffer_is_bounded_and_per_thread(fs, tmp_path) -> None:
    data = _data(9 * MiB + 123, seed=6)
    path = str(tmp_path / "big.bin")
    with open(path, "wb") as f:
        f.write(data)
    results: dict[int, bool] = {}

    def work(i: int) -> None:
        off = 1000 * i + 1
        starts = [off + k * 77_777 for k in range(20)]
        ok = all(fs.read_range(path, s, 300_001) == data[s : s + 300_001] for s in starts)
        results[i] = ok and fs.read_range(path, off, 9 * MiB) == data[off : off + 9 * MiB]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: True for i in range(4)}
    fs.read_range(path, 1, 9 * MiB)
    assert direct._tls.scratch.size <= fs.chunk_size + fs.alignment
    direct.release_scratch()
    assert direct._tls.scratch is None
    assert fs.read_range(path, 1, 10) == data[1:11]


def test_works_in_a_forked_child(fs, sample, tmp_path) -> None:
    """The parent's per-thread scratch buffer and filesystem instance are usable after fork."""
    path, data = sample
    assert fs.read_range(path, 1, 9000) == data[1:9001]  # parent now has a scratch buffer
    out = str(tmp_path / "child.bin")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            ok = fs.read_range(path, 3, 500_000) == data[3:500_003]
            fs.pipe_file(out, data[:70_001])
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _plain(out) == data[:70_001]


# ---- file objects --------------------------------------------------------------------------


def test_open_rb_seek_read_readinto(fs, sample) -> None:
    path, data = sample
    size = len(data)
    with fs.open(f"direct://{path}", "rb") as f:
        assert f.seekable() and f.readable()
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        f.seek(4095)
        assert f.read(3) == data[4095:4098]
        f.seek(-5, 1)
        assert f.read(5) == data[4093:4098]
        f.seek(-7, 2)
        assert f.read() == data[-7:]
        assert f.read(10) == b""
        f.seek(size + 100)
        assert f.read(10) == b""
        f.seek(12_345)
        small = bytearray(100)
        assert f.readinto(small) == 100
        assert bytes(small) == data[12_345:12_445]
        big = bytearray(2 * MiB)  # >= block_size: straight into the buffer, stops at EOF
        f.seek(1)
        assert f.readinto(big) == size - 1
        assert bytes(big[: size - 1]) == data[1:]
        assert f.tell() == size
    assert f.closed


def test_read_file_pickles(fs, sample) -> None:
    path, data = sample
    with fs.open(path, "rb") as f:
        f.seek(1000)
        g = pickle.loads(pickle.dumps(f))
        assert g.read(10) == data[1000:1010]
        g.close()
    fs2 = pickle.loads(pickle.dumps(DirectFileSystem(alignment=512, fallback=True, skip_instance_cache=True)))
    assert (fs2.alignment, fs2.fallback) == (512, True)


def test_unsupported_modes(fs, tmp_path) -> None:
    with pytest.raises(ConfigError):
        fs.open(str(tmp_path / "x"), "ab")
    with pytest.raises(ConfigError):
        fs.open(str(tmp_path / "x"), "r+b")


def test_write_file_flush_and_close_are_idempotent(fs, tmp_path) -> None:
    path = str(tmp_path / "x.bin")
    f = fs.open(path, "wb")
    f.write(b"abc")
    f.flush()
    f.close()
    f.close()
    assert f.closed and not f.writable()
    with pytest.raises(ValueError):
        f.write(b"more")
    assert _plain(path) == b"abc"


def test_with_block_error_still_writes_what_was_given(fs, tmp_path) -> None:
    path = str(tmp_path / "x.bin")
    with pytest.raises(RuntimeError), fs.open(path, "wb") as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert _plain(path) == b"partial"


def test_auto_mkdir_and_transactions(tmp_path) -> None:
    dfs = DirectFileSystem(auto_mkdir=True, skip_instance_cache=True)
    path = str(tmp_path / "a" / "b" / "c.bin")
    dfs.pipe_file(path, b"hello" * 1000)
    assert dfs.cat_file(path) == b"hello" * 1000
    target = str(tmp_path / "t.bin")
    with dfs.transaction:
        with dfs.open(target, "wb") as f:
            f.write(b"committed")
        assert not os.path.exists(target)
    assert _plain(target) == b"committed"
    with pytest.raises(RuntimeError), dfs.transaction:
        with dfs.open(str(tmp_path / "d.bin"), "wb") as f:
            f.write(b"discarded")
        raise RuntimeError("abort")
    assert not os.path.exists(tmp_path / "d.bin")
    assert not [n for n in os.listdir(tmp_path) if "direct-tmp" in n]


# ---- fsspec integration --------------------------------------------------------------------


def test_fsspec_filesystem_listing_and_info(tmp_path) -> None:
    dfs = fsspec.filesystem("direct")
    for name in ("a.bin", "b.bin"):
        dfs.pipe_file(f"direct://{tmp_path}/{name}", name.encode() * 3000)
    dfs.mkdir(f"direct://{tmp_path}/sub")
    assert sorted(dfs.ls(f"direct://{tmp_path}")) == sorted(
        [f"{tmp_path}/a.bin", f"{tmp_path}/b.bin", f"{tmp_path}/sub"]
    )
    info = dfs.info(f"direct://{tmp_path}/a.bin")
    assert info["size"] == 15_000 and info["type"] == "file"
    assert sorted(dfs.glob(f"direct://{tmp_path}/*.bin")) == [f"{tmp_path}/a.bin", f"{tmp_path}/b.bin"]
    assert dfs.cat_ranges([f"{tmp_path}/a.bin", f"{tmp_path}/b.bin"], [0, 1], [5, 6]) == [b"a.bin", b".binb"]
    dfs.rm(f"direct://{tmp_path}/b.bin")
    assert not dfs.exists(f"direct://{tmp_path}/b.bin")


def test_fsspec_open_url(tmp_path) -> None:
    data = _data(50_000, seed=7)
    url = f"direct://{tmp_path}/u.bin"
    with fsspec.open(url, "wb") as f:
        f.write(data)
    with fsspec.open(url, "rb") as f:
        assert isinstance(f, DirectReadFile)
        f.seek(1234)
        assert f.read(100) == data[1234:1334]
    with fsspec.open(f"direct://{tmp_path}/t.txt", "w") as f:
        f.write("héllo\n")
    with fsspec.open(f"direct://{tmp_path}/t.txt", "r") as f:
        assert f.read() == "héllo\n"
    ofs, path = fsspec.core.url_to_fs(url)
    assert isinstance(ofs, DirectFileSystem) and path == f"{tmp_path}/u.bin"


# ---- O_DIRECT is really used ---------------------------------------------------------------


def _fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError("no flags line")  # pragma: no cover


def test_unaligned_io_on_this_disk_is_refused_but_the_api_works(fs, sample) -> None:
    """The disk under tmp_path enforces O_DIRECT alignment; our unaligned reads still succeed."""
    path, data = sample
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError) as info:
            os.pread(fd, 100, 100)  # unaligned offset, length and (bytes object) buffer
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert fs.read_range(path, 100, 100) == data[100:200]


def test_fds_have_o_direct_during_reads_and_writes(fs, tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "flags.bin")
    seen: list[tuple[str, bool]] = []
    real_preadv, real_write = os.preadv, os.write

    def ours(fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}") == path

    def preadv(fd, buffers, offset, *args):
        if ours(fd):
            seen.append(("read", bool(_fd_flags(fd) & os.O_DIRECT)))
        return real_preadv(fd, buffers, offset, *args)

    def write(fd, data):
        if ours(fd):
            seen.append(("write", bool(_fd_flags(fd) & os.O_DIRECT)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "write", write)
    data = _data(3 * MiB + 5, seed=8)
    fs.pipe_file(path, data)
    with fs.open(path, "wb") as f:
        f.write(data)
    assert fs.read_range(path, 7, MiB) == data[7 : 7 + MiB]
    with fs.open(path, "rb") as f:
        f.seek(99)
        assert f.read(10) == data[99:109]
    assert {kind for kind, _ in seen} == {"read", "write"}
    assert all(is_direct for _, is_direct in seen), seen


# ---- refusal, fallback and errors ----------------------------------------------------------


@pytest.fixture
def refuse_o_direct(monkeypatch) -> None:
    """Fault injection: the filesystem refuses O_DIRECT opens with EINVAL (as tmpfs/overlayfs may)."""
    real_open = os.open

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)


def test_refused_o_direct_raises_direct_io_error(fs, sample, tmp_path, refuse_o_direct) -> None:
    path, _ = sample
    before = _open_fds()
    for call, op in [
        (lambda: fs.read_range(path, 0, 10), "get_range"),
        (lambda: fs.cat_file(path), "get"),
        (lambda: fs.read_range_into(path, 0, bytearray(10)), "get_range"),
        (lambda: fs.pipe_file(str(tmp_path / "w.bin"), b"data"), "put"),
        (lambda: fs.open(str(tmp_path / "w2.bin"), "wb"), "put"),
    ]:
        with pytest.raises(DirectIOError) as info:
            call()
        err = info.value
        assert isinstance(err, StorageError) and err.op == op
        assert err.uri.startswith("direct:///")
        msg = str(err)
        assert "O_DIRECT is not supported" in msg and "fallback=True" in msg
        assert err.uri in msg
    assert _open_fds() == before


def test_fallback_uses_buffered_io_and_logs_once(sample, tmp_path, refuse_o_direct, caplog) -> None:
    path, data = sample
    dfs = DirectFileSystem(fallback=True, skip_instance_cache=True)
    with caplog.at_level(logging.INFO, logger="s3dlio_loader.storage.direct"):
        assert dfs.read_range(path, 3, 5000) == data[3:5003]
        assert dfs.cat_file(path) == data
        buf = bytearray(100)
        assert dfs.read_range_into(path, len(data) - 50, buf) == 50
        assert bytes(buf[:50]) == data[-50:]
        out = str(tmp_path / "fb.bin")
        dfs.pipe_file(out, data)
        assert _plain(out) == data
        with dfs.open(out, "wb") as f:
            assert not f.direct
            f.write(memoryview(data)[:12_345])
        assert _plain(out) == data[:12_345]
        dfs.pipe_file(str(tmp_path / "x.bin"), b"x", mode="create")
        with dfs.open(out, "rb") as f:
            assert f.read() == data[:12_345]
    records = [r for r in caplog.records if "O_DIRECT is not supported" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO


def test_missing_file_and_directory_errors(fs, tmp_path) -> None:
    missing = str(tmp_path / "nope.bin")
    for call in (
        lambda: fs.read_range(missing, 0, 1),
        lambda: fs.cat_file(missing),
        lambda: fs.open(missing, "rb"),
        lambda: fs.read_range_into(missing, 0, bytearray(1)),
    ):
        with pytest.raises(ObjectNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.uri == f"direct://{missing}"
    with pytest.raises(ObjectNotFoundError):
        fs.pipe_file(str(tmp_path / "no" / "dir.bin"), b"x")  # parent missing, no auto_mkdir
    for call in (lambda: fs.cat_file(str(tmp_path)), lambda: fs.open(str(tmp_path), "rb")):
        with pytest.raises(StorageError, match="is a directory"):
            call()


def test_negative_ranges_are_invalid(fs, sample) -> None:
    path, _ = sample
    with pytest.raises(InvalidRangeError):
        fs.read_range(path, -1, 10)
    with pytest.raises(InvalidRangeError):
        fs.read_range(path, 0, -10)
    with pytest.raises(InvalidRangeError):
        fs.read_range_into(path, -4096, bytearray(10))


def test_no_file_descriptor_leaks(fs, sample, tmp_path) -> None:
    path, _ = sample
    before = _open_fds()
    for _ in range(20):
        fs.read_range(path, 1, 10_000)
        fs.pipe_file(str(tmp_path / "l.bin"), b"x" * 5000)
        with fs.open(path, "rb") as f:
            f.read(10)
        with pytest.raises(ObjectNotFoundError):
            fs.read_range(str(tmp_path / "missing"), 0, 1)
    assert _open_fds() == before
