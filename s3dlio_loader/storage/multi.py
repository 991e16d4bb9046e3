"""Several endpoints holding the same objects, used as one store: spread load, survive an outage.

A :class:`MultiEndpointStore` wraps one :class:`~s3dlio_loader.storage.Store` per endpoint
(several S3 gateways of one cluster, several buckets kept in sync, several replicas...) and
offers the Store's read and write methods. Each request goes to one endpoint chosen by the
strategy:

* ``round_robin``: endpoints in turn;
* ``least_connections``: the endpoint with the fewest requests in flight (ties in turn), so
  a slow endpoint receives less.

**Assumption: every endpoint serves the same objects under its base URI.** A key is the
part of a URI after the endpoint's base (``s3://bucket/data/`` -> ``train/a.bin``), and the
request is sent to ``<chosen endpoint's base><key>``; so endpoints may differ by
``endpoint_url`` (storage options), by bucket, or both. URIs may be given under any
endpoint's base, or as keys (no ``://``). Results (listings, ``stat``) are expressed under
the base the caller used (keys: under the first endpoint's base).

**Failures.** The Store of each endpoint retries transient faults itself. A request that
still fails transiently there (connection refused, timeouts, 5xx, throttling) takes that
endpoint out of rotation for ``backoff_s`` seconds (doubling with each consecutive failure,
up to ``max_backoff_s``) and, with ``failover=True``, is retried on the other endpoints,
each at most once. Permanent errors (no such object, access denied, bad range) are raised at
once. After its back-off an endpoint gets one trial request at a time until one succeeds.
When every endpoint is backing off, the one due back first is tried anyway.

**Writes.** By default ``put``, ``open_writer``, ``delete`` and ``copy`` go to one endpoint,
as for endpoints that front one storage system. With ``replicate_writes=True`` (independent
replicas, e.g. separate servers in tests) they go to every endpoint in turn and fail if any
endpoint fails, naming those.

**Listing.** ``list`` asks one endpoint (they hold the same objects); ``list(...,
merged=True)`` asks every endpoint and returns the union by key (every endpoint must answer).

:meth:`MultiEndpointStore.stats` gives per-endpoint requests, bytes, errors, failovers,
requests in flight and health.

>>> import tempfile
>>> dirs = [tempfile.mkdtemp() for _ in range(3)]
>>> multi = create_multi_endpoint_store([f"file://{d}" for d in dirs], replicate_writes=True)
>>> multi.put("a.bin", b"hello")
>>> [multi.get("a.bin") for _ in range(3)]
[b'hello', b'hello', b'hello']
>>> [s["requests"] for s in multi.stats()]
[2, 2, 2]
>>> expand_range_template("s3://b-{1...3}/p")
['s3://b-1/p', 's3://b-2/p', 's3://b-3/p']
"""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import ConfigError, StorageError, TransientStorageError
from ..options import MultiEndpointOptions, StoreOptions
from . import retry as retrylib
from .store import Buffer, ObjectInfo, ObjectWriter, Store
from .uri import parse_uri

log = logging.getLogger(__name__)

T = TypeVar("T")

STRATEGIES = ("round_robin", "least_connections")

_RANGE_RE = re.compile(r"\{(\d+)\.\.\.(\d+)\}")


def expand_range_template(template: str) -> list[str]:
    """Expand s3dlio's range syntax ``{A...B}`` (inclusive; ``{01...12}`` keeps the zero padding).

    Several ranges expand to every combination, first range slowest.

    >>> expand_range_template("http://10.0.0.{1...2}:{9000...9001}")
    ['http://10.0.0.1:9000', 'http://10.0.0.1:9001', 'http://10.0.0.2:9000', 'http://10.0.0.2:9001']
    >>> expand_range_template("s3://b-{08...10}")
    ['s3://b-08', 's3://b-09', 's3://b-10']
    """
    matches = list(_RANGE_RE.finditer(template))
    if not matches:
        return [template]
    choices = []
    for m in matches:
        a_text, b_text = m.group(1), m.group(2)
        a, b = int(a_text), int(b_text)
        if a > b:
            raise ConfigError(f"range {m.group(0)} in {template!r} goes down; write it as {{{b}...{a}}}")
        width = len(a_text) if a_text.startswith("0") and len(a_text) > 1 else 0
        choices.append([f"{i:0{width}d}" for i in range(a, b + 1)])
    out = []
    for combo in itertools.product(*choices):
        pieces, last = [], 0
        for m, value in zip(matches, combo, strict=True):
            pieces += [template[last : m.start()], value]
            last = m.end()
        pieces.append(template[last:])
        out.append("".join(pieces))
    return out


def _expand_all(values: str | Sequence[str]) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"endpoint URIs and URLs must be non-empty strings (got {item!r})")
        out += expand_range_template(item)
    return out


def _with_endpoint_url(storage_options: dict[str, Any], scheme: str, url: str) -> dict[str, Any]:
    if scheme == "s3":
        client = dict(storage_options.get("client_kwargs") or {})
        client["endpoint_url"] = url
        storage_options["client_kwargs"] = client
    elif scheme == "gs":
        storage_options["endpoint_url"] = url
    else:
        raise ConfigError(
            f"endpoint_urls applies to s3:// and gs:// endpoints; for {scheme}:// pass one storage_options "
            "dict per endpoint instead"
        )
    return storage_options


def _endpoint_url(storage_options: Mapping[str, Any]) -> str | None:
    """The service URL in fsspec storage options, for display (never credentials)."""
    client = storage_options.get("client_kwargs")
    if isinstance(client, Mapping) and client.get("endpoint_url"):
        return str(client["endpoint_url"])
    for key in ("endpoint_url", "account_host"):
        if storage_options.get(key):
            return str(storage_options[key])
    conn = storage_options.get("connection_string")
    if isinstance(conn, str):
        m = re.search(r"BlobEndpoint=([^;]+)", conn)
        if m:
            return m.group(1)
    return None


def _is_failover_error(exc: BaseException) -> bool:
    """Faults worth trying on another endpoint: transient ones that outlasted the Store's retries."""
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, StorageError | ConfigError) or not isinstance(exc, Exception):
        return False
    return retrylib.is_transient(exc)


class Endpoint:
    """One endpoint: its base URI (ending with ``/``), its Store and its counters."""

    def __init__(self, index: int, base: str, store: Store) -> None:
        self.index = index
        self.base = base
        self.store = store
        self.endpoint_url = _endpoint_url(store.storage_options)
        self.reset()

    def reset(self) -> None:
        """Zero the counters and forget failures."""
        self.requests = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.errors = 0
        self.failovers = 0
        self.in_flight = 0
        self.consecutive_failures = 0
        self.down_until = 0.0
        self.last_error: str | None = None

    def available(self, now: float) -> bool:
        """In rotation: not backing off, and after a back-off only one trial request at a time."""
        if now < self.down_until:
            return False
        return not (self.consecutive_failures and self.in_flight)

    def __repr__(self) -> str:
        where = f" @ {self.endpoint_url}" if self.endpoint_url else ""
        return f"Endpoint({self.index}, {self.base}{where})"


class MultiEndpointStore:
    """One store over several endpoints holding the same objects (see the module documentation).

    Args:
        endpoints: ``(base URI, Store)`` pairs; the base is a prefix (a bucket, or a
            directory-like prefix in it) that the keys are relative to.
        options: :class:`~s3dlio_loader.options.MultiEndpointOptions` (defaults from
            ``S3DLIO_MULTI_*`` variables).
        **option_overrides: individual MultiEndpointOptions fields (``strategy=...``).

    Build one with :func:`create_multi_endpoint_store`. Thread-safe; picklable (counters
    start again at zero in the receiving process).
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, Store]],
        options: MultiEndpointOptions | None = None,
        **option_overrides: Any,
    ) -> None:
        if not endpoints:
            raise ConfigError("a MultiEndpointStore needs at least one endpoint")
        base_options = options if options is not None else MultiEndpointOptions.from_env()
        self.options = base_options.replace(**option_overrides) if option_overrides else base_options
        eps = []
        for i, (base, store) in enumerate(endpoints):
            if not isinstance(store, Store):
                raise ConfigError(f"endpoint {i}: expected a Store (got {type(store).__name__})")
            canonical = parse_uri(base).uri.rstrip("/") + "/"
            if parse_uri(canonical).scheme != store.scheme:
                raise ConfigError(f"endpoint {i}: {base!r} is not a {store.scheme}:// URI like its Store")
            eps.append(Endpoint(i, canonical, store))
        self._endpoints: tuple[Endpoint, ...] = tuple(eps)
        # Longest bases first, so that a URI matches the most specific base.
        self._bases = sorted({e.base for e in eps}, key=len, reverse=True)
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cursor = 0

    def _guard(self) -> threading.Lock:
        if self._pid != os.getpid():  # forked: the parent's lock may have been held by another thread
            self._init_process_state()
            for ep in self._endpoints:
                ep.reset()
        return self._lock

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()
        for ep in self._endpoints:
            ep.reset()

    def __repr__(self) -> str:
        return f"MultiEndpointStore({list(self._endpoints)!r}, strategy={self.options.strategy!r})"

    def __len__(self) -> int:
        return len(self._endpoints)

    def __enter__(self) -> MultiEndpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every endpoint Store's thread pool (the store stays usable)."""
        for ep in self._endpoints:
            ep.store.close()

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints, in the order given."""
        return self._endpoints

    @property
    def strategy(self) -> str:
        """``round_robin`` or ``least_connections``."""
        return self.options.strategy

    # ------------------------------------------------------------------ stats

    def stats(self) -> builtins.list[dict[str, Any]]:
        """Per endpoint, in order: counters of this process.

        Keys: ``index``, ``uri`` (base), ``endpoint_url``, ``requests`` (attempts sent there,
        failed ones included), ``bytes_read``, ``bytes_written``, ``errors`` (requests that
        failed there after the Store's retries), ``failovers`` (of those, retried elsewhere),
        ``retries`` (the Store's own retries), ``in_flight``, ``healthy`` (in rotation now),
        ``backoff_remaining_s``, ``consecutive_failures``, ``last_error``.
        """
        now = time.monotonic()
        with self._guard():
            return [
                {
                    "index": ep.index,
                    "uri": ep.base,
                    "endpoint_url": ep.endpoint_url,
                    "requests": ep.requests,
                    "bytes_read": ep.bytes_read,
                    "bytes_written": ep.bytes_written,
                    "errors": ep.errors,
                    "failovers": ep.failovers,
                    "retries": ep.store.stats.retries,
                    "in_flight": ep.in_flight,
                    "healthy": now >= ep.down_until,
                    "backoff_remaining_s": max(0.0, ep.down_until - now),
                    "consecutive_failures": ep.consecutive_failures,
                    "last_error": ep.last_error,
                }
                for ep in self._endpoints
            ]

    def reset_stats(self) -> None:
        """Zero every endpoint's counters and forget past failures (back-offs end now)."""
        with self._guard():
            for ep in self._endpoints:
                ep.reset()

    # ------------------------------------------------------------------ routing

    def _split(self, uri: str) -> tuple[str, str]:
        """(the base the caller used, the key) of ``uri``."""
        if not isinstance(uri, str):
            raise ConfigError(f"a URI or key must be a string (got {uri!r})")
        if "://" not in uri:
            return self._endpoints[0].base, uri.lstrip("/")
        canonical = parse_uri(uri).uri
        for base in self._bases:
            if canonical.startswith(base):
                return base, canonical[len(base):]
            if canonical + "/" == base:
                return base, ""
        raise ConfigError(
            f"{uri!r} is under none of the endpoints' bases ({', '.join(self._bases)}); "
            "give a URI under one of them or a key relative to them"
        )

    def _acquire(self, exclude: set[int]) -> Endpoint | None:
        """Choose an endpoint not in ``exclude`` and count a request on it (None: none left)."""
        n = len(self._endpoints)
        with self._guard():
            now = time.monotonic()
            rest = [ep for ep in self._endpoints if ep.index not in exclude]
            if not rest:
                return None
            candidates = [ep for ep in rest if ep.available(now)]
            if not candidates:  # all backing off: the one due back first
                candidates = [min(rest, key=lambda ep: (ep.down_until, ep.in_flight))]
            cursor = self._cursor
            if self.options.strategy == "least_connections":
                chosen = min(candidates, key=lambda ep: (ep.in_flight, (ep.index - cursor) % n))
            else:
                chosen = min(candidates, key=lambda ep: (ep.index - cursor) % n)
            self._cursor = (chosen.index + 1) % n
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def _release(self, ep: Endpoint, *, read: int = 0, written: int = 0,
                 error: BaseException | None = None, transient: bool = False) -> None:
        with self._guard():
            ep.in_flight = max(0, ep.in_flight - 1)
            if error is None:
                ep.bytes_read += read
                ep.bytes_written += written
                ep.consecutive_failures = 0
                ep.down_until = 0.0
                return
            ep.errors += 1
            ep.last_error = f"{type(error).__name__}: {error}"
            if transient:
                now = time.monotonic()
                if now >= ep.down_until:  # one failure per back-off window (concurrent requests)
                    ep.consecutive_failures += 1
                    delay = min(self.options.max_backoff_s,
                                self.options.backoff_s * 2 ** (ep.consecutive_failures - 1))
                    ep.down_until = now + delay
                    log.warning("endpoint %s failed (%s); out of rotation for %.1f s", ep, ep.last_error, delay)

    def _run(self, uri: str, fn: Callable[[Endpoint, str], T], *, nread: Callable[[T], int] | None = None,
             written: int = 0) -> T:
        """Run ``fn(endpoint, endpoint's URI of the key)`` on a chosen endpoint, failing over."""
        _base, key = self._split(uri)
        tried: set[int] = set()
        while True:
            ep = self._acquire(tried)
            assert ep is not None  # the first attempt always finds one; later ones are checked below
            tried.add(ep.index)
            try:
                result = fn(ep, ep.base + key)
            except BaseException as exc:
                transient = _is_failover_error(exc)
                self._release(ep, error=exc, transient=transient)
                if not (transient and self.options.failover) or len(tried) >= len(self._endpoints):
                    if len(tried) > 1:
                        exc.add_note(f"tried {len(tried)} endpoints: "
                                     f"{', '.join(str(self._endpoints[i]) for i in sorted(tried))}")
                    raise
                with self._guard():
                    ep.failovers += 1
                log.info("failing over %s from %s: %s", key, ep, exc)
                continue
            self._release(ep, read=nread(result) if nread is not None else 0, written=written)
            return result

    def _run_each(self, uri: str, fn: Callable[[Endpoint, str], T], *, written: int = 0) -> builtins.list[T]:
        """Run ``fn`` on every endpoint in turn (replicated writes); raise naming the failed ones."""
        _base, key = self._split(uri)
        results: builtins.list[T] = []
        failures: builtins.list[tuple[Endpoint, BaseException]] = []
        for ep in self._endpoints:
            with self._guard():
                ep.in_flight += 1
                ep.requests += 1
            try:
                results.append(fn(ep, ep.base + key))
            except Exception as exc:
                self._release(ep, error=exc, transient=_is_failover_error(exc))
                failures.append((ep, exc))
                continue
            except BaseException as exc:
                self._release(ep, error=exc)
                raise
            self._release(ep, written=written)
        if failures:
            first = failures[0][1]
            if len(failures) == 1 and len(self._endpoints) == 1:
                raise first
            names = "; ".join(f"{ep}: {type(e).__name__}: {e}" for ep, e in failures)
            raise StorageError(
                f"replicated write failed on {len(failures)} of {len(self._endpoints)} endpoints ({names})",
                uri=uri, op="put", attempts=len(self._endpoints),
            ) from first
        return results

    def _reroot(self, info: ObjectInfo, ep: Endpoint, base: str) -> ObjectInfo:
        if info.uri.startswith(ep.base):
            return info._replace(uri=base + info.uri[len(ep.base):])
        if info.uri + "/" == ep.base:
            return info._replace(uri=base.rstrip("/"))
        return info

    # ------------------------------------------------------------------ reads

    def get(self, uri: str, *, size: int | None = None) -> bytes:
        """The whole object (see :meth:`Store.get`), from one endpoint."""
        return self._run(uri, lambda ep, u: ep.store.get(u, size=size), nread=len)

    def get_range(self, uri: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (see :meth:`Store.get_range`), from one endpoint."""
        return self._run(uri, lambda ep, u: ep.store.get_range(u, offset, length), nread=len)

    def get_ranges(self, uri: str, ranges: Sequence[tuple[int, int]]) -> builtins.list[memoryview]:
        """Many ranges of one object (see :meth:`Store.get_ranges`), all from one endpoint."""
        return self._run(uri, lambda ep, u: ep.store.get_ranges(u, ranges),
                         nread=lambda views: sum(v.nbytes for v in views))

    def get_many(
        self,
        items: Iterable[str | ObjectInfo],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
    ) -> Iterator[tuple[str, bytes]]:
        """Fetch many objects concurrently, each from the endpoint the strategy picks.

        Yields ``(uri as given, bytes)``; at most ``max_in_flight`` (default: the first
        endpoint's ``StoreOptions.max_in_flight``) requests in flight; ``items`` is consumed
        lazily. The first error is raised when its turn comes.
        """
        window = max_in_flight or self._endpoints[0].store.options.max_in_flight
        if window < 1:
            raise ConfigError(f"max_in_flight must be >= 1 (got max_in_flight={window!r})")
        source = iter(items)
        pending: deque[tuple[str, cf.Future[bytes]]] = deque()
        pool = cf.ThreadPoolExecutor(max_workers=min(window, 64), thread_name_prefix="s3dlio-multi")

        def submit_next() -> bool:
            item = next(source, None)
            if item is None:
                return False
            if isinstance(item, ObjectInfo):
                pending.append((item.uri, pool.submit(self.get, item.uri, size=item.size)))
            else:
                pending.append((item, pool.submit(self.get, item)))
            return True

        try:
            while len(pending) < window and submit_next():
                pass
            while pending:
                if ordered:
                    uri, fut = pending.popleft()
                else:
                    done, _ = cf.wait([f for _, f in pending], return_when=cf.FIRST_COMPLETED)
                    idx = next(i for i, (_, f) in enumerate(pending) if f in done)
                    uri, fut = pending[idx]
                    del pending[idx]
                data = fut.result()
                submit_next()
                yield uri, data
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def stat(self, uri: str) -> ObjectInfo:
        """Size, etag and modification time of one object (from one endpoint)."""
        base, _key = self._split(uri)
        holder: builtins.list[Endpoint] = []

        def op(ep: Endpoint, u: str) -> ObjectInfo:
            holder[:] = [ep]
            return ep.store.stat(u)

        info = self._run(uri, op)
        return self._reroot(info, holder[0], base)

    def exists(self, uri: str) -> bool:
        """True when ``uri`` is an existing object (asked of one endpoint)."""
        return self._run(uri, lambda ep, u: ep.store.exists(u))

    def list(
        self,
        uri: str,
        *,
        recursive: bool = True,
        pattern: str | None = None,
        regex: str | re.Pattern[str] | None = None,
        include_dirs: bool = False,
        merged: bool = False,
    ) -> builtins.list[ObjectInfo]:
        """Objects under a prefix (see :meth:`Store.list`), URIs under the base the caller used.

        One endpoint answers (they hold the same objects); ``merged=True`` asks every endpoint
        and returns the union by key, sorted (any endpoint failing fails the listing).
        """
        base, key = self._split(uri)

        def listing(ep: Endpoint, u: str) -> builtins.list[ObjectInfo]:
            return ep.store.list(u, recursive=recursive, pattern=pattern, regex=regex, include_dirs=include_dirs)

        if not merged:
            holder: builtins.list[Endpoint] = []

            def op(ep: Endpoint, u: str) -> builtins.list[ObjectInfo]:
                holder[:] = [ep]
                return listing(ep, u)

            found = self._run(uri, op)
            return [self._reroot(o, holder[0], base) for o in found]
        by_uri: dict[str, ObjectInfo] = {}
        for ep in self._endpoints:
            with self._guard():
                ep.in_flight += 1
                ep.requests += 1
            try:
                found = listing(ep, ep.base + key)
            except BaseException as exc:
                self._release(ep, error=exc, transient=_is_failover_error(exc))
                raise
            self._release(ep)
            for o in found:
                rerooted = self._reroot(o, ep, base)
                by_uri.setdefault(rerooted.uri, rerooted)
        return sorted(by_uri.values(), key=lambda o: o.uri)

    # ------------------------------------------------------------------ writes

    def put(self, uri: str, data: Buffer) -> None:
        """Write the whole object: on one endpoint, or on every one with ``replicate_writes``."""
        n = memoryview(data).nbytes
        if self.options.replicate_writes:
            self._run_each(uri, lambda ep, u: ep.store.put(u, data), written=n)
        else:
            self._run(uri, lambda ep, u: ep.store.put(u, data), written=n)

    def open_writer(self, uri: str, *, compression: str | None = None, level: int = 3) -> ObjectWriter | TeeWriter:
        """A streaming writer (see :meth:`Store.open_writer`) on one endpoint, or on all of them
        with ``replicate_writes`` (a :class:`TeeWriter`). Not failed over: a writer that fails
        raises."""
        if self.options.replicate_writes:
            writers = self._run_each(uri, lambda ep, u: ep.store.open_writer(u, compression=compression,
                                                                                level=level))
            return TeeWriter(uri, writers)
        return self._run(uri, lambda ep, u: ep.store.open_writer(u, compression=compression, level=level))

    def delete(
        self,
        target: str | Sequence[str],
        *,
        recursive: bool = False,
        pattern: str | None = None,
        regex: str | None = None,
    ) -> int:
        """Delete (see :meth:`Store.delete`) on one endpoint, or on every one with
        ``replicate_writes`` (then the largest count is returned)."""
        if isinstance(target, str):
            def one(ep: Endpoint, u: str) -> int:
                return ep.store.delete(u, recursive=recursive, pattern=pattern, regex=regex)
            anchor = target
        else:
            keys = [self._split(t)[1] for t in target]
            if not keys:
                return 0

            def one(ep: Endpoint, u: str) -> int:
                return ep.store.delete([ep.base + k for k in keys])
            anchor = self._endpoints[0].base
        if self.options.replicate_writes:
            return max(self._run_each(anchor, one))
        return self._run(anchor, one)

    def copy(self, src: str, dst: str) -> None:
        """Copy one object within the endpoint(s) (server-side), keys taken from both URIs."""
        _b, dst_key = self._split(dst)

        def one(ep: Endpoint, u: str) -> None:
            ep.store.copy(u, ep.base + dst_key)

        if self.options.replicate_writes:
            self._run_each(src, one)
        else:
            self._run(src, one)


class TeeWriter:
    """A streaming writer over one :class:`ObjectWriter` per endpoint (replicated writes).

    ``write`` goes to every writer; ``close`` commits all of them (an error aborts the rest
    and is raised); leaving a ``with`` block by an exception aborts all.
    """

    def __init__(self, uri: str, writers: Sequence[ObjectWriter]) -> None:
        self.uri = uri
        self.writers = list(writers)
        self.bytes_in = 0

    def write(self, data: Buffer) -> int:
        """Append ``data`` to every replica; return the number of bytes taken."""
        try:
            for w in self.writers:
                n = w.write(data)
        except BaseException:
            self.abort()
            raise
        self.bytes_in += n
        return n

    def close(self) -> None:
        """Commit every replica."""
        for i, w in enumerate(self.writers):
            try:
                w.close()
            except BaseException:
                for rest in self.writers[i + 1 :]:
                    with contextlib.suppress(Exception):
                        rest.abort()
                raise

    def abort(self) -> None:
        """Discard every replica."""
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.abort()

    def __enter__(self) -> TeeWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def create_multi_endpoint_store(
    uris: str | Sequence[str],
    strategy: str | None = None,
    storage_options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    endpoint_urls: str | Sequence[str] | None = None,
    store_options: StoreOptions | None = None,
    options: MultiEndpointOptions | None = None,
    **option_overrides: Any,
) -> MultiEndpointStore:
    """A :class:`MultiEndpointStore` over several endpoints.

    Args:
        uris: the endpoints' base URIs: a list, or a template with s3dlio's range syntax
            (``"s3://bucket-{1...4}/data"``: four buckets). One URI with several
            ``endpoint_urls`` or several ``storage_options`` dicts means the same bucket
            behind several servers.
        strategy: ``"round_robin"`` or ``"least_connections"`` (default:
            ``MultiEndpointOptions.strategy``).
        storage_options: fsspec options for every endpoint, or a list with one dict per
            endpoint (servers differing by ``client_kwargs.endpoint_url``, credentials...).
        endpoint_urls: service URLs (list or range template ``"http://10.0.0.{1...4}:9000"``)
            set into each endpoint's storage options (s3: ``client_kwargs.endpoint_url``,
            gs: ``endpoint_url``).
        store_options: :class:`StoreOptions` of every endpoint's Store (retries, in-flight...).
        options, **option_overrides: :class:`MultiEndpointOptions` (``backoff_s=``,
            ``failover=``, ``replicate_writes=``...).

    Raises:
        ConfigError: counts that do not match, a bad template, an unknown strategy.
    """
    bases = _expand_all(uris)
    urls = _expand_all(endpoint_urls) if endpoint_urls is not None else None
    if urls is not None:
        if len(bases) == 1:
            bases = bases * len(urls)
        elif len(bases) != len(urls):
            raise ConfigError(f"{len(bases)} endpoint URIs but {len(urls)} endpoint_urls; give one URI, "
                              "or as many URIs as URLs")
    if storage_options is None or isinstance(storage_options, Mapping):
        per_endpoint = [dict(storage_options or {}) for _ in bases]
    else:
        given = list(storage_options)
        if len(bases) == 1 and len(given) > 1 and urls is None:  # one bucket behind several servers
            bases = bases * len(given)
        if len(given) == 1 and len(bases) > 1:
            given = given * len(bases)
        if len(given) != len(bases):
            raise ConfigError(f"{len(bases)} endpoints but {len(given)} storage_options dicts; give one dict "
                              "for all, or one per endpoint")
        per_endpoint = [dict(so) for so in given]  # shallow: only top-level keys are ever changed
    if strategy is not None:
        option_overrides["strategy"] = strategy
    endpoints = []
    for i, base in enumerate(bases):
        scheme = parse_uri(base).scheme
        so = per_endpoint[i]
        if urls is not None:
            _with_endpoint_url(so, scheme, urls[i])
        endpoints.append((base, Store(scheme, so, store_options)))
    return MultiEndpointStore(endpoints, options, **option_overrides)


__all__ = [
    "STRATEGIES",
    "Endpoint",
    "MultiEndpointStore",
    "TeeWriter",
    "create_multi_endpoint_store",
    "expand_range_template",
]
