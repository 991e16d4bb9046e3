"""Every test of the metadata cache gets its own cache directory (never the user's ~/.cache)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from s3dlio_loader import cache as cache_module


@pytest.fixture(autouse=True)
def metadata_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[cache_module.MetadataCache]:
    """A fresh process-global cache persisting under ``tmp_path`` (also for subprocesses, via the environment)."""
    monkeypatch.setenv("S3DLIO_CACHE_DIR", str(tmp_path / "metadata-cache"))
    for var in ("S3DLIO_CACHE_PERSIST", "S3DLIO_LISTING_TTL", "S3DLIO_MAX_INDEXES", "S3DLIO_OPLOG"):
        monkeypatch.delenv(var, raising=False)
    previous = cache_module._cache
    yield cache_module.configure()
    cache_module._cache = previous
