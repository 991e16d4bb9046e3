"""The ``s3dlio-loader`` command: list, inspect, move and benchmark objects on any backend.

Every subcommand takes URIs (``s3://``, ``az://``, ``gs://``, ``file://``, ``direct://`` or a
plain local path) and works through one :class:`~s3dlio_loader.storage.Store` per backend::

    s3dlio-loader ls -r s3://bucket/train/ --pattern '*.npz' --count
    s3dlio-loader --endpoint http://127.0.0.1:9000 get s3://bucket/a.bin -o -
    s3dlio-loader upload ./data 'logs/*.txt' s3://bucket/train/
    s3dlio-loader demo --objects 200 --size 1MiB

Exit codes: 0 success, 1 a storage or local I/O error (one line on stderr, the traceback only
with ``-v``), 2 a usage error, 130 interrupted. See ``docs/cli.md``.

>>> parse_size("1.5MiB")
1572864
>>> human_size(1572864)
'1.5 MiB'
>>> build_storage_options([(None, ("client_kwargs", "endpoint_url"), "http://h:9000")], "s3")
{'client_kwargs': {'endpoint_url': 'http://h:9000'}}
"""

from __future__ import annotations

import argparse
import contextlib
import glob as globlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, NamedTuple, TextIO
from urllib.parse import urlsplit

from . import __version__
from .errors import ConfigError, S3dlioError
from .storage import ObjectInfo, Store, join_uri, parse_uri
from .storage.uri import SCHEME_ALIASES, has_glob

PROG = "s3dlio-loader"

log = logging.getLogger(__name__)

#: Default target of ``demo``: a directory under the current working directory.
DEMO_URI = "file://./s3dlio-demo-data"
DEMO_OBJECTS = 2000
DEMO_SIZE = "256KiB"
#: ``demo`` builds its objects as windows of one random pool of at most this many bytes
#: (plus one object), so that generating the data does not dominate the run.
DEMO_POOL_BYTES = 32 << 20
#: Threads writing the demo objects (each ``put`` is one request).
DEMO_WRITERS = 16
#: Files up to this size are sent by ``put`` as one request; larger ones are streamed.
PUT_STREAM_CHUNK = 16 << 20
#: Seconds between progress-bar refreshes for operations that report no per-item progress.
PROGRESS_POLL_S = 0.1

_LIBRARY_LOGGERS = ("fsspec", "s3fs", "gcsfs", "adlfs", "aiobotocore", "botocore", "azure")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


# ---------------------------------------------------------------------- small helpers


def parse_size(text: str) -> int:
    """Bytes from ``"4096"``, ``"4k"``, ``"256KiB"``, ``"1MiB"``, ``"1.5g"`` (binary multiples).

    >>> parse_size("256k"), parse_size("1MiB"), parse_size("4096")
    (262144, 1048576, 4096)

    Raises:
        ValueError: the text is not a size.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64k, 256KiB, 1MiB, 2g)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def human_size(n: float) -> str:
    """``n`` bytes in binary units with one decimal.

    >>> human_size(512), human_size(1536), human_size(3 << 30)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1023.95:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} PiB"


def human_rate(nbytes: float, seconds: float) -> str:
    """A throughput in decimal megabytes per second (``"412.3 MB/s"``)."""
    return f"{nbytes / 1e6 / seconds:.1f} MB/s" if seconds > 0 else "- MB/s"


def _format_mtime(mtime: float | None) -> str:
    if mtime is None:
        return "-"
    return datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M:%S")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _key_basename(uri: str) -> str:
    return parse_uri(uri).path.rstrip("/").rsplit("/", 1)[-1]


# ---------------------------------------------------------------------- storage options

#: One ``--storage-option``: (scheme it is restricted to or None, key path, value).
StorageOption = tuple[str | None, tuple[str, ...], Any]


def _storage_option_arg(text: str) -> StorageOption:
    """argparse type of ``--storage-option [SCHEME:]KEY=VALUE``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. client_kwargs.endpoint_url=http://127.0.0.1:9000), got {text!r}"
        )
    scheme: str | None = None
    if ":" in key:
        prefix, key = key.split(":", 1)
        scheme = SCHEME_ALIASES.get(prefix.lower())
        if scheme is None:
            raise argparse.ArgumentTypeError(
                f"unknown scheme {prefix!r} in storage option {text!r}; "
                f"use one of {', '.join(sorted(SCHEME_ALIASES))}"
            )
    parts = tuple(key.split("."))
    if any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"empty component in storage option key {key!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return scheme, parts, value


def _endpoint_arg(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise argparse.ArgumentTypeError(f"--endpoint must be an http:// or https:// URL (got {text!r})")
    return text


def _regex_arg(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {exc}") from None
    return text


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (got {text!r})")
    return value


def build_storage_options(options: Sequence[StorageOption], scheme: str) -> dict[str, Any]:
    """The fsspec ``storage_options`` for ``scheme`` from parsed ``--storage-option`` values.

    Dotted keys build nested dicts; options with a scheme prefix apply to that scheme only;
    later options win.

    Raises:
        ConfigError: a key is used both as a value and as a nested dict.
    """
    out: dict[str, Any] = {}
    for only, parts, value in options:
        if only is not None and only != scheme:
            continue
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"storage option {'.'.join(parts)!r}: {'.'.join(parts[: i + 1])!r} is already set "
                    f"to {child!r}, not a dict"
                )
            node = child
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**node[leaf], **value}
        else:
            node[leaf] = value
    return out


def apply_endpoint(storage_options: dict[str, Any], scheme: str, endpoint: str) -> dict[str, Any]:
    """Put ``endpoint`` where the fsspec filesystem of ``scheme`` expects it (in place).

    * s3 (s3fs): ``client_kwargs.endpoint_url``;
    * gs (gcsfs): ``endpoint_url``;
    * az (adlfs): ``account_host`` for an https URL (adlfs always connects over https, and
      needs ``account_name`` too); for an http URL such as Azurite's, a ``connection_string``
      built from ``account_name`` and ``account_key``.

    Raises:
        ConfigError: the scheme has no endpoint (file://, direct://), or an http Azure endpoint
            without ``account_name`` and ``account_key``.
    """
    if scheme == "s3":
        client = storage_options.setdefault("client_kwargs", {})
        if not isinstance(client, dict):
            raise ConfigError(f"storage option client_kwargs must be a dict (got {client!r})")
        client["endpoint_url"] = endpoint
    elif scheme == "gs":
        storage_options["endpoint_url"] = endpoint
    elif scheme == "az":
        url = urlsplit(endpoint)
        if url.scheme == "https":
            storage_options["account_host"] = (url.netloc + url.path).rstrip("/")
        else:
            name, key = storage_options.get("account_name"), storage_options.pop("account_key", None)
            if not (name and key):
                raise ConfigError(
                    f"adlfs connects to https endpoints only; for {endpoint} also pass "
                    "--storage-option account_name=NAME --storage-option account_key=KEY "
                    "(or a full --storage-option connection_string=...;BlobEndpoint=...)"
                )
            storage_options["connection_string"] = (
                f"DefaultEndpointsProtocol={url.scheme};AccountName={name};AccountKey={key};"
                f"BlobEndpoint={endpoint.rstrip('/')};"
            )
    else:
        raise ConfigError(f"--endpoint does not apply to {scheme}:// URIs")
    return storage_options


# ---------------------------------------------------------------------- run context


class _Context:
    """What one command invocation shares: its options, one Store per backend, output streams."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.storage_options: list[StorageOption] = [
            *(getattr(args, "storage_option", None) or []),
            *(getattr(args, "storage_option_sub", None) or []),
        ]
        self.endpoint: str | None = getattr(args, "endpoint", None)
        self.oplog: str | None = getattr(args, "oplog", None)
        progress = getattr(args, "progress", None)
        self.progress = bool(progress) if progress is not None else _isatty(sys.stderr)
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self._stores: dict[str, Store] = {}

    def store(self, uri: str) -> Store:
        """The Store of ``uri``'s backend, built once per backend from the global options."""
        scheme = parse_uri(uri).scheme
        store = self._stores.get(scheme)
        if store is None:
            so = build_storage_options(self.storage_options, scheme)
            if self.endpoint is not None and scheme not in ("file", "direct"):
                apply_endpoint(so, scheme, self.endpoint)
            overrides: dict[str, Any] = {"oplog": self.oplog} if self.oplog else {}
            store = self._stores[scheme] = Store(scheme, so, **overrides)
            log.info("using %r", store)
        return store

    def bar(self, *, total: float | None, desc: str, unit: str = "obj", nbytes: bool = False) -> Any:
        """A tqdm progress bar on stderr (disabled unless stderr is a TTY or --progress)."""
        from tqdm import tqdm

        return tqdm(
            total=total, desc=desc, unit="B" if nbytes else unit, unit_scale=nbytes, unit_divisor=1000,
            file=self.err, disable=not self.progress, dynamic_ncols=True, mininterval=PROGRESS_POLL_S,
        )

    def print(self, *parts: object) -> None:
        print(*parts, file=self.out)

    def close(self) -> None:
        """Release thread pools and flush op-logs of every Store used."""
        for store in self._stores.values():
            store.close()  # also flushes the op-log
        self._stores.clear()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _bar_hook(bar: Any) -> Any:
    """A Store ``progress(uri, nbytes)`` callback advancing ``bar`` (thread-safe)."""
    lock = threading.Lock()

    def advance(_uri: str, nbytes: int) -> None:
        with lock:
            bar.update(nbytes)

    return advance


# ---------------------------------------------------------------------- subcommands


def cmd_ls(ctx: _Context, args: argparse.Namespace) -> int:
    store = ctx.store(args.uri)
    entries = store.list(args.uri, recursive=args.recursive, pattern=args.pattern, regex=args.regex,
                         include_dirs=not args.recursive)
    if args.count:
        objects = [e for e in entries if not e.is_dir]
        total = sum(o.size for o in objects)
        ctx.print(f"{_plural(len(objects), 'object')}, {total} bytes ({human_size(total)})")
        return 0
    for e in entries:
        name = e.uri + "/" if e.is_dir else e.uri
        if args.long:
            if e.is_dir:
                ctx.print(f"{'DIR':>10}  {'':19}  {'':32}  {name}")
            else:
                size, mtime = human_size(e.size), _format_mtime(e.mtime)
                ctx.print(f"{size:>10}  {mtime:19}  {e.etag or '-':32}  {name}")
        else:
            ctx.print(name)
    return 0


def cmd_stat(ctx: _Context, args: argparse.Namespace) -> int:
    info = ctx.store(args.uri).stat(args.uri)
    ctx.print(f"uri:   {info.uri}")
    ctx.print(f"size:  {info.size} ({human_size(info.size)})")
    ctx.print(f"etag:  {info.etag or '-'}")
    mtime = "-" if info.mtime is None else f"{_format_mtime(info.mtime)} ({info.mtime:.3f})"
    ctx.print(f"mtime: {mtime}")
    return 0


def cmd_get(ctx: _Context, args: argparse.Namespace) -> int:
    data = ctx.store(args.uri).get(args.uri)
    if args.output == "-":
        stdout = sys.stdout
        stdout.flush()
        stdout.buffer.write(data)
        stdout.buffer.flush()
        return 0
    name = _key_basename(args.uri)
    dest = args.output if args.output is not None else name
    if os.path.isdir(dest):
        dest = os.path.join(dest, name)
    if not os.path.basename(dest):
        raise ConfigError(f"{args.uri} names no object to write to a file; pass -o FILE")
    with open(dest, "wb") as f:
        f.write(data)
    ctx.print(f"{args.uri} -> {dest} ({human_size(len(data))})")
    return 0


def cmd_put(ctx: _Context, args: argparse.Namespace) -> int:
    uri = args.uri
    if uri.endswith("/"):
        if args.file == "-":
            raise ConfigError(f"{uri} is a prefix: name the object when reading stdin")
        uri = join_uri(uri, os.path.basename(args.file))
    store = ctx.store(uri)
    if args.file == "-":
        data = sys.stdin.buffer.read()
        store.put(uri, data)
        n = len(data)
    elif os.path.getsize(args.file) <= PUT_STREAM_CHUNK:
        with open(args.file, "rb") as f:
            data = f.read()
        store.put(uri, data)
        n = len(data)
    else:
        with open(args.file, "rb") as f, store.open_writer(uri) as writer:
            while chunk := f.read(PUT_STREAM_CHUNK):
                writer.write(chunk)
        n = writer.bytes_in
    ctx.print(f"{args.file} -> {uri} ({human_size(n)})")
    return 0


def _local_total(sources: Sequence[str]) -> int:
    """Bytes of the local files ``upload`` will send (for the progress bar only)."""
    total = 0
    for src in sources:
        paths = globlib.glob(src, recursive=True) if has_glob(src) else [src]
        for path in paths:
            if os.path.isdir(path):
                for dirpath, _dirs, files in os.walk(path):
                    total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
            elif os.path.isfile(path):
                total += os.path.getsize(path)
    return total


def cmd_upload(ctx: _Context, args: argparse.Namespace) -> int:
    store = ctx.store(args.dest)
    total = _local_total(args.sources) if ctx.progress else None
    bar = ctx.bar(total=total, desc="upload", nbytes=True)
    before = store.stats.snapshot()["bytes_written"]
    t0 = time.perf_counter()
    with bar:
        uris = store.upload(args.sources, args.dest, progress=_bar_hook(bar))
    nbytes = store.stats.snapshot()["bytes_written"] - before
    seconds = time.perf_counter() - t0
    ctx.print(f"uploaded {_plural(len(uris), 'file')} ({human_size(nbytes)}) to {args.dest} "
              f"in {seconds:.2f} s ({human_rate(nbytes, seconds)})")
    return 0


def cmd_download(ctx: _Context, args: argparse.Namespace) -> int:
    store = ctx.store(args.prefix)
    total = None
    if ctx.progress:
        total = sum(o.size for o in store.list(args.prefix, recursive=True, pattern=args.pattern,
                                                regex=args.regex))
    bar = ctx.bar(total=total, desc="download", nbytes=True)
    before = store.stats.snapshot()["bytes_read"]
    t0 = time.perf_counter()
    with bar:
        paths = store.download(args.prefix, args.dest, pattern=args.pattern, regex=args.regex,
                               progress=_bar_hook(bar))
    nbytes = store.stats.snapshot()["bytes_read"] - before
    seconds = time.perf_counter() - t0
    ctx.print(f"downloaded {_plural(len(paths), 'object')} ({human_size(nbytes)}) to {args.dest} "
              f"in {seconds:.2f} s ({human_rate(nbytes, seconds)})")
    return 0


def cmd_rm(ctx: _Context, args: argparse.Namespace) -> int:
    n = ctx.store(args.uri).delete(args.uri, recursive=args.recursive, pattern=args.pattern, regex=args.regex)
    ctx.print(f"deleted {_plural(n, 'object')}")
    return 0


def cmd_cp(ctx: _Context, args: argparse.Namespace) -> int:
    src, dst = args.src, args.dst
    if dst.endswith("/"):
        dst = join_uri(dst, _key_basename(src))
    src_store, dst_store = ctx.store(src), ctx.store(dst)
    src_store.copy(src, dst, dst_store=None if dst_store is src_store else dst_store)
    how = "server-side" if dst_store is src_store else "through this process"
    ctx.print(f"{src} -> {dst} ({how})")
    return 0


# ---------------------------------------------------------------------- demo


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class _DemoPass(NamedTuple):
    """One timed step of the demo."""

    name: str
    objects: int
    nbytes: int
    seconds: float

    def row(self) -> str:
        per_s = self.objects / self.seconds if self.seconds > 0 else 0.0
        size = human_size(self.nbytes) if self.nbytes else "-"
        mbs = f"{self.nbytes / 1e6 / self.seconds:.1f}" if self.nbytes and self.seconds > 0 else "-"
        return f"{self.name:<8} {self.objects:>8} {size:>11} {self.seconds:>9.3f} {per_s:>10.0f} {mbs:>10}"


def cmd_demo(ctx: _Context, args: argparse.Namespace) -> int:
    """Write N random objects, list them, read them back twice with get_many, verify, clean up."""
    import numpy as np

    n, size = args.objects, args.size
    parsed = parse_uri(args.uri.rstrip("/"))
    store = ctx.store(parsed.uri)
    local_dir = parsed.path if parsed.scheme in ("file", "direct") else None
    created_dir = local_dir is not None and not os.path.exists(local_dir)
    uris = [f"{parsed.uri}/demo-{i:06d}.bin" for i in range(n)]
    total = n * size
    ctx.print(f"demo: {n} objects x {human_size(size)} = {human_size(total)} at {parsed.uri}/")

    # Object i is the window [i * stride, i * stride + size) of one random pool: disjoint
    # windows (independent random objects) when they all fit in DEMO_POOL_BYTES, overlapping
    # windows otherwise, so that generating the data costs little whatever N.
    span = max(min(total, DEMO_POOL_BYTES), n)
    stride = span // n
    pool = memoryview(np.random.default_rng(args.seed).bytes(span - stride + size))
    digests = [b""] * n
    written: list[str] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        data = pool[i * stride : i * stride + size]
        digests[i] = _digest(data)
        store.put(uris[i], data)
        with lock:
            written.append(uris[i])

    def cleanup() -> None:
        if written:
            store.delete(sorted(written))
            written.clear()
        if created_dir and local_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(local_dir)  # only if empty: never removes anything else

    passes: list[_DemoPass] = []
    try:
        t0 = time.perf_counter()
        with ctx.bar(total=n, desc="write") as bar, ThreadPoolExecutor(
            max_workers=min(DEMO_WRITERS, n), thread_name_prefix="s3dlio-demo"
        ) as writers:
            for _ in writers.map(write, range(n)):
                bar.update(1)
        passes.append(_DemoPass("write", n, total, time.perf_counter() - t0))

        t0 = time.perf_counter()
        wanted = set(uris)
        listed = [o for o in store.list(parsed.uri + "/", recursive=True) if o.uri in wanted]
        passes.append(_DemoPass("list", len(listed), 0, time.perf_counter() - t0))
        if len(listed) != n or any(o.size != size for o in listed):
            raise S3dlioError(
                f"demo: listing {parsed.uri}/ shows {len(listed)} of the {n} objects written "
                f"(sizes seen {sorted({o.size for o in listed})}, expected {size})"
            )

        index = {u: i for i, u in enumerate(uris)}
        for number in (1, 2):
            passes.append(_demo_read(ctx, store, listed, index, digests, f"read {number}"))
        if not args.keep:
            t0 = time.perf_counter()
            cleanup()
            passes.append(_DemoPass("delete", n, 0, time.perf_counter() - t0))
    finally:
        if not args.keep:
            cleanup()  # after a failure: remove what was written

    ctx.print(f"{'pass':<8} {'objects':>8} {'bytes':>11} {'seconds':>9} {'obj/s':>10} {'MB/s':>10}")
    for p in passes:
        ctx.print(p.row())
    ctx.print(f"verified: {2 * n} reads match the blake2b digests of what was written")
    stats = store.stats.snapshot()
    by_op = ", ".join(f"{op}={count}" for op, count in sorted(stats["by_op"].items()))
    ctx.print(f"store stats: requests={stats['requests']} retries={stats['retries']} "
              f"errors={stats['errors']} bytes_read={stats['bytes_read']} "
              f"bytes_written={stats['bytes_written']} ({by_op})")
    ctx.print(f"kept {_plural(n, 'object')} under {parsed.uri}/" if args.keep
              else f"deleted {_plural(n, 'object')}")
    return 0


def _demo_read(ctx: _Context, store: Store, objects: list[ObjectInfo], index: dict[str, int],
               digests: list[bytes], name: str) -> _DemoPass:
    """One timed get_many pass over ``objects``, each compared with its digest."""
    nbytes = 0
    t0 = time.perf_counter()
    with ctx.bar(total=len(objects), desc=name) as bar:
        for uri, data in store.get_many(objects):
            if _digest(data) != digests[index[uri]]:
                raise S3dlioError(f"demo: {uri} read back differs from what was written ({name})")
            nbytes += len(data)
            bar.update(1)
            if not bar.disable:
                bar.set_postfix_str(human_rate(nbytes, time.perf_counter() - t0), refresh=False)
    return _DemoPass(name, len(objects), nbytes, time.perf_counter() - t0)


# ---------------------------------------------------------------------- parser


def _add_global_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """Global options, accepted before and after the subcommand.

    Repeatable options get their own destination in subcommands (argparse would otherwise
    replace the values given before the subcommand); the two are merged.
    """
    default = argparse.SUPPRESS if sub else None
    suffix = "_sub" if sub else ""
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--storage-option", dest="storage_option" + suffix, metavar="[SCHEME:]KEY=VALUE",
        action="append", type=_storage_option_arg, default=default,
        help="fsspec storage option (repeatable); VALUE is parsed as JSON when it parses, dotted keys "
             "nest (client_kwargs.endpoint_url=http://...), a SCHEME: prefix limits it to one backend",
    )
    group.add_argument("--endpoint", metavar="URL", type=_endpoint_arg, default=default,
                       help="service endpoint (s3: client_kwargs.endpoint_url, gs: endpoint_url, "
                            "az: account_host, or a connection string for http)")
    group.add_argument("-v", "--verbose", dest="verbose" + suffix, action="count", default=default,
                       help="log to stderr (-v info, -vv debug, also of fsspec backends); "
                            "show tracebacks of errors")
    group.add_argument("--oplog", metavar="PATH", default=default,
                       help="record every storage request in this zstd-compressed TSV op-log")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default,
                       help="show progress bars on stderr (default: only when stderr is a terminal)")


def _filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pattern", metavar="GLOB",
                       help="keep keys (relative to the prefix) matching this glob")
    group.add_argument("--regex", metavar="RE", type=_regex_arg,
                       help="keep keys (relative to the prefix) where this regular expression matches")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``s3dlio-loader``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="List, inspect, copy and benchmark objects on s3://, az://, gs://, file:// "
                    "and direct://.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    Command = Callable[[_Context, argparse.Namespace], int]

    def sub(name: str, help: str, func: Command) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        _add_global_options(p, sub=True)
        return p

    p = sub("ls", "list objects under a prefix (one level unless -r)", cmd_ls)
    p.add_argument("uri", metavar="URI", help="prefix, partial key or glob")
    p.add_argument("-r", "--recursive", action="store_true", help="list every object below the prefix")
    _filters(p)
    p.add_argument("--count", action="store_true", help="print only the number of objects and total bytes")
    p.add_argument("-l", "--long", action="store_true", help="also show size, modification time and etag")

    p = sub("stat", "show size, etag and modification time of one object", cmd_stat)
    p.add_argument("uri", metavar="URI")

    p = sub("get", "download one object", cmd_get)
    p.add_argument("uri", metavar="URI")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="destination file or directory, '-' for stdout (default: the key's basename)")

    p = sub("put", "upload one file as an object", cmd_put)
    p.add_argument("file", metavar="FILE", help="local file, '-' for stdin")
    p.add_argument("uri", metavar="URI", help="object URI; ending with '/' appends the file name")

    p = sub("upload", "upload files, directories and globs under a prefix", cmd_upload)
    p.add_argument("sources", metavar="SRC", nargs="+", help="file, directory (recursive) or glob")
    p.add_argument("dest", metavar="DEST_PREFIX")

    p = sub("download", "download every object under a prefix into a directory", cmd_download)
    p.add_argument("prefix", metavar="PREFIX")
    p.add_argument("dest", metavar="DEST_DIR")
    _filters(p)

    p = sub("rm", "delete an object, or the objects under a prefix", cmd_rm)
    p.add_argument("uri", metavar="URI")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="URI is a prefix: delete everything below it")
    _filters(p)

    p = sub("cp", "copy one object (server-side within a backend)", cmd_cp)
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST", help="object URI; ending with '/' appends the source's name")

    p = sub("demo", "write, list, read back twice (verified) and delete random objects", cmd_demo)
    p.add_argument("--uri", default=DEMO_URI, help=f"where to write the objects (default: {DEMO_URI})")
    p.add_argument("--objects", type=_positive_int, default=DEMO_OBJECTS,
                   help=f"number of objects (default: {DEMO_OBJECTS})")
    p.add_argument("--size", type=_size_arg, default=parse_size(DEMO_SIZE), metavar="BYTES",
                   help=f"bytes per object: 4096, 256k, 1MiB... (default: {DEMO_SIZE})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data (default: 0)")
    p.add_argument("--keep", action="store_true", help="leave the objects in place")

    from .jobs import train  # imports no framework: torch is imported when the job runs

    p = sub("train", train.HELP, train.cli_command)
    train.add_arguments(p)

    from . import datagen
    from .storage import oplog_tools

    p = sub("gen", "generate a synthetic dataset under a prefix (--format) or N objects from a {} template (--size)",
            lambda ctx, args: datagen.run_gen(args, ctx.store(args.target), progress=ctx.progress, out=ctx.out))
    datagen.add_gen_arguments(p)
    p = sub("oplog", "summarize an op-log, or replay its GETs and PUTs against another prefix",
            lambda ctx, args: oplog_tools.run_oplog(args, ctx.store, progress=ctx.progress, out=ctx.out))
    oplog_tools.add_oplog_arguments(p, add_common=lambda q: _add_global_options(q, sub=True))
    return parser


# ---------------------------------------------------------------------- main


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    if verbosity <= 0:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    names = ["s3dlio_loader", *(_LIBRARY_LOGGERS if verbosity >= 2 else ())]
    level = logging.INFO if verbosity == 1 else logging.DEBUG
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, old in saved:
            logger.removeHandler(handler)
            logger.setLevel(old)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``s3dlio-loader`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_usage(sys.stderr)
        _error("a command is required (ls, stat, get, put, upload, download, rm, cp, demo, train, gen, oplog)")
        return 2
    verbosity = (getattr(args, "verbose", None) or 0) + (getattr(args, "verbose_sub", None) or 0)
    with _logging(verbosity):
        ctx = _Context(args)
        try:
            return int(args.func(ctx, args))
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            _silence_stdout()
            return 1
        except (S3dlioError, OSError) as exc:
            if verbosity:
                traceback.print_exception(exc, file=sys.stderr)
            _error(str(exc) or type(exc).__name__)
            return 1
        except Exception as exc:  # a backend's own exception (bad storage option...), or a bug
            if verbosity:
                traceback.print_exception(exc, file=sys.stderr)
            hint = "" if verbosity else " (run with -v for the traceback)"
            _error(f"{type(exc).__name__}: {exc}{hint}")
            return 1
        finally:
            with contextlib.suppress(Exception):
                ctx.close()


def _silence_stdout() -> None:
    """After EPIPE (``s3dlio-loader get x -o - | head``), keep the interpreter from failing at exit."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
