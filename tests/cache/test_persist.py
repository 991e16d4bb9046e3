"""Cache files: arrays mapped read-only, atomic replacement, locks, the cache directory."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from s3dlio_loader.cache.persist import (
    cache_key,
    default_cache_dir,
    open_arrays,
    read_meta,
    remove_unused,
    write_arrays,
)


def test_arrays_round_trip_zero_copy_and_read_only(tmp_path):
    arrays = {
        "i": np.arange(10, dtype=np.int64),
        "f2": np.arange(12, dtype=np.float32).reshape(3, 4),
        "s": np.array([b"abc", b"", b"d"], dtype="S3"),
        "u8": np.frombuffer(b"hello", dtype=np.uint8),
        "empty": np.zeros((0, 5), dtype=np.int16),
        "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
    }
    path = str(tmp_path / "a.s3dc")
    token = write_arrays(path, arrays, {"k": [1, "two"]})
    m = open_arrays(path)
    assert m is not None and m.token == token and m.meta == {"k": [1, "two"]}
    for name, a in arrays.items():
        got = m.arrays[name]
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a), name
        assert not got.flags.writeable
    assert m.arrays["i"].ctypes.data % 64 == 0  # aligned inside the mapping
    assert read_meta(path) == {"k": [1, "two"]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.s3dc"]  # no temporary file left


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot be stored"):
        write_arrays(str(tmp_path / "x.s3dc"), {"o": np.array([object()])}, {})
    assert list(tmp_path.iterdir()) == []


def test_missing_truncated_and_foreign_files_read_as_misses(tmp_path):
    assert open_arrays(str(tmp_path / "nope.s3dc")) is None
    path = tmp_path / "t.s3dc"
    write_arrays(str(path), {"a": np.arange(1000)}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert open_arrays(str(path)) is None
    path.write_bytes(b"PK\x03\x04 not ours at all")
    assert open_arrays(str(path)) is None and read_meta(str(path)) is None
    path.write_bytes(b"")
    assert open_arrays(str(path)) is None


def test_replacing_a_file_keeps_existing_mappings_valid(tmp_path):
    path = str(tmp_path / "r.s3dc")
    write_arrays(path, {"a": np.full(100_000, 7)}, {"v": 1})
    old = open_arrays(path)
    write_arrays(path, {"a": np.full(5, 9)}, {"v": 2})
    new = open_arrays(path)
    assert old is not None and new is not None
    assert int(old.arrays["a"].sum()) == 700_000 and new.meta["v"] == 2 and new.arrays["a"].tolist() == [9] * 5


def test_remove_unused_keeps_files_a_process_holds(tmp_path):
    for name in ("keep.s3dc", "held.s3dc", "old.s3dc"):
        write_arrays(str(tmp_path / name), {"a": np.arange(3)}, {})
    held = open_arrays(str(tmp_path / "held.s3dc"), shared_lock=True)
    remove_unused(str(tmp_path), keep="keep.s3dc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.s3dc", "keep.s3dc"]
    assert held is not None and held.arrays["a"].tolist() == [0, 1, 2]
    del held  # the lock lives as long as the mapping
    gc.collect()
    remove_unused(str(tmp_path), keep="keep.s3dc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.s3dc"]


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "s3dlio-loader")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # XDG: relative paths are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "s3dlio-loader")


def test_cache_keys_are_stable_and_distinct():
    assert cache_key("a", 1, None) == cache_key("a", 1, None)
    assert cache_key("a", 1) != cache_key("a1") != cache_key("a", "1")


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    import fcntl

    from s3dlio_loader.cache.persist import exclusive_lock

    lock = str(tmp_path / "k.lock")
    with exclusive_lock(lock):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: sleeps holding whatever it inherited
            import time

            time.sleep(3)
            os._exit(0)
    import time

    try:
        fd = os.open(lock, os.O_RDWR)
        try:
            deadline = time.monotonic() + 2.0  # (until the child has run its after-fork hook)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free although the child still lives
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            os.close(fd)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
