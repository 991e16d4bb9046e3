"""What every format reader shares: the reader interface, the index contract, error policy.

A format has two steps:

* **index**: which samples an object holds and where their bytes are. The index is a small
  frozen dataclass of numpy arrays and scalars (see :class:`FormatIndex`): picklable,
  cheap to send to worker processes, and persistable by the metadata cache as plain arrays.
* **read/decode**: bytes -> sample, for one sample (``reader[i]``) and for a batch
  (``reader.read_batch(indices)``, which coalesces the byte ranges of nearby samples).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from ..errors import ConfigError, FormatError
from ..storage import ObjectInfo, Store, store_for

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

_I = TypeVar("_I", bound="FormatIndex")


@dataclasses.dataclass(frozen=True)
class FormatIndex:
    """Base of every format's index.

    Subclasses add fields that are numpy arrays, ints, floats, strings, or tuples of
    strings. ``size`` and ``etag`` identify the object version the index was built from,
    so a cache never serves an index for a rewritten object.
    """

    uri: str
    size: int
    etag: str | None

    def to_dict(self) -> dict[str, Any]:
        """Fields as a flat dict (arrays stay arrays), for persisting."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[_I], data: Mapping[str, Any]) -> _I:
        """Inverse of :meth:`to_dict`; unknown keys raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}.from_dict: unknown fields {sorted(unknown)}")
        return cls(**dict(data))

    def matches(self, info: ObjectInfo) -> bool:
        """True when ``info`` (a fresh listing or stat) describes the object this index was built from."""
        if info.size != self.size:
            return False
        return self.etag is None or info.etag is None or info.etag == self.etag

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
                        and a.dtype == b.dtype):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


class Reader(ABC):
    """Random access to the samples of one object.

    Subclasses set :attr:`format` and implement :meth:`build_index`, :meth:`_read` and,
    where batching can share requests, :meth:`read_batch`.

    Args:
        uri: the object.
        index: a previously built index (from a cache); built on first use when None.
        store: the Store to read with; the process-wide shared one for ``uri`` when None.
        storage_options: fsspec options for the shared Store (ignored when ``store`` is given).
        on_error: ``"raise"`` (default) or ``"skip"``: with ``"skip"``, :meth:`read_batch`
            leaves out samples that fail to decode, counting them in :attr:`skipped` and
            logging each one.
    """

    format: ClassVar[str] = ""

    def __init__(
        self,
        uri: str,
        *,
        index: FormatIndex | None = None,
        store: Store | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip' (got on_error={on_error!r})")
        self.uri = uri
        self.store = store if store is not None else store_for(uri, storage_options)
        self.on_error: OnError = on_error
        self.skipped = 0
        self._index = index

    @property
    def index(self) -> FormatIndex:
        """The object's index (built with requests on first access, then kept)."""
        if self._index is None:
            self._index = self.build_index()
        return self._index

    @abstractmethod
    def build_index(self) -> FormatIndex:
        """Read what is needed from storage to know every sample's location."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples in the object."""

    @abstractmethod
    def _read(self, i: int) -> Any:
        """Sample ``i`` (already bounds-checked)."""

    def __getitem__(self, i: int) -> Any:
        n = len(self)
        if not isinstance(i, int | np.integer):
            raise TypeError(f"sample index must be an integer (got {type(i).__name__}) for {self.uri}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"sample {i} out of range for {self.uri} ({n} samples)")
        return self._read(j)

    def read_batch(self, indices: Sequence[int]) -> list[Any]:
        """Samples ``indices`` in that order. Formats override this to coalesce requests."""
        out = []
        for i in indices:
            try:
                out.append(self[i])
            except FormatError as exc:
                if self.on_error == "raise":
                    raise
                self._skip(exc)
        return out

    def _skip(self, exc: FormatError) -> None:
        self.skipped += 1
        log.warning("skipping a sample that failed to decode: %s", exc)

    def __iter__(self) -> Any:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def check_indices(uri: str, indices: Sequence[int], n: int) -> list[int]:
    """Normalise negative indices and raise IndexError naming ``uri`` for out-of-range ones."""
    out = []
    for i in indices:
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"sample {i} out of range for {uri} ({n} samples)")
        out.append(j)
    return out
