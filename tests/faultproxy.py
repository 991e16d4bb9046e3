"""A fault-injecting HTTP/1.1 proxy for tests (127.0.0.1 only).

``FaultProxy(target_host, target_port, seed=0, reset_fraction=0.0, status503_fraction=0.0, latency_s=0.0)``
listens on a free port of 127.0.0.1 and forwards to ``target_host:target_port``.  It parses HTTP/1.1
(request line, headers, Content-Length or chunked bodies, ``Expect: 100-continue``; responses with
Content-Length, chunked or read-until-close bodies, HEAD/204/304 without body), so faults are decided
per REQUEST even on keep-alive connections.  For each request one seeded ``random.Random`` draw decides:

* ``reset``   (probability ``reset_fraction``): the client socket is closed with SO_LINGER 0 so the client
  sees ECONNRESET; nothing is forwarded.
* ``503``     (probability ``status503_fraction``): a well-formed ``HTTP/1.1 503 Slow Down`` with an
  S3-style ``<Error><Code>SlowDown</Code>...`` XML body; nothing is forwarded.
* ``forward`` (otherwise): after sleeping ``latency_s`` (for a ``latency_fraction`` share of requests,
  1.0 by default) the request goes upstream and the whole response is relayed back.

Every attribute above can be changed at runtime (e.g. switch faults on after the test's setup).  The
decision sequence depends only on ``seed`` and the order in which requests arrive, so a sequential
client sees the same faults for the same seed.  Each client connection has its own thread and its own
upstream connection.

Counters: ``connections``, ``requests``, ``forwarded``, ``resets_injected``, ``injected_503``,
``latency_injected``; ``decisions`` is the per-request list of ``"forward" | "reset" | "503"``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, BinaryIO

__all__ = ["FaultProxy"]

_MAX_LINE = 65536
_MAX_HEADERS = 256
_BUF = 1 << 20


class ProtocolError(Exception):
    """Malformed HTTP seen by the proxy (the connection is dropped)."""


@dataclass
class _Message:
    start_line: bytes  # without CRLF
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # raw (name, value)

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1").strip() for k, v in self.headers if k.strip().lower() == key]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}

    def without(self, *names: str) -> list[tuple[bytes, bytes]]:
        drop = {n.lower().encode() for n in names}
        return [(k, v) for k, v in self.headers if k.strip().lower() not in drop]

    def serialize(self, headers: Iterable[tuple[bytes, bytes]] | None = None) -> bytes:
        hs = self.headers if headers is None else headers
        return self.start_line + b"\r\n" + b"".join(k + b":" + v + b"\r\n" for k, v in hs) + b"\r\n"


def _readline(f: BinaryIO) -> bytes:
    line = f.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise ProtocolError("line too long")
    return line


def _read_head(f: BinaryIO) -> _Message | None:
    """Start line + headers; None on a clean EOF before any byte."""
    line = _readline(f)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLFs between messages (RFC 9112 2.2)
        line = _readline(f)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ProtocolError("EOF inside start line")
    msg = _Message(line.rstrip(b"\r\n"))
    while True:
        line = _readline(f)
        if not line.endswith(b"\n"):
            raise ProtocolError("EOF inside headers")
        if line in (b"\r\n", b"\n"):
            return msg
        if len(msg.headers) >= _MAX_HEADERS:
            raise ProtocolError("too many headers")
        name, sep, value = line.rstrip(b"\r\n").partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line!r}")
        msg.headers.append((name, value))


def _copy_exact(f: BinaryIO, n: int, write: Callable[[bytes], Any]) -> None:
    while n > 0:
        chunk = f.read1(min(n, _BUF))  # type: ignore[attr-defined]
        if not chunk:
            raise ProtocolError(f"EOF with {n} body bytes missing")
        write(chunk)
        n -= len(chunk)


def _copy_chunked(f: BinaryIO, write: Callable[[bytes], Any]) -> None:
    """Copy a chunked body verbatim (chunk-size lines, data, last chunk, trailers)."""
    while True:
        line = _readline(f)
        if not line.endswith(b"\n"):
            raise ProtocolError("EOF inside chunk size")
        write(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as e:
            raise ProtocolError(f"bad chunk size {line!r}") from e
        if size == 0:
            while True:  # trailer section, ends with an empty line
                line = _readline(f)
                if not line.endswith(b"\n"):
                    raise ProtocolError("EOF inside trailers")
                write(line)
                if line in (b"\r\n", b"\n"):
                    return
        _copy_exact(f, size + 2, write)  # data + CRLF


def _copy_until_eof(f: BinaryIO, write: Callable[[bytes], Any]) -> None:
    while chunk := f.read1(_BUF):  # type: ignore[attr-defined]
        write(chunk)


def _content_length(msg: _Message) -> int | None:
    values = msg.get_all("content-length")
    if not values:
        return None
    lengths = {v.strip() for v in ",".join(values).split(",")}
    if len(lengths) != 1:
        raise ProtocolError(f"conflicting Content-Length {values}")
    try:
        n = int(lengths.pop())
    except ValueError as e:
        raise ProtocolError(f"bad Content-Length {values}") from e
    if n < 0:
        raise ProtocolError(f"bad Content-Length {values}")
    return n


def _is_chunked(msg: _Message) -> bool:
    te = [t.strip().lower() for v in msg.get_all("transfer-encoding") for t in v.split(",")]
    return bool(te) and te[-1] == "chunked"


class _Upstream:
    """One upstream connection, opened lazily, reopened when the server closed an idle one."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.sock: socket.socket | None = None
        self.file: BinaryIO | None = None
        self.used = False  # served at least one response (so it may have gone stale)

    def connect(self) -> None:
        self.close()
        p = self.proxy
        sock = socket.create_connection((p.target_host, p.target_port), timeout=p.upstream_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.file = sock.makefile("rb", buffering=_BUF)  # type: ignore[assignment]
        self.used = False
        p._track(sock)

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.sock is not None:
            self.proxy._untrack(self.sock)
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = self.file = None


class FaultProxy:
    """Seeded, per-request fault-injecting HTTP/1.1 proxy on 127.0.0.1 (see the module docstring)."""

    #: Body of injected 503 answers (S3 style; Azure and GCS clients retry any 503 anyway).
    body_503 = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
        b"<RequestId>FAULTPROXY%d</RequestId><HostId>faultproxy</HostId></Error>"
    )

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        seed: int = 0,
        reset_fraction: float = 0.0,
        status503_fraction: float = 0.0,
        latency_s: float = 0.0,
        latency_fraction: float = 1.0,
        listen_host: str = "127.0.0.1",
        upstream_timeout: float = 120.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = int(target_port)
        self.seed = seed
        self.reset_fraction = reset_fraction
        self.status503_fraction = status503_fraction
        self.latency_s = latency_s
        self.latency_fraction = latency_fraction
        #: If set, only requests with these methods (e.g. {"GET"}) can get a reset or a 503.
        self.fault_methods: set[str] | None = None
        #: Rewrite ``Location`` response headers pointing at the target so they point at the proxy.
        self.rewrite_location = True
        self.listen_host = listen_host
        self.upstream_timeout = upstream_timeout
        self.port = 0

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.connections = 0
        self.requests = 0
        self.forwarded = 0
        self.resets_injected = 0
        self.injected_503 = 0
        self.latency_injected = 0
        self.decisions: list[str] = []

        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._socks: set[socket.socket] = set()
        self._stopping = threading.Event()

    # -- public API --------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self.listen_host}:{self.port}"

    def start(self) -> FaultProxy:
        if self._listener is not None:
            return self
        self._stopping.clear()
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.listen_host, 0))
        lsock.listen(128)
        lsock.settimeout(0.1)
        self._listener = lsock
        self.port = int(lsock.getsockname()[1])
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop every open connection and join the threads."""
        if self._listener is None:
            return
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with contextlib.suppress(OSError):
            self._listener.close()
        self._listener = None
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.port = 0

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(
        self,
        *,
        reset_fraction: float | None = None,
        status503_fraction: float | None = None,
        latency_s: float | None = None,
        latency_fraction: float | None = None,
    ) -> None:
        """Change several fault knobs at once (same as setting the attributes)."""
        with self._lock:
            if reset_fraction is not None:
                self.reset_fraction = reset_fraction
            if status503_fraction is not None:
                self.status503_fraction = status503_fraction
            if latency_s is not None:
                self.latency_s = latency_s
            if latency_fraction is not None:
                self.latency_fraction = latency_fraction

    def reset_counters(self, seed: int | None = None) -> None:
        """Zero the counters and ``decisions``, and restart the random sequence (from ``seed`` if given)."""
        with self._lock:
            if seed is not None:
                self.seed = seed
            self._rng = random.Random(self.seed)
            self.connections = self.requests = self.forwarded = 0
            self.resets_injected = self.injected_503 = self.latency_injected = 0
            self.decisions = []

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "connections": self.connections,
                "requests": self.requests,
                "forwarded": self.forwarded,
                "resets_injected": self.resets_injected,
                "injected_503": self.injected_503,
                "latency_injected": self.latency_injected,
            }

    def __repr__(self) -> str:
        where = self.endpoint if self.port else "stopped"
        return f"<FaultProxy {where} -> {self.target_host}:{self.target_port} {self.stats()}>"

    # -- internals ---------------------------------------------------------------------------------
    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)
        if self._stopping.is_set():
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        lsock = self._listener
        while not self._stopping.is_set():
            try:
                csock, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)
                continue
            csock.settimeout(None)
            csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                n = self.connections
            t = threading.Thread(target=self._serve, args=(csock,), name=f"faultproxy-conn-{n}", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _decide(self, method: str) -> tuple[str, float, int]:
        with self._lock:
            self.requests += 1
            n = self.requests
            u = self._rng.random()  # always two draws per request: the sequence only depends on the seed
            v = self._rng.random()
            faultable = self.fault_methods is None or method in self.fault_methods
            if faultable and u < self.reset_fraction:
                decision = "reset"
                self.resets_injected += 1
            elif faultable and u < self.reset_fraction + self.status503_fraction:
                decision = "503"
                self.injected_503 += 1
            else:
                decision = "forward"
            delay = 0.0
            if decision == "forward" and self.latency_s > 0 and v < self.latency_fraction:
                delay = self.latency_s
                self.latency_injected += 1
            self.decisions.append(decision)
            return decision, delay, n

    def _serve(self, csock: socket.socket) -> None:
        self._track(csock)
        cfile: BinaryIO = csock.makefile("rb", buffering=_BUF)  # type: ignore[assignment]
        upstream = _Upstream(self)
        reset = False
        try:
            while not self._stopping.is_set():
                req = _read_head(cfile)
                if req is None:
                    break
                parts = req.start_line.split()
                if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
                    raise ProtocolError(f"bad request line {req.start_line!r}")
                method = parts[0].decode("latin-1")
                version = parts[2]
                conn_tokens = req.tokens("connection")
                client_close = "close" in conn_tokens or (version == b"HTTP/1.0" and "keep-alive" not in conn_tokens)
                expect = "100-continue" in req.tokens("expect")

                decision, delay, n = self._decide(method)

                if expect and decision != "forward":
                    # Answer before the body is sent (a client waiting for 100 won't send it).
                    if decision == "reset":
                        reset = True
                    else:
                        self._send_503(csock, method, n, close=True)
                        self._lingering_close(csock)
                    break
                if expect:
                    csock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body_parts: list[bytes] = []
                if _is_chunked(req):
                    _copy_chunked(cfile, body_parts.append)
                else:
                    _copy_exact(cfile, _content_length(req) or 0, body_parts.append)

                if decision == "reset":
                    reset = True
                    break
                if decision == "503":
                    self._send_503(csock, method, n, close=client_close)
                    if client_close:
                        break
                    continue
                if delay and self._stopping.wait(delay):
                    break
                head = req.serialize(req.without("expect") if expect else None)
                keep = self._forward(method, head, b"".join(body_parts), csock, upstream)
                if not keep or client_close:
                    break
        except (OSError, ProtocolError):
            pass  # client or upstream went away / spoke nonsense: drop the connection
        finally:
            upstream.close()
            with contextlib.suppress(OSError):
                cfile.close()
            if reset:
                with contextlib.suppress(OSError):
                    csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._untrack(csock)
            with contextlib.suppress(OSError):
                csock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _send_503(self, csock: socket.socket, method: str, n: int, *, close: bool) -> None:
        body = self.body_503 % n
        head = (
            "HTTP/1.1 503 Slow Down\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            f"x-amz-request-id: FAULTPROXY{n}\r\n"
            "x-ms-error-code: ServerBusy\r\n"
            "Server: faultproxy\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n"
            "\r\n"
        ).encode("latin-1")
        csock.sendall(head if method == "HEAD" else head + body)

    @staticmethod
    def _lingering_close(csock: socket.socket, timeout: float = 2.0) -> None:
        """Half-close, then drain what the client still sends, so it reads our answer instead of a RST."""
        with contextlib.suppress(OSError):
            csock.shutdown(socket.SHUT_WR)
            csock.settimeout(0.2)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if not csock.recv(_BUF):
                        break
                except TimeoutError:
                    continue

    def _forward(self, method: str, head: bytes, body: bytes, csock: socket.socket, up: _Upstream) -> bool:
        """Send one request upstream and relay the response; returns whether to keep the client alive."""
        for attempt in (1, 2):
            if up.sock is None:
                up.connect()
            assert up.sock is not None and up.file is not None
            reused = up.used
            try:
                up.sock.sendall(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    up.sock.sendall(body)
                resp = _read_head(up.file)
            except OSError:
                if reused and attempt == 1:
                    up.close()  # the server closed an idle keep-alive connection: retry on a new one
                    continue
                raise
            if resp is None:
                if reused and attempt == 1:
                    up.close()
                    continue
                raise ProtocolError("upstream closed without answering")
            break
        # Interim responses: drop 100 Continue (we already answered it ourselves), relay the others.
        while True:
            code = self._status(resp)
            if code == 101:
                raise ProtocolError("protocol upgrades (101) are not supported")
            if code >= 200:
                break
            if code != 100:
                csock.sendall(self._rewrite(resp))
            resp = _read_head(up.file)
            if resp is None:
                raise ProtocolError("upstream closed after an interim response")
        up.used = True
        with self._lock:  # counted before the client can see any of the answer
            self.forwarded += 1
        csock.sendall(self._rewrite(resp))
        version = resp.start_line.split(b" ", 1)[0]
        tokens = resp.tokens("connection")
        keep = "close" not in tokens and (version == b"HTTP/1.1" or "keep-alive" in tokens)
        if method == "HEAD" or code in (204, 304):
            pass
        elif _is_chunked(resp):
            _copy_chunked(up.file, csock.sendall)
        elif (length := _content_length(resp)) is not None:
            _copy_exact(up.file, length, csock.sendall)
        else:
            _copy_until_eof(up.file, csock.sendall)
            keep = False
        if not keep:
            up.close()
        return keep

    @staticmethod
    def _status(resp: _Message) -> int:
        parts = resp.start_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ProtocolError(f"bad status line {resp.start_line!r}")
        try:
            return int(parts[1])
        except ValueError as e:
            raise ProtocolError(f"bad status line {resp.start_line!r}") from e

    def _rewrite(self, resp: _Message) -> bytes:
        if not self.rewrite_location:
            return resp.serialize()
        old = f"//{self.target_host}:{self.target_port}".encode()
        new = f"//{self.listen_host}:{self.port}".encode()
        headers = [(k, v.replace(old, new)) if k.strip().lower() == b"location" else (k, v) for k, v in resp.headers]
        return resp.serialize(headers)
