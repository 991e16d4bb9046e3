"""MultiEndpointStore: strategies, re-rooting, replicated writes, failover and recovery on real S3 servers."""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from servers import MotoServer, free_port

from s3dlio_loader import ConfigError, ObjectNotFoundError, Store, StoreOptions, TransientStorageError
from s3dlio_loader.options import MultiEndpointOptions
from s3dlio_loader.storage.multi import (
    MultiEndpointStore,
    TeeWriter,
    create_multi_endpoint_store,
    expand_range_template,
)

FAST_RETRIES = StoreOptions(max_attempts=2, retry_base_delay=0.01, retry_max_delay=0.02)


# ---------------------------------------------------------------- templates and construction


def test_expand_range_template():
    assert expand_range_template("s3://b-{1...4}/p") == [f"s3://b-{i}/p" for i in range(1, 5)]
    assert expand_range_template("s3://b-{7...7}") == ["s3://b-7"]
    assert expand_range_template("s3://b-{098...100}") == ["s3://b-098", "s3://b-099", "s3://b-100"]
    assert expand_range_template("http://h{1...2}:{80...81}") == [
        "http://h1:80", "http://h1:81", "http://h2:80", "http://h2:81"]
    assert expand_range_template("s3://plain/{x}") == ["s3://plain/{x}"]
    with pytest.raises(ConfigError, match="goes down"):
        expand_range_template("s3://b-{4...1}")


def test_create_from_template_and_endpoint_urls():
    multi = create_multi_endpoint_store("s3://bucket-{1...3}/data", strategy="least_connections",
                                        storage_options={"key": "k", "secret": "s"})
    assert [ep.base for ep in multi.endpoints] == [f"s3://bucket-{i}/data/" for i in (1, 2, 3)]
    assert multi.strategy == "least_connections"
    multi = create_multi_endpoint_store("s3://b/", endpoint_urls="http://127.0.0.1:{9001...9003}")
    assert [ep.endpoint_url for ep in multi.endpoints] == [f"http://127.0.0.1:{p}" for p in (9001, 9002, 9003)]
    assert [ep.store.storage_options["client_kwargs"]["endpoint_url"] for ep in multi.endpoints] == [
        f"http://127.0.0.1:{p}" for p in (9001, 9002, 9003)]
    assert "9002" in repr(multi)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((["s3://a", "s3://b"],), {"endpoint_urls": ["http://x", "http://y", "http://z"]}, "endpoint_urls"),
        ((["s3://a", "s3://b"],), {"storage_options": [{}, {}, {}]}, "storage_options"),
        (("s3://a",), {"strategy": "random"}, "strategy"),
        (("file:///tmp/a",), {"endpoint_urls": "http://x"}, "endpoint_urls"),
        (([],), {}, "at least one"),
        (("s3://a",), {"backoff_s": -1}, "back-off"),
    ],
)
def test_create_rejects_bad_configurations(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_multi_endpoint_store(*args, **kwargs)


def test_options_from_environment(monkeypatch):
    monkeypatch.setenv("S3DLIO_MULTI_STRATEGY", "least_connections")
    monkeypatch.setenv("S3DLIO_MULTI_BACKOFF_S", "0.25")
    multi = create_multi_endpoint_store("file:///tmp/x")
    assert multi.options == MultiEndpointOptions(strategy="least_connections", backoff_s=0.25)


# ---------------------------------------------------------------- on local directories


@pytest.fixture
def dirs(tmp_path):
    paths = [tmp_path / f"ep{i}" for i in range(3)]
    for p in paths:
        p.mkdir()
    return paths


def replicated(dirs, **kw) -> MultiEndpointStore:
    return create_multi_endpoint_store([f"file://{d}" for d in dirs], replicate_writes=True, **kw)


def test_round_robin_spreads_evenly_on_local_endpoints(dirs):
    multi = replicated(dirs)
    for i in range(4):
        multi.put(f"k/{i}.bin", bytes([i]) * 100)
    multi.reset_stats()
    for i in range(30):
        assert multi.get(f"k/{i % 4}.bin") == bytes([i % 4]) * 100
    stats = multi.stats()
    assert [s["requests"] for s in stats] == [10, 10, 10]
    assert [s["bytes_read"] for s in stats] == [1000, 1000, 1000]
    assert all(s["in_flight"] == 0 and s["healthy"] and s["errors"] == 0 for s in stats)


def test_uris_under_any_base_and_keys_are_rerooted(dirs):
    multi = replicated(dirs)
    multi.put(f"file://{dirs[2]}/sub/a.bin", b"abc")  # a URI under the third endpoint: every replica
    for d in dirs:
        assert (d / "sub" / "a.bin").read_bytes() == b"abc"
    for uri in ("sub/a.bin", f"file://{dirs[0]}/sub/a.bin", f"file://{dirs[1]}/sub/a.bin"):
        assert multi.get(uri) == b"abc"
    # listings and stat speak in the base the caller used, whichever endpoint answered
    for base in dirs:
        for _ in range(3):
            assert [o.uri for o in multi.list(f"file://{base}/sub/")] == [f"file://{base}/sub/a.bin"]
            assert multi.stat(f"file://{base}/sub/a.bin").uri == f"file://{base}/sub/a.bin"
    assert [o.uri for o in multi.list("sub")] == [f"file://{dirs[0]}/sub/a.bin"]
    with pytest.raises(ConfigError, match="none of the endpoints"):
        multi.get("file:///elsewhere/a.bin")


def test_ranges_exists_copy_delete_and_merged_listing(dirs):
    multi = replicated(dirs)
    multi.put("x.bin", bytes(range(256)))
    assert multi.get_range("x.bin", 10, 5) == bytes(range(10, 15))
    assert [bytes(v) for v in multi.get_ranges("x.bin", [(0, 2), (100, 3)])] == [b"\x00\x01", bytes([100, 101, 102])]
    assert multi.exists("x.bin") and not multi.exists("nope.bin")
    multi.copy("x.bin", "y.bin")
    assert all((d / "y.bin").exists() for d in dirs)
    (dirs[1] / "only-on-1.bin").write_bytes(b"1")
    merged = [o.uri.rsplit("/", 1)[1] for o in multi.list("", merged=True)]
    assert merged == ["only-on-1.bin", "x.bin", "y.bin"]
    assert multi.delete("y.bin") == 1
    assert not any((d / "y.bin").exists() for d in dirs)
    assert multi.delete(["x.bin"]) == 1
    with pytest.raises(ObjectNotFoundError):
        multi.get("x.bin")  # permanent: raised at once, no failover
    assert sum(s["failovers"] for s in multi.stats()) == 0


def test_tee_writer_and_single_endpoint_writes(dirs):
    multi = replicated(dirs)
    with multi.open_writer("stream.bin") as w:
        assert isinstance(w, TeeWriter)
        w.write(b"hello ")
        w.write(b"world")
    assert all((d / "stream.bin").read_bytes() == b"hello world" for d in dirs)
    with pytest.raises(RuntimeError), multi.open_writer("aborted.bin") as w:
        w.write(b"partial")
        raise RuntimeError("stop")
    assert not any((d / "aborted.bin").exists() for d in dirs)
    one = create_multi_endpoint_store([f"file://{d}" for d in dirs])  # shared-backend semantics
    one.put("single.bin", b"1")
    assert sum((d / "single.bin").exists() for d in dirs) == 1


def test_least_connections_prefers_idle_endpoints(dirs):
    multi = replicated(dirs, strategy="least_connections")
    for i in range(40):
        multi.put(f"o{i}", b"x")
    slow = multi.endpoints[0].store
    real_get = slow.get

    def slow_get(uri, **kw):
        time.sleep(0.05)
        return real_get(uri, **kw)

    slow.get = slow_get  # type: ignore[method-assign]
    multi.reset_stats()
    assert len(list(multi.get_many([f"o{i}" for i in range(40)], max_in_flight=6))) == 40
    requests = [s["requests"] for s in multi.stats()]
    assert sum(requests) == 40
    assert requests[0] < min(requests[1:]), requests
    # round robin, with the same slow endpoint, gives it its full share
    rr = replicated(dirs)
    rr.endpoints[0].store.get = slow_get  # type: ignore[method-assign]
    list(rr.get_many([f"o{i}" for i in range(30)], max_in_flight=6))
    assert [s["requests"] for s in rr.stats()] == [10, 10, 10]


def test_get_many_unordered_and_object_infos(dirs):
    multi = replicated(dirs)
    for i in range(10):
        multi.put(f"m/{i}", str(i).encode())
    infos = multi.list("m/")
    got = dict(multi.get_many(infos, ordered=False, max_in_flight=3))
    assert got == {o.uri: o.uri.rsplit("/", 1)[1].encode() for o in infos}
    ordered = [u for u, _ in multi.get_many([f"m/{i}" for i in range(10)])]
    assert ordered == [f"m/{i}" for i in range(10)]


def test_pickle_keeps_endpoints_and_resets_counters(dirs):
    multi = replicated(dirs, strategy="least_connections")
    multi.put("p", b"1")
    clone = pickle.loads(pickle.dumps(multi))
    assert [e.base for e in clone.endpoints] == [e.base for e in multi.endpoints]
    assert clone.strategy == "least_connections"
    assert all(s["requests"] == 0 for s in clone.stats())
    assert clone.get("p") == b"1"


def test_failover_on_local_endpoints_with_a_transient_fault(dirs):
    multi = replicated(dirs, backoff_s=30)
    multi.put("f", b"data")
    broken = multi.endpoints[1].store

    def fail(uri, **kw):
        raise TransientStorageError("injected", uri=uri, op="get")

    broken.get = fail  # type: ignore[method-assign]
    multi.reset_stats()
    assert [multi.get("f") for _ in range(9)] == [b"data"] * 9
    stats = multi.stats()
    assert stats[1]["errors"] == 1 and stats[1]["failovers"] == 1 and not stats[1]["healthy"]
    assert stats[1]["requests"] == 1  # then left out during its back-off
    assert stats[0]["requests"] + stats[2]["requests"] == 9
    assert "injected" in stats[1]["last_error"]


def test_failover_can_be_turned_off(dirs):
    multi = replicated(dirs, failover=False)
    multi.put("f", b"data")

    def fail(uri, **kw):
        raise TransientStorageError("injected", uri=uri, op="get")

    multi.endpoints[0].store.get = fail  # type: ignore[method-assign]
    with pytest.raises(TransientStorageError):
        multi.get("f")


# ---------------------------------------------------------------- three S3 servers


class PinnedMoto(MotoServer):
    """A moto server that comes back on the same port after stop() (so clients find it again)."""

    def __init__(self) -> None:
        super().__init__()
        self.pinned = free_port()

    def _launch(self) -> None:
        self.port = self.pinned
        self.cmd = self.command(self.port)
        self._spawn()


@pytest.fixture(scope="module")
def motos() -> Iterator[list[PinnedMoto]]:
    servers = [PinnedMoto() for _ in range(3)]
    try:
        for s in servers:
            s.spawn()
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def bucket(motos) -> str:
    """A fresh bucket of the same name on every server (restarting any server a test stopped)."""
    name = f"multi-{uuid.uuid4().hex[:8]}"
    for s in motos:
        if not s.running:
            s.start()
        s.make_bucket(name)
    return name


def s3_multi(motos, bucket, **kw) -> MultiEndpointStore:
    return create_multi_endpoint_store(
        f"s3://{bucket}/data", storage_options=[s.storage_options() for s in motos],
        store_options=FAST_RETRIES, replicate_writes=True, **kw,
    )


def seed_objects(multi: MultiEndpointStore, n: int, size: int = 1000) -> list[str]:
    keys = [f"obj-{i:03d}.bin" for i in range(n)]
    for i, key in enumerate(keys):
        multi.put(key, bytes([i % 256]) * size)
    multi.reset_stats()
    return keys


def test_s3_round_robin_spreads_evenly(motos, bucket):
    multi = s3_multi(motos, bucket)
    keys = seed_objects(multi, 6)
    for s in motos:  # every server holds every object
        assert len(s.filesystem().ls(f"{bucket}/data/")) == 6
    for i in range(30):
        assert multi.get(keys[i % 6]) == bytes([i % 6]) * 1000
    stats = multi.stats()
    assert [s["requests"] for s in stats] == [10, 10, 10]
    assert [s["bytes_read"] for s in stats] == [10_000] * 3
    assert [s["endpoint_url"] for s in stats] == [s.endpoint for s in motos]
    got = dict(multi.get_many(keys * 3, max_in_flight=9))
    assert len(got) == 6
    assert [s["requests"] for s in multi.stats()] == [16, 16, 16]


def test_s3_least_connections_prefers_idle(motos, bucket, fault_proxy):
    proxy = fault_proxy(motos[0], latency_s=0.3)  # endpoint 0 answers slowly
    options = [s.storage_options() for s in motos]
    options[0] = motos[0].storage_options(proxy.endpoint)
    keys = seed_objects(s3_multi(motos, bucket), 45)
    multi = create_multi_endpoint_store(f"s3://{bucket}/data", "least_connections", options,
                                        store_options=FAST_RETRIES)
    for key in keys[:3]:  # connect to every endpoint first (client setup is slow and shared)
        multi.get(key)
    multi.reset_stats()
    list(multi.get_many(keys, max_in_flight=6))
    requests = [s["requests"] for s in multi.stats()]
    assert sum(requests) == 45
    assert requests[0] < min(requests[1:]), requests


def test_s3_stopped_server_requests_succeed_on_the_others(motos, bucket):
    multi = s3_multi(motos, bucket, backoff_s=60)
    keys = seed_objects(multi, 6)
    motos[1].stop()
    for i in range(30):
        assert multi.get(keys[i % 6]) == bytes([i % 6]) * 1000
    stats = multi.stats()
    assert stats[1]["errors"] >= 1 and stats[1]["failovers"] >= 1
    assert not stats[1]["healthy"] and stats[1]["backoff_remaining_s"] > 30
    assert stats[1]["retries"] >= 1  # the Store retried before the endpoint was given up
    assert stats[0]["errors"] == stats[2]["errors"] == 0
    assert stats[0]["requests"] + stats[2]["requests"] == 30
    # a replicated write needs every replica: it fails, naming the stopped endpoint
    with pytest.raises(Exception, match=str(motos[1].port)):
        multi.put("new.bin", b"x")


def test_s3_backoff_then_recovery_after_restart(motos, bucket):
    multi = s3_multi(motos, bucket, backoff_s=0.5, max_backoff_s=1.0)
    keys = seed_objects(multi, 3)
    motos[2].stop()
    for i in range(6):
        assert multi.get(keys[i % 3]) == bytes([i % 3]) * 1000
    down = multi.stats()[2]
    assert down["errors"] >= 1 and not down["healthy"]
    # while backing off, no request goes there
    before = down["requests"]
    for i in range(6):
        multi.get(keys[i % 3])
    assert multi.stats()[2]["requests"] == before
    # bring it back (same port, its data restored) and wait out the back-off
    motos[2].start()
    motos[2].make_bucket(bucket)
    fs = motos[2].filesystem()
    for i, key in enumerate(keys):
        fs.pipe_file(f"{bucket}/data/{key}", bytes([i]) * 1000)
    deadline = time.monotonic() + 10
    while multi.stats()[2]["backoff_remaining_s"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(30):
        assert multi.get(keys[i % 3]) == bytes([i % 3]) * 1000
    back = multi.stats()[2]
    assert back["requests"] >= before + 9, back
    assert back["healthy"] and back["consecutive_failures"] == 0
    assert back["bytes_read"] >= 9000


def test_s3_all_endpoints_down_raises_a_transient_error(motos, bucket):
    multi = s3_multi(motos, bucket, backoff_s=0.2)
    keys = seed_objects(multi, 1)
    for s in motos:
        s.stop()
    with pytest.raises(TransientStorageError) as info:
        multi.get(keys[0])
    assert "tried 3 endpoints" in "".join(getattr(info.value, "__notes__", []))
    assert all(s["errors"] == 1 for s in multi.stats())


def test_s3_concurrent_requests_while_a_server_dies(motos, bucket):
    multi = s3_multi(motos, bucket, strategy="least_connections", backoff_s=60)
    keys = seed_objects(multi, 12)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(3):
                for key in keys:
                    multi.get(key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    motos[0].stop()
    for t in threads:
        t.join()
    assert errors == [], [f"{type(e).__name__}: {e}" for e in errors]
    assert all(s["in_flight"] == 0 for s in multi.stats())
    assert sum(s["requests"] for s in multi.stats()) >= 4 * 3 * 12


def test_store_is_reachable_directly():
    store = Store.from_uri("file:///tmp")
    multi = MultiEndpointStore([("file:///tmp", store)])
    assert multi.endpoints[0].store is store and len(multi) == 1
    with pytest.raises(ConfigError, match="not a file:"):
        MultiEndpointStore([("s3://b", store)])
