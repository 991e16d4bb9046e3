"""Raw objects: one object is one sample, its bytes (optionally passed through ``decode``).

>>> import tempfile
>>> from s3dlio_loader.formats.raw import RawReader, write_raw
>>> uri = f"file://{tempfile.mkdtemp()}/a.txt"
>>> write_raw(uri, b"hello")
>>> RawReader(uri)[0]
b'hello'
>>> RawReader(uri, decode=bytes.upper)[0]
b'HELLO'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from ..errors import ConfigError, FormatError
from ..storage import Store, store_for
from .base import FormatIndex, OnError, Reader, check_indices

FORMAT = "raw"


@dataclasses.dataclass(frozen=True, eq=False)
class RawIndex(FormatIndex):
    """A raw object's index: only its identity (``uri``, ``size``, ``etag``)."""


class RawReader(Reader):
    """The single sample of one object: its bytes, or ``decode(bytes)``.

    Args:
        uri: the object.
        decode: called on the object's bytes; its result is the sample. An exception it
            raises becomes a :class:`~s3dlio_loader.errors.FormatError` (so ``on_error="skip"``
            can skip undecodable objects). Must be picklable (a module-level function) for
            the reader to go to worker processes.
        index, store, storage_options, on_error: see :class:`~s3dlio_loader.formats.base.Reader`.

    Without an index, reading fetches the object with one GET (no stat) and builds the
    index from the bytes (``etag`` None); :meth:`build_index` stats the object instead.
    """

    format: ClassVar[str] = FORMAT

    def __init__(
        self,
        uri: str,
        decode: Callable[[bytes], Any] | None = None,
        *,
        index: FormatIndex | None = None,
        store: Store | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if decode is not None and not callable(decode):
            raise ConfigError(f"decode must be a callable or None (got {type(decode).__name__})")
        if index is not None and not isinstance(index, RawIndex):
            raise ConfigError(f"RawReader needs a RawIndex (got {type(index).__name__}) for {uri}")
        super().__init__(uri, index=index, store=store, storage_options=storage_options, on_error=on_error)
        self.decode = decode

    def build_index(self) -> RawIndex:
        """One stat: size and etag."""
        info = self.store.stat(self.uri)
        return RawIndex(uri=self.uri, size=info.size, etag=info.etag)

    def __len__(self) -> int:
        return 1

    def _read(self, i: int) -> Any:
        return self._sample(self._fetch())

    def read_batch(self, indices: Sequence[int]) -> list[Any]:
        """The sample once per index (the object is fetched once)."""
        idx = check_indices(self.uri, indices, 1)
        if not idx:
            return []
        try:
            return [self._sample(self._fetch())] * len(idx)
        except FormatError as exc:
            if self.on_error == "raise":
                raise
            for _ in idx:
                self._skip(exc)
            return []

    def _fetch(self) -> bytes:
        size = self._index.size if self._index is not None else None
        data = self.store.get(self.uri, size=size)
        if self._index is None:
            self._index = RawIndex(uri=self.uri, size=len(data), etag=None)
        return data

    def _sample(self, data: bytes) -> Any:
        if self.decode is None:
            return data
        try:
            return self.decode(data)
        except FormatError:
            raise
        except Exception as exc:
            raise FormatError(f"decode failed: {type(exc).__name__}: {exc}", uri=self.uri, format=FORMAT,
                              offset=None) from exc  # fmt: skip


def write_raw(uri: str, data: Any, *, store: Store | None = None) -> None:
    """Write ``data`` (bytes, bytearray, memoryview or any contiguous buffer) as the whole object."""
    if isinstance(data, str):
        raise ConfigError(f"write_raw takes bytes, not str; encode it first (e.g. data.encode()) for {uri}")
    try:
        view = memoryview(data)
    except TypeError:
        raise ConfigError(f"write_raw needs a bytes-like object (got {type(data).__name__}) for {uri}") from None
    if not view.c_contiguous:
        raise ConfigError(f"write_raw needs a contiguous buffer for {uri}; copy it first (bytes(data))")
    store = store if store is not None else store_for(uri)
    store.put(uri, data if isinstance(data, bytes | bytearray) else view.cast("B"))


__all__ = ["RawIndex", "RawReader", "write_raw"]
