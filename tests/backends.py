"""``Backend``: the storage backend a test runs against (built by conftest's ``backend`` fixture).

Kept out of conftest.py so that tests can import it: several ``conftest`` modules exist in this tree
and ``from conftest import ...`` would resolve to whichever pytest imported last.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import Server

REMOTE = ("s3", "az", "gs")


@dataclass
class Backend:
    """One storage backend for a test.

    ``root_uri`` is fresh and empty for every test: ``s3://test-<uuid8>`` (bucket created),
    ``az://test-<uuid8>`` (container created), ``gs://test-<uuid8>`` (bucket created),
    ``file:///<tmp_path>`` or ``direct:///<dir on a real disk>``.
    """

    scheme: str
    root_uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    server: Server | None = None
    bucket: str | None = None  # bucket/container name for s3/az/gs
    local_path: Path | None = None  # the directory for file/direct

    @property
    def name(self) -> str:
        return self.scheme

    @property
    def is_remote(self) -> bool:
        return self.scheme in REMOTE

    def uri(self, *parts: str) -> str:
        """``root_uri`` joined with ``parts`` by '/'."""
        return "/".join([self.root_uri.rstrip("/"), *(p.strip("/") for p in parts)])

    def fs(self) -> Any:
        """A plain, uncached fsspec filesystem to prepare or inspect test data (paths without scheme:
        ``bucket/key`` for object stores, absolute paths for file; direct:// uses LocalFileSystem)."""
        import fsspec

        if self.server is not None:
            return self.server.filesystem()
        return fsspec.filesystem("file", auto_mkdir=True, skip_instance_cache=True)

    def path(self, *parts: str) -> str:
        """Scheme-less path for ``fs()``: ``bucket/parts`` or ``/local/dir/parts``."""
        base = self.bucket if self.bucket is not None else str(self.local_path)
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
