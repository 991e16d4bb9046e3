"""The Store: one API for s3://, az://, gs://, file:// and direct:// over fsspec.

A :class:`Store` is bound to one backend (a canonical scheme plus fsspec
``storage_options``) and takes full URIs in every call. It adds to fsspec what a data
loader needs: bounded concurrency for many requests, range splitting of large objects,
coalescing of nearby ranges, retries of transient faults with backoff (counted in
:attr:`Store.stats`), errors naming the URI and operation, an op-log, and fork safety
(the filesystem, its event loop and its connection pool are rebuilt in a child process).

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> store = Store.from_uri(d)
>>> store.put(f"file://{d}/a.bin", b"hello")
>>> store.get(f"file://{d}/a.bin")
b'hello'
>>> [o.size for o in store.list(f"file://{d}/")]
[5]
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures as cf
import contextlib
import fnmatch
import glob as globlib
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, NamedTuple, TypeVar

from ..errors import (
    ConfigError,
    InvalidRangeError,
    ObjectNotFoundError,
    PathTraversalError,
    StorageError,
    TransientStorageError,
)
from ..options import StoreOptions
from . import retry as retrylib
from .oplog import OpLog, get_global_oplog, shared_oplog
from .s3lean import LeanS3Reader, WrongRegionError, lean_reader_for
from .uri import ParsedURI, has_glob, join_uri, parse_uri

log = logging.getLogger(__name__)

T = TypeVar("T")
Buffer = bytes | bytearray | memoryview

#: Object sizes a Store remembers from listings (so that get() needs no HEAD); a bound keeps
#: a listing of millions of objects from becoming millions of dict entries.
_MAX_REMEMBERED_SIZES = 100_000

#: storage_options keys whose values are secrets: shown as '***' in repr and logs.
SECRET_OPTION_NAMES = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "connection_string",
        "account_key",
        "sas_token",
        "credential",
        "credentials",
        "client_secret",
    }
)


class ObjectInfo(NamedTuple):
    """What a listing or a stat says about one object.

    ``etag`` is the backend's entity tag (without quotes) where it has one; ``mtime`` is the
    modification time in seconds since the epoch where known.
    """

    uri: str
    size: int
    etag: str | None = None
    mtime: float | None = None
    is_dir: bool = False


@dataclass
class StoreStats:
    """Counters of one Store in this process (each worker process has its own).

    ``retries`` counts attempts that failed transiently and were tried again.
    """

    requests: int = 0
    retries: int = 0
    errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _count(self, op: str, *, read: int = 0, written: int = 0, error: bool = False, retry: bool = False,
               requests: int = 1) -> None:  # fmt: skip
        with self._lock:
            self.requests += requests
            self.by_op[op] = self.by_op.get(op, 0) + requests
            self.bytes_read += read
            self.bytes_written += written
            self.errors += error
            self.retries += retry

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict copy of the counters."""
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "errors": self.errors,
                "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written,
                "by_op": dict(self.by_op),
            }

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self.requests = self.retries = self.errors = self.bytes_read = self.bytes_written = 0
            self.by_op.clear()


class _ShortRead(Exception):
    """A read returned fewer bytes than the object holds: retried as transient."""


class _Attempts:
    """Book-keeping for one logical request across its attempts (stats, op-log, backoff)."""

    __slots__ = ("attempt", "length", "offset", "op", "store", "uri")

    def __init__(self, store: Store, op: str, uri: str, offset: int | None, length: int | None) -> None:
        self.store, self.op, self.uri, self.offset, self.length = store, op, uri, offset, length
        self.attempt = 1

    def succeeded(self, start_ns: int, t0: int, *, read: int = 0, written: int = 0) -> None:
        store = self.store
        store.stats._count(self.op, read=read, written=written)
        oplog = store._oplog
        if oplog is not None:
            oplog.record(
                self.op, self.uri, start_ns=start_ns, duration_ns=time.perf_counter_ns() - t0,
                offset=self.offset, length=self.length, nbytes=read or written, attempt=self.attempt,
            )

    def failed(self, exc: BaseException, start_ns: int, t0: int) -> float:
        """Record a failed attempt; return the delay before the next one, or raise."""
        store = self.store
        retry = self.attempt < store.options.max_attempts and retrylib.is_transient(exc)
        store.stats._count(self.op, error=not retry, retry=retry)
        oplog = store._oplog
        if oplog is not None:
            oplog.record(
                self.op, self.uri, start_ns=start_ns, duration_ns=time.perf_counter_ns() - t0,
                offset=self.offset, length=self.length, status="error",
                error=f"{type(exc).__name__}: {exc}", attempt=self.attempt,
            )
        if not retry:
            if isinstance(exc, _ShortRead):
                raise TransientStorageError(
                    f"short read after {self.attempt} attempt(s): {exc}", uri=self.uri, op=self.op,
                    attempts=self.attempt,
                ) from None
            raise retrylib.to_storage_error(exc, uri=self.uri, op=self.op, attempts=self.attempt) from exc
        log.debug("retrying %s %s after attempt %d: %s", self.op, self.uri, self.attempt, exc)
        delay = retrylib.backoff_delay(self.attempt, store.options.retry_base_delay, store.options.retry_max_delay)
        self.attempt += 1
        return delay


class _ProcessState:
    """What must not cross a fork: the filesystem (event loop, sessions) and the thread pool."""

    def __init__(self, fs: Any, threads: int, lean: LeanS3Reader | None = None) -> None:
        self.pid = os.getpid()
        self.fs = fs
        self.is_async = bool(getattr(fs, "async_impl", False))
        self.executor = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3dlio-store")
        self.lean = lean  # s3:// GETs without botocore (see s3lean.py); None: the filesystem reads

    @property
    def async_reads(self) -> bool:
        """Reads go through the filesystem's event loop (else: this thread or the thread pool)."""
        return self.is_async and self.lean is None


class Store:
    """Read and write objects of one storage backend by URI.

    Args:
        scheme: ``"s3"``, ``"az"``, ``"gs"``, ``"file"`` or ``"direct"`` (aliases such as
            ``gcs`` and ``abfs`` are accepted).
        storage_options: passed to the fsspec filesystem's constructor, exactly as pandas,
            dask or pyarrow users pass them (``{"client_kwargs": {"endpoint_url": ...}}``,
            ``{"connection_string": ...}``, ``{"token": "anon"}``...).
        options: the loader's own knobs (:class:`~s3dlio_loader.options.StoreOptions`);
            defaults come from ``S3DLIO_*`` environment variables.
        **option_overrides: individual StoreOptions fields; unknown names raise ConfigError.

    A Store is cheap to pickle (it carries no connection) and safe to use after ``fork``.
    """

    def __init__(
        self,
        scheme: str,
        storage_options: Mapping[str, Any] | None = None,
        options: StoreOptions | None = None,
        **option_overrides: Any,
    ) -> None:
        canonical = parse_uri(f"{scheme}://x").scheme if "://" not in scheme else parse_uri(scheme).scheme
        self.scheme = canonical
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        base = options if options is not None else StoreOptions.from_env()
        self.options = base.replace(**option_overrides) if option_overrides else base
        self.stats = StoreStats()
        self._state: _ProcessState | None = None
        self._state_lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._oplog: OpLog | None = shared_oplog(self.options.oplog) if self.options.oplog else get_global_oplog()

    @classmethod
    def from_uri(
        cls,
        uri: str,
        storage_options: Mapping[str, Any] | None = None,
        options: StoreOptions | None = None,
        **option_overrides: Any,
    ) -> Store:
        """A Store for the backend ``uri`` belongs to."""
        return cls(parse_uri(uri).scheme, storage_options, options, **option_overrides)

    # ------------------------------------------------------------------ plumbing

    def __repr__(self) -> str:
        shown = {k: ("***" if k.lower() in SECRET_OPTION_NAMES else v) for k, v in self.storage_options.items()}
        return f"Store(scheme={self.scheme!r}, storage_options={_redact(shown)!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_state", "_state_lock", "stats", "_oplog"):
            del state[name]
        state["_sizes"] = {}  # a cache, possibly of a huge listing: not worth sending to workers
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._state = None
        self._state_lock = threading.Lock()
        self.stats = StoreStats()
        self._oplog = shared_oplog(self.options.oplog) if self.options.oplog else get_global_oplog()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush the op-log and release this process's thread pool. The Store can still be used."""
        if self._oplog is not None:
            self._oplog.flush()
        state, self._state = self._state, None
        if state is not None and state.pid == os.getpid():
            state.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def fs(self) -> Any:
        """This process's fsspec filesystem (rebuilt after fork; never shared with a parent)."""
        return self._proc().fs

    def _proc(self) -> _ProcessState:
        state = self._state
        if state is not None and state.pid == os.getpid():
            return state
        with self._state_lock:
            state = self._state
            if state is None or state.pid != os.getpid():
                try:
                    fs = self._make_fs()
                except (ValueError, TypeError) as exc:  # bad or missing storage options
                    raise ConfigError(
                        f"cannot set up the {self.scheme}:// filesystem with storage_options "
                        f"{_redact(self.storage_options)!r}: {exc}"
                    ) from exc
                lean = None
                if self.scheme == "s3" and self.options.s3_lean_reads:
                    lean = lean_reader_for(self.storage_options, max_connections=self.options.max_in_flight)
                state = _ProcessState(fs, threads=min(self.options.max_in_flight, 32), lean=lean)
                self._state = state
        return state

    def _make_fs(self) -> Any:
        so = dict(self.storage_options)
        if self.scheme == "file":
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem(skip_instance_cache=True)
        if self.scheme == "direct":
            from .direct import DirectFileSystem

            return DirectFileSystem(skip_instance_cache=True, **so)
        if self.scheme == "s3":
            import s3fs

            if self.options.disable_backend_retries:
                config = dict(so.get("config_kwargs") or {})
                config.setdefault("retries", {"mode": "standard", "total_max_attempts": 1})
                so["config_kwargs"] = config
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
            if self.options.disable_backend_retries:
                fs.retries = 1  # s3fs's own retry loop (a class attribute, not a constructor option)
            return fs
        if self.scheme == "gs":
            import gcsfs
            import gcsfs.core

            # The extended class asks a gRPC control API for the bucket layout, which an
            # emulator does not serve (a minute of retries per bucket): use the plain class there.
            cls = gcsfs.core.GCSFileSystem if _emulated_gcs(so) else gcsfs.GCSFileSystem
            return cls(skip_instance_cache=True, **so)
        if self.scheme == "az":
            import adlfs

            return adlfs.AzureBlobFileSystem(skip_instance_cache=True, **so)
        raise ConfigError(f"no filesystem for scheme {self.scheme!r}")  # pragma: no cover

    def _path(self, uri: str) -> ParsedURI:
        parsed = parse_uri(uri)
        if parsed.scheme != self.scheme:
            raise ConfigError(f"{uri!r} is a {parsed.scheme}:// URI but this Store serves {self.scheme}://")
        return parsed

    def _run_sync(self, op: str, uri: str, fn: Callable[[], T], *, offset: int | None = None,
                  length: int | None = None, written: int = 0, attempts: _Attempts | None = None) -> T:
        if attempts is None:
            attempts = _Attempts(self, op, uri, offset, length)
        while True:
            start_ns, t0 = time.time_ns(), time.perf_counter_ns()
            try:
                result = fn()
            except Exception as exc:
                time.sleep(attempts.failed(exc, start_ns, t0))
                continue
            attempts.succeeded(start_ns, t0, read=_nbytes(result), written=written)
            return result

    async def _run_async(self, op: str, uri: str, fn: Callable[[], Awaitable[T]], *, offset: int | None = None,
                         length: int | None = None, written: int = 0) -> T:
        attempts = _Attempts(self, op, uri, offset, length)
        while True:
            start_ns, t0 = time.time_ns(), time.perf_counter_ns()
            try:
                result = await fn()
            except Exception as exc:
                await asyncio.sleep(attempts.failed(exc, start_ns, t0))
                continue
            attempts.succeeded(start_ns, t0, read=_nbytes(result), written=written)
            return result

    def _call(self, op: str, uri: str, sync_fn: Callable[[Any], T], async_fn: Callable[[Any], Awaitable[T]],
              **kw: Any) -> T:
        """Run one request with retries on whichever side (sync or async) the backend is."""
        state = self._proc()
        fs = state.fs
        if state.is_async:
            return _sync(fs, self._run_async(op, uri, lambda: async_fn(fs), **kw))
        return self._run_sync(op, uri, lambda: sync_fn(fs), **kw)

    # ------------------------------------------------------------------ reads

    def get(self, uri: str, *, size: int | None = None) -> bytes:
        """The whole object as bytes.

        When the size is known (passed in, or seen by an earlier :meth:`list`/:meth:`stat`)
        and above ``options.range_threshold``, the object is fetched as concurrent range
        requests of ``options.range_chunk`` bytes; otherwise with one request (no HEAD).

        Raises:
            ObjectNotFoundError: no such object (not retried).
            TransientStorageError: a transient fault outlasted ``options.max_attempts``.
        """
        path = self._path(uri).path
        known = size if size is not None else self._sizes.get(path)
        small = known is None or known <= self.options.range_threshold
        if self.scheme == "file" or (not self._proc().async_reads and small):
            return self._read_sync(uri, path, 0, known, op="get", whole=True)  # no thread hop
        return self._submit_get(uri, path, known).result()

    def get_range(self, uri: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object starting at byte ``offset``.

        A zero ``length`` returns ``b""`` without a request.

        Raises:
            InvalidRangeError: the range ends past the end of the object.
            ConfigError: a negative offset or length.
        """
        _check_range(uri, offset, length)
        if length == 0:
            return b""
        path = self._path(uri).path
        state = self._proc()
        if state.async_reads:
            return _sync(state.fs, self._aread(uri, path, offset, length, op="get_range"))
        return self._read_sync(uri, path, offset, length, op="get_range")

    def get_ranges(self, uri: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        """Many ``(offset, length)`` ranges of one object, in the order asked.

        Ranges closer than ``options.coalesce_gap`` are merged into one request; merged
        requests run concurrently. The results are read-only memoryviews into the fetched
        buffers (no copy); call ``bytes()`` on one to own it separately.
        """
        for offset, length in ranges:
            _check_range(uri, offset, length)
        path = self._path(uri).path
        blocks = coalesce_ranges(ranges, self.options.coalesce_gap, self.options.range_chunk)
        datas: Sequence[Buffer]
        if self.scheme == "file":
            # Local blocks: one open file, read in this thread (a pool hop costs more than a pread).
            datas = self._run_sync("get_range", uri, lambda: _local_read_blocks(uri, path, blocks, self.options),
                                   offset=blocks[0][0] if blocks else 0,
                                   length=sum(e - s for s, e, _ in blocks))  # fmt: skip
        else:
            futures = [self._submit_read(uri, path, start, end - start, op="get_range") for start, end, _ in blocks]
            datas = [f.result() for f in futures]
        out: list[memoryview] = [memoryview(b"")] * len(ranges)
        for (start, _end, members), data in zip(blocks, datas, strict=True):
            view = memoryview(data).toreadonly()
            for index in members:
                offset, length = ranges[index]
                out[index] = view[offset - start : offset - start + length]
        return out

    def get_many(
        self,
        items: Iterable[str | ObjectInfo],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
    ) -> Iterator[tuple[str, bytes]]:
        """Fetch many whole objects concurrently; yield ``(uri, bytes)`` pairs.

        At most ``max_in_flight`` (default ``options.max_in_flight``) objects are in flight;
        ``items`` is consumed lazily, so it may be a generator over a huge listing. With
        ``ordered=True`` results come in input order, otherwise as they complete. Passing
        :class:`ObjectInfo` (from :meth:`list`) gives the sizes, so large objects are split
        into concurrent ranges and no HEAD is needed.

        The first permanent error is raised when its turn comes; requests still in flight
        are cancelled.
        """
        window = max_in_flight or self.options.max_in_flight
        if window < 1:
            raise ConfigError(f"max_in_flight must be >= 1 (got max_in_flight={window!r})")
        if self.scheme == "file":
            return self._get_many_local(iter(items))
        return self._get_many_remote(iter(items), ordered, window)

    def _get_many_local(self, source: Iterator[str | ObjectInfo]) -> Iterator[tuple[str, bytes]]:
        # Page-cache reads cost CPU and fresh memory, not waiting. Measured here: reading in
        # the caller's thread, one file at a time, runs at the speed of a plain open().read()
        # loop (freed buffers are reused while still mapped); reader threads were 5-7x slower
        # (each result lands in new pages of another malloc arena, plus GIL hand-offs).
        if self._oplog is not None:  # each request is recorded with its own timing
            for item in source:
                uri = item.uri if isinstance(item, ObjectInfo) else item
                yield uri, self._read_sync(uri, self._path(uri).path, 0, None, op="get", whole=True)
            return
        # A read of a cached 256 KiB file takes ~30 us: the per-request book-keeping of _run_sync
        # would add as much again, so successes are counted once at the end and only a failed
        # read goes through the retry machinery.
        options, sizes = self.options, self._sizes
        done = nbytes = 0
        try:
            for item in source:
                uri = item.uri if isinstance(item, ObjectInfo) else item
                path = self._path(uri).path
                start_ns, t0 = time.time_ns(), time.perf_counter_ns()
                try:
                    data = _local_read(path, 0, None, options)
                except Exception as exc:
                    attempts = _Attempts(self, "get", uri, None, None)
                    time.sleep(attempts.failed(exc, start_ns, t0))  # raises unless it is worth retrying
                    data = self._read_sync(uri, path, 0, None, op="get", whole=True, attempts=attempts)
                else:
                    sizes[path] = len(data)
                    done += 1
                    nbytes += len(data)
                yield uri, data
        finally:
            if done:
                self.stats._count("get", read=nbytes, requests=done)

    def open_local(self, uris: Sequence[str]) -> LocalFiles | None:
        """Open local objects to be read straight into buffers of the caller's (file:// only).

        Returns a :class:`LocalFiles` with each file's current size, for the caller to lay out
        its buffers (a shared-memory slot, one tensor for a batch) and fill with
        :meth:`LocalFiles.read_into`: the bytes are copied once, from the page cache into
        their destination, with no intermediate ``bytes``. None when that path does not apply
        (another scheme, an op-log recording every request) or a file cannot be opened: use
        :meth:`get_many` then, which retries and names the object in its errors.
        """
        if self.scheme != "file" or self._oplog is not None:
            return None
        fds: list[int] = []
        try:
            for uri in uris:
                fds.append(os.open(self._path(uri).path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
            sizes = [os.fstat(fd).st_size for fd in fds]
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
        return LocalFiles(self, list(uris), fds, sizes)

    def _get_many_remote(
        self, source: Iterator[str | ObjectInfo], ordered: bool, window: int
    ) -> Iterator[tuple[str, bytes]]:
        pending: deque[tuple[str, cf.Future[bytes]]] = deque()

        def submit_next() -> bool:
            item = next(source, None)
            if item is None:
                return False
            if isinstance(item, ObjectInfo):
                uri, size = item.uri, item.size
            else:
                uri, size = item, None
            path = self._path(uri).path
            known = size if size is not None else self._sizes.get(path)
            pending.append((uri, self._submit_get(uri, path, known)))
            return True

        try:
            while len(pending) < window and submit_next():
                pass
            while pending:
                if ordered:
                    uri, fut = pending.popleft()
                    data = fut.result()
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

    def _submit_get(self, uri: str, path: str, size: int | None) -> cf.Future[bytes]:
        # Local files are read whole: splitting a page-cache read only adds a copy.
        if size is not None and size > self.options.range_threshold and self.scheme != "file":
            return self._submit_split(uri, path, size)
        return self._submit_read(uri, path, 0, size, op="get", whole=True)

    def _submit_read(self, uri: str, path: str, offset: int, length: int | None, *, op: str,
                     whole: bool = False) -> cf.Future[bytes]:
        state = self._proc()
        if state.async_reads:
            coro = self._aread(uri, path, offset, length, op=op, whole=whole)
            return asyncio.run_coroutine_threadsafe(coro, state.fs.loop)
        return state.executor.submit(self._read_sync, uri, path, offset, length, op=op, whole=whole)

    def _submit_split(self, uri: str, path: str, size: int) -> cf.Future[bytes]:
        chunk = self.options.range_chunk
        parts = [self._submit_read(uri, path, start, min(chunk, size - start), op="get_range")
                 for start in range(0, size, chunk)]
        result: cf.Future[bytes] = cf.Future()

        def assemble(_: cf.Future[bytes]) -> None:
            if result.done() or not all(p.done() for p in parts):
                return
            try:
                result.set_result(b"".join(p.result() for p in parts))
            except BaseException as exc:
                if not result.done():
                    result.set_exception(exc)
                for p in parts:
                    p.cancel()

        for p in parts:
            p.add_done_callback(assemble)
        return result

    def _read_sync(self, uri: str, path: str, offset: int, length: int | None, *, op: str,
                   whole: bool = False, attempts: _Attempts | None = None) -> bytes:
        fs = self._proc().fs

        if whole:
            # A whole-object GET returns the object as it is now (the HTTP stack checks the
            # transfer's length); a remembered size only chose between one GET and ranges.
            offset, length = 0, None

        def attempt() -> bytes:
            lean = self._proc().lean
            if self.scheme == "file":
                data = _local_read(path, offset, length, self.options)
            elif lean is not None:
                data = self._lean_get(lean, path, offset, length)
            elif length is None:
                data = fs.cat_file(path)
            else:
                data = fs.cat_file(path, start=offset, end=offset + length)
            if length is not None and len(data) < length:
                self._raise_short(uri, path, offset, length, len(data), whole)
            if whole:
                self._sizes[path] = len(data)
            return data

        return self._run_sync(op, uri, attempt, offset=None if whole else offset, length=length, attempts=attempts)

    def _lean_get(self, lean: LeanS3Reader, path: str, offset: int, length: int | None) -> bytes:
        bucket, _, key = path.partition("/")
        try:
            if length is None:
                return lean.get(bucket, key)
            return lean.get(bucket, key, offset, offset + length)
        except WrongRegionError as exc:
            # s3fs finds the bucket's region itself: leave the reads of this process to it.
            log.info("s3 reads go through s3fs from now on: %s", exc)
            self._proc().lean = None
            fs = self._proc().fs
            return fs.cat_file(path) if length is None else fs.cat_file(path, start=offset, end=offset + length)

    async def _aread(self, uri: str, path: str, offset: int, length: int | None, *, op: str,
                     whole: bool = False) -> bytes:
        fs = self._proc().fs
        extra = {"max_concurrency": 1} if self.scheme == "s3" else {}

        if whole:
            offset, length = 0, None  # see _read_sync

        async def attempt() -> bytes:
            if length is None:
                data = await fs._cat_file(path, **extra)
            else:
                data = await fs._cat_file(path, start=offset, end=offset + length, **extra)
            if length is not None and len(data) < length:
                size = (await fs._info(path))["size"]
                self._check_short(uri, offset, length, len(data), int(size), whole)
            if whole:
                self._sizes[path] = len(data)
            return data

        return await self._run_async(op, uri, attempt, offset=None if whole else offset, length=length)

    def _raise_short(self, uri: str, path: str, offset: int, length: int, got: int, whole: bool) -> None:
        size = self._proc().fs.size(path)
        self._check_short(uri, offset, length, got, int(size), whole)

    @staticmethod
    def _check_short(uri: str, offset: int, length: int, got: int, size: int, whole: bool) -> None:
        if not whole and offset + length > size:
            raise InvalidRangeError(
                f"range [{offset}, {offset + length}) is past the end of the object ({size} bytes)",
                uri=uri, op="get_range",
            )
        raise _ShortRead(f"got {got} of {length} bytes at offset {offset} (object is {size} bytes)")

    # ------------------------------------------------------------------ metadata

    def stat(self, uri: str) -> ObjectInfo:
        """Size, etag and modification time of one object (one HEAD on object stores)."""
        path = self._path(uri).path
        info = self._call("stat", uri, lambda fs: fs.info(path), lambda fs: fs._info(path))
        if info.get("type") == "directory":
            raise ObjectNotFoundError("is a directory/prefix, not an object", uri=uri, op="stat")
        obj = _to_object_info(self.scheme, info)
        self._sizes[path] = obj.size
        return obj

    def exists(self, uri: str) -> bool:
        """True when ``uri`` is an existing object."""
        try:
            self.stat(uri)
        except ObjectNotFoundError:
            return False
        return True

    def list(
        self,
        uri: str,
        *,
        recursive: bool = True,
        pattern: str | None = None,
        regex: str | re.Pattern[str] | None = None,
        include_dirs: bool = False,
    ) -> builtins.list[ObjectInfo]:
        """Objects under a prefix, sorted by URI.

        ``uri`` is a prefix (``s3://b/data/`` or a partial key ``s3://b/data/part-``), or a
        glob (``s3://b/data/*.parquet``). ``pattern`` (a glob) and ``regex`` (``re.search``)
        filter on the key relative to the prefix. ``recursive=False`` stays at one level;
        ``include_dirs`` then also returns the sub-prefixes (with ``is_dir=True``).
        Sizes seen here are remembered, so later :meth:`get` calls need no HEAD.
        """
        return self._list_with_base(uri, recursive, pattern, regex, include_dirs)[0]

    def _list_with_base(
        self, uri: str, recursive: bool, pattern: str | None, regex: str | re.Pattern[str] | None,
        include_dirs: bool,
    ) -> tuple[builtins.list[ObjectInfo], str]:
        """The listing and the path prefix that the keys' relative names start after."""
        path = self._path(uri).path
        if has_glob(path):
            entries = list(self._call("list", uri, lambda fs: fs.glob(path, detail=True),
                                      lambda fs: fs._glob(path, detail=True)).values())
            base = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] + "/"
        else:
            entries, base = self._list_prefix(uri, path, recursive, include_dirs)
        matcher = re.compile(regex) if isinstance(regex, str) else regex
        out = []
        for info in entries:
            name = info["name"].rstrip("/")
            if self.scheme in ("file", "direct") and not name.startswith("/"):
                name = "/" + name
            rel = name[len(base):] if name.startswith(base) else name
            if pattern is not None and not fnmatch.fnmatchcase(rel, pattern):
                continue
            if matcher is not None and not matcher.search(rel):
                continue
            obj = _to_object_info(self.scheme, {**info, "name": name})
            if not obj.is_dir and len(self._sizes) < _MAX_REMEMBERED_SIZES:
                self._sizes[name] = obj.size
            out.append(obj)
        out.sort(key=lambda o: o.uri)
        return out, base

    def _list_prefix(
        self, uri: str, path: str, recursive: bool, include_dirs: bool
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """The entries under ``path`` and the base their relative keys start after."""
        def sync_list(fs: Any, p: str) -> builtins.list[dict[str, Any]]:
            if recursive:
                return list(fs.find(p, detail=True, withdirs=False).values())
            return [e for e in fs.ls(p, detail=True) if include_dirs or e.get("type") != "directory"]

        async def async_list(fs: Any, p: str) -> builtins.list[dict[str, Any]]:
            if recursive:
                return list((await fs._find(p, detail=True, withdirs=False)).values())
            return [e for e in await fs._ls(p, detail=True) if include_dirs or e.get("type") != "directory"]

        def listing(p: str) -> builtins.list[dict[str, Any]]:
            try:
                return self._call("list", uri, lambda fs: sync_list(fs, p), lambda fs: async_list(fs, p))
            except ObjectNotFoundError:
                return []

        entries = listing(path)
        if path.endswith("/"):
            return entries, path
        # Without a trailing slash, "data" names the object "data" or the directory "data/";
        # s3fs also returns "data.csv" for it (a key prefix), which is not what was named.
        bare = path.lstrip("/")
        named = [e for e in entries if (n := e["name"].rstrip("/").lstrip("/")) == bare or n.startswith(bare + "/")]
        is_object = len(named) == 1 and named[0]["name"].rstrip("/").lstrip("/") == bare
        if named and not is_object:
            return named, path + "/"
        parent = path.rsplit("/", 1)[0] + "/" if "/" in path else path
        if named or "/" not in path:
            return named, parent
        # A partial key (s3://b/data/part-): list the parent and keep what starts with it.
        return [e for e in listing(parent) if e["name"].lstrip("/").startswith(path.lstrip("/"))], parent

    # ------------------------------------------------------------------ writes

    def put(self, uri: str, data: Buffer) -> None:
        """Write ``data`` as the whole object (replacing it).

        ``data`` may be bytes, bytearray or a memoryview; it is handed to the backend without
        an extra copy. On file:// the write goes to a temporary file renamed into place, so
        readers never see a partial object (as on object stores).
        """
        path = self._path(uri).path
        n = _nbytes(data)

        def sync_put(fs: Any) -> None:
            if self.scheme == "file":
                _local_write_atomic(path, data)
            else:
                fs.makedirs(os.path.dirname(path), exist_ok=True)
                fs.pipe_file(path, data)

        async def async_put(fs: Any) -> None:
            await fs._pipe_file(path, _http_body(data, self.scheme))

        self._call("put", uri, sync_put, async_put, written=n)
        self._sizes[path] = n

    def open_writer(self, uri: str, *, compression: str | None = None, level: int = 3) -> ObjectWriter:
        """A streaming writer: ``write()`` pieces, ``close()`` to commit the object.

        Object stores receive multipart uploads of ``options.writer_part_size`` bytes, so
        memory stays bounded whatever the object's size. ``compression="zstd"`` compresses
        on the fly at ``level``. Leaving a ``with`` block by an exception aborts the upload
        (no partial object appears).
        """
        if compression not in (None, "zstd"):
            raise ConfigError(f"compression must be None or 'zstd' (got compression={compression!r})")
        path = self._path(uri).path
        return ObjectWriter(self, uri, path, compression=compression, level=level)

    def delete(
        self,
        target: str | Sequence[str],
        *,
        recursive: bool = False,
        pattern: str | None = None,
        regex: str | None = None,
    ) -> int:
        """Delete one object, a list of objects, or everything under a prefix; return the count.

        One URI with neither ``recursive`` nor a filter deletes exactly that object and raises
        :class:`ObjectNotFoundError` if it does not exist. With ``recursive=True`` (or a
        ``pattern``/``regex``) the URI is a prefix and the matching objects are deleted in
        batches of ``options.delete_batch``; the number of concurrent batches grows with the
        number of objects up to ``options.max_delete_concurrency``.
        """
        if isinstance(target, str):
            if not (recursive or pattern or regex or has_glob(target)):
                self.stat(target)
                path = self._path(target).path
                self._call("delete", target, lambda fs: fs.rm_file(path), lambda fs: fs._rm_file(path))
                self._sizes.pop(path, None)
                return 1
            uris = [o.uri for o in self.list(target, recursive=True, pattern=pattern, regex=regex)]
        else:
            uris = list(target)
        if not uris:
            return 0
        paths = [self._path(u).path for u in uris]
        batch = self.options.delete_batch
        batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
        concurrency = max(1, min(self.options.max_delete_concurrency, len(batches)))

        def delete_batch(chunk: builtins.list[str]) -> None:
            label = f"{self.scheme}://{chunk[0]} (+{len(chunk) - 1} more)"
            self._call("delete", label, lambda fs: fs.rm(chunk), lambda fs: fs._rm(chunk))

        with cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3dlio-delete") as pool:
            list(pool.map(delete_batch, batches))
        for p in paths:
            self._sizes.pop(p, None)
        return len(paths)

    def copy(self, src: str, dst: str, *, dst_store: Store | None = None) -> None:
        """Copy one object. Within one backend the copy is server-side; across backends the
        bytes flow through this process (``dst_store`` configures the destination)."""
        src_path = self._path(src).path
        dst_scheme = parse_uri(dst).scheme
        if dst_store is None and dst_scheme != self.scheme:
            if dst_scheme not in ("file", "direct"):
                raise ConfigError(
                    f"copy to {dst!r} crosses backends: pass dst_store=Store.from_uri(dst, storage_options) "
                    "so that the destination's endpoint and credentials are known"
                )
            dst_store = Store.from_uri(dst)
        target = dst_store or self
        if target is self and self.scheme == "file":
            dst_path = self._path(dst).path
            self._sizes.pop(dst_path, None)
            self._call("copy", src, lambda fs: _local_copy_atomic(src_path, dst_path), _never)
            return
        if target is self:
            dst_path = self._path(dst).path
            self._sizes.pop(dst_path, None)
            self._call("copy", src, lambda fs: fs.copy(src_path, dst_path), lambda fs: fs._copy(src_path, dst_path))
            return
        target.put(dst, self.get(src))

    def upload(
        self, sources: str | Sequence[str], dest_prefix: str, *,
        progress: Callable[[str, int], None] | None = None,
    ) -> builtins.list[str]:
        """Upload local files to ``dest_prefix``; return the destination URIs.

        ``sources`` are paths, directories (uploaded recursively, keeping relative paths) or
        globs (``data/*.npz``, ``data/**/*.parquet``). ``progress(uri, nbytes)`` is called
        once per finished file (from worker threads).
        """
        pairs = _expand_local_sources([sources] if isinstance(sources, str) else list(sources))
        if not pairs:
            raise ObjectNotFoundError("no local file matches", uri=str(sources), op="upload")
        jobs = [(local, join_uri(dest_prefix, rel)) for local, rel in pairs]
        for _, dst in jobs:
            self._path(dst)

        def one(job: tuple[str, str]) -> str:
            local, dst = job
            rpath = self._path(dst).path
            self._sizes.pop(rpath, None)
            size = os.path.getsize(local)
            if self.scheme == "file":
                self._call("upload", dst, lambda fs: _local_copy_atomic(local, rpath), _never, written=size)
            elif self.scheme == "direct":
                with open(local, "rb") as src, self.open_writer(dst) as writer:
                    while chunk := src.read(self.options.range_chunk):
                        writer.write(chunk)
            else:
                self._call("upload", dst, lambda fs: fs.put_file(local, rpath),
                           lambda fs: fs._put_file(local, rpath), written=size)
            if progress is not None:
                progress(dst, size)
            return dst

        workers = max(1, min(self.options.max_in_flight, len(jobs), 16))
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3dlio-upload") as pool:
            return list(pool.map(one, jobs))

    def download(
        self, prefix: str, local_dir: str | os.PathLike[str], *, pattern: str | None = None,
        regex: str | None = None, progress: Callable[[str, int], None] | None = None,
    ) -> builtins.list[str]:
        """Download every object under ``prefix`` into ``local_dir``; return the local paths.

        Keys keep their path relative to the prefix. A key that would land outside
        ``local_dir`` (``..`` segments, an absolute key) raises
        :class:`~s3dlio_loader.errors.PathTraversalError` before anything is written.
        ``progress(uri, nbytes)`` is called once per object written.
        """
        root = os.path.realpath(os.fspath(local_dir))
        objects, base = self._list_with_base(prefix, True, pattern, regex, False)
        targets: dict[str, str] = {}
        for obj in objects:
            key = self._path(obj.uri).path
            rel = key[len(base):] if key.startswith(base) else key.rsplit("/", 1)[-1]
            targets[obj.uri] = _safe_local_target(root, rel, obj.uri)
        out = []
        for uri, data in self.get_many(objects):
            dest = targets[uri]
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _local_write_atomic(dest, data)
            out.append(dest)
            if progress is not None:
                progress(uri, len(data))
        return out


class ObjectWriter:
    """A streaming, optionally zstd-compressing writer returned by :meth:`Store.open_writer`.

    Write bytes-like pieces with :meth:`write`; :meth:`close` commits the object; leaving a
    ``with`` block by an exception calls :meth:`abort` instead.
    """

    def __init__(self, store: Store, uri: str, path: str, *, compression: str | None, level: int) -> None:
        self.uri = uri
        self.bytes_in = 0
        self._store = store
        self._path = path
        self._start_ns, self._t0 = time.time_ns(), time.perf_counter_ns()
        self._closed = False
        self._tmp: str | None = None
        raw: IO[bytes]
        if store.scheme in ("file", "direct"):
            # Local files are written aside and renamed into place on close, so that readers
            # never see a partial object and an aborted write leaves nothing (as on object stores).
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            self._tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
            opener = open if store.scheme == "file" else store.fs.open
            raw = opener(self._tmp, "wb")  # closed in close() / abort()
        else:
            raw = store.fs.open(path, "wb", block_size=store.options.writer_part_size)
        self._raw = raw
        self._sink: Any = raw
        if compression == "zstd":
            import zstandard

            self._sink = zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False)

    def write(self, data: Buffer) -> int:
        """Append ``data``; return the number of bytes taken."""
        if self._closed:
            raise StorageError("write on a closed writer", uri=self.uri, op="put")
        try:
            self._sink.write(data)
        except Exception as exc:
            self.abort()
            raise retrylib.to_storage_error(exc, uri=self.uri, op="put", attempts=1) from exc
        n = _nbytes(data)
        self.bytes_in += n
        return n

    def close(self) -> None:
        """Flush, finish the upload and make the object visible."""
        if self._closed:
            return
        self._closed = True
        attempts = _Attempts(self._store, "put", self.uri, None, None)
        self._store._sizes.pop(self._path, None)
        try:
            if self._sink is not self._raw:
                self._sink.close()
            self._raw.close()
            if self._tmp is not None:
                os.replace(self._tmp, self._path)
                self._tmp = None
        except Exception as exc:
            self._cleanup()
            raise retrylib.to_storage_error(exc, uri=self.uri, op="put", attempts=1) from exc
        attempts.succeeded(self._start_ns, self._t0, written=self.bytes_in)

    def abort(self) -> None:
        """Discard everything written; no object is created."""
        if self._closed and self._tmp is None:
            return
        self._closed = True
        discard = getattr(self._raw, "discard", None)
        with contextlib.suppress(Exception):
            if callable(discard):
                discard()  # aborts a multipart upload
                # fsspec files commit what they hold when closed (also from __del__): mark
                # this one closed so that nothing partial is ever written.
                self._raw.closed = True  # type: ignore[misc]
            else:
                self._raw.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------- helpers


def coalesce_ranges(
    ranges: Sequence[tuple[int, int]], gap: int, max_block: int | None = None
) -> list[tuple[int, int, list[int]]]:
    """Merge ``(offset, length)`` ranges whose gap is at most ``gap`` bytes.

    A block stops growing at ``max_block`` bytes (a range longer than that stays whole), so
    a long run of adjacent ranges becomes several requests that can run concurrently.
    Returns ``(start, end, member indices)`` blocks in offset order.

    >>> coalesce_ranges([(0, 10), (12, 4), (100, 5)], gap=2)
    [(0, 16, [0, 1]), (100, 105, [2])]
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    blocks: list[tuple[int, int, list[int]]] = []
    for i in order:
        offset, length = ranges[i]
        end = offset + length
        merge = bool(blocks) and offset - blocks[-1][1] <= gap
        if merge and max_block is not None:
            merge = max(blocks[-1][1], end) - blocks[-1][0] <= max_block
        if merge:
            start, prev_end, members = blocks[-1]
            members.append(i)
            blocks[-1] = (start, max(prev_end, end), members)
        else:
            blocks.append((offset, end, [i]))
    return blocks


def _sync(fs: Any, coro: Awaitable[T]) -> T:
    import fsspec.asyn

    return fsspec.asyn.sync(fs.loop, lambda: coro)


async def _never(fs: Any) -> None:  # pragma: no cover - placeholder for sync-only backends
    raise AssertionError("sync-only backend called asynchronously")


def _http_body(data: Buffer, scheme: str) -> bytes | bytearray:
    """``data`` as a type the backend's HTTP stack accepts, copying only when unavoidable.

    botocore refuses memoryviews, so a view is unwrapped to the bytes/bytearray it spans
    when it spans all of it; only a view of part of a buffer (or of a numpy array) is copied.
    The Azure SDK takes a bytearray for an iterable of ints, so Azure gets bytes.
    """
    body: bytes | bytearray
    if isinstance(data, bytes | bytearray):
        body = data
    else:
        view = memoryview(data)
        base = view.obj
        if isinstance(base, bytes | bytearray) and view.contiguous and view.nbytes == len(base):
            body = base
        else:
            return view.tobytes()
    if scheme == "az" and not isinstance(body, bytes):
        return bytes(body)
    return body


def _nbytes(value: object) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, list):  # the blocks of one multi-range read (get_ranges on file://)
        return sum(_nbytes(v) for v in value)
    return 0


def _check_range(uri: str, offset: int, length: int) -> None:
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
        raise ConfigError(
            f"a byte range needs offset >= 0 and length >= 0 (got offset={offset!r}, length={length!r}) for {uri}"
        )


def _emulated_gcs(storage_options: Mapping[str, Any]) -> bool:
    return bool(storage_options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST"))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if str(k).lower() in SECRET_OPTION_NAMES else _redact(v)) for k, v in value.items()}
    return value


_FADV = {
    "sequential": getattr(os, "POSIX_FADV_SEQUENTIAL", None),
    "random": getattr(os, "POSIX_FADV_RANDOM", None),
}


def _local_read(path: str, offset: int, length: int | None, options: StoreOptions) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if length is None:
            length = max(0, os.fstat(fd).st_size - offset)
        hint = options.fadvise
        if hint == "auto":
            hint = "random" if length < options.fadvise_random_below and offset else "sequential"
        advice = _FADV.get(hint)
        if advice is not None:
            os.posix_fadvise(fd, offset, length, advice)
        data = os.pread(fd, length, offset)
        if len(data) < length:  # large reads may come back in pieces
            pieces = [data]
            got = len(data)
            while got < length:
                more = os.pread(fd, length - got, offset + got)
                if not more:
                    break
                pieces.append(more)
                got += len(more)
            data = b"".join(pieces)
        return data
    finally:
        os.close(fd)


class LocalFiles:
    """Local files opened by :meth:`Store.open_local`, to be read into the caller's buffers.

    ``sizes`` are the files' sizes when they were opened; :meth:`read_into` reads that many
    bytes of each. The descriptors are closed by :meth:`read_into`, by :meth:`close`, or when
    the object is garbage-collected.
    """

    def __init__(self, store: Store, uris: builtins.list[str], fds: builtins.list[int],
                 sizes: builtins.list[int]) -> None:  # fmt: skip
        self.uris = uris
        self.sizes = sizes
        self._store = store
        self._fds = fds
        self._finalizer = weakref.finalize(self, _close_all, fds)

    @property
    def nbytes(self) -> int:
        """Total bytes of the files."""
        return sum(self.sizes)

    def read_into(self, buffers: Sequence[Any]) -> None:
        """Fill ``buffers[i]`` (writable, ``sizes[i]`` bytes each) with file ``i``, then close the files.

        Raises:
            StorageError: a file shrank since it was opened (it was rewritten in place), naming it.
            ConfigError: the buffers do not match the files.
        """
        if len(buffers) != len(self._fds):
            raise ConfigError(f"read_into needs {len(self._fds)} buffers (got {len(buffers)})")
        try:
            total = 0
            for uri, fd, size, buf in zip(self.uris, self._fds, self.sizes, buffers, strict=True):
                view = memoryview(buf).cast("B")
                if view.nbytes != size:
                    raise ConfigError(f"the buffer for {uri} holds {view.nbytes} bytes; the object has {size}")
                got = 0
                while got < size:
                    n = os.preadv(fd, [view[got:]], got)
                    if n == 0:
                        raise StorageError(f"the file shrank while it was read ({got} of {size} bytes)",
                                           uri=uri, op="get")  # fmt: skip
                    got += n
                total += size
            self._store.stats._count("get", read=total, requests=len(self._fds))
        finally:
            self.close()

    def close(self) -> None:
        """Close the files (idempotent)."""
        self._finalizer()


def _close_all(fds: builtins.list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _local_read_blocks(
    uri: str, path: str, blocks: Sequence[tuple[int, int, Any]], options: StoreOptions
) -> builtins.list[memoryview]:
    """Read ``(start, end, _)`` blocks of one local file with one descriptor.

    Blocks land in buffers from pyarrow's memory pool rather than in new ``bytes``: the pool
    reuses pages it has already faulted in, where a fresh allocation of this size costs a
    page fault per 4 KiB (measured: 2.3x faster reads of 7 MiB blocks, page faults 100x fewer).
    """
    import pyarrow as pa
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        out = []
        for start, end, _ in blocks:
            if end > size:
                raise InvalidRangeError(
                    f"range [{start}, {end}) is past the end of the object ({size} bytes)", uri=uri, op="get_range"
                )
            if options.fadvise != "none":
                small = end - start < options.fadvise_random_below
                advice = _FADV["random" if (options.fadvise == "random" or (options.fadvise == "auto" and small))
                               else "sequential"]  # fmt: skip
                if advice is not None:
                    os.posix_fadvise(fd, start, end - start, advice)
            buf = memoryview(pa.allocate_buffer(end - start))
            got = 0
            while got < len(buf):
                n = os.preadv(fd, [buf[got:]], start + got)
                if n == 0:
                    raise _ShortRead(f"got {got} of {end - start} bytes at offset {start}")
                got += n
            out.append(buf)
        return out
    finally:
        os.close(fd)


def _local_write_atomic(path: str, data: Buffer) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    view = memoryview(data).cast("B")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _local_copy_atomic(src: str, dst: str) -> None:
    import shutil

    os.makedirs(os.path.dirname(dst) or "/", exist_ok=True)
    tmp = f"{dst}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _expand_local_sources(sources: list[str]) -> list[tuple[str, str]]:
    """(local file, key relative to the destination prefix) for every file named."""
    pairs: list[tuple[str, str]] = []
    for src in sources:
        src = os.fspath(src)
        if has_glob(src):
            root = src[: min(src.find(c) for c in "*?[" if c in src)]
            root = root if root.endswith(os.sep) else os.path.dirname(root)
            for match in sorted(globlib.glob(src, recursive=True)):
                if os.path.isfile(match):
                    pairs.append((match, os.path.relpath(match, root or ".").replace(os.sep, "/")))
        elif os.path.isdir(src):
            for dirpath, _dirs, files in os.walk(src):
                for name in sorted(files):
                    full = os.path.join(dirpath, name)
                    pairs.append((full, os.path.relpath(full, src).replace(os.sep, "/")))
        elif os.path.isfile(src):
            pairs.append((src, os.path.basename(src)))
        else:
            raise ObjectNotFoundError("no such local file or directory", uri=src, op="upload")
    return pairs


def _safe_local_target(root: str, rel: str, uri: str) -> str:
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "\\")) or any(p == ".." for p in parts) or (len(rel) > 1 and rel[1] == ":"):
        raise PathTraversalError(
            f"key {rel!r} would be written outside the destination directory {root}", uri=uri, op="download"
        )
    dest = os.path.realpath(os.path.join(root, *[p for p in parts if p not in ("", ".")]))
    if os.path.commonpath([root, dest]) != root:
        raise PathTraversalError(
            f"key {rel!r} resolves outside the destination directory {root}", uri=uri, op="download"
        )
    return dest


def _to_object_info(scheme: str, info: Mapping[str, Any]) -> ObjectInfo:
    name = str(info["name"]).rstrip("/")
    if scheme in ("file", "direct") and not name.startswith("/"):
        name = "/" + name
    etag = info.get("ETag") or info.get("etag")
    if etag is not None:
        etag = str(etag).strip('"')
    mtime = _mtime(info)
    is_dir = info.get("type") == "directory"
    return ObjectInfo(f"{scheme}://{name}", int(info.get("size") or 0), etag, mtime, is_dir)


def _mtime(info: Mapping[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


__all__ = [
    "LocalFiles",
    "ObjectInfo",
    "ObjectWriter",
    "Store",
    "StoreStats",
    "coalesce_ranges",
]
