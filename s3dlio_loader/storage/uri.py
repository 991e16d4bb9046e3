"""URI parsing: which backend a URI belongs to and the path its fsspec filesystem expects."""

from __future__ import annotations

import os
from typing import NamedTuple

from ..errors import ConfigError, UnsupportedSchemeError

#: Accepted URI schemes and the canonical scheme each one maps to.
SCHEME_ALIASES: dict[str, str] = {
    "s3": "s3",
    "s3a": "s3",
    "az": "az",
    "abfs": "az",
    "abfss": "az",
    "gs": "gs",
    "gcs": "gs",
    "file": "file",
    "direct": "direct",
}

#: Schemes served by remote object stores (as opposed to local files).
OBJECT_STORE_SCHEMES = frozenset({"s3", "az", "gs"})

GLOB_CHARS = frozenset("*?[")


class ParsedURI(NamedTuple):
    """A URI split into its canonical scheme and the path inside that backend.

    ``path`` is what the backend's fsspec filesystem expects: ``bucket/key`` for object
    stores, an absolute local path for ``file`` and ``direct``.
    """

    scheme: str
    path: str

    @property
    def uri(self) -> str:
        """The canonical URI string (``file:///abs``, ``s3://bucket/key``...)."""
        return f"{self.scheme}://{self.path}"


def parse_uri(uri: str) -> ParsedURI:
    """Split ``uri`` into (canonical scheme, backend path).

    Plain local paths (no ``://``) are ``file`` URIs and are made absolute.

    >>> parse_uri("s3://bucket/a/b.bin")
    ParsedURI(scheme='s3', path='bucket/a/b.bin')
    >>> parse_uri("gcs://b/k").uri
    'gs://b/k'

    Raises:
        UnsupportedSchemeError: the scheme is not one of :data:`SCHEME_ALIASES`.
        ConfigError: the URI is empty or names no bucket/container.
    """
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"a URI must be a non-empty string (got {uri!r})")
    if "://" not in uri:
        return ParsedURI("file", os.path.abspath(os.path.expanduser(uri)))
    raw_scheme, rest = uri.split("://", 1)
    scheme = SCHEME_ALIASES.get(raw_scheme.lower())
    if scheme is None:
        raise UnsupportedSchemeError(
            f"unsupported URI scheme {raw_scheme!r} in {uri!r}; "
            f"use one of {', '.join(s + '://' for s in sorted(SCHEME_ALIASES))} or a local path"
        )
    if scheme in ("file", "direct"):
        path = rest if rest.startswith("/") else os.path.abspath(rest)
        return ParsedURI(scheme, path)
    if scheme == "az" and "@" in rest.split("/", 1)[0]:
        # abfs[s]://container@account.dfs.core.windows.net/key: the account is part of the
        # storage options (account_name), the path starts at the container.
        container_at_host, _, key = rest.partition("/")
        container = container_at_host.split("@", 1)[0]
        rest = f"{container}/{key}" if key else container
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"URI {uri!r} names no bucket or container")
    return ParsedURI(scheme, rest)


def join_uri(prefix: str, relative: str) -> str:
    """Join a key relative to ``prefix`` onto it with exactly one ``/``."""
    if not relative:
        return prefix
    return prefix.rstrip("/") + "/" + relative.lstrip("/")


def has_glob(path: str) -> bool:
    """True when ``path`` contains glob characters (``*``, ``?``, ``[``)."""
    return any(c in GLOB_CHARS for c in path)
