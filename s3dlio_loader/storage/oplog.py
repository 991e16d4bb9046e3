"""Operation log: one row per storage request, appended to a zstd-compressed TSV file.

Every storage request (``get``, ``get_range``, ``put``, ``list``, ``stat``, ``delete``,
``copy``...) can be recorded with :meth:`OpLog.record`. A retried request records one row
per attempt. The file is a sequence of complete zstd frames; concatenated frames decompress
as one stream (``zstd -dc oplog.tsv.zst`` works), and each frame holds whole TSV lines::

    start_ns  op  uri  offset  length  bytes  first_byte_ns  duration_ns  status  error  pid  attempt

``start_ns`` is wall-clock time (:func:`time.time_ns`) at the start of the request; the other
``*_ns`` columns are durations in nanoseconds. Empty fields mean "not applicable" (``offset``,
``length``, ``first_byte_ns``, ``error``). The header line is written once, by whoever
creates the file.

Writing is cheap and safe across threads and processes:

* :meth:`OpLog.record` appends a tuple to a list under a lock; formatting, redaction and
  compression happen at flush time.
* A flush compresses the buffered rows into one zstd frame and writes it with a single
  ``os.write`` on a descriptor opened ``O_WRONLY|O_APPEND|O_CREAT``, so several processes
  (forked DataLoader workers, several ranks on one host) can append to the same local file.
* A lazily started daemon thread flushes when ``flush_rows`` rows are buffered or
  ``flush_interval_s`` seconds after the first unflushed row; it sleeps while the buffer is
  empty and never keeps the interpreter alive.
* After ``fork`` the child gets its own empty buffer, locks and flush thread (it never writes
  the rows its parent had buffered); it keeps appending to the inherited descriptor.
* Rows are flushed by :meth:`OpLog.close`, when an :class:`OpLog` is garbage collected, at
  interpreter exit, and at the exit of ``multiprocessing`` / ``multiprocess`` child
  processes (which leave through ``os._exit`` and skip :mod:`atexit`). A process that calls
  ``os._exit`` itself must call :meth:`OpLog.flush` first.

URIs and error messages are passed through :func:`redact_uri` (userinfo and secret-looking
query parameters) and sanitized (tabs, newlines and other line separators become spaces)
before they are written.

The process-wide log used by the storage layer is returned by :func:`get_global_oplog`;
it is enabled by the ``S3DLIO_OPLOG`` environment variable (a file path) or by
:func:`enable_oplog`, and disabled by :func:`disable_oplog`.

Read a log back with :func:`read_oplog` or :func:`iter_oplog`.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any, NamedTuple

import zstandard

from s3dlio_loader.errors import ConfigError, FormatError

try:
    import fcntl as _fcntl_module

    _fcntl: Any = _fcntl_module
except ImportError:  # pragma: no cover - non-POSIX platforms can still read logs
    _fcntl = None

__all__ = [
    "COLUMNS",
    "ENV_VAR",
    "ERROR_MAX_CHARS",
    "HEADER",
    "OpLog",
    "OpLogFormatError",
    "OpRecord",
    "disable_oplog",
    "enable_oplog",
    "get_global_oplog",
    "iter_oplog",
    "read_oplog",
    "redact_uri",
    "shared_oplog",
]

_logger = logging.getLogger(__name__)

#: Column names, in file order.
COLUMNS: tuple[str, ...] = (
    "start_ns",
    "op",
    "uri",
    "offset",
    "length",
    "bytes",
    "first_byte_ns",
    "duration_ns",
    "status",
    "error",
    "pid",
    "attempt",
)
#: The header line (without its trailing newline).
HEADER: str = "\t".join(COLUMNS)
_NCOLS = len(COLUMNS)
#: Environment variable naming the file of the process-wide operation log.
ENV_VAR: str = "S3DLIO_OPLOG"
#: Longest ``error`` field written; longer messages are cut and end with ``...``.
ERROR_MAX_CHARS: int = 512
#: What replaces a secret in a URI or an error message.
REDACTED: str = "REDACTED"

_STATUSES = frozenset(("ok", "error"))
_FILE_MODE = 0o644
_READ_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------
# Redaction and sanitizing
# --------------------------------------------------------------------------------------

# Query-string keys whose values are secrets (substring match, case-insensitive): sig,
# signature, X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, X-Goog-Signature,
# AWSAccessKeyId, access_token, api_key, client_secret, password, passwd, pwd, auth...
_SECRET_KEY_RE = re.compile(r"sig|token|key|secret|credential|passw|pwd|auth", re.IGNORECASE)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# Schemes where ``name@host`` names a container, not a user: keep it unless it has a colon.
_CONTAINER_SCHEMES = frozenset(("az", "abfs", "abfss", "wasb", "wasbs", "adl"))
# Inside free text (error messages): URI userinfo and secret query parameters.
_TEXT_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://([^\s/?#]*)@")
# (linear: the key class excludes the separators, so candidate keys never overlap)
_TEXT_QUERY_PARAM_RE = re.compile(r"([?&;][^\s=&;#?]*=)([^\s&;#'\"]*)")
# Characters that would break a TSV line: tab, and everything str.splitlines() splits on.
_SEPARATORS_RE = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _keep_userinfo(scheme: str, userinfo: str) -> bool:
    return scheme.lower() in _CONTAINER_SCHEMES and ":" not in userinfo


def redact_uri(uri: str) -> str:
    """Return ``uri`` with credentials replaced by ``REDACTED``.

    * The userinfo of ``scheme://userinfo@host/...`` is replaced (``https://REDACTED@host/x``),
      except for Azure-style schemes (``az``, ``abfs``, ``abfss``, ``wasb``, ``wasbs``,
      ``adl``) where a colon-free ``container@account`` names a container and is kept.
    * In the query string, the value of every parameter whose key contains ``sig``,
      ``token``, ``key``, ``secret``, ``credential``, ``passw``, ``pwd`` or ``auth``
      (case-insensitive) is replaced: ``?sv=2022&sig=abc`` becomes ``?sv=2022&sig=REDACTED``.

    Strings without ``@`` or ``?`` are returned unchanged (fast path). The function is
    idempotent and never raises for any ``str``.
    """
    if "@" not in uri and "?" not in uri:
        return uri
    m = _SCHEME_RE.match(uri)
    if m is not None:
        start = m.end()
        end = len(uri)
        for ch in "/?#":
            i = uri.find(ch, start, end)
            if i != -1:
                end = i
        at = uri.rfind("@", start, end)
        if at != -1 and not _keep_userinfo(uri[: start - 3], uri[start:at]):
            uri = f"{uri[:start]}{REDACTED}{uri[at:]}"
    q = uri.find("?")
    if q == -1:
        return uri
    frag = uri.find("#", q)
    q_end = len(uri) if frag == -1 else frag
    parts = re.split(r"([&;])", uri[q + 1 : q_end])
    changed = False
    for i in range(0, len(parts), 2):
        key, eq, _value = parts[i].partition("=")
        if eq and _SECRET_KEY_RE.search(key) and _value != REDACTED:
            parts[i] = f"{key}={REDACTED}"
            changed = True
    if not changed:
        return uri
    return f"{uri[: q + 1]}{''.join(parts)}{uri[q_end:]}"


def _redact_text(text: str) -> str:
    """Redact URI userinfo and secret query parameters found anywhere in ``text``."""
    if "@" in text:

        def _userinfo(m: re.Match[str]) -> str:
            if _keep_userinfo(m.group(1), m.group(2)):
                return m.group(0)
            return f"{m.group(1)}://{REDACTED}@"

        text = _TEXT_USERINFO_RE.sub(_userinfo, text)
    if "=" in text:

        def _param(m: re.Match[str]) -> str:
            if _SECRET_KEY_RE.search(m.group(1)):
                return m.group(1) + REDACTED
            return m.group(0)

        text = _TEXT_QUERY_PARAM_RE.sub(_param, text)
    return text


def _clean(value: object) -> str:
    """``value`` as a string without tab or line-separator characters (they become spaces)."""
    s = value if isinstance(value, str) else str(value)
    if not s.isprintable():  # fast path: printable strings have no separators
        s = _SEPARATORS_RE.sub(" ", s)
    return s


def _describe_error(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    try:
        msg = str(error)
    except Exception:  # a broken __str__ must not lose the row
        msg = ""
    name = type(error).__name__
    return f"{name}: {msg}" if msg else name


def _error_field(error: str | None) -> str:
    if not error:
        return ""
    s = _clean(_redact_text(error))
    if len(s) > ERROR_MAX_CHARS:
        s = s[: ERROR_MAX_CHARS - 3] + "..."
    return s


def _opt_int(value: int | None) -> str:
    return "" if value is None else str(int(value))


# Row tuple, as buffered by record():
# (start_ns, op, uri, offset, length, nbytes, first_byte_ns, duration_ns, status, error, attempt)
_Row = tuple[Any, ...]


def _format_row_slow(row: _Row, pid_s: str) -> str:
    """Format one row, coercing numbers with ``int()`` (floats, numpy scalars...)."""
    start, op, uri, offset, length, nbytes, ttfb, duration, status, error, attempt = row
    return "\t".join(
        (
            str(int(start)),
            _clean(op),
            _clean(redact_uri(uri if isinstance(uri, str) else str(uri))),
            _opt_int(offset),
            _opt_int(length),
            str(int(nbytes)),
            _opt_int(ttfb),
            str(int(duration)),
            status,
            _error_field(error),
            pid_s,
            str(int(attempt)),
        )
    )


def _format_rows(rows: list[_Row], pid: int) -> tuple[str, int]:
    """Format rows as TSV lines (each ending with a newline). Returns (text, rows dropped)."""
    pid_s = str(pid)
    lines: list[str] = []
    append = lines.append
    sep_sub = _SEPARATORS_RE.sub
    _int, _str = int, str
    bad = 0
    for row in rows:
        start, op, uri, offset, length, nbytes, ttfb, duration, status, error, attempt = row
        # Fast path: exact int numbers (not bool/float/numpy) and str op/uri.
        if (
            type(start) is _int
            and type(duration) is _int
            and type(nbytes) is _int
            and type(attempt) is _int
            and (offset is None or type(offset) is _int)
            and (length is None or type(length) is _int)
            and (ttfb is None or type(ttfb) is _int)
            and type(uri) is _str
            and type(op) is _str
        ):
            if "@" in uri or "?" in uri:
                uri = redact_uri(uri)
            if not uri.isprintable():
                uri = sep_sub(" ", uri)
            if not op.isprintable():
                op = sep_sub(" ", op)
            append(
                f"{start}\t{op}\t{uri}\t{'' if offset is None else offset}\t"
                f"{'' if length is None else length}\t{nbytes}\t{'' if ttfb is None else ttfb}\t"
                f"{duration}\t{status}\t{_error_field(error) if error else ''}\t{pid_s}\t{attempt}"
            )
            continue
        try:
            append(_format_row_slow(row, pid_s))
        except Exception:  # a value that is not a number: drop the row, keep the batch
            bad += 1
    if not lines:
        return "", bad
    append("")
    return "\n".join(lines), bad


def _write_all(fd: int, data: bytes) -> None:
    # One write() for the whole frame: O_APPEND makes it land atomically at the end of a
    # local file. The loop only matters for a short write (disk full, huge frame).
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _new_compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_checksum=True)


def _open_log_fd(path: str, cctx: zstandard.ZstdCompressor) -> int:
    """Open ``path`` for appending and make sure it starts with the header frame.

    ``O_CREAT|O_EXCL`` tells whether this call created the file; the creator writes the
    header. A file that exists but is still empty (created by another tool, or by another
    writer that has not written its header yet) gets the header from whoever takes the
    ``flock`` first and still finds it empty, so the header is written exactly once.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_EXCL, _FILE_MODE)
        created = True
    except FileExistsError:
        fd = os.open(path, flags, _FILE_MODE)
        created = False
    try:
        if _fcntl is None:
            if created:
                _write_all(fd, cctx.compress((HEADER + "\n").encode()))
        elif created or os.fstat(fd).st_size == 0:
            _fcntl.flock(fd, _fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size == 0:
                    _write_all(fd, cctx.compress((HEADER + "\n").encode()))
            finally:
                _fcntl.flock(fd, _fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --------------------------------------------------------------------------------------
# Writer state (kept apart from OpLog so that threads and finalizers never reference it)
# --------------------------------------------------------------------------------------


class _State:
    """Mutable state of one OpLog. Referenced by its flush thread and finalizers only."""

    __slots__ = (
        "__weakref__",
        "buf",
        "cctx",
        "close_pending",
        "closed",
        "dropped",
        "fd",
        "flush_lock",
        "flush_rows",
        "interval",
        "kick",
        "last_error",
        "level",
        "lock",
        "path",
        "pid",
        "thread",
        "thread_failed",
        "warned",
        "writing",
    )

    def __init__(
        self, path: str, fd: int, cctx: zstandard.ZstdCompressor, level: int, flush_rows: int, interval: float
    ) -> None:
        self.path = path
        self.fd = fd
        self.level = level
        self.flush_rows = flush_rows
        self.interval = interval
        self.closed = False
        self.dropped = 0
        self.last_error: BaseException | None = None
        self.warned = False
        self.cctx: zstandard.ZstdCompressor | None = cctx
        self._init_process_local()

    def _init_process_local(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()  # guards buf, closed, thread
        self.flush_lock = threading.RLock()  # serializes writes; reentrant for GC finalizers
        self.kick = threading.Event()
        self.buf: list[_Row] = []
        self.thread: threading.Thread | None = None
        self.thread_failed = False
        self.writing = 0
        self.close_pending = False

    def reset_after_fork(self) -> None:
        """In a forked child: fresh locks, empty buffer, no thread, own pid."""
        self._init_process_local()
        self.cctx = None  # the parent's compressor may have been in use at fork time
        if self.closed:
            self.fd = -1  # the number may have been reused in the parent: never touch it

    def wake(self, n: int) -> None:
        """Start the flush thread if needed and tell it that ``n`` rows are buffered."""
        if self.thread is None and not self.thread_failed:
            with self.lock:
                if self.thread is None and not self.thread_failed and not self.closed:
                    t = threading.Thread(target=_flusher_main, args=(self,), name="s3dlio-oplog-flush", daemon=True)
                    try:
                        t.start()
                    except RuntimeError:  # interpreter shutting down, or thread limit
                        self.thread_failed = True
                    else:
                        self.thread = t
        if self.thread is not None:
            self.kick.set()
        elif n >= self.flush_rows:  # no thread: flush inline
            self.flush(quiet=True)

    def flush(self, *, quiet: bool) -> None:
        """Write the buffered rows as one zstd frame."""
        new: list[_Row] = []  # allocated before taking the lock (no GC under the lock)
        with self.flush_lock:
            with self.lock:
                rows = self.buf
                if not rows:
                    return
                self.buf = new
            self._write_rows(rows, quiet=quiet)

    def _write_rows(self, rows: list[_Row], *, quiet: bool) -> None:
        # Caller holds flush_lock.
        self.writing += 1
        bad = 0
        try:
            text, bad = _format_rows(rows, self.pid)
            self.dropped += bad
            if not text:
                return
            if self.fd < 0:
                self.dropped += len(rows) - bad
                return
            if self.cctx is None:
                self.cctx = _new_compressor(self.level)
            frame = self.cctx.compress(text.encode("utf-8", "backslashreplace"))
            _write_all(self.fd, frame)
        except Exception as exc:
            self.dropped += len(rows) - bad
            self.last_error = exc
            if not quiet:
                raise
            if not self.warned:
                self.warned = True
                _logger.warning("operation log %s: dropping rows after a write error: %r", self.path, exc)
        finally:
            self.writing -= 1
            if self.writing == 0 and self.close_pending:
                self._close_fd()

    def _close_fd(self) -> None:
        fd, self.fd = self.fd, -1
        self.close_pending = False
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self, *, quiet: bool) -> None:
        """Flush, stop the flush thread and close the descriptor. Idempotent."""
        new: list[_Row] = []
        with self.flush_lock:
            with self.lock:
                if self.closed:
                    return
                self.closed = True
                rows = self.buf
                self.buf = new
            try:
                if rows:
                    self._write_rows(rows, quiet=quiet)
            finally:
                if self.writing:  # called by a GC finalizer in the middle of a write
                    self.close_pending = True
                else:
                    self._close_fd()
        self.kick.set()
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)


def _flusher_main(st: _State) -> None:
    """Body of the flush thread: sleep until rows arrive, then flush when due."""
    kick = st.kick
    while True:
        kick.wait()
        deadline = None if st.interval >= threading.TIMEOUT_MAX else time.monotonic() + st.interval
        while True:
            kick.clear()
            with st.lock:
                n = len(st.buf)
                closed = st.closed
            if closed:
                return
            if n == 0 or n >= st.flush_rows:
                break
            if deadline is None:
                kick.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            kick.wait(remaining)
        if n:
            st.flush(quiet=True)


def _finalize_state(st: _State) -> None:
    # weakref.finalize callback: at garbage collection of the OpLog, or at interpreter exit.
    st.close(quiet=True)


# Every live writer state in this process (for the fork hook and multiprocessing exit).
_STATES: weakref.WeakSet[_State] = weakref.WeakSet()


# --------------------------------------------------------------------------------------
# OpLog
# --------------------------------------------------------------------------------------


class OpLog:
    """An append-only operation log in a zstd-compressed TSV file.

    Args:
        path: the log file. Created (with its header) if it does not exist; appended to if
            it does. Must be on a local filesystem for multi-process appends to be atomic
            (``O_APPEND`` is not atomic on NFS).
        level: zstd compression level (``zstandard`` range, e.g. 1..22 or negative).
        flush_rows: flush as soon as this many rows are buffered.
        flush_interval_s: flush at most this many seconds after a row was buffered
            (``math.inf`` to flush by row count, close and exit only).

    Raises:
        ConfigError: an argument is invalid.
        OSError: the file cannot be opened or the header cannot be written.

    :meth:`record` is thread-safe. Use as a context manager, or call :meth:`close`; rows
    are also flushed when the object is garbage collected and at interpreter exit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        level: int = 3,
        flush_rows: int = 4096,
        flush_interval_s: float = 1.0,
    ) -> None:
        if isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1:
            raise ConfigError(f"flush_rows must be an integer >= 1, got {flush_rows!r}")
        if isinstance(flush_interval_s, bool) or not isinstance(flush_interval_s, (int, float)):
            raise ConfigError(f"flush_interval_s must be a number, got {flush_interval_s!r}")
        if not flush_interval_s > 0:  # also rejects NaN
            raise ConfigError(f"flush_interval_s must be > 0, got {flush_interval_s!r}")
        if isinstance(level, bool) or not isinstance(level, int) or level > zstandard.MAX_COMPRESSION_LEVEL:
            raise ConfigError(f"level must be an integer <= {zstandard.MAX_COMPRESSION_LEVEL}, got {level!r}")
        self.path: str = os.fspath(path)
        self.level = level
        self.flush_rows = flush_rows
        self.flush_interval_s = float(flush_interval_s)
        cctx = _new_compressor(level)
        fd = _open_log_fd(self.path, cctx)
        st = _State(self.path, fd, cctx, level, flush_rows, self.flush_interval_s)
        self._st = st
        _STATES.add(st)
        self._finalizer = weakref.finalize(self, _finalize_state, st)
        _ensure_mp_exit_hooks()

    def record(
        self,
        op: str,
        uri: str,
        *,
        start_ns: int,
        duration_ns: int,
        offset: int | None = None,
        length: int | None = None,
        nbytes: int = 0,
        first_byte_ns: int | None = None,
        status: str = "ok",
        error: BaseException | str | None = None,
        attempt: int = 1,
    ) -> None:
        """Buffer one row (one attempt of one request). Thread-safe and cheap.

        Args:
            op: the operation (``"get"``, ``"get_range"``, ``"put"``, ``"list"``...).
            uri: the object or prefix; redacted and sanitized when written.
            start_ns: :func:`time.time_ns` when the attempt started.
            duration_ns: how long the attempt took (ns).
            offset: the range start, or None when not a ranged request.
            length: the range length, or None.
            nbytes: bytes transferred (read or written).
            first_byte_ns: time to the first byte (ns), or None when the backend does not
                expose it.
            status: ``"ok"`` or ``"error"``.
            error: the exception (written as ``TypeName: message``) or a message, or None.
                Truncated to :data:`ERROR_MAX_CHARS` characters.
            attempt: 1-based attempt number.

        Raises:
            ValueError: ``status`` is not ``"ok"`` or ``"error"``.

        Rows recorded after :meth:`close` are silently dropped. Numeric fields are converted
        with ``int()`` at flush time; a row whose numbers do not convert is dropped and
        counted in :attr:`dropped_rows`.
        """
        if error is not None and not isinstance(error, str):
            error = _describe_error(error)  # format now: don't keep tracebacks alive
        if status != "ok" and status != "error":
            raise ValueError(f"status must be 'ok' or 'error', got {status!r}")
        row = (start_ns, op, uri, offset, length, nbytes, first_byte_ns, duration_ns, status, error, attempt)
        st = self._st
        with st.lock:
            if st.closed:
                return
            buf = st.buf
            buf.append(row)
            n = len(buf)
        if n == 1 or n == st.flush_rows:
            st.wake(n)

    def flush(self) -> None:
        """Write the buffered rows now (one zstd frame). No-op when nothing is buffered.

        Raises:
            OSError: the write failed (the rows are dropped and counted in :attr:`dropped_rows`).
        """
        self._st.flush(quiet=False)

    def close(self) -> None:
        """Flush, stop the flush thread and close the file. Idempotent.

        Raises:
            OSError: the final write failed.
        """
        self._finalizer.detach()
        self._st.close(quiet=False)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._st.closed

    @property
    def dropped_rows(self) -> int:
        """Rows lost to write errors or unconvertible values (this process)."""
        return self._st.dropped

    def __enter__(self) -> OpLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._st.closed else "open"
        return f"OpLog({self.path!r}, {state})"


# --------------------------------------------------------------------------------------
# fork and multiprocessing support
# --------------------------------------------------------------------------------------


class _Token:
    """A long-lived, weak-referenceable object for multiprocessing.util.register_after_fork."""


_MP_TOKEN = _Token()
_MP_UTIL_MODULES = ("multiprocessing.util", "multiprocess.util")
_mp_hooked: set[str] = set()
_mp_lock = threading.Lock()


def _flush_all_quietly() -> None:
    for st in list(_STATES):
        st.flush(quiet=True)


def _arm_mp_exit_flush(module_name: str, _obj: object = None) -> None:
    """Flush every log when this (multiprocessing) process exits via its exit function."""
    mod = sys.modules.get(module_name)
    if mod is not None:
        mod.Finalize(None, _flush_all_quietly, exitpriority=10)


def _ensure_mp_exit_hooks() -> None:
    # multiprocessing children leave through os._exit (atexit does not run) after running
    # the Finalize callbacks registered in that child. Their bootstrap clears the inherited
    # registry and then calls the after-fork callbacks, which re-arm the flush.
    with _mp_lock:
        for name in _MP_UTIL_MODULES:
            if name in _mp_hooked:
                continue
            mod = sys.modules.get(name)
            if mod is None:
                continue
            try:
                mod.register_after_fork(_MP_TOKEN, functools.partial(_arm_mp_exit_flush, name))
                _arm_mp_exit_flush(name)
            except Exception:  # pragma: no cover - an incompatible multiprocessing clone
                continue
            _mp_hooked.add(name)


def _after_fork_in_child() -> None:
    global _global_lock, _mp_lock
    _global_lock = threading.Lock()
    _mp_lock = threading.Lock()
    for st in list(_STATES):
        st.reset_after_fork()
    _ensure_mp_exit_hooks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------
# Process-wide log
# --------------------------------------------------------------------------------------

_global_lock = threading.Lock()
_global_log: OpLog | None = None
_global_resolved = False
_global_exported_env = False


def get_global_oplog() -> OpLog | None:
    """The process-wide operation log, or None when operation logging is off.

    On the first call in a process (unless :func:`enable_oplog` or :func:`disable_oplog`
    was called before), reads ``S3DLIO_OPLOG``: when set to a non-empty path, opens an
    :class:`OpLog` on it with default settings. Later calls return the same object without
    looking at the environment again. A forked child inherits its parent's log (with its
    own buffer); a spawned child reads the environment itself.

    Raises:
        ConfigError: ``S3DLIO_OPLOG`` names a file that cannot be opened (raised again on
            the next call).
    """
    if _global_resolved:
        return _global_log
    return _resolve_global_oplog()


def _resolve_global_oplog() -> OpLog | None:
    global _global_log, _global_resolved
    with _global_lock:
        if not _global_resolved:
            path = os.environ.get(ENV_VAR, "")
            log: OpLog | None = None
            if path:
                try:
                    log = OpLog(path)
                except OSError as exc:
                    raise ConfigError(f"{ENV_VAR}={path!r}: cannot open the operation log: {exc}") from exc
            _global_log = log
            _global_resolved = True
        return _global_log


def enable_oplog(
    path: str | os.PathLike[str],
    *,
    level: int = 3,
    flush_rows: int = 4096,
    flush_interval_s: float = 1.0,
    export_env: bool = False,
) -> OpLog:
    """Make a new :class:`OpLog` on ``path`` the process-wide log and return it.

    The previous process-wide log, if any, is closed. With ``export_env=True`` the absolute
    path is also stored in ``os.environ["S3DLIO_OPLOG"]`` so that spawned (not forked)
    child processes log to the same file.
    """
    global _global_log, _global_resolved, _global_exported_env
    log = OpLog(path, level=level, flush_rows=flush_rows, flush_interval_s=flush_interval_s)
    with _global_lock:
        old = _global_log
        _global_log = log
        _global_resolved = True
        if export_env:
            os.environ[ENV_VAR] = os.path.abspath(log.path)
            _global_exported_env = True
    if old is not None and old is not log:
        old.close()
    return log


def disable_oplog() -> None:
    """Close the process-wide log (flushing it) and turn process-wide logging off.

    ``S3DLIO_OPLOG`` is not read again in this process. If :func:`enable_oplog` exported
    the variable, it is removed from ``os.environ``.
    """
    global _global_log, _global_resolved, _global_exported_env
    with _global_lock:
        old = _global_log
        _global_log = None
        _global_resolved = True
        if _global_exported_env:
            os.environ.pop(ENV_VAR, None)
            _global_exported_env = False
    if old is not None:
        old.close()


_shared_logs: dict[str, OpLog] = {}


def shared_oplog(path: str | os.PathLike[str]) -> OpLog:
    """The process-wide :class:`OpLog` for ``path`` (default settings), created on first use.

    Prefer this to ``OpLog(path)`` when many objects (one per Store, one per unpickled
    Store...) log to the same file: they then share one buffer, one descriptor and one flush
    thread. Keyed by absolute path. Do not close the returned log while others may use it
    (after a close, the next call creates a new one).
    """
    key = os.path.abspath(os.fspath(path))
    log = _shared_logs.get(key)
    if log is not None and not log.closed:
        return log
    with _global_lock:
        log = _shared_logs.get(key)
        if log is None or log.closed:
            log = OpLog(key)
            _shared_logs[key] = log
        return log


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


class OpRecord(NamedTuple):
    """One row of an operation log. ``nbytes`` is the ``bytes`` column."""

    start_ns: int
    op: str
    uri: str
    offset: int | None
    length: int | None
    nbytes: int
    first_byte_ns: int | None
    duration_ns: int
    status: str
    error: str | None
    pid: int
    attempt: int


class OpLogFormatError(FormatError):
    """An operation log that does not parse. The message names the file and the line.

    Attributes:
        path: the file.
        line: the 1-based line number (in the decompressed text), or None.
    """

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}", uri=path, format="oplog")
        self.path = path
        self.line = line
        self.detail = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_oplog_format_error, (self.detail, self.path, self.line))


def _rebuild_oplog_format_error(message: str, path: str, line: int | None) -> OpLogFormatError:
    return OpLogFormatError(message, path=path, line=line)


def _parse_int(text: str, column: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"column {column!r}: not an integer: {text!r}") from None


def _parse_opt_int(text: str, column: str) -> int | None:
    return None if text == "" else _parse_int(text, column)


def _parse_line_slow(fields: list[str]) -> OpRecord:
    """Like the fast path of :func:`_parse_line`, with a message naming the bad column."""
    start, op, uri, offset, length, nbytes, ttfb, duration, status, error, pid, attempt = fields
    if status not in _STATUSES:
        raise ValueError(f"column 'status': expected 'ok' or 'error', got {status!r}")
    return OpRecord(
        _parse_int(start, "start_ns"),
        op,
        uri,
        _parse_opt_int(offset, "offset"),
        _parse_opt_int(length, "length"),
        _parse_int(nbytes, "bytes"),
        _parse_opt_int(ttfb, "first_byte_ns"),
        _parse_int(duration, "duration_ns"),
        status,
        error or None,
        _parse_int(pid, "pid"),
        _parse_int(attempt, "attempt"),
    )


def _parse_line(line: str, path: str, lineno: int) -> OpRecord:
    fields = line.split("\t")
    if len(fields) != _NCOLS:
        raise OpLogFormatError(
            f"expected {_NCOLS} tab-separated fields, got {len(fields)}: {line[:200]!r}",
            path=path,
            line=lineno,
        )
    start, op, uri, offset, length, nbytes, ttfb, duration, status, error, pid, attempt = fields
    try:
        if status != "ok" and status != "error":
            raise ValueError(status)
        return OpRecord(
            int(start),
            op,
            uri,
            int(offset) if offset else None,
            int(length) if length else None,
            int(nbytes),
            int(ttfb) if ttfb else None,
            int(duration),
            status,
            error or None,
            int(pid),
            int(attempt),
        )
    except ValueError:
        try:
            return _parse_line_slow(fields)
        except ValueError as exc:
            raise OpLogFormatError(str(exc), path=path, line=lineno) from None


def iter_oplog(path: str | os.PathLike[str]) -> Iterator[OpRecord]:
    """Stream the rows of an operation log, in file order.

    The first line must be the header; a repeated header line later in the stream is
    skipped (so ``cat a.zst b.zst > c.zst`` gives a readable log). An empty (zero-byte)
    file has no rows.

    Raises:
        OpLogFormatError: the file is not zstd, is corrupt or truncated, is not UTF-8, has no
            valid header, or a row does not have 12 fields of the right types. The message
            names the file and the line. Rows before the bad line have already been yielded.
        OSError: the file cannot be read.
    """
    p = os.fspath(path)
    dctx = zstandard.ZstdDecompressor()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    dobj: Any = None
    lineno = 0
    pending = ""
    header_seen = False
    with open(p, "rb") as f:
        while True:
            data = f.read(_READ_CHUNK)
            eof = not data
            texts: list[str] = []
            try:
                while data:
                    if dobj is None:
                        dobj = dctx.decompressobj()
                    out = dobj.decompress(data)
                    if dobj.eof:
                        data = dobj.unused_data
                        dobj = None
                    else:
                        data = b""
                    if out:
                        texts.append(decoder.decode(out))
                if eof:
                    texts.append(decoder.decode(b"", final=True))
            except zstandard.ZstdError as exc:
                raise OpLogFormatError(
                    f"not a zstd stream, or corrupt zstd data: {exc}", path=p, line=lineno + 1
                ) from None
            except UnicodeDecodeError as exc:
                raise OpLogFormatError(f"invalid UTF-8: {exc.reason}", path=p, line=lineno + 1) from None
            if texts:
                lines = (pending + "".join(texts)).split("\n")
                pending = lines.pop()
                for line in lines:
                    lineno += 1
                    if line == HEADER:
                        header_seen = True
                        continue
                    if not header_seen:
                        raise OpLogFormatError(
                            f"missing or invalid header: expected {HEADER!r}, got {line[:200]!r}",
                            path=p,
                            line=lineno,
                        )
                    yield _parse_line(line, p, lineno)
            if eof:
                break
    if dobj is not None:
        raise OpLogFormatError("truncated zstd frame at end of file", path=p, line=lineno + 1)
    if pending:
        raise OpLogFormatError(
            "incomplete last line (no trailing newline): the file is truncated", path=p, line=lineno + 1
        )


def read_oplog(path: str | os.PathLike[str]) -> list[OpRecord]:
    """All rows of an operation log (see :func:`iter_oplog`)."""
    return list(iter_oplog(path))
