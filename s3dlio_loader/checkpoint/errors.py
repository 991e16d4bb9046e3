"""Errors raised by the checkpoint layer.

All derive from :class:`CheckpointError`, itself an :class:`~s3dlio_loader.errors.S3dlioError`,
so ``except S3dlioError`` still catches everything the project raises. Each error names the
object (``uri``) or the place in the state tree (``path``) it is about.
"""

from __future__ import annotations

from ..errors import S3dlioError


class CheckpointError(S3dlioError):
    """A checkpoint could not be saved or loaded.

    Attributes:
        uri: the checkpoint object or prefix concerned, when there is one.
    """

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild, (type(self), self.args[0], dict(self.__dict__)))


def _rebuild(cls: type[CheckpointError], text: str, attrs: dict[str, object]) -> CheckpointError:
    err = cls.__new__(cls)
    Exception.__init__(err, text)
    err.__dict__.update(attrs)
    return err


class CheckpointNotFoundError(CheckpointError, LookupError):
    """No complete checkpoint for the step asked (or none at all under the URI)."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A complete checkpoint already exists for the step being saved (pass ``overwrite=True``)."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint is damaged: a checksum mismatch, a missing or truncated shard, or a manifest
    that is not a valid manifest. The message names the object and, for data, the tensor."""


class UnsupportedStateError(CheckpointError, TypeError):
    """A value in the state to save cannot be stored without pickle.

    Attributes:
        path: where the value sits in the state, e.g. ``state['optimizer']['param_groups'][0]['foo']``.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "UnsupportedStateError",
]
