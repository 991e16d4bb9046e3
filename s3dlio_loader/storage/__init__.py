"""Storage core: URIs in, bytes out, over s3://, az://, gs://, file:// and direct://.

>>> from s3dlio_loader.storage import Store
>>> Store.from_uri("s3://bucket/key").scheme
's3'
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import fsspec

from ..options import StoreOptions
from .store import ObjectInfo, ObjectWriter, Store, StoreStats, coalesce_ranges
from .uri import SCHEME_ALIASES, ParsedURI, join_uri, parse_uri

# direct:// is known to fsspec (fsspec.open("direct:///...")) without importing its module yet.
fsspec.register_implementation("direct", "s3dlio_loader.storage.direct.DirectFileSystem", clobber=True)

_stores: dict[tuple[str, str], Store] = {}
_stores_lock = threading.Lock()


def store_for(uri: str, storage_options: Mapping[str, Any] | None = None) -> Store:
    """The process-wide shared :class:`Store` for ``uri``'s backend and ``storage_options``.

    Format readers and the engine use this so that one process keeps one connection pool
    per backend configuration. Options come from ``S3DLIO_*`` variables; build a
    :class:`Store` yourself to set them in code.
    """
    scheme = parse_uri(uri).scheme
    key = (scheme, json.dumps(dict(storage_options or {}), sort_keys=True, default=repr))
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = Store(scheme, storage_options)
    return store


__all__ = [
    "SCHEME_ALIASES",
    "ObjectInfo",
    "ObjectWriter",
    "ParsedURI",
    "Store",
    "StoreOptions",
    "StoreStats",
    "coalesce_ranges",
    "join_uri",
    "parse_uri",
    "store_for",
]
