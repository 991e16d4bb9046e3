"""The Store against every backend: file://, direct://, and real S3, Azure and GCS servers."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import pickle

import numpy as np
import pytest
import zstandard

from s3dlio_loader import (
    ConfigError,
    InvalidRangeError,
    ObjectNotFoundError,
    PathTraversalError,
    StorageError,
    Store,
    StoreOptions,
    TransientStorageError,
    UnsupportedSchemeError,
)
from s3dlio_loader.storage import coalesce_ranges, store_for
from s3dlio_loader.storage.oplog import read_oplog
from s3dlio_loader.storage.uri import parse_uri

MiB = 1 << 20


def make_store(backend, **options) -> Store:
    return Store.from_uri(backend.root_uri, backend.storage_options, **options)


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, 4095, 4097, 1 * MiB + 3])
def test_put_get_stat_roundtrip(backend, size):
    store = make_store(backend)
    uri = backend.uri(f"dir/obj-{size}.bin")
    data = payload(size, seed=size)
    store.put(uri, data)
    assert store.get(uri) == data
    info = store.stat(uri)
    assert info.uri == uri and info.size == size
    assert store.exists(uri)
    assert not store.exists(backend.uri("dir/absent.bin"))


def test_put_accepts_bytearray_and_memoryview(backend):
    store = make_store(backend)
    arr = np.arange(10_000, dtype=np.float32)
    store.put(backend.uri("mv.bin"), memoryview(arr))
    store.put(backend.uri("ba.bin"), bytearray(b"abc" * 1000))
    store.put(backend.uri("part.bin"), memoryview(b"0123456789")[2:7])
    assert np.array_equal(np.frombuffer(store.get(backend.uri("mv.bin")), np.float32), arr)
    assert store.get(backend.uri("ba.bin")) == b"abc" * 1000
    assert store.get(backend.uri("part.bin")) == b"23456"
    assert store.stats.bytes_written == arr.nbytes + 3000 + 5


# ---------------------------------------------------------------- ranges


def test_get_range_edges(backend):
    store = make_store(backend)
    uri = backend.uri("r.bin")
    data = payload(10_000, seed=1)
    store.put(uri, data)
    before = store.stats.requests
    assert store.get_range(uri, 5, 0) == b""
    assert store.get_range(uri, 10_000, 0) == b""
    assert store.stats.requests == before, "a zero-length range must not make a request"
    assert store.get_range(uri, 0, 1) == data[:1]
    assert store.get_range(uri, 4093, 9) == data[4093:4102]
    assert store.get_range(uri, 9_990, 10) == data[9_990:]
    with pytest.raises(InvalidRangeError) as err:
        store.get_range(uri, 9_990, 11)
    assert uri in str(err.value) and "10000" in str(err.value)
    with pytest.raises(InvalidRangeError):
        store.get_range(uri, 20_000, 5)
    with pytest.raises(ConfigError):
        store.get_range(uri, -1, 5)
    with pytest.raises(ConfigError):
        store.get_range(uri, 0, -5)


def test_get_ranges_coalesces_nearby_ranges(backend):
    store = make_store(backend, coalesce_gap=1024)
    uri = backend.uri("ranges.bin")
    data = payload(200_000, seed=2)
    store.put(uri, data)
    ranges = [(50_000, 100), (0, 10), (20, 30), (100, 0), (150_000, 4096), (50_500, 10)]
    before = store.stats.by_op.get("get_range", 0)
    parts = store.get_ranges(uri, ranges)
    assert [bytes(p) for p in parts] == [data[o : o + n] for o, n in ranges]
    assert all(p.readonly for p in parts)
    # (0,10)+(20,30)+(100,0) | (50000,100)+(50500,10) | (150000,4096): three requests; a local
    # file reads its three blocks in one call with one descriptor
    assert store.stats.by_op["get_range"] - before == (1 if backend.scheme == "file" else 3)


def test_coalesce_ranges_unit():
    assert coalesce_ranges([], 10) == []
    assert coalesce_ranges([(100, 10), (0, 10)], 0) == [(0, 10, [1]), (100, 110, [0])]
    assert coalesce_ranges([(0, 100), (10, 5)], 0) == [(0, 100, [0, 1])]  # contained range
    # adjacent ranges stop merging at max_block; an oversized range stays whole
    assert coalesce_ranges([(0, 40), (40, 40), (80, 40), (120, 500)], 0, max_block=100) == [
        (0, 80, [0, 1]), (80, 120, [2]), (120, 620, [3])]  # fmt: skip


def test_large_object_fetched_as_concurrent_ranges(backend):
    if backend.scheme == "az":
        pytest.skip("Azurite: covered by the 100 MiB s3/gs/file cases; 100 MiB through node is slow")
    store = make_store(backend, range_threshold=32 * MiB, range_chunk=8 * MiB)
    uri = backend.uri("big.bin")
    data = payload(100 * MiB + 12345, seed=3)
    store.put(uri, data)
    objects = store.list(uri)
    assert [o.size for o in objects] == [len(data)]
    store.stats.reset()
    got = store.get(uri)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    if backend.scheme == "file":
        assert store.stats.by_op == {"get": 1}, "a local file is read whole: splitting only adds a copy"
    else:
        assert store.stats.by_op == {"get_range": 13}, "100 MiB / 8 MiB chunks = 13 range requests, no HEAD"


def test_size_unknown_means_one_request_and_no_head(backend):
    store = make_store(backend, range_threshold=1024)
    uri = backend.uri("unknown.bin")
    data = payload(5000, seed=4)
    store.put(uri, data)
    fresh = make_store(backend, range_threshold=1024)
    assert fresh.get(uri) == data
    assert fresh.stats.by_op == {"get": 1}
    assert fresh.get(uri, size=5000) == data  # size given: split into ranges of range_chunk (not locally)
    assert fresh.stats.by_op == ({"get": 2} if backend.scheme == "file" else {"get": 1, "get_range": 1})


# ---------------------------------------------------------------- get_many


def test_get_many_ordered_and_as_completed(backend):
    store = make_store(backend, max_in_flight=8)
    uris = [backend.uri(f"many/{i:03d}.bin") for i in range(40)]
    blobs = {u: payload(1000 + i, seed=i) for i, u in enumerate(uris)}
    for u, d in blobs.items():
        store.put(u, d)
    ordered = list(store.get_many(uris))
    assert [u for u, _ in ordered] == uris
    assert all(d == blobs[u] for u, d in ordered)
    unordered = list(store.get_many(iter(uris), ordered=False, max_in_flight=3))
    assert sorted(u for u, _ in unordered) == uris
    assert all(d == blobs[u] for u, d in unordered)
    listed = store.list(backend.uri("many/"))
    assert [u for u, _ in store.get_many(listed)] == uris


def test_get_many_raises_on_missing_object_naming_it(backend):
    store = make_store(backend)
    store.put(backend.uri("ok.bin"), b"x")
    missing = backend.uri("missing.bin")
    with pytest.raises(ObjectNotFoundError) as err:
        list(store.get_many([backend.uri("ok.bin"), missing]))
    assert missing in str(err.value)


def test_get_many_local_counts_every_read_and_retries_a_transient_fault(tmp_path, monkeypatch):
    """file:// reads skip the per-request book-keeping: the counters must still add up."""
    import s3dlio_loader.storage.store as store_module

    store = Store("file", retry_base_delay=0.001)
    uris = [f"file://{tmp_path}/{i}.bin" for i in range(5)]
    for i, u in enumerate(uris):
        store.put(u, bytes([i]) * (100 + i))
    store.stats.reset()
    assert [d for _, d in store.get_many(uris)] == [bytes([i]) * (100 + i) for i in range(5)]
    assert store.stats.by_op == {"get": 5} and store.stats.bytes_read == sum(100 + i for i in range(5))

    real_read, calls = store_module._local_read, []

    def flaky_read(path, *args):
        calls.append(path)
        if len(calls) == 2:
            raise TimeoutError("disk took too long")
        return real_read(path, *args)

    monkeypatch.setattr(store_module, "_local_read", flaky_read)
    store.stats.reset()
    assert [d for _, d in store.get_many(uris)] == [bytes([i]) * (100 + i) for i in range(5)]
    assert (store.stats.requests, store.stats.retries, store.stats.errors) == (6, 1, 0)
    assert store.stats.bytes_read == sum(100 + i for i in range(5))

    monkeypatch.setattr(store_module, "_local_read", lambda *a: (_ for _ in ()).throw(TimeoutError("stuck")))
    store.stats.reset()
    with pytest.raises(TransientStorageError) as err:
        list(store.get_many(uris[:1]))
    assert uris[0] in str(err.value)
    assert store.stats.errors == 1 and store.stats.retries == store.options.max_attempts - 1


def test_open_local_reads_straight_into_the_callers_buffers(tmp_path, moto_server):
    store = Store("file")
    uris = [f"file://{tmp_path}/{i}.bin" for i in range(3)]
    for i, u in enumerate(uris):
        store.put(u, bytes([65 + i]) * (1000 * i))  # 0, 1000 and 2000 bytes
    store.stats.reset()
    files = store.open_local(uris + uris[2:])  # a file may be asked for twice
    assert files is not None and files.sizes == [0, 1000, 2000, 2000] and files.nbytes == 5000
    out = np.zeros(5000, np.uint8)
    bounds = np.cumsum([0, *files.sizes]).tolist()
    files.read_into([out[a:b] for a, b in itertools.pairwise(bounds)])
    assert out.tobytes() == b"B" * 1000 + b"C" * 2000 + b"C" * 2000
    assert store.stats.by_op == {"get": 4} and store.stats.bytes_read == 5000

    assert store.open_local([f"file://{tmp_path}/missing.bin"]) is None, "get_many names the error instead"
    assert Store("s3", moto_server.storage_options()).open_local(["s3://b/k"]) is None

    files = store.open_local(uris[1:2])
    with pytest.raises(ConfigError, match=r"1\.bin holds 10 bytes"):
        files.read_into([np.zeros(10, np.uint8)])
    files = store.open_local(uris[2:3])
    with open(f"{tmp_path}/2.bin", "r+b") as f:
        f.truncate(500)  # rewritten in place after it was opened
    with pytest.raises(StorageError, match=r"2\.bin: the file shrank while it was read"):
        files.read_into([np.zeros(2000, np.uint8)])


def test_open_local_closes_its_files_when_dropped(tmp_path):
    import gc

    store = Store("file")
    uri = f"file://{tmp_path}/x.bin"
    store.put(uri, b"x")
    before = len(os.listdir("/proc/self/fd"))
    files = [store.open_local([uri] * 10) for _ in range(5)]
    assert len(os.listdir("/proc/self/fd")) >= before + 50
    del files
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


# ---------------------------------------------------------------- listing


def test_list_prefix_glob_pattern_regex(backend):
    store = make_store(backend)
    keys = ["data/part-0.npz", "data/part-1.npz", "data/sub/part-2.npz", "data/notes.txt", "other/x.npz"]
    for k in keys:
        store.put(backend.uri(k), k.encode())

    def rel(objs):
        return [o.uri[len(backend.root_uri) + 1 :] for o in objs]

    data = backend.root_uri + "/data/"

    assert rel(store.list(data)) == sorted(keys[:4])
    assert rel(store.list(backend.uri("data/part-"))) == ["data/part-0.npz", "data/part-1.npz"]
    assert rel(store.list(data, pattern="*.npz")) == [
        "data/part-0.npz", "data/part-1.npz", "data/sub/part-2.npz"]  # fmt: skip
    assert rel(store.list(data, regex=r"^sub/")) == ["data/sub/part-2.npz"]
    assert rel(store.list(backend.uri("data"), regex=r"^sub/")) == ["data/sub/part-2.npz"]
    assert rel(store.list(backend.uri("data/*.npz"))) == ["data/part-0.npz", "data/part-1.npz"]
    shallow = store.list(data, recursive=False)
    assert rel(shallow) == ["data/notes.txt", "data/part-0.npz", "data/part-1.npz"]
    with_dirs = store.list(data, recursive=False, include_dirs=True)
    assert [o.is_dir for o in with_dirs].count(True) == 1
    assert store.list(backend.uri("nothing/")) == []
    sizes = {o.uri: o.size for o in store.list(backend.uri(""))}
    assert sizes[backend.uri("data/notes.txt")] == len(b"data/notes.txt")


def test_stat_reports_etag_or_mtime(backend):
    store = make_store(backend)
    uri = backend.uri("meta.bin")
    store.put(uri, b"meta")
    info = store.stat(uri)
    if backend.is_remote:
        assert info.etag
    else:
        assert info.mtime is not None and info.mtime > 1e9


# ---------------------------------------------------------------- delete / copy


def test_delete_one_prefix_and_pattern(backend):
    store = make_store(backend, delete_batch=7)
    for i in range(30):
        store.put(backend.uri(f"del/{i:02d}.{'a' if i % 2 else 'b'}"), b"x")
    assert store.delete(backend.uri("del/00.b")) == 1
    with pytest.raises(ObjectNotFoundError):
        store.delete(backend.uri("del/00.b"))
    assert store.delete(backend.uri("del/"), pattern="*.a") == 15
    assert store.delete(backend.uri("del/"), recursive=True) == 14
    assert store.list(backend.uri("del/")) == []
    assert store.delete(backend.uri("del/"), recursive=True) == 0


def test_copy_within_and_across_backends(backend, tmp_path):
    store = make_store(backend)
    src = backend.uri("copy/src.bin")
    store.put(src, b"copied bytes")
    store.copy(src, backend.uri("copy/dst.bin"))
    assert store.get(backend.uri("copy/dst.bin")) == b"copied bytes"
    local = f"file://{tmp_path}/across.bin"
    store.copy(src, local, dst_store=Store.from_uri(local))
    assert (tmp_path / "across.bin").read_bytes() == b"copied bytes"


# ---------------------------------------------------------------- writer


def test_open_writer_streams_and_compresses(backend):
    store = make_store(backend, writer_part_size=5 * MiB)
    uri = backend.uri("stream.bin")
    pieces = [payload(3 * MiB + i, seed=i) for i in range(4)]
    with store.open_writer(uri) as w:
        for p in pieces:
            w.write(memoryview(p))
    assert store.get(uri) == b"".join(pieces)
    zuri = backend.uri("stream.bin.zst")
    text = b"compressible line of text\n" * 100_000
    with store.open_writer(zuri, compression="zstd", level=5) as w:
        w.write(text)
    stored = store.get(zuri)
    assert len(stored) < len(text) // 20
    assert zstandard.ZstdDecompressor().stream_reader(stored).read() == text


def test_open_writer_aborts_on_exception(backend):
    store = make_store(backend)
    uri = backend.uri("aborted.bin")
    with pytest.raises(RuntimeError, match="boom"), store.open_writer(uri) as w:
        w.write(b"partial data")
        raise RuntimeError("boom")
    assert not store.exists(uri)
    assert store.list(backend.uri("")) == [], "no temporary or partial object is left behind"
    with pytest.raises(ConfigError):
        store.open_writer(uri, compression="lz4")


# ---------------------------------------------------------------- upload / download


def test_upload_download_roundtrip(backend, tmp_path):
    store = make_store(backend)
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    files = {"top.bin": b"top", "a/one.bin": b"one" * 100, "a/b/two.npz": b"two" * 1000}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    seen = []
    uploaded = store.upload(str(src), backend.uri("up"), progress=lambda uri, n: seen.append(n))
    assert sorted(seen) == sorted(len(d) for d in files.values())
    assert sorted(uploaded) == sorted(backend.uri("up", rel) for rel in files)
    globbed = store.upload(str(src / "**" / "*.npz"), backend.uri("globbed"))
    assert globbed == [backend.uri("globbed/a/b/two.npz")]
    dest = tmp_path / "dest"
    got = store.download(backend.uri("up/"), dest)
    assert len(got) == 3
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    only_npz = store.download(backend.uri("up/"), tmp_path / "npz", pattern="*.npz")
    assert [os.path.relpath(p, tmp_path / "npz") for p in only_npz] == ["a/b/two.npz"]
    with pytest.raises(ObjectNotFoundError):
        store.upload(str(tmp_path / "no-such-file"), backend.uri("up"))


def test_download_refuses_path_traversal(moto_server, tmp_path):
    bucket = "traversal"
    root = moto_server.make_bucket(bucket)
    store = Store.from_uri(root, moto_server.storage_options())
    store.put(f"{root}/pre/ok.bin", b"fine")
    store.put(f"{root}/pre/../../escape.bin", b"evil")  # S3 keys may hold '..' segments
    dest = tmp_path / "dest"
    with pytest.raises(PathTraversalError) as err:
        store.download(f"{root}/pre/", dest)
    assert "escape.bin" in str(err.value)
    assert not (tmp_path / "escape.bin").exists()
    assert not dest.exists() or not any(dest.rglob("*")), "nothing is written before the check"


# ---------------------------------------------------------------- errors and retries


def test_not_found_raises_at_once_without_retry(backend):
    store = make_store(backend)
    uri = backend.uri("no/such/object.bin")
    for call in (lambda: store.get(uri), lambda: store.get_range(uri, 0, 10), lambda: store.stat(uri)):
        with pytest.raises(ObjectNotFoundError) as err:
            call()
        assert uri in str(err.value)
        assert err.value.attempts == 1
    assert store.stats.retries == 0
    assert isinstance(err.value, FileNotFoundError)


def test_faults_are_retried_and_counted(moto_server, fault_proxy):
    """With 20% of requests reset or answered 503, 500 objects still arrive byte-identical."""
    bucket = "faults"
    moto_server.make_bucket(bucket)
    direct = Store("s3", moto_server.storage_options())
    blobs = {f"s3://{bucket}/obj-{i:04d}": payload(2048, seed=i) for i in range(500)}
    with direct.open_writer(f"s3://{bucket}/marker") as w:
        w.write(b"m")
    for uri, data in blobs.items():
        direct.put(uri, data)
    proxy = fault_proxy(moto_server, seed=7)
    store = Store("s3", moto_server.storage_options(endpoint=proxy.endpoint), max_attempts=8,
                  retry_base_delay=0.001, retry_max_delay=0.05)  # fmt: skip
    proxy.set_faults(reset_fraction=0.1, status503_fraction=0.1)
    got = dict(store.get_many(list(blobs), max_in_flight=16))
    assert got == blobs
    assert proxy.resets_injected > 0 and proxy.injected_503 > 0
    # aiohttp itself re-sends an idempotent request once when a reused keep-alive connection
    # turns out dead, so some resets never reach the Store; every other fault is a counted retry.
    assert store.stats.retries > 0
    assert store.stats.requests == len(blobs) + store.stats.retries
    assert store.stats.errors == 0


def test_persistent_throttling_gives_up_with_a_clear_error(moto_server, fault_proxy):
    moto_server.make_bucket("throttled")
    Store("s3", moto_server.storage_options()).put("s3://throttled/x", b"x")
    proxy = fault_proxy(moto_server, status503_fraction=1.0)
    store = Store("s3", moto_server.storage_options(endpoint=proxy.endpoint), max_attempts=3,
                  retry_base_delay=0.001)  # fmt: skip
    with pytest.raises(TransientStorageError) as err:
        store.get("s3://throttled/x")
    assert "s3://throttled/x" in str(err.value) and err.value.attempts == 3
    assert store.stats.retries == 2 and store.stats.errors == 1


def test_gcs_faults_complete(gcs_server, fault_proxy):
    """gcsfs retries inside its own request loop; through the proxy every object still arrives."""
    gcs_server.make_bucket("gfaults")
    direct = Store("gs", gcs_server.storage_options())
    blobs = {f"gs://gfaults/o-{i:03d}": payload(1024, seed=i) for i in range(60)}
    for uri, data in blobs.items():
        direct.put(uri, data)
    proxy = fault_proxy(gcs_server, seed=3)
    store = Store("gs", gcs_server.storage_options(endpoint=proxy.endpoint), retry_base_delay=0.001)
    proxy.set_faults(reset_fraction=0.05, status503_fraction=0.05)
    assert dict(store.get_many(list(blobs))) == blobs
    assert proxy.resets_injected + proxy.injected_503 > 0


# ---------------------------------------------------------------- fork safety


def _child_reads(store: Store, uri: str, conn) -> None:
    try:
        conn.send(("ok", store.get(uri), os.getpid()))
    except BaseException as exc:  # report to the parent instead of dying silently
        conn.send(("error", repr(exc), os.getpid()))
    finally:
        conn.close()


def test_store_used_after_fork(backend):
    store = make_store(backend)
    uri = backend.uri("fork.bin")
    store.put(uri, b"before fork")
    assert store.get(uri) == b"before fork"  # the parent's loop and connections are live now
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_child_reads, args=(store, uri, child_conn))
    proc.start()
    assert parent_conn.poll(60), "the child did not answer: a forked Store hung"
    status, value, pid = parent_conn.recv()
    proc.join(10)
    assert status == "ok", value
    assert value == b"before fork" and pid != os.getpid()
    assert store.get(uri) == b"before fork"  # the parent still works


def test_store_pickles_without_connections(backend):
    store = make_store(backend)
    store.put(backend.uri("p.bin"), b"pickled")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get(backend.uri("p.bin")) == b"pickled"
    assert clone.stats.requests == 1


# ---------------------------------------------------------------- op-log


def test_oplog_rows_parse_back(backend, tmp_path):
    path = tmp_path / "ops.tsv.zst"
    store = make_store(backend, oplog=str(path))
    uri = backend.uri("logged.bin")
    store.put(uri, b"0123456789")
    store.get_range(uri, 2, 5)
    store.get(uri)
    with pytest.raises(ObjectNotFoundError):
        store.get(backend.uri("absent"))
    assert store._oplog is not None
    store._oplog.flush()
    rows = [r for r in read_oplog(path) if r.uri.startswith(backend.root_uri)]
    ops = [(r.op, r.status) for r in rows]
    assert ops == [("put", "ok"), ("get_range", "ok"), ("get", "ok"), ("get", "error")]
    assert rows[0].nbytes == 10 and rows[1].offset == 2 and rows[1].length == 5 and rows[1].nbytes == 5
    assert rows[3].error and "absent" not in rows[3].error.split(":")[0]
    assert all(r.duration_ns > 0 and r.pid == os.getpid() for r in rows)


# ---------------------------------------------------------------- configuration


def test_unknown_scheme_and_mismatched_uri(tmp_path):
    with pytest.raises(UnsupportedSchemeError, match="ftp"):
        Store.from_uri("ftp://host/x")
    store = Store.from_uri(str(tmp_path))
    with pytest.raises(ConfigError, match="s3://b/k"):
        store.get("s3://b/k")
    with pytest.raises(ConfigError, match="no bucket"):
        parse_uri("s3:///key")


def test_uri_forms():
    assert parse_uri("gcs://b/k").uri == "gs://b/k"
    assert parse_uri("abfs://cont@acct.dfs.core.windows.net/a/b") == ("az", "cont/a/b")
    assert parse_uri("direct:///data/x") == ("direct", "/data/x")
    assert parse_uri("relative/file.bin").path == os.path.abspath("relative/file.bin")


def test_options_from_env_and_unknown_names(monkeypatch):
    monkeypatch.setenv("S3DLIO_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("S3DLIO_RANGE_THRESHOLD", "4MiB")
    monkeypatch.setenv("S3DLIO_DISABLE_BACKEND_RETRIES", "no")
    opts = StoreOptions.from_env()
    assert (opts.max_in_flight, opts.range_threshold, opts.disable_backend_retries) == (7, 4 * MiB, False)
    assert Store("file").options.max_in_flight == 7
    assert Store("file", max_in_flight=3).options.max_in_flight == 3
    with pytest.raises(ConfigError, match="max_inflight"):
        Store("file", max_inflight=3)
    with pytest.raises(ConfigError, match="S3DLIO_MAX_IN_FLIGHT"):
        monkeypatch.setenv("S3DLIO_MAX_IN_FLIGHT", "many")
        StoreOptions.from_env()
    with pytest.raises(ConfigError, match="max_attempts=0"):
        StoreOptions(max_attempts=0)


def test_credentials_never_shown(tmp_path):
    secret = "SUPERSECRETVALUE"
    store = Store("s3", {"key": "AKIDEXAMPLE", "secret": secret, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}},
                  max_attempts=1)  # fmt: skip
    assert secret not in repr(store) and "AKIDEXAMPLE" not in repr(store)
    with pytest.raises(Exception) as err:
        store.get("s3://bucket/key")
    assert secret not in str(err.value)
    az = Store("az", {"connection_string": f"AccountName=a;AccountKey={secret}"})
    assert secret not in repr(az)


def test_store_for_shares_one_store_per_configuration(tmp_path):
    a = store_for(str(tmp_path))
    assert store_for(f"file://{tmp_path}/other") is a
    assert store_for("s3://b/k", {"anon": True}) is not store_for("s3://b/k", {"anon": False})


def test_rewritten_object_is_not_served_a_stale_size(backend):
    store = make_store(backend, range_threshold=64)
    uri = backend.uri("rewritten.bin")
    store.put(uri, b"x" * 100)
    assert store.stat(uri).size == 100
    store.put(uri, b"y" * 10)
    assert store.get(uri) == b"y" * 10
    with store.open_writer(uri) as w:
        w.write(b"z" * 300)
    assert store.get(uri) == b"z" * 300


def test_copy_across_backends_needs_the_destination_store(tmp_path):
    store = Store.from_uri(str(tmp_path))
    store.put(f"file://{tmp_path}/a.bin", b"a")
    with pytest.raises(ConfigError, match="dst_store"):
        store.copy(f"file://{tmp_path}/a.bin", "s3://bucket/a.bin")
    store.copy(f"file://{tmp_path}/a.bin", f"file://{tmp_path}/new/dir/b.bin")
    assert (tmp_path / "new" / "dir" / "b.bin").read_bytes() == b"a"


def test_bad_storage_options_give_a_config_error():
    store = Store("az", {"account_name": None})
    with pytest.raises(ConfigError, match="az://"):
        store.list("az://container/")
