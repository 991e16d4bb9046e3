"""Op-log tools on real op-logs written by a Store: summary figures, table, replay with timing."""

from __future__ import annotations

import argparse
import io
import json
import math
import time

import pytest

from s3dlio_loader import ConfigError, ObjectNotFoundError, Store
from s3dlio_loader.datagen import DataGenerator
from s3dlio_loader.storage.oplog import OpLog, read_oplog, shared_oplog
from s3dlio_loader.storage.oplog_tools import (
    add_oplog_arguments,
    format_summary,
    replay_oplog,
    reroot_uri,
    run_oplog,
    summarize_oplog,
)

KiB = 1024


def record_workload(backend, log_path, *, pause: float = 0.0) -> dict[str, int]:
    """Run a small known workload through a Store with ``oplog=log_path``; return what it did."""
    store = Store.from_uri(backend.root_uri, backend.storage_options, oplog=str(log_path))
    sizes = [1 * KiB, 10 * KiB, 100 * KiB]
    for i, size in enumerate(sizes):
        store.put(backend.uri(f"src/obj-{i}.bin"), bytes([i]) * size)
        time.sleep(pause)
    for _ in range(2):
        for i in range(len(sizes)):
            store.get(backend.uri(f"src/obj-{i}.bin"))
        time.sleep(pause)
    store.get_range(backend.uri("src/obj-2.bin"), 50 * KiB, 20 * KiB)
    store.get_range(backend.uri("src/obj-1.bin"), 0, 5 * KiB)
    store.list(backend.uri("src/"))
    with pytest.raises(ObjectNotFoundError):
        store.get(backend.uri("src/missing.bin"))
    shared_oplog(str(log_path)).flush()
    return {"put": 3, "get": 7, "get_range": 2, "put_bytes": sum(sizes), "get_bytes": 2 * sum(sizes),
            "range_bytes": 25 * KiB}


@pytest.mark.parametrize("backend", ["file", "s3"], indirect=True)
def test_summary_of_a_real_oplog(backend, tmp_path):
    log = tmp_path / "ops.tsv.zst"
    did = record_workload(backend, log)
    s = summarize_oplog(log)
    rows = read_oplog(log)
    assert s["records"] == len(rows) and s["processes"] == 1
    assert s["ops"]["put"]["count"] == did["put"] and s["ops"]["put"]["bytes"] == did["put_bytes"]
    assert s["ops"]["get"]["count"] == did["get"]  # 6 reads + 1 of a missing object
    assert s["ops"]["get"]["errors"] == 1 and s["ops"]["get"]["bytes"] == did["get_bytes"]
    assert s["ops"]["get_range"]["count"] == 2 and s["ops"]["get_range"]["bytes"] == did["range_bytes"]
    assert "list" in s["ops"]
    total = s["total"]
    assert total["count"] == sum(op["count"] for op in s["ops"].values()) == len(rows)
    assert total["bytes"] == sum(op["bytes"] for op in s["ops"].values())
    assert total["errors"] == 1
    assert s["span_s"] > 0 and s["end_ns"] > s["start_ns"]
    assert total["bytes_per_s"] == pytest.approx(total["bytes"] / s["span_s"])
    for fig in [*s["ops"].values(), total]:
        lat = fig["latency_ms"]
        assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert s["ops"]["put"]["latency_ms"]["max"] == pytest.approx(
        max(r.duration_ns for r in rows if r.op == "put") / 1e6)


def test_summary_counts_retries_and_handles_empty_logs(tmp_path):
    log = tmp_path / "manual.tsv.zst"
    with OpLog(log) as oplog:
        t = time.time_ns()
        oplog.record("get", "s3://b/k", start_ns=t, duration_ns=5_000_000, status="error", error="reset")
        oplog.record("get", "s3://b/k", start_ns=t + 10_000_000, duration_ns=1_000_000, nbytes=100, attempt=2)
        oplog.record("put", "s3://b/j", start_ns=t + 20_000_000, duration_ns=2_000_000, nbytes=50)
    s = summarize_oplog(log)
    get = s["ops"]["get"]
    assert (get["count"], get["errors"], get["retries"], get["bytes"]) == (2, 1, 1, 100)
    assert get["latency_ms"]["max"] == pytest.approx(1.0)  # successful rows only
    assert s["span_s"] == pytest.approx(0.022)
    empty = tmp_path / "empty.tsv.zst"
    OpLog(empty).close()
    e = summarize_oplog(empty)
    assert e["records"] == 0 and e["ops"] == {} and e["total"]["latency_ms"] is None
    assert "0 rows" in format_summary(e)


def test_format_summary_is_a_table(tmp_path):
    log = tmp_path / "ops.tsv.zst"
    with OpLog(log) as oplog:
        t = time.time_ns()
        for i in range(10):
            oplog.record("get", f"s3://b/{i}", start_ns=t + i * 1_000_000, duration_ns=(i + 1) * 1_000_000,
                         nbytes=1 << 20)
    text = format_summary(summarize_oplog(log))
    lines = text.splitlines()
    assert lines[0].startswith(f"op-log {log}: 10 rows from 1 process(es)")
    assert lines[1].split() == ["op", "count", "errors", "retries", "bytes", "MiB/s", "ops/s", "p50", "ms",
                                "p90", "ms", "p99", "ms", "max", "ms"]
    get = lines[2].split()
    assert get[:4] == ["get", "10", "0", "0"] and get[4:6] == ["10.0", "MiB"]
    assert get[-1] == "10.000" and get[-4] == "5.500"  # max and p50 in ms
    assert lines[3].startswith("total")
    assert len({len(line) for line in lines[1:]}) <= 2  # aligned columns


def test_reroot_uri():
    assert reroot_uri("s3://bucket/a/b.bin", "s3://other/p/") == "s3://other/p/a/b.bin"
    assert reroot_uri("gs://bucket/a", "file:///t") == "file:///t/a"
    assert reroot_uri("file:///data/x/y.npz", "az://c/r") == "az://c/r/x/y.npz"
    assert reroot_uri("s3://bucket", "s3://o/") is None
    assert reroot_uri("s3://b/keep/a", "s3://o", source_prefix="s3://b/keep/") == "s3://o/a"
    assert reroot_uri("s3://b/other/a", "s3://o", source_prefix="s3://b/keep") is None


@pytest.mark.parametrize(("backend", "target_kind"), [("file", "s3"), ("s3", "file")], indirect=["backend"])
def test_replay_onto_another_backend(backend, target_kind, tmp_path, moto_server):
    log = tmp_path / "ops.tsv.zst"
    record_workload(backend, log)
    if target_kind == "s3":
        bucket = f"replay-{time.time_ns() % 10**9}"
        moto_server.make_bucket(bucket)
        target, so = f"s3://{bucket}/re", moto_server.storage_options()
    else:
        target, so = f"file://{tmp_path}/replayed", {}
    replay_log = tmp_path / "replay.tsv.zst"
    target_store = Store.from_uri(target, so, oplog=str(replay_log))
    r = replay_oplog(log, target, speed=0, store=target_store)
    assert r["errors"] == 0, r["error_samples"]
    assert r["requests"] == 3 + 6 + 2  # puts, successful gets, ranges
    assert r["skipped"] == {"list": 1} and r["skipped_errors"] == 1 and r["skipped_outside"] == 0
    assert r["ops"]["put"]["bytes"] == 111 * KiB and r["ops"]["get"]["count"] == 6
    assert r["ops"]["get_range"]["bytes"] == 25 * KiB
    # keys re-rooted after the bucket (for file://, after the first directory)
    src_uri = backend.uri("src/obj-2.bin")
    dest = reroot_uri(src_uri, target)
    key = src_uri.split("://", 1)[1].lstrip("/").split("/", 1)[1]
    assert dest == f"{target}/{key}"
    assert target_store.stat(dest).size == 100 * KiB
    # the objects read before being written were prepared; later runs find them in place
    assert r["prepared"]["objects"] == 3 and r["prepared"]["bytes"] == 111 * KiB
    again = replay_oplog(log, target, speed=0, store=target_store)
    assert again["prepared"]["objects"] == 0 and again["errors"] == 0
    # the target's own op-log shows the same mix
    shared_oplog(str(replay_log)).flush()
    replayed = summarize_oplog(replay_log)["ops"]
    assert replayed["put"]["count"] >= 3 + 3 and replayed["get_range"]["count"] >= 2
    text = format_summary(r)
    assert text.startswith(f"replay of {log} onto {target}") and "skipped: failed rows=1, list=1" in text


def test_replay_keeps_the_recorded_timing(tmp_path, backend_file):
    log = tmp_path / "ops.tsv.zst"
    record_workload(backend_file, log, pause=0.15)  # the log spans about 0.45 s
    rows = [r for r in read_oplog(log) if r.op in ("get", "get_range", "put") and r.status == "ok"]
    span = (max(r.start_ns for r in rows) - min(r.start_ns for r in rows)) / 1e9
    assert span > 0.4
    timed = replay_oplog(log, f"file://{tmp_path}/t1", speed=1.0)
    assert timed["recorded_span_s"] == pytest.approx(span)
    assert timed["elapsed_s"] >= span * 0.95
    assert timed["lag_ms"]["max"] < 500
    fast = replay_oplog(log, f"file://{tmp_path}/t2", speed=4.0)
    assert span / 4 * 0.95 <= fast["elapsed_s"] < span * 0.8
    unthrottled = replay_oplog(log, f"file://{tmp_path}/t3", speed=math.inf)
    assert unthrottled["elapsed_s"] < span / 2 and unthrottled["lag_ms"] is None


def test_replay_source_prefix_prepare_and_fill(tmp_path, backend_file):
    log = tmp_path / "ops.tsv.zst"
    record_workload(backend_file, log)
    src = backend_file.uri("src")
    r = replay_oplog(log, f"file://{tmp_path}/flat", speed=0, source_prefix=src,
                     fill=lambda buf: DataGenerator(compress=4).fill(buf))
    assert r["errors"] == 0 and r["skipped_outside"] == 0
    data = (tmp_path / "flat" / "obj-2.bin").read_bytes()
    assert len(data) == 100 * KiB and data.count(0) > 60 * KiB  # compress=4: mostly zeros
    outside = replay_oplog(log, f"file://{tmp_path}/none", speed=0, source_prefix="file:///nowhere/")
    assert outside["requests"] == 0 and outside["skipped_outside"] == 3 + 6 + 2
    unprepared = replay_oplog(log, f"file://{tmp_path}/cold", speed=0, prepare=False, max_in_flight=1)
    # in order, one at a time: the PUTs come first, so the reads find their objects
    assert unprepared["errors"] == 0 and unprepared["prepared"]["objects"] == 0
    gets_only = tmp_path / "gets.tsv.zst"
    with OpLog(gets_only) as oplog:
        oplog.record("get", "s3://b/x/never-written", start_ns=time.time_ns(), duration_ns=1, nbytes=10)
    failed = replay_oplog(gets_only, f"file://{tmp_path}/cold2", speed=0, prepare=False)
    assert failed["errors"] == 1 and "never-written" in failed["error_samples"][0]
    with pytest.raises(ConfigError, match="speed"):
        replay_oplog(log, f"file://{tmp_path}/x", speed=-1)


def test_replay_streams_large_puts(tmp_path, monkeypatch):
    log = tmp_path / "big.tsv.zst"
    with OpLog(log) as oplog:
        oplog.record("put", "s3://b/big.bin", start_ns=time.time_ns(), duration_ns=1, nbytes=3 * (1 << 20) + 7)
    monkeypatch.setenv("S3DLIO_DATAGEN_CHUNK_SIZE", "1m")
    r = replay_oplog(log, f"file://{tmp_path}/out", speed=0)
    assert r["errors"] == 0
    data = (tmp_path / "out" / "big.bin").read_bytes()
    assert len(data) == 3 * (1 << 20) + 7
    chunks = {data[i : i + 4096] for i in range(0, len(data) - 4096, 4096)}
    assert len(chunks) == len(data) // 4096  # generated bytes do not repeat


# ---------------------------------------------------------------- CLI hook


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_oplog_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_oplog_summary_and_replay(tmp_path, backend_file):
    log = tmp_path / "ops.tsv.zst"
    record_workload(backend_file, log)
    out = io.StringIO()
    assert run_oplog(_args("summary", str(log)), Store.from_uri, out=out) == 0
    assert out.getvalue().startswith(f"op-log {log}")
    out = io.StringIO()
    assert run_oplog(_args("summary", str(log), "--json"), Store.from_uri, out=out) == 0
    assert json.loads(out.getvalue())["ops"]["put"]["count"] == 3
    out = io.StringIO()
    args = _args("replay", str(log), "--target", f"file://{tmp_path}/cli", "--speed", "0", "--max-in-flight", "4")
    assert run_oplog(args, Store.from_uri, out=out) == 0
    assert "replay of" in out.getvalue()
    gets_only = tmp_path / "gets.tsv.zst"
    with OpLog(gets_only) as oplog:
        oplog.record("get", "s3://b/x/absent", start_ns=time.time_ns(), duration_ns=1, nbytes=10)
    args = _args("replay", str(gets_only), "--target", f"file://{tmp_path}/cli2", "--speed", "inf", "--no-prepare",
                 "--json")
    out = io.StringIO()
    assert run_oplog(args, Store.from_uri, out=out) == 1
    assert json.loads(out.getvalue())["errors"] == 1
    with pytest.raises(SystemExit):
        _args("replay", str(log))  # --target is required


@pytest.fixture
def backend_file(tmp_path):
    """A file:// backend like conftest's, without parametrizing over every backend."""
    from backends import Backend

    root = tmp_path / "store"
    root.mkdir()
    return Backend(scheme="file", root_uri=f"file://{root}", local_path=root)
