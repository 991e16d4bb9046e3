"""Which storage faults are worth retrying, and how long to wait before the next try."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from collections.abc import Iterator

from ..errors import (
    AccessDeniedError,
    ConfigError,
    InvalidRangeError,
    ObjectNotFoundError,
    PathTraversalError,
    StorageError,
    TransientStorageError,
)

#: HTTP statuses that mean "try again later".
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Error codes (S3 and Azure spell them) that mean throttling or a server-side hiccup.
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "ServerBusy",
        "OperationTimedOut",
        "RequestTimeTooSkewed",
    }
)
_RETRYABLE_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.EPIPE, errno.ETIMEDOUT, errno.EAGAIN}
)
# Exception class names of the HTTP stacks under s3fs (aiohttp/aiobotocore), gcsfs (aiohttp)
# and adlfs (azure-core) that signal a broken or timed-out connection. Matched by name so that
# this module imports none of those libraries.
_RETRYABLE_CLASS_NAMES = frozenset(
    {
        "ServerDisconnectedError",
        "ClientConnectionError",
        "ClientConnectorError",
        "ClientOSError",
        "ClientPayloadError",
        "ServerTimeoutError",
        "ConnectionTimeoutError",
        "SocketTimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "IncompleteRead",
        "ServiceRequestError",
        "ServiceResponseError",
        "ProtocolError",
        "RemoteDisconnected",
    }
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend((e.__cause__, e.__context__))


def http_status(exc: BaseException) -> int | None:
    """The HTTP status carried by ``exc`` or anything in its cause chain, if any."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
        for attr in ("status_code", "status", "code"):  # azure-core, aiohttp, gcsfs HttpError
            value = getattr(e, attr, None)
            if isinstance(value, int) and 100 <= value <= 599:
                return value
    return None


def error_code(exc: BaseException) -> str | None:
    """The service error code (``SlowDown``, ``NoSuchKey``...) in ``exc``'s chain, if any."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        code = getattr(e, "error_code", None)  # azure-core
        if isinstance(code, str) and code:
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is a fault a retry may cure: throttling, 5xx, resets, timeouts."""
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, StorageError | ConfigError):
        return False
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
            return False
    status = http_status(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    code = error_code(exc)
    if code is not None and code in RETRYABLE_CODES:
        return True
    for e in chain:
        if isinstance(e, TimeoutError | asyncio.TimeoutError | socket.timeout | ConnectionError):
            return True
        if isinstance(e, OSError) and e.errno in _RETRYABLE_ERRNOS:
            return True
        if type(e).__name__ in _RETRYABLE_CLASS_NAMES:
            return True
        if "SlowDown" in str(e) or "reduce your request rate" in str(e):
            return True
    return False


def to_storage_error(exc: BaseException, *, uri: str, op: str, attempts: int) -> StorageError:
    """Wrap a backend exception in the project's error type, naming the URI and operation.

    The backend's message is kept (it says what the server answered); credentials never
    reach it because backends do not echo them.
    """
    if isinstance(exc, StorageError):
        return exc
    message = _short_message(exc)
    for e in _chain(exc):
        if isinstance(e, FileNotFoundError):
            return ObjectNotFoundError(f"no such object ({message})", uri=uri, op=op, attempts=attempts)
        if isinstance(e, PermissionError):
            return AccessDeniedError(f"access denied ({message})", uri=uri, op=op, attempts=attempts)
    status = http_status(exc)
    if status == 404:
        return ObjectNotFoundError(f"no such object ({message})", uri=uri, op=op, attempts=attempts)
    if status in (401, 403):
        return AccessDeniedError(f"access denied ({message})", uri=uri, op=op, attempts=attempts)
    if status == 416:
        return InvalidRangeError(f"range not satisfiable ({message})", uri=uri, op=op, attempts=attempts)
    if is_transient(exc):
        return TransientStorageError(
            f"still failing after {attempts} attempt(s): {message}", uri=uri, op=op, attempts=attempts
        )
    return StorageError(message, uri=uri, op=op, attempts=attempts)


def _short_message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter.

    Uniform in ``[0, min(cap, base * 2**(attempt-1))]``, which spreads retries of many
    clients hitting one throttled server.
    """
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)


__all__ = [
    "PathTraversalError",
    "backoff_delay",
    "error_code",
    "http_status",
    "is_transient",
    "to_storage_error",
]
