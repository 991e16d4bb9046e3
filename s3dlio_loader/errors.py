"""The project's exception types.

Every error raised by s3dlio-loader derives from :class:`S3dlioError`, so a caller can
catch everything the loader raises with one ``except``. Storage errors carry the URI and
the operation that failed; format errors carry the URI, the format and the byte offset.
Messages never contain credentials.
"""

from __future__ import annotations


class S3dlioError(Exception):
    """Base class of every error raised by s3dlio-loader."""


class ConfigError(S3dlioError, ValueError):
    """An option, URI or argument is invalid (unknown option name, bad value, bad scheme)."""


class UnsupportedSchemeError(ConfigError):
    """The URI's scheme is not one of s3://, az://, gs://, file://, direct:// (or a plain path)."""


class StorageError(S3dlioError, OSError):
    """A storage operation failed.

    Attributes:
        uri: the object or prefix the operation was about.
        op: the operation (``"get"``, ``"get_range"``, ``"put"``, ``"list"``...).
        attempts: how many attempts were made before giving up (1 when not retried).
    """

    def __init__(self, message: str, *, uri: str, op: str, attempts: int = 1) -> None:
        super().__init__(f"{op} {uri}: {message}")
        self.uri = uri
        self.op = op
        self.attempts = attempts

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Keep the keyword-only attributes when the error crosses a process boundary.
        return (_rebuild_storage_error, (type(self), self.args[0], self.uri, self.op, self.attempts))


def _rebuild_storage_error(cls: type[StorageError], text: str, uri: str, op: str, attempts: int) -> StorageError:
    err = cls.__new__(cls)
    Exception.__init__(err, text)
    err.uri, err.op, err.attempts = uri, op, attempts
    return err


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object or prefix does not exist (HTTP 404, ENOENT). Never retried."""


class AccessDeniedError(StorageError, PermissionError):
    """The credentials do not allow the operation (HTTP 401/403, EACCES). Never retried."""


class InvalidRangeError(StorageError):
    """A byte range lies outside the object (offset or offset + length past its end)."""


class TransientStorageError(StorageError):
    """A retryable fault (throttling, 5xx, reset, timeout, short read) persisted past the retry budget."""


class PathTraversalError(StorageError):
    """A key would be written outside the destination directory (``..`` or an absolute key)."""


class DirectIOError(StorageError):
    """O_DIRECT is refused by the filesystem, or an aligned-I/O precondition failed."""


class FormatError(S3dlioError, ValueError):
    """Bytes that do not decode as the expected format.

    Attributes:
        uri: the object being decoded.
        format: the format name (``"npy"``, ``"tfrecord"``, ``"parquet"``...).
        offset: the byte offset in the object where the problem was found, or None.
    """

    def __init__(self, message: str, *, uri: str, format: str, offset: int | None = None) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{format} {uri}{where}: {message}")
        self.uri = uri
        self.format = format
        self.offset = offset

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_format_error, (type(self), self.args[0], self.uri, self.format, self.offset))


def _rebuild_format_error(
    cls: type[FormatError], text: str, uri: str, fmt: str, offset: int | None
) -> FormatError:
    err = cls.__new__(cls)
    Exception.__init__(err, text)
    err.uri, err.format, err.offset = uri, fmt, offset
    return err


class MissingDependencyError(S3dlioError, ImportError):
    """An optional framework or library is not installed; the message names the extra to install."""
