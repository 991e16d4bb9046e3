"""Tests of s3dlio_loader.storage.oplog: format, threads, fork, flush triggers, exit, redaction."""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3dlio_loader.errors import ConfigError, FormatError
from s3dlio_loader.storage import oplog
from s3dlio_loader.storage.oplog import (
    COLUMNS,
    ENV_VAR,
    ERROR_MAX_CHARS,
    HEADER,
    OpLog,
    OpLogFormatError,
    OpRecord,
    disable_oplog,
    enable_oplog,
    get_global_oplog,
    iter_oplog,
    read_oplog,
    redact_uri,
    shared_oplog,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Python >= 3.12 warns when forking a process that has threads (ours has flush threads).
fork_ok = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def raw_text(path: Path) -> str:
    """The whole decompressed file, read as ONE stream across frames (as `zstd -dc` does)."""
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r:
        return r.read().decode("utf-8")


def frame_count(path: Path) -> int:
    data = path.read_bytes()
    dctx = zstandard.ZstdDecompressor()
    frames = 0
    while data:
        dobj = dctx.decompressobj()
        dobj.decompress(data)
        assert dobj.eof, "incomplete frame"
        frames += 1
        data = dobj.unused_data
    return frames


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def rec(log: OpLog, uri: str, **kw: object) -> None:
    kw.setdefault("start_ns", time.time_ns())
    kw.setdefault("duration_ns", 1000)
    log.record(str(kw.pop("op", "get")), uri, **kw)  # type: ignore[arg-type]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ops.tsv.zst"


# ----------------------------------------------------------------------------- format


def test_rows_round_trip_with_exact_values(path: Path) -> None:
    t = time.time_ns()
    with OpLog(path) as log:
        log.record("get", "s3://bucket/a.npy", start_ns=t, duration_ns=1_500_000, nbytes=4096, first_byte_ns=900)
        log.record(
            "get_range",
            "az://container/b.tar",
            start_ns=t + 1,
            duration_ns=7,
            offset=1 << 40,
            length=65536,
            nbytes=65536,
            attempt=1,
        )
        log.record(
            "get_range",
            "gs://b/c",
            start_ns=t + 2,
            duration_ns=20,
            offset=0,
            length=0,
            status="error",
            error=TimeoutError("read timed out"),
            attempt=1,
        )
        log.record("get_range", "gs://b/c", start_ns=t + 3, duration_ns=30, offset=0, length=0, attempt=2)
        log.record("put", "file:///tmp/x", start_ns=t + 4, duration_ns=0, nbytes=10, error="")
        log.record("list", "s3://bucket/prefix/", start_ns=t + 5, duration_ns=5, status="error", error="boom")
        log.record("stat", "", start_ns=0, duration_ns=-1)
    pid = os.getpid()
    assert read_oplog(path) == [
        OpRecord(t, "get", "s3://bucket/a.npy", None, None, 4096, 900, 1_500_000, "ok", None, pid, 1),
        OpRecord(t + 1, "get_range", "az://container/b.tar", 1 << 40, 65536, 65536, None, 7, "ok", None, pid, 1),
        OpRecord(t + 2, "get_range", "gs://b/c", 0, 0, 0, None, 20, "error", "TimeoutError: read timed out", pid, 1),
        OpRecord(t + 3, "get_range", "gs://b/c", 0, 0, 0, None, 30, "ok", None, pid, 2),
        OpRecord(t + 4, "put", "file:///tmp/x", None, None, 10, None, 0, "ok", None, pid, 1),
        OpRecord(t + 5, "list", "s3://bucket/prefix/", None, None, 0, None, 5, "error", "boom", pid, 1),
        OpRecord(0, "stat", "", None, None, 0, None, -1, "ok", None, pid, 1),
    ]
    text = raw_text(path)
    assert text.split("\n")[0] == HEADER == "\t".join(COLUMNS)
    assert HEADER == (
        "start_ns\top\turi\toffset\tlength\tbytes\tfirst_byte_ns\tduration_ns\tstatus\terror\tpid\tattempt"
    )
    assert text.endswith("\n")
    second = text.split("\n")[1].split("\t")
    assert second == [
        str(t),
        "get",
        "s3://bucket/a.npy",
        "",
        "",
        "4096",
        "900",
        "1500000",
        "ok",
        "",
        str(pid),
        "1",
    ]
    first = read_oplog(path)[0]
    assert isinstance(first.start_ns, int) and isinstance(first.nbytes, int) and first.offset is None


def test_iter_oplog_streams_across_tiny_chunks(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with OpLog(path) as log:
        for i in range(100):
            rec(log, f"s3://b/{i}/é😀", nbytes=i, op="get")
            if i % 7 == 6:
                log.flush()
    it = iter_oplog(path)
    assert isinstance(it, Iterator)
    monkeypatch.setattr(oplog, "_READ_CHUNK", 5)  # frame, line and UTF-8 boundaries inside chunks
    assert [r.nbytes for r in iter_oplog(path)] == list(range(100))
    assert frame_count(path) == 1 + 15


def test_file_is_valid_for_the_zstd_cli(path: Path) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd CLI not installed")
    with OpLog(path, flush_rows=3) as log:
        for i in range(10):
            rec(log, f"s3://b/{i}")
    out = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True, timeout=60).stdout
    assert out.decode() == raw_text(path)
    assert len(out.decode().splitlines()) == 11


def test_numbers_are_coerced_and_bad_rows_dropped(path: Path) -> None:
    with OpLog(path) as log:
        log.record("get", "s3://b/f", start_ns=1.0e9, duration_ns=2.9, nbytes=True)  # type: ignore[arg-type]
        log.record("get", "s3://b/bad", start_ns="soon", duration_ns=1)  # type: ignore[arg-type]
        log.record("get", Path("/data/p"), start_ns=1, duration_ns=1)  # type: ignore[arg-type]
        log.flush()
        assert log.dropped_rows == 1
    rows = read_oplog(path)
    assert [(r.uri, r.start_ns, r.duration_ns, r.nbytes) for r in rows] == [
        ("s3://b/f", 1_000_000_000, 2, 1),
        ("/data/p", 1, 1, 0),
    ]


def test_error_field_formatting(path: Path) -> None:
    with OpLog(path) as log:
        rec(log, "s3://b/1", status="error", error=ValueError("bad\tthing\nhere\r\nnow"))
        rec(log, "s3://b/2", status="error", error=KeyError("k"))
        rec(log, "s3://b/3", status="error", error=RuntimeError())
        rec(log, "s3://b/4", status="error", error="x" * 5000)
    errors = [r.error for r in read_oplog(path)]
    assert errors[:3] == ["ValueError: bad thing here  now", "KeyError: 'k'", "RuntimeError"]
    assert errors[3] is not None and len(errors[3]) == ERROR_MAX_CHARS and errors[3].endswith("...")


def test_invalid_arguments(path: Path) -> None:
    for kwargs in (
        {"flush_rows": 0},
        {"flush_interval_s": 0},
        {"flush_interval_s": float("nan")},
        {"level": 23},
    ):
        with pytest.raises(ConfigError):
            OpLog(path, **kwargs)
    with OpLog(path) as log, pytest.raises(ValueError, match="status"):
        rec(log, "s3://b/x", status="failed")


def test_record_after_close_is_dropped_and_close_is_idempotent(path: Path) -> None:
    log = OpLog(path)
    rec(log, "s3://b/1")
    log.close()
    log.close()
    assert log.closed
    rec(log, "s3://b/2")
    log.flush()
    assert [r.uri for r in read_oplog(path)] == ["s3://b/1"]


def test_write_error_raised_by_flush_but_not_by_background_thread(path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    log = OpLog(path, flush_rows=2, flush_interval_s=0.05)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, log._st.fd)  # every write now fails with ENOSPC
        rec(log, "s3://b/1")
        with pytest.raises(OSError):
            log.flush()
        assert log.dropped_rows == 1
        rec(log, "s3://b/2")
        rec(log, "s3://b/3")  # the flush thread hits ENOSPC: logged, counted, no thread exception
        assert wait_for(lambda: log.dropped_rows == 3)
    finally:
        os.close(full)
        log._st.close(quiet=True)
        log.close()


# ----------------------------------------------------------------------------- threads


def test_concurrent_record_from_8_threads(path: Path) -> None:
    n_threads, per_thread = 8, 3000
    barrier = threading.Barrier(n_threads)
    log = OpLog(path, flush_rows=500, flush_interval_s=0.01)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            log.record("get", f"s3://b/t{t}/{i}", start_ns=time.time_ns(), duration_ns=i, nbytes=t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    rows = read_oplog(path)
    assert len(rows) == n_threads * per_thread
    assert {r.uri for r in rows} == {f"s3://b/t{t}/{i}" for t in range(n_threads) for i in range(per_thread)}
    for t in range(n_threads):  # each thread's rows keep their order
        mine = [r.duration_ns for r in rows if r.nbytes == t]
        assert mine == list(range(per_thread))
    assert raw_text(path).count(HEADER) == 1


def test_flush_thread_is_lazy_daemon_and_stops_on_close(path: Path) -> None:
    log = OpLog(path)
    assert log._st.thread is None  # no thread before the first record
    rec(log, "s3://b/1")
    thread = log._st.thread
    assert thread is not None and thread.daemon and thread.is_alive()
    log.close()
    assert not thread.is_alive()


def test_flush_by_interval(path: Path) -> None:
    interval = 0.5
    log = OpLog(path, flush_rows=1_000_000, flush_interval_s=interval)
    t0 = time.monotonic()
    rec(log, "s3://b/1")
    if time.monotonic() - t0 < interval / 2:
        assert read_oplog(path) == []  # buffered, not yet due
    assert wait_for(lambda: len(read_oplog(path)) == 1)
    assert time.monotonic() - t0 >= interval * 0.9
    # The thread goes back to sleep and flushes the next batch on the same schedule.
    rec(log, "s3://b/2")
    rec(log, "s3://b/3")
    assert wait_for(lambda: len(read_oplog(path)) == 3)
    assert frame_count(path) == 3  # header frame + one frame per interval
    log.close()


@pytest.mark.parametrize("interval", [3600.0, math.inf])
def test_flush_by_row_count(path: Path, interval: float) -> None:
    log = OpLog(path, flush_rows=5, flush_interval_s=interval)
    for i in range(4):
        rec(log, f"s3://b/{i}")
    time.sleep(0.2)
    assert read_oplog(path) == []
    rec(log, "s3://b/4")
    assert wait_for(lambda: len(read_oplog(path)) == 5)
    for i in range(5, 10):
        rec(log, f"s3://b/{i}")
    assert wait_for(lambda: len(read_oplog(path)) == 10)
    assert frame_count(path) == 3
    log.close()


def test_flush_when_garbage_collected(path: Path) -> None:
    log = OpLog(path, flush_interval_s=3600)
    rec(log, "s3://b/1")
    del log
    gc.collect()
    assert [r.uri for r in read_oplog(path)] == ["s3://b/1"]


def test_close_reentered_from_a_finalizer_during_a_write(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A GC finalizer can run close() in the thread that is formatting a batch (flush_lock held).
    log = OpLog(path, flush_interval_s=3600)
    st = log._st
    real = oplog._format_rows

    def reentrant(rows: list[tuple[object, ...]], pid: int) -> tuple[str, int]:
        st.close(quiet=True)  # must neither deadlock nor close the fd under the running write
        assert st.fd >= 0 and st.close_pending
        return real(rows, pid)

    rec(log, "s3://b/1")
    monkeypatch.setattr(oplog, "_format_rows", reentrant)
    log.flush()
    monkeypatch.setattr(oplog, "_format_rows", real)
    assert st.fd == -1 and log.closed
    assert [r.uri for r in read_oplog(path)] == ["s3://b/1"]
    log.close()


def test_without_a_thread_rows_are_flushed_inline(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    log = OpLog(path, flush_rows=3, flush_interval_s=3600)
    for i in range(7):
        rec(log, f"s3://b/{i}")
    assert log._st.thread is None
    assert len(read_oplog(path)) == 6
    log.close()
    assert len(read_oplog(path)) == 7


# ----------------------------------------------------------------------------- processes


@needs_fork
@fork_ok
def test_forked_child_appends_and_does_not_reflush_parent_rows(path: Path) -> None:
    log = OpLog(path, flush_rows=1_000_000, flush_interval_s=3600)
    for i in range(10):
        rec(log, f"s3://b/parent-before/{i}")
    pid = os.fork()
    if pid == 0:  # child: must leave through os._exit
        code = 1
        try:
            code = 3 if log._st.buf else 0  # an empty buffer of its own
            for i in range(20):
                rec(log, f"s3://b/child/{i}")
            log.close()
        finally:
            os._exit(code)
    for i in range(5):
        rec(log, f"s3://b/parent-after/{i}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    log.close()
    rows = read_oplog(path)
    parent = [r.uri for r in rows if r.pid == os.getpid()]
    child = [r.uri for r in rows if r.pid == pid]
    assert sorted(parent) == sorted(
        [f"s3://b/parent-before/{i}" for i in range(10)] + [f"s3://b/parent-after/{i}" for i in range(5)]
    )
    assert child == [f"s3://b/child/{i}" for i in range(20)]
    assert raw_text(path).count(HEADER) == 1


def _mp_worker(path: str, worker: int, n: int) -> None:
    log = OpLog(path, flush_rows=50, flush_interval_s=0.01)
    for i in range(n):
        log.record("get_range", f"s3://b/w{worker}/{i}", start_ns=time.time_ns(), duration_ns=i, offset=i, length=1)
    # No close(): multiprocessing children leave through os._exit; the exit hook must flush.


def _mp_inherited_worker(log: OpLog, worker: int, n: int) -> None:
    for i in range(n):
        log.record("get", f"s3://b/inherited{worker}/{i}", start_ns=time.time_ns(), duration_ns=i)
    # No close() and a 1 h interval: only the multiprocessing exit hook can flush these rows.


@needs_fork
@fork_ok
def test_multiprocessing_fork_workers_append_to_one_file(path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    parent_log = OpLog(path, flush_rows=1_000_000, flush_interval_s=3600)
    rec(parent_log, "s3://b/parent/0")  # buffered in the parent when the workers fork
    n = 2000
    procs = [ctx.Process(target=_mp_worker, args=(str(path), w, n)) for w in range(3)]
    procs += [ctx.Process(target=_mp_inherited_worker, args=(parent_log, w, 100)) for w in range(2)]
    for p in procs:
        p.start()
    for i in range(1, 500):
        rec(parent_log, f"s3://b/parent/{i}")
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    parent_log.close()

    rows = read_oplog(path)
    uris = [r.uri for r in rows]
    expected = {f"s3://b/w{w}/{i}" for w in range(3) for i in range(n)}
    expected |= {f"s3://b/inherited{w}/{i}" for w in range(2) for i in range(100)}
    expected |= {f"s3://b/parent/{i}" for i in range(500)}
    assert len(uris) == len(expected) == len(set(uris))  # nothing lost, nothing written twice
    assert set(uris) == expected
    assert len({r.pid for r in rows}) == 6
    text = raw_text(path)  # concatenated frames decompress as one stream
    assert text.count(HEADER) == 1 and text.startswith(HEADER + "\n")
    assert len(text.splitlines()) == len(expected) + 1


def _mp_create(path: str, barrier: multiprocessing.synchronize.Barrier, worker: int) -> None:
    barrier.wait()
    with OpLog(path) as log:
        log.record("put", f"s3://b/{worker}", start_ns=time.time_ns(), duration_ns=1)


@needs_fork
@fork_ok
def test_header_written_exactly_once_when_processes_race_to_create(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        path = tmp_path / f"race{attempt}.tsv.zst"
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_mp_create, args=(str(path), barrier, w)) for w in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        text = raw_text(path)
        assert text.startswith(HEADER + "\n") and text.count(HEADER) == 1
        assert sorted(r.uri for r in read_oplog(path)) == [f"s3://b/{w}" for w in range(6)]


def test_header_written_once_by_several_instances_and_for_an_existing_empty_file(path: Path) -> None:
    with OpLog(path) as a, OpLog(path) as b:
        rec(a, "s3://b/a")
        rec(b, "s3://b/b")
    with OpLog(path) as c:
        rec(c, "s3://b/c")
    assert raw_text(path).count(HEADER) == 1
    assert sorted(r.uri for r in read_oplog(path)) == ["s3://b/a", "s3://b/b", "s3://b/c"]

    empty = path.with_name("empty.tsv.zst")
    empty.touch()
    with OpLog(empty) as log:
        rec(log, "s3://b/e")
    assert raw_text(empty).count(HEADER) == 1
    assert [r.uri for r in read_oplog(empty)] == ["s3://b/e"]


_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from s3dlio_loader.storage.oplog import OpLog, get_global_oplog

    log = OpLog(sys.argv[1], flush_interval_s=3600)
    for i in range(3):
        log.record("get", f"s3://b/{i}", start_ns=time.time_ns(), duration_ns=i)
    glob = get_global_oplog()  # from S3DLIO_OPLOG
    assert glob is not None and glob is get_global_oplog()
    glob.record("put", "s3://b/global", start_ns=time.time_ns(), duration_ns=7)
    # exit without close(), with the flush threads still alive
    """
)


def test_rows_flushed_at_interpreter_exit(tmp_path: Path) -> None:
    own, glob = tmp_path / "own.tsv.zst", tmp_path / "global.tsv.zst"
    env = {**os.environ, ENV_VAR: str(glob)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(own)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 60  # the daemon flush threads do not hold the process
    assert [(r.uri, r.duration_ns) for r in read_oplog(own)] == [(f"s3://b/{i}", i) for i in range(3)]
    assert [r.uri for r in read_oplog(glob)] == ["s3://b/global"]


# ----------------------------------------------------------------------------- global log


@pytest.fixture
def fresh_global(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(oplog, "_global_log", None)
    monkeypatch.setattr(oplog, "_global_resolved", False)
    monkeypatch.setattr(oplog, "_global_exported_env", False)
    monkeypatch.delenv(ENV_VAR, raising=False)
    yield
    log = oplog._global_log
    if log is not None:
        log.close()


@pytest.mark.usefixtures("fresh_global")
def test_global_oplog_from_environment_is_read_once(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(path))
    log = get_global_oplog()
    assert isinstance(log, OpLog) and log.path == str(path)
    monkeypatch.setenv(ENV_VAR, str(path.with_name("other")))
    assert get_global_oplog() is log
    rec(log, "s3://b/1")
    disable_oplog()
    assert log.closed and get_global_oplog() is None
    assert [r.uri for r in read_oplog(path)] == ["s3://b/1"]


@pytest.mark.usefixtures("fresh_global")
def test_global_oplog_off_by_default() -> None:
    assert get_global_oplog() is None
    assert get_global_oplog() is None


@pytest.mark.usefixtures("fresh_global")
def test_enable_and_disable_oplog(tmp_path: Path) -> None:
    first = enable_oplog(tmp_path / "a.zst", flush_rows=10)
    assert get_global_oplog() is first and first.flush_rows == 10
    second = enable_oplog(tmp_path / "b.zst", export_env=True)
    assert first.closed and get_global_oplog() is second
    assert os.environ[ENV_VAR] == str(tmp_path / "b.zst")
    disable_oplog()
    assert second.closed and get_global_oplog() is None and ENV_VAR not in os.environ


@pytest.mark.usefixtures("fresh_global")
def test_global_oplog_unopenable_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing-dir" / "x.zst"))
    with pytest.raises(ConfigError, match=ENV_VAR):
        get_global_oplog()


def test_shared_oplog_is_one_object_per_path(tmp_path: Path) -> None:
    a = shared_oplog(tmp_path / "s.zst")
    try:
        assert shared_oplog(str(tmp_path / "s.zst")) is a
        assert shared_oplog(tmp_path / "t.zst") is not a
    finally:
        a.close()
        shared_oplog(tmp_path / "t.zst").close()
    assert shared_oplog(tmp_path / "s.zst") is not a  # a closed log is replaced
    shared_oplog(tmp_path / "s.zst").close()


# ----------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/key.npy", "s3://bucket/key.npy"),
        ("/plain/local/path", "/plain/local/path"),
        ("https://user:pass@host.example.com/a/b", "https://REDACTED@host.example.com/a/b"),
        ("https://ghp_TOKEN@github.com/x", "https://REDACTED@github.com/x"),
        ("https://u:p@ss@host/x", "https://REDACTED@host/x"),
        ("https://host/x@y", "https://host/x@y"),  # '@' in the path is not userinfo
        (
            "https://acct.blob.core.windows.net/c/blob?sv=2022-11-02&ss=b&sig=abc%2Fdef%3D&se=2030",
            "https://acct.blob.core.windows.net/c/blob?sv=2022-11-02&ss=b&sig=REDACTED&se=2030",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F20240101"
            "&X-Amz-Signature=deadbeef&X-Amz-Security-Token=FQo&versionId=3",
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=REDACTED"
            "&X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED&versionId=3",
        ),
        (
            "https://h/p?Signature=s&AWSAccessKeyId=AK&Expires=1",
            "https://h/p?Signature=REDACTED&AWSAccessKeyId=REDACTED&Expires=1",
        ),
        ("https://h/p?password=hunter2#frag", "https://h/p?password=REDACTED#frag"),
        ("https://h/p?SECRET=x;api_key=y&token", "https://h/p?SECRET=REDACTED;api_key=REDACTED&token"),
        ("https://h/p?a=1&b=2", "https://h/p?a=1&b=2"),
        ("az://container@account/blob", "az://container@account/blob"),  # a container, not a user
        ("abfs://user:key@account.dfs.core.windows.net/x", "abfs://REDACTED@account.dfs.core.windows.net/x"),
        ("s3://bucket/odd?key=value", "s3://bucket/odd?key=REDACTED"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected
    assert redact_uri(expected) == expected  # idempotent


def test_redaction_is_linear_on_hostile_input() -> None:
    hostile = ["&" + "key" * 30_000 + " =", "?" + "sig=" * 30_000, "s3://" + "u" * 90_000 + " @x"]
    t0 = time.monotonic()
    for text in hostile:
        oplog._redact_text(text)
        redact_uri(text)
    assert time.monotonic() - t0 < 2.0


def test_secrets_never_reach_the_file(path: Path) -> None:
    with OpLog(path) as log:
        rec(log, "https://alice:s3cr3t-pw@host/obj?sig=SIGSECRET&sv=1")
        rec(
            log,
            "s3://b/k",
            status="error",
            error=OSError("GET 'https://bob:TOPSECRET@h/x?X-Amz-Signature=AMZSECRET&a=1' failed"),
        )
    text = raw_text(path)
    for secret in ("s3cr3t-pw", "alice", "SIGSECRET", "TOPSECRET", "AMZSECRET", "bob:"):
        assert secret not in text
    rows = read_oplog(path)
    assert rows[0].uri == "https://REDACTED@host/obj?sig=REDACTED&sv=1"
    assert rows[1].error == "OSError: GET 'https://REDACTED@h/x?X-Amz-Signature=REDACTED&a=1' failed"


# ----------------------------------------------------------------------------- malformed files


def write_frames(path: Path, *texts: str) -> None:
    cctx = zstandard.ZstdCompressor()
    path.write_bytes(b"".join(cctx.compress(t.encode("utf-8")) for t in texts))


GOOD_ROW = "1\tget\ts3://b/k\t\t\t10\t\t5\tok\t\t42\t1\n"


@pytest.mark.parametrize(
    ("frames", "line", "message"),
    [
        (["start_ns\top\n", GOOD_ROW], 1, "header"),
        ([GOOD_ROW], 1, "header"),
        ([HEADER + "\n" + GOOD_ROW, "1\tget\ts3://b/k\n"], 3, "expected 12 tab-separated fields, got 3"),
        ([HEADER + "\n", GOOD_ROW + GOOD_ROW.replace("\t10\t", "\tten\t")], 3, "column 'bytes'"),
        ([HEADER + "\n", GOOD_ROW.replace("\tok\t", "\tfailed\t")], 2, "column 'status'"),
        ([HEADER + "\n", GOOD_ROW.replace("\t5\t", "\t\t")], 2, "column 'duration_ns'"),
        ([HEADER + "\n", GOOD_ROW.rstrip("\n")], 2, "incomplete last line"),
    ],
)
def test_malformed_file_error_names_path_and_line(path: Path, frames: list[str], line: int, message: str) -> None:
    write_frames(path, *frames)
    with pytest.raises(OpLogFormatError) as info:
        read_oplog(path)
    err = info.value
    assert isinstance(err, FormatError) and isinstance(err, ValueError)
    assert err.path == str(path) and err.line == line
    assert str(path) in str(err) and f"line {line}:" in str(err) and message in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.path, again.line, str(again)) == (
        OpLogFormatError,
        err.path,
        err.line,
        str(err),
    )


def test_not_zstd_truncated_and_bad_utf8(path: Path) -> None:
    path.write_text(HEADER + "\n" + GOOD_ROW)  # an uncompressed TSV
    with pytest.raises(OpLogFormatError, match=r"line 1: not a zstd stream"):
        read_oplog(path)

    with OpLog(path.with_name("t.zst")) as log:
        rec(log, "s3://b/1")
    data = path.with_name("t.zst").read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(OpLogFormatError, match=rf"{re.escape(str(path))}.*(truncated|incomplete)"):
        read_oplog(path)

    cctx = zstandard.ZstdCompressor()
    path.write_bytes(cctx.compress(HEADER.encode() + b"\n1\tget\ts3://b/\xff\t\t\t1\t\t1\tok\t\t1\t1\n"))
    with pytest.raises(OpLogFormatError, match="UTF-8"):
        read_oplog(path)


def test_empty_file_and_concatenated_logs(tmp_path: Path) -> None:
    (tmp_path / "empty").touch()
    assert read_oplog(tmp_path / "empty") == []
    for name in ("a", "b"):
        with OpLog(tmp_path / name) as log:
            rec(log, f"s3://b/{name}")
    both = tmp_path / "both"
    both.write_bytes((tmp_path / "a").read_bytes() + (tmp_path / "b").read_bytes())  # `cat a b > both`
    assert [r.uri for r in read_oplog(both)] == ["s3://b/a", "s3://b/b"]


# ----------------------------------------------------------------------------- property test

_SEPARATORS = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ANY_CHAR = st.characters(exclude_categories=())  # includes controls and lone surrogates
_PIECES = st.sampled_from(
    [*_SEPARATORS, "@", "?", "&", ";", "=", "#", "://", "https://u:p@h/", "?sig=", "&token=", "\\", "é", "😀"]
)
_TEXT = st.lists(st.one_of(_ANY_CHAR, _PIECES), max_size=40).map("".join)


def _expected_field(s: str, limit: int | None = None) -> str:
    s = re.sub(f"[{_SEPARATORS}]", " ", s)
    if limit is not None and len(s) > limit:
        s = s[: limit - 3] + "..."
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uri=_TEXT, error=_TEXT, op=_TEXT)
def test_arbitrary_strings_round_trip_sanitized(
    tmp_path_factory: pytest.TempPathFactory, uri: str, error: str, op: str
) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.zst"
    with OpLog(path, flush_interval_s=3600) as log:
        log.record(op, uri, start_ns=1, duration_ns=2, status="error", error=error, offset=3)
        log.record("get", "s3://b/next", start_ns=4, duration_ns=5)
    rows = read_oplog(path)
    assert len(rows) == 2  # the strings did not break the TSV structure
    row = rows[0]
    assert row.uri == _expected_field(redact_uri(uri))
    assert row.op == _expected_field(op)
    assert row.error == (_expected_field(oplog._redact_text(error), ERROR_MAX_CHARS) or None)
    assert (row.start_ns, row.duration_ns, row.offset, row.status) == (1, 2, 3, "error")
    assert rows[1] == OpRecord(4, "get", "s3://b/next", None, None, 0, None, 5, "ok", None, os.getpid(), 1)
    text = raw_text(path)
    assert text.splitlines() == text.split("\n")[:-1]  # no stray line separators for other tools


@given(uri=_TEXT)
def test_redact_uri_is_total_and_idempotent(uri: str) -> None:
    once = redact_uri(uri)
    assert redact_uri(once) == once
    if "@" not in uri and "?" not in uri:
        assert once == uri


# ----------------------------------------------------------------------------- cost


def test_record_cost(path: Path) -> None:
    log = OpLog(path, flush_rows=1_000_000, flush_interval_s=3600)
    record, t = log.record, time.time_ns()
    rec(log, "s3://b/warm")  # start the flush thread outside the timing
    n = 2000

    def calls() -> None:
        for _ in range(n):
            record("get_range", "s3://bucket/k", start_ns=t, duration_ns=5, offset=0, length=10, nbytes=10)

    per_call_ns = min(timeit.repeat(calls, number=1, repeat=5)) / n * 1e9
    log.close()
    print(f"OpLog.record(): {per_call_ns:.0f} ns/call")
    assert per_call_ns < 50_000  # generous: only catches pathological regressions
