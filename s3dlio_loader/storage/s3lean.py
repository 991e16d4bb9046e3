"""Object reads from S3 without botocore's per-request machinery: SigV4-signed GETs over urllib3.

Measured on moto (``benchmarks/storage_get.py``, ``benchmarks/loaders_remote.py``): a 256 KiB GET
through s3fs/aiobotocore cost this process 2.4-2.6 ms of CPU, against ~0.64 ms for s3dlio's and
s3torchconnector's native clients. botocore builds, validates and parses a request model for
every call; a GET needs a URL, four headers and an HMAC chain. :class:`LeanS3Reader` does just
that, for whole-object and byte-range GETs; everything else (listing, writes, HEAD) stays with
s3fs, as do configurations it does not understand (see :func:`lean_reader_for`).

Credentials are the ones s3fs would use: ``key``/``secret``/``token`` from the storage options,
else botocore's own provider chain (environment, profiles, SSO, instance metadata), resolved once
per process and refreshed through botocore when they expire. ``anon=True`` sends unsigned
requests.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: storage_options keys whose meaning the lean reader reproduces (or that do not affect a GET).
_UNDERSTOOD = frozenset({
    "key", "secret", "token", "anon", "endpoint_url", "client_kwargs", "config_kwargs", "use_ssl",
    "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths", "default_block_size",
    "default_fill_cache", "default_cache_type", "asynchronous", "loop",
})  # fmt: skip
_CLIENT_KWARGS = frozenset({"endpoint_url", "region_name"})
_CONFIG_KWARGS = frozenset({"retries", "connect_timeout", "read_timeout", "max_pool_connections", "s3"})
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class S3ReadError(Exception):
    """A GET answered with an HTTP error: ``status``, S3's ``error_code`` and message.

    ``status`` and ``error_code`` are what the retry policy reads (503 SlowDown is transient).
    """

    def __init__(self, message: str, *, status: int, error_code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class WrongRegionError(S3ReadError):
    """The bucket lives in another region than the one the request was signed for."""


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 signing key of ``date`` (``YYYYMMDD``), ``region`` and ``service``."""
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def sign(method: str, canonical_uri: str, canonical_query: str, headers: Mapping[str, str], payload_hash: str,
         *, key: str, secret: str, region: str, amz_date: str, service: str = "s3",
         derived_key: bytes | None = None) -> str:  # fmt: skip
    """The ``Authorization`` header of a SigV4 request that signs every one of ``headers``.

    ``headers`` are lower-case names with trimmed values; ``amz_date`` is ``YYYYMMDDTHHMMSSZ``
    (and must be among the headers as ``x-amz-date``). ``derived_key``: the result of
    :func:`signing_key` for this date, region and service, if the caller keeps it.
    """
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join([
        method, canonical_uri, canonical_query, "".join(f"{n}:{headers[n]}\n" for n in names), signed, payload_hash,
    ])  # fmt: skip
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    k = derived_key if derived_key is not None else signing_key(secret, amz_date[:8], region, service)
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={signature}"


class LeanS3Reader:
    """GETs of S3 objects (whole, or a byte range), signed here, sent with urllib3. Thread-safe.

    Args:
        endpoint: ``scheme://host[:port]`` of the service; None for AWS itself
            (``https://s3.<region>.amazonaws.com``, virtual-hosted bucket names).
        region: the region requests are signed for.
        credentials: a callable returning ``(key, secret, token or None)``, or None for
            unsigned (anonymous) requests.
        path_style: address buckets in the path (``endpoint/bucket/key``) rather than in the
            host name. Default: path style with a custom endpoint, virtual-hosted on AWS.
        max_connections: connections kept per host.
    """

    def __init__(self, endpoint: str | None, region: str, credentials: Any, *, path_style: bool | None = None,
                 max_connections: int = 64, timeout: float = 60.0) -> None:  # fmt: skip
        import urllib3

        self.region = region
        self.endpoint = endpoint.rstrip("/") if endpoint else f"https://s3.{region}.amazonaws.com"
        self.path_style = (endpoint is not None) if path_style is None else path_style
        self._credentials = credentials
        self._pool = urllib3.PoolManager(maxsize=max_connections, block=False, retries=False,
                                         timeout=urllib3.Timeout(connect=10.0, read=timeout))  # fmt: skip
        self._keys: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        parts = urlsplit(self.endpoint)
        self._scheme, self._netloc = parts.scheme, parts.netloc

    def _address(self, bucket: str, key: str) -> tuple[str, str, str]:
        """(URL, Host header, canonical URI) of an object."""
        path = "/" + quote(key, safe="/-_.~")
        if self.path_style or not _DNS_BUCKET.match(bucket):
            uri = f"/{quote(bucket, safe='-_.~')}{path}"
            return f"{self._scheme}://{self._netloc}{uri}", self._netloc, uri
        host = f"{bucket}.{self._netloc}"
        return f"{self._scheme}://{host}{path}", host, path

    def get(self, bucket: str, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or bytes ``[start, end)`` of it.

        A range that starts at or past the end of the object returns ``b""`` (the caller
        decides whether that is an error, as with s3fs).

        Raises:
            FileNotFoundError: no such bucket or key.
            PermissionError: access denied.
            WrongRegionError: the bucket is in another region.
            S3ReadError: any other HTTP error (with its status and S3 error code).
        """
        url, host, canonical_uri = self._address(bucket, key)
        headers = {"host": host}
        if self._credentials is not None:
            access, secret, token = self._credentials()
            now = datetime.datetime.now(datetime.UTC)
            amz_date = now.strftime("%Y%m%dT%H%M%SZ")
            headers["x-amz-content-sha256"] = UNSIGNED_PAYLOAD
            headers["x-amz-date"] = amz_date
            if token:
                headers["x-amz-security-token"] = token
            headers["authorization"] = self._authorization(canonical_uri, headers, access, secret, amz_date)
        if start is not None:
            headers["range"] = f"bytes={start}-{'' if end is None else end - 1}"
        response = self._pool.request("GET", url, headers=headers, preload_content=True, redirect=False)
        status = response.status
        if status in (200, 206):
            return bytes(response.data) if not isinstance(response.data, bytes) else response.data
        if status == 416:
            return b""
        raise _error(bucket, key, status, response.data, response.headers)

    def _authorization(self, canonical_uri: str, headers: dict[str, str], access: str, secret: str,
                       amz_date: str) -> str:  # fmt: skip
        date = amz_date[:8]
        with self._lock:
            k = self._keys.get((secret, date))
            if k is None:
                k = self._keys[(secret, date)] = signing_key(secret, date, self.region)
        return sign("GET", canonical_uri, "", headers, UNSIGNED_PAYLOAD, key=access, secret=secret,
                    region=self.region, amz_date=amz_date, derived_key=k)  # fmt: skip


def _error(bucket: str, key: str, status: int, body: bytes, headers: Any) -> Exception:
    code_match = re.search(rb"<Code>([^<]*)</Code>", body or b"")
    message_match = re.search(rb"<Message>([^<]*)</Message>", body or b"")
    code = code_match.group(1).decode(errors="replace") if code_match else None
    text = message_match.group(1).decode(errors="replace") if message_match else ""
    what = f"s3://{bucket}/{key}: HTTP {status} {code or ''} {text}".strip()
    if status == 404:
        return FileNotFoundError(what)
    if status == 403:
        return PermissionError(what)
    if status in (301, 307) or code in ("AuthorizationHeaderMalformed", "PermanentRedirect"):
        region = headers.get("x-amz-bucket-region") if headers is not None else None
        return WrongRegionError(f"{what} (the bucket is in region {region or 'unknown'})", status=status,
                                error_code=code)  # fmt: skip
    return S3ReadError(what, status=status, error_code=code)


def lean_reader_for(storage_options: Mapping[str, Any], max_connections: int) -> LeanS3Reader | None:
    """A :class:`LeanS3Reader` equivalent to what s3fs builds from ``storage_options``, or None
    when they ask for something it does not reproduce (requester pays, SSE-C, a profile, another
    signature version, a proxy...): s3fs then does the reads too."""
    so = dict(storage_options)
    if not set(so) <= _UNDERSTOOD:
        return None
    client = dict(so.get("client_kwargs") or {})
    config = dict(so.get("config_kwargs") or {})
    if not set(client) <= _CLIENT_KWARGS or not set(config) <= _CONFIG_KWARGS:
        return None
    s3_config = dict(config.get("s3") or {})
    if not set(s3_config) <= {"addressing_style"}:
        return None
    endpoint = client.get("endpoint_url") or so.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is not None and so.get("use_ssl") is False and str(endpoint).startswith("https://"):
        return None
    region = client.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None:
        if endpoint is None:
            return None  # s3fs would discover the bucket's region: leave AWS without a region to it
        region = "us-east-1"
    style = s3_config.get("addressing_style")
    path_style = None if style in (None, "auto") else style == "path"
    credentials: Any
    if so.get("anon"):
        credentials = None
    elif so.get("key") and so.get("secret"):
        frozen = (str(so["key"]), str(so["secret"]), so.get("token"))
        credentials = lambda: frozen  # noqa: E731
    else:
        credentials = _botocore_credentials()
        if credentials is None:
            return None
    read_timeout = float(config.get("read_timeout", 60.0))
    return LeanS3Reader(endpoint, region, credentials, path_style=path_style, max_connections=max_connections,
                        timeout=read_timeout)  # fmt: skip


def _botocore_credentials() -> Any:
    """Credentials from botocore's provider chain, refreshed by botocore when they expire."""
    import botocore.session

    found = botocore.session.get_session().get_credentials()
    if found is None:
        return None

    def current() -> tuple[str, str, str | None]:
        frozen = found.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    return current


__all__ = ["LeanS3Reader", "S3ReadError", "WrongRegionError", "lean_reader_for", "sign", "signing_key"]
