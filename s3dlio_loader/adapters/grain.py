"""grain: a random-access data source over any format, for ``grain.MapDataset`` and ``grain.DataLoader``.

:class:`GrainSource` implements grain's ``RandomAccessDataSource`` protocol — ``__len__``,
``__getitem__`` and the batched ``__getitems__`` (grain calls it for a batch of keys when
present) — over a :class:`~s3dlio_loader.Dataset`: record ``i`` is global sample ``i``, and
``__getitems__`` reads its keys with one :meth:`~s3dlio_loader.Dataset.read_samples` call,
so samples of one object share coalesced range requests and different objects are fetched
concurrently. grain does the sampling, sharding and worker processes; this class only
reads. It is a plain protocol implementation: importing or using it does not need grain.

It pickles cheaply (the dataset's index travels, its connections and readers do not) and is
safe in grain's worker processes, forked or spawned: each process opens its own readers.

>>> # import grain
>>> # src = GrainSource("s3://bucket/train/", format="npz", rows=True)
>>> # ds = grain.MapDataset.source(src).shuffle(seed=0).batch(64)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, SupportsIndex

import numpy as np

from ..engine.dataset import Dataset, Source
from ..errors import ConfigError
from ..storage import Store

__all__ = ["GrainSource"]


class GrainSource:
    """Random access to every sample of a dataset, as grain's ``RandomAccessDataSource``.

    Args:
        source: a URI prefix or glob, a list of URIs, a :class:`~s3dlio_loader.Manifest`,
            or an existing :class:`~s3dlio_loader.Dataset`.
        format, storage_options, store, **format_options: see :class:`~s3dlio_loader.Dataset`
            (ignored when ``source`` is a Dataset).
        transform: applied to each sample as it is read (must be picklable for grain's
            worker processes: a module-level function).

    Every key must yield a record, so a dataset read with ``on_error="skip"`` is refused:
    filter records in grain instead.

    >>> import tempfile, numpy as np
    >>> from s3dlio_loader.formats import write
    >>> d = tempfile.mkdtemp()
    >>> write(f"file://{d}/a.npy", np.arange(6).reshape(3, 2))
    >>> src = GrainSource(f"file://{d}/", format="npy", rows=True)
    >>> len(src), src[2].tolist(), [r.tolist() for r in src.__getitems__([1, 0])]
    (3, [4, 5], [[2, 3], [0, 1]])
    """

    def __init__(
        self,
        source: Source | Dataset,
        format: str | None = None,
        *,
        transform: Callable[[Any], Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        store: Store | None = None,
        **format_options: Any,
    ) -> None:
        if format_options.get("on_error", "raise") != "raise":
            raise ConfigError("GrainSource needs one record per key: on_error must be 'raise' (filter in grain)")
        if isinstance(source, Dataset):
            if source.on_error != "raise":
                raise ConfigError("GrainSource needs one record per key: the Dataset must use on_error='raise'")
            self.dataset = source
        else:
            self.dataset = Dataset(source, format, storage_options=storage_options, store=store, **format_options)
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable or None (got {type(transform).__name__})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, record_key: SupportsIndex) -> Any:
        """Sample ``record_key`` (negative keys count from the end)."""
        return self.__getitems__([record_key])[0]

    def __getitems__(self, record_keys: Sequence[SupportsIndex]) -> list[Any]:
        """The samples of ``record_keys``, in that order, read together."""
        n = len(self.dataset)
        ids = np.fromiter((operator.index(k) for k in record_keys), dtype=np.int64, count=len(record_keys))
        bad = (ids < -n) | (ids >= n)
        if bad.any():
            raise IndexError(f"record key {int(ids[bad][0])} out of range for {n} records")
        ids[ids < 0] += n
        samples = self.dataset.read_samples(ids)
        if self.transform is not None:
            samples = [self.transform(s) for s in samples]
        return samples

    def __repr__(self) -> str:
        return f"GrainSource({self.dataset!r})"
