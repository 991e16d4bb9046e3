"""Read ahead inside one process: ``fn(item)`` for each item, a few computed ahead on threads.

The loader's worker processes and its in-process path read batches ahead like this; so do
framework adapters that iterate inside processes they do not own (a torch DataLoader
worker, a tf.data generator), where the engine's own worker processes are not used.

>>> list(prefetch_ordered(lambda x: x * x, range(5), depth=2))
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


def prefetch_ordered(
    fn: Callable[[T], R], items: Iterable[T], depth: int, *, thread_name_prefix: str = "s3dlio-prefetch"
) -> Iterator[R]:
    """Yield ``fn(item)`` for each of ``items``, in order, with up to ``depth`` calls running ahead.

    ``items`` is consumed lazily (at most ``depth`` ahead of the consumer). ``depth=0`` calls
    ``fn`` in the consumer's thread, one item at a time. The threads are started on the first
    ``next()`` (so the iterator may be created in one process and run in another) and stopped
    when the iteration ends, is closed, or raises; calls not yet started are cancelled. An
    exception raised by ``fn`` is raised when its item's turn comes.

    Raises:
        ConfigError: ``depth`` is negative.
    """
    if depth < 0:
        raise ConfigError(f"prefetch depth must be >= 0 (got depth={depth})")
    return _prefetch(fn, items, depth, thread_name_prefix)


def _prefetch(fn: Callable[[T], R], items: Iterable[T], depth: int, name: str) -> Iterator[R]:
    if depth == 0:
        for item in items:
            yield fn(item)
        return
    source = iter(items)
    pool = cf.ThreadPoolExecutor(max_workers=depth, thread_name_prefix=name)
    pending: deque[cf.Future[R]] = deque()
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < depth:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.submit(fn, item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["prefetch_ordered"]
