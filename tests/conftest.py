"""Test harness: real storage emulators on 127.0.0.1 and the ``backend`` fixture.

Environment set here, at import time, before anything else is imported:

* ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs reads it when it is *imported*; left at its default
  ("true"), ``gcsfs.GCSFileSystem`` is the "extended" class that asks Google's storage-control gRPC API
  (TLS) about every bucket and hangs ~60 s per bucket against the emulator.
* ``AWS_ACCESS_KEY_ID=testing`` etc. and ``AWS_DEFAULT_REGION=us-east-1`` (so no test can ever use real
  AWS credentials, and s3fs does not send a LocationConstraint that moto rejects).

Fixtures (servers are started lazily, once per session, only if a selected test needs them; the ones the
selected tests need are launched in parallel right after collection):

* ``moto_server`` -> servers.MotoServer, ``azurite_server`` -> servers.AzuriteServer,
  ``gcs_server`` -> servers.FakeGcsServer  (``.endpoint``, ``.port``, ``.storage_options(endpoint=None)``,
  ``.filesystem(endpoint=None)``, ``.make_bucket(name)``, ``.log_tail()``, ``.log_path``;
  azurite also ``.connection_string``)
* ``backend`` -> Backend, parametrized over file, direct, s3, az, gs (``.scheme``, ``.root_uri``,
  ``.storage_options``, ``.server``, ``.bucket``, ``.local_path``, ``.fs()``, ``.uri(*parts)``)
* ``fault_proxy`` -> factory ``(target, **FaultProxy kwargs) -> started FaultProxy`` (stopped at teardown);
  ``target`` is a Server, an ``http://host:port`` URL or a ``(host, port)`` tuple.

When a test fails, the log tails of the servers it used are added to its report.
"""

import os

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # must precede any gcsfs import (see above)

import atexit
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import servers` / `import faultproxy`

from backends import REMOTE, Backend
from faultproxy import FaultProxy
from servers import (
    AWS_CLIENT_ENV,
    SERVER_CLASSES,
    AzuriteServer,
    FakeGcsServer,
    MotoServer,
    Server,
)

# The metadata cache persists to $S3DLIO_CACHE_DIR (default ~/.cache/s3dlio-loader): tests, their
# subprocesses and loader workers use a private directory of this session instead.
_metadata_cache_dir = tempfile.mkdtemp(prefix="s3dlio-test-metadata-cache-")
os.environ["S3DLIO_CACHE_DIR"] = _metadata_cache_dir
atexit.register(shutil.rmtree, _metadata_cache_dir, True)

for _k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
           "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST"):  # fmt: skip
    os.environ.pop(_k, None)
os.environ.update(AWS_CLIENT_ENV)

BACKENDS = ["file", "direct", "s3", "az", "gs"]
_FIXTURE_KIND = {"moto_server": "s3", "azurite_server": "az", "gcs_server": "gs"}

_servers: dict[str, Server] = {}  # kind -> server (created on first need)
_spawn_errors: dict[str, BaseException] = {}


def _get_server(kind: str) -> Server:
    if kind not in _servers:
        _servers[kind] = SERVER_CLASSES[kind]()
    return _servers[kind]


def _kinds_needed(item: pytest.Item) -> set[str]:
    names = getattr(item, "fixturenames", ())
    kinds = {kind for name, kind in _FIXTURE_KIND.items() if name in names}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "backend" in names and callspec.params.get("backend") in REMOTE:
        kinds.add(callspec.params["backend"])
    return kinds


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch (without waiting) every server the selected tests need, so they boot in parallel."""
    if session.config.option.collectonly:
        return
    needed: set[str] = set()
    for item in session.items:
        needed |= _kinds_needed(item)
    for kind in sorted(needed):
        try:
            _get_server(kind).spawn()
        except Exception as e:  # reported by the fixture, so that only the tests needing it fail
            _spawn_errors[kind] = e


def pytest_sessionfinish(session: pytest.Session) -> None:
    for server in _servers.values():
        server.stop()


def _server_fixture(kind: str) -> Iterator[Server]:
    if kind in _spawn_errors:
        raise _spawn_errors[kind]
    server = _get_server(kind)
    server.start()  # no-op wait if it was launched after collection and is up
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    yield from _server_fixture("s3")  # type: ignore[misc]


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    yield from _server_fixture("az")  # type: ignore[misc]


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    import gcsfs
    import gcsfs.core

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        raise RuntimeError(
            "gcsfs was imported before tests/conftest.py set GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false; its "
            "extended filesystem hangs against fake-gcs-server. Export the variable before running pytest."
        )
    yield from _server_fixture("gs")  # type: ignore[misc]


def _fs_type(path: Path) -> str:
    """Filesystem type of ``path`` from /proc/self/mounts (longest mount-point prefix), '' if unknown."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                p = str(path.resolve())
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return ""
    return fstype


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    scheme: str = request.param
    if scheme in ("file", "direct"):
        path = tmp_path
        if scheme == "direct" and _fs_type(path) in ("tmpfs", "ramfs", ""):
            # O_DIRECT must be tested on a real disk: tmpfs accepts it without enforcing alignment.
            path = _disk_tmp_dir(request)
        return Backend(scheme=scheme, root_uri=f"{scheme}://{path}", local_path=path)
    fixture = {"s3": "moto_server", "az": "azurite_server", "gs": "gcs_server"}[scheme]
    server: Server = request.getfixturevalue(fixture)
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    root = server.make_bucket(bucket)
    return Backend(scheme=scheme, root_uri=root, storage_options=server.storage_options(), server=server,
                   bucket=bucket)  # fmt: skip


def _disk_tmp_dir(request: pytest.FixtureRequest) -> Path:
    import shutil
    import tempfile

    for base in ("/var/tmp", str(Path(__file__).resolve().parent.parent / "build")):
        try:
            Path(base).mkdir(parents=True, exist_ok=True)
            if _fs_type(Path(base)) not in ("tmpfs", "ramfs", ""):
                d = Path(tempfile.mkdtemp(prefix="s3dlio-direct-", dir=base))
                request.addfinalizer(lambda d=d: shutil.rmtree(d, ignore_errors=True))  # type: ignore[misc]
                return d
        except OSError:
            continue
    raise RuntimeError("no directory on a real (non-tmpfs) disk found for direct:// tests")


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory: ``fault_proxy(target, seed=0, reset_fraction=..., ...)`` -> a started FaultProxy."""
    proxies: list[FaultProxy] = []

    def make(target: Server | str | tuple[str, int], **kwargs: Any) -> FaultProxy:
        if isinstance(target, Server):
            host, port = "127.0.0.1", target.port
        elif isinstance(target, str):
            u = urlsplit(target)
            host, port = u.hostname or "127.0.0.1", u.port or 80
        else:
            host, port = target
        proxy = FaultProxy(host, port, **kwargs).start()
        proxies.append(proxy)
        return proxy

    yield make
    for p in proxies:
        p.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for kind in sorted(_kinds_needed(item)):
            server = _servers.get(kind)
            if server is not None:
                report.sections.append((f"{server.name} server log (last lines)", server.log_tail(40)))
    return report
