"""FaultProxy: byte-exact pass-through, per-request seeded 503/reset/latency faults (http.client, moto)."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from faultproxy import FaultProxy
from servers import MotoServer

MiB = 1 << 20
RESET_ERRORS = (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)


def payload(n: int) -> bytes:
    block = hashlib.sha256(str(n).encode()).digest() * 2048  # 64 KiB, depends on n
    return (block * (n // len(block) + 1))[:n]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        parts = self.path.strip("/").split("/")
        kind, n = parts[0], int(parts[1]) if len(parts) > 1 else 0
        if kind == "bytes":
            self._send(200, payload(n), {"Content-Type": "application/octet-stream"}, head=head)
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            data = payload(n)
            for off in range(0, len(data), 100_000):
                piece = data[off : off + 100_000]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Checksum: " + hashlib.md5(data).hexdigest().encode() + b"\r\n\r\n")
        elif kind == "close":  # body delimited by closing the connection
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload(n))
            self.close_connection = True
        elif kind == "nocontent":
            self.send_response(204)
            self.end_headers()
        elif kind == "redirect":
            port = self.server.server_address[1]
            self._send(302, b"", {"Location": f"http://127.0.0.1:{port}/bytes/10"})
        else:
            self._send(404, b"not found")

    def do_PUT(self) -> None:
        body = self._read_body()
        info = {
            "len": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "expect": self.headers.get("Expect"),
            "te": self.headers.get("Transfer-Encoding"),
        }
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    do_POST = do_PUT


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[str, int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


@pytest.fixture
def proxy(origin: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*origin, seed=0) as p:
        yield p


def _conn(p: FaultProxy | tuple[str, int], timeout: float = 10) -> http.client.HTTPConnection:
    if isinstance(p, FaultProxy):
        return http.client.HTTPConnection("127.0.0.1", p.port, timeout=timeout)
    return http.client.HTTPConnection(p[0], p[1], timeout=timeout)


def _get(conn: http.client.HTTPConnection, path: str, method: str = "GET", **kw: Any) -> tuple[int, dict, bytes]:
    conn.request(method, path, **kw)
    r = conn.getresponse()
    body = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def _raw(host: str, port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the peer closes; drop the Date header (it may differ by a second)."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
    return b"\r\n".join(line for line in bytes(out).split(b"\r\n") if not line.startswith(b"Date: "))


# -- pass-through -------------------------------------------------------------------------------------


def test_passthrough_keepalive_identical(origin: tuple[str, int], proxy: FaultProxy) -> None:
    via, direct = _conn(proxy), _conn(origin)
    try:
        paths = ["/bytes/0", "/bytes/1", "/bytes/65536", "/bytes/3145728", "/chunked/250001", "/nocontent"]
        for path in paths:
            s1, h1, b1 = _get(via, path)
            s2, h2, b2 = _get(direct, path)
            assert (s1, b1) == (s2, b2), path
            assert h1.get("content-length") == h2.get("content-length")
            assert h1.get("transfer-encoding") == h2.get("transfer-encoding")
        assert _get(via, "/bytes/3145728")[2] == payload(3145728)
        # HEAD: Content-Length of the object but no body; the next request on the connection still works.
        status, headers, body = _get(via, "/bytes/5000", method="HEAD")
        assert (status, headers["content-length"], body) == (200, "5000", b"")
        assert _get(via, "/bytes/7")[2] == payload(7)
        # Bodies with Content-Length and chunked.
        for data in (b"", b"x", payload(2 * MiB + 3)):
            _, _, body = _get(via, "/echo", method="PUT", body=data)
            info = json.loads(body)
            assert (info["len"], info["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        chunks = [payload(1000), b"", payload(70_000)]  # http.client skips empty chunks
        _, _, body = _get(via, "/echo", method="POST", body=iter(chunks), encode_chunked=True)
        info = json.loads(body)
        assert info["te"] == "chunked"
        assert info["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    finally:
        via.close()
        direct.close()
    n = len(paths) + 1 + 2 + 3 + 1
    assert proxy.requests == proxy.forwarded == n
    assert proxy.connections == 1  # everything above went over one keep-alive connection
    assert proxy.decisions == ["forward"] * n
    assert proxy.resets_injected == proxy.injected_503 == proxy.latency_injected == 0


def test_passthrough_raw_bytes(origin: tuple[str, int], proxy: FaultProxy) -> None:
    for path in ("/chunked/300000", "/bytes/1000", "/close/123457"):
        req = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        assert _raw("127.0.0.1", proxy.port, req) == _raw(*origin, req)
    # A body delimited by the upstream closing: relayed whole, then the client connection is closed.
    conn = _conn(proxy)
    try:
        status, _, body = _get(conn, "/close/99999")
        assert (status, body) == (200, payload(99999))
    finally:
        conn.close()


def test_expect_100_continue(proxy: FaultProxy) -> None:
    data = payload(300_000)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(data))
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += s.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 ")
        s.sendall(data)
        resp = http.client.HTTPResponse(s)
        try:
            resp.begin()
            assert resp.status == 200
            info = json.loads(resp.read())
        finally:
            resp.close()
    assert info["len"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["expect"] is None  # answered by the proxy, not forwarded


def test_location_header_rewritten(proxy: FaultProxy) -> None:
    conn = _conn(proxy)
    try:
        status, headers, _ = _get(conn, "/redirect")
    finally:
        conn.close()
    assert status == 302
    assert headers["location"] == f"{proxy.endpoint}/bytes/10"


# -- faults -------------------------------------------------------------------------------------------


def _expected_decisions(seed: int, n: int, reset: float, s503: float) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.random()
        rng.random()
        out.append("reset" if u < reset else "503" if u < reset + s503 else "forward")
    return out


def _run(p: FaultProxy, n: int, path: str = "/bytes/10") -> list[str]:
    """n sequential GETs (reconnecting after resets); the outcome of each as seen by the client."""
    outcomes = []
    conn = _conn(p)
    try:
        for _ in range(n):
            try:
                status, headers, body = _get(conn, path)
            except RESET_ERRORS:
                outcomes.append("reset")
                conn.close()
                conn = _conn(p)
                continue
            if status == 503:
                assert b"<Code>SlowDown</Code>" in body
                assert headers["content-length"] == str(len(body))
                outcomes.append("503")
            else:
                assert (status, body) == (200, payload(10))
                outcomes.append("forward")
    finally:
        conn.close()
    return outcomes


def test_503_fraction(origin: tuple[str, int]) -> None:
    with FaultProxy(*origin, seed=7, status503_fraction=0.3) as p:
        outcomes = _run(p, 300)
    n503 = outcomes.count("503")
    assert 60 <= n503 <= 120, n503
    assert n503 == p.injected_503 and p.forwarded == 300 - n503
    assert p.connections == 1  # 503s keep the connection alive
    assert outcomes == p.decisions == _expected_decisions(7, 300, 0.0, 0.3)


def test_503_response_is_wellformed(origin: tuple[str, int]) -> None:
    with FaultProxy(*origin, status503_fraction=1.0) as p:
        raw = _raw("127.0.0.1", p.port, b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Slow Down"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert int(headers[b"Content-Length"]) == len(body)
    assert headers[b"Connection"] == b"close"
    assert body.startswith(b"<?xml") and body.endswith(b"</Error>")
    assert b"<Error><Code>SlowDown</Code>" in body


def test_resets(origin: tuple[str, int]) -> None:
    with FaultProxy(*origin, seed=3, reset_fraction=1.0) as p:
        conn = _conn(p)
        try:
            with pytest.raises(RESET_ERRORS):
                _get(conn, "/bytes/10")
        finally:
            conn.close()
        assert p.resets_injected == 1 and p.forwarded == 0
        # A raw client sees ECONNRESET itself (SO_LINGER 0), not a clean EOF.
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                s.recv(100)
        p.reset_fraction = 0.25
        p.reset_counters()
        outcomes = _run(p, 120)
    assert 15 <= outcomes.count("reset") <= 45
    assert outcomes == p.decisions == _expected_decisions(3, 120, 0.25, 0.0)
    assert p.connections == outcomes.count("reset") + 1  # a fresh connection after each reset


def test_reset_during_upload_body(origin: tuple[str, int]) -> None:
    with FaultProxy(*origin, reset_fraction=1.0) as p:
        conn = _conn(p)
        try:
            with pytest.raises(RESET_ERRORS):
                _get(conn, "/echo", method="PUT", body=payload(4 * MiB))
        finally:
            conn.close()
    assert p.resets_injected == 1


def test_latency(origin: tuple[str, int]) -> None:
    with FaultProxy(*origin, latency_s=0.3) as p:
        conn = _conn(p)
        try:
            _get(conn, "/bytes/10")  # connect
            t0 = time.monotonic()
            assert _get(conn, "/bytes/10")[0] == 200
            slow = time.monotonic() - t0
            p.latency_s = 0.0
            t0 = time.monotonic()
            assert _get(conn, "/bytes/10")[0] == 200
            fast = time.monotonic() - t0
        finally:
            conn.close()
    assert slow >= 0.3
    assert fast < slow
    assert p.latency_injected == 2


def test_latency_fraction(origin: tuple[str, int]) -> None:
    with FaultProxy(*origin, seed=5, latency_s=0.001, latency_fraction=0.5) as p:
        _run(p, 100)
    assert 30 <= p.latency_injected <= 70


def test_determinism_by_seed(origin: tuple[str, int]) -> None:
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        with FaultProxy(*origin, seed=seed, reset_fraction=0.15, status503_fraction=0.2) as p:
            runs[name] = _run(p, 80)
            assert runs[name] == p.decisions
    assert runs["a"] == runs["b"] == _expected_decisions(11, 80, 0.15, 0.2)
    assert runs["a"] != runs["c"]
    assert {"reset", "503", "forward"} <= set(runs["a"])


def test_faults_switched_at_runtime(origin: tuple[str, int]) -> None:
    with FaultProxy(*origin) as p:
        conn = _conn(p)
        try:
            assert _get(conn, "/echo", method="PUT", body=b"setup")[0] == 200
            p.status503_fraction = 1.0
            assert _get(conn, "/bytes/10")[0] == 503
            p.fault_methods = {"GET"}
            assert _get(conn, "/echo", method="PUT", body=b"x")[0] == 200  # PUT is spared
            assert _get(conn, "/bytes/10")[0] == 503
            p.set_faults(status503_fraction=0.0)
            for _ in range(2):
                status, _, body = _get(conn, "/bytes/10")
                assert (status, body) == (200, payload(10))
        finally:
            conn.close()
    assert p.decisions == ["forward", "503", "forward", "503", "forward", "forward"]
    assert p.connections == 1


def test_stop_drops_idle_connections(origin: tuple[str, int]) -> None:
    p = FaultProxy(*origin).start()
    conn = _conn(p)
    try:
        assert _get(conn, "/bytes/10")[0] == 200
        t0 = time.monotonic()
        p.stop()
        assert time.monotonic() - t0 < 3
        with pytest.raises((*RESET_ERRORS, ConnectionRefusedError)):
            _get(conn, "/bytes/10")
    finally:
        conn.close()
    assert not any(t.name.startswith("faultproxy-") and t.is_alive() for t in threading.enumerate())


# -- against moto -------------------------------------------------------------------------------------


def test_moto_passthrough(moto_server: MotoServer, fault_proxy: Callable[..., FaultProxy]) -> None:
    p = fault_proxy(moto_server)
    via, direct = _conn(p), _conn(("127.0.0.1", moto_server.port))
    bucket = f"fp-{time.monotonic_ns() % 10**9}"
    data = payload(2 * MiB + 11)
    try:
        public = {"x-amz-acl": "public-read"}  # unsigned requests: moto enforces ACLs for anonymous reads
        assert _get(via, f"/{bucket}", method="PUT", headers=public)[0] == 200
        assert _get(via, f"/{bucket}/obj", method="PUT", body=data, headers=public)[0] == 200
        s1, h1, b1 = _get(via, f"/{bucket}/obj")
        s2, h2, b2 = _get(direct, f"/{bucket}/obj")
        assert (s1, b1) == (s2, b2) == (200, data)
        assert h1["etag"] == h2["etag"]
        status, headers, body = _get(via, f"/{bucket}/obj", method="HEAD")
        assert (status, headers["content-length"], body) == (200, str(len(data)), b"")
        status, _, body = _get(via, f"/{bucket}/obj", headers={"Range": "bytes=100-199"})
        assert (status, body) == (206, data[100:200])
        status, _, body = _get(via, f"/{bucket}/missing")
        assert status == 404 and b"NoSuchKey" in body
    finally:
        via.close()
        direct.close()
    # moto's werkzeug server answers every request with "Connection: close"; the proxy passes that on.
    assert p.connections == p.forwarded == 6


def test_s3fs_through_faults(moto_server: MotoServer, fault_proxy: Callable[..., FaultProxy]) -> None:
    """botocore/s3fs retries the injected 503 SlowDown answers and resets transparently."""
    p = fault_proxy(moto_server, seed=2)
    fs = moto_server.filesystem(endpoint=p.endpoint)
    bucket = f"fp-{time.monotonic_ns() % 10**9}"
    fs.mkdir(bucket)
    p.set_faults(status503_fraction=0.2, reset_fraction=0.05)
    blobs = {f"{bucket}/k{i}": payload(1000 + i) for i in range(10)}
    for path, data in blobs.items():
        fs.pipe(path, data)
    for path, data in blobs.items():
        assert fs.cat(path) == data
    assert p.injected_503 > 0
    p.set_faults(status503_fraction=0.0, reset_fraction=0.0)
    fs.invalidate_cache()
    assert sorted(fs.ls(bucket)) == sorted(blobs)
