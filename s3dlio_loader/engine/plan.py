"""The sampling plan: which sample, in which order, for which rank, worker and epoch.

The plan is pure: the same (dataset sizes, seed, epoch, rank, world size, batch size,
worker id, number of workers) always gives the same work, whatever the timing of workers.
It holds no per-sample arrays: any position of an epoch is mapped to a sample on demand
(see :mod:`.permute`), so a plan over 10^7 samples costs a few hundred bytes.

Layout of one epoch:

1. **order** — position ``p`` in ``range(N)`` maps to a sample id: identity (``none``), a
   seeded bijection (``global``), or objects in a seeded order with samples shuffled inside
   windows of ``shuffle_window`` consecutive positions (``block``: cheap for data that reads
   fast sequentially and slowly at random).
2. **ranks** — rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...``. ``pad`` repeats
   positions from the start so every rank gets ``ceil(N / W)`` samples; ``drop_last`` drops the
   tail so every rank gets the same number of *full* batches. Either way every rank runs the
   same number of batches, so collective operations never wait for a rank that has run dry.
3. **workers** — a rank's samples are cut into batches; worker ``w`` of ``K`` takes batches
   ``w, w + K, ...`` and the consumer takes them round-robin, so delivery is in plan order.

Resuming: the position is a few integers (:meth:`ShardPlan.state`). A state saved on all
ranks at the same step can be loaded with a different number of workers *or ranks*: the
positions already consumed by all ranks form a prefix of the epoch, and the rest is sharded
again over the new ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError
from .permute import FeistelPermutation, derive_seed

ShuffleMode = Literal["none", "global", "block"]
SHUFFLE_MODES = ("none", "global", "block")
STATE_VERSION = 1


class EpochOrder:
    """Maps positions of one epoch to sample ids.

    Args:
        sizes: number of samples of each source object (or row group, ...), in dataset order.
        shuffle: ``"none"``, ``"global"`` or ``"block"``; ``True``/``False`` mean global/none.
        seed: the shuffle seed.
        epoch: the epoch number; each epoch has its own order.
        shuffle_window: with ``"block"``, samples are shuffled within windows of this many
            consecutive positions after the objects themselves are shuffled.
    """

    def __init__(
        self,
        sizes: np.ndarray | list[int],
        *,
        shuffle: ShuffleMode | bool = "none",
        seed: int = 0,
        epoch: int = 0,
        shuffle_window: int = 1024,
    ) -> None:
        self.shuffle: ShuffleMode = normalize_shuffle(shuffle)
        if shuffle_window < 1:
            raise ConfigError(f"shuffle_window must be >= 1 (got shuffle_window={shuffle_window})")
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        if sizes_arr.ndim != 1 or (sizes_arr.size and sizes_arr.min() < 0):
            raise ConfigError("sizes must be a 1-D array of non-negative sample counts")
        self.sizes = sizes_arr
        self.n = int(sizes_arr.sum())
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.window = int(shuffle_window)
        self._perm: FeistelPermutation | None = None
        self._block_starts: np.ndarray | None = None  # dataset start of each object, in shuffled order
        self._block_cum: np.ndarray | None = None  # cumulative sizes in shuffled object order
        if self.shuffle == "global":
            self._perm = FeistelPermutation(self.n, derive_seed(self.seed, self.epoch, 1))
        elif self.shuffle == "block":
            dataset_starts = np.concatenate(([0], np.cumsum(sizes_arr)[:-1])) if sizes_arr.size else sizes_arr
            obj_order = FeistelPermutation(len(sizes_arr), derive_seed(self.seed, self.epoch, 2)).map_many(
                np.arange(len(sizes_arr), dtype=np.int64)
            )
            self._block_starts = dataset_starts[obj_order]
            self._block_cum = np.concatenate(([0], np.cumsum(sizes_arr[obj_order])))

    def samples(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids at ``positions`` (an int64 array of values in ``range(n)``)."""
        pos = np.asarray(positions, dtype=np.int64)
        if self.shuffle == "none":
            return pos.copy()
        if self.shuffle == "global":
            assert self._perm is not None
            return self._perm.map_many(pos)
        return self._block(pos)

    def _block(self, pos: np.ndarray) -> np.ndarray:
        assert self._block_starts is not None and self._block_cum is not None
        shuffled = np.empty_like(pos)
        windows = pos // self.window
        for w in np.unique(windows):
            mask = windows == w
            start = int(w) * self.window
            size = min(self.window, self.n - start)
            perm = FeistelPermutation(size, derive_seed(self.seed, self.epoch, 3, int(w)))
            shuffled[mask] = start + perm.map_many(pos[mask] - start)
        obj = np.searchsorted(self._block_cum, shuffled, side="right") - 1
        return self._block_starts[obj] + (shuffled - self._block_cum[obj])


@dataclass(frozen=True)
class ShardPlan:
    """One rank's share of one epoch, cut into batches.

    Args:
        order: the epoch's :class:`EpochOrder`.
        rank, world_size: this rank and the number of ranks.
        batch_size: samples per batch (>= 1).
        drop_last: drop the tail so every rank has the same number of full batches.
        pad: repeat samples from the start of the epoch so every rank has the same number
            of samples; ``None`` pads exactly when ``world_size > 1`` and not ``drop_last``.
        start: positions of the epoch already consumed by all ranks together (from a
            resumed state); the remaining positions are sharded over the ranks.
    """

    order: EpochOrder
    rank: int = 0
    world_size: int = 1
    batch_size: int = 1
    drop_last: bool = False
    pad: bool | None = None
    start: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"need 0 <= rank < world_size (got rank={self.rank}, world_size={self.world_size})")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (got batch_size={self.batch_size})")
        if self.start < 0:
            raise ConfigError(f"start must be >= 0 (got start={self.start})")

    @property
    def padded(self) -> bool:
        """Whether this plan repeats samples to even out the ranks."""
        if self.pad is None:
            return self.world_size > 1 and not self.drop_last
        return bool(self.pad) and not self.drop_last

    @property
    def remaining(self) -> int:
        """Positions of the epoch not consumed before ``start``."""
        return max(0, self.order.n - self.start)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields in the epoch (after ``start``)."""
        r, w = self.remaining, self.world_size
        if self.drop_last:
            per_rank = r // w
            return per_rank // self.batch_size * self.batch_size
        if self.padded:
            return math.ceil(r / w) if r else 0
        return len(range(self.rank, r, w))

    @property
    def num_batches(self) -> int:
        """Batches this rank yields (the last may be partial unless ``drop_last``)."""
        return math.ceil(self.num_samples / self.batch_size)

    def positions(self, first: int, count: int) -> np.ndarray:
        """Epoch positions of this rank's samples ``first .. first + count - 1``."""
        i = np.arange(first, first + count, dtype=np.int64)
        pos = self.start + self.rank + i * self.world_size
        if self.padded and self.remaining:
            pos = self.start + (pos - self.start) % self.remaining
        return pos

    def batch_samples(self, batch: int) -> np.ndarray:
        """Sample ids of batch number ``batch`` of this rank."""
        if not 0 <= batch < self.num_batches:
            raise IndexError(f"batch {batch} outside 0..{self.num_batches - 1}")
        first = batch * self.batch_size
        count = min(self.batch_size, self.num_samples - first)
        return self.order.samples(self.positions(first, count))

    def worker_batches(self, worker_id: int, num_workers: int, first_batch: int = 0) -> range:
        """Batch numbers worker ``worker_id`` of ``num_workers`` produces, from ``first_batch`` on.

        Batches go round-robin from ``first_batch``: worker ``w`` makes ``first_batch + w``,
        then every ``num_workers``-th one; the consumer takes one from each worker in turn,
        which reproduces the plan's order.
        """
        if num_workers < 1 or not 0 <= worker_id < num_workers:
            raise ConfigError(f"need 0 <= worker_id < num_workers (got {worker_id=}, {num_workers=})")
        return range(first_batch + worker_id, self.num_batches, num_workers)

    def all_samples(self) -> np.ndarray:
        """Every sample id of this rank, in order (for tests and small datasets)."""
        return self.order.samples(self.positions(0, self.num_samples))

    def state(self, batches_done: int) -> dict[str, Any]:
        """The resumable position after ``batches_done`` batches of this plan: a few integers."""
        consumed = min(batches_done * self.batch_size, self.num_samples)
        return {
            "version": STATE_VERSION,
            "epoch": self.order.epoch,
            "seed": self.order.seed,
            "shuffle": self.order.shuffle,
            "num_total": self.order.n,
            "start": self.start,
            "consumed": consumed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
        }


def resume_start(state: dict[str, Any], *, n: int, seed: int, shuffle: ShuffleMode) -> tuple[int, int]:
    """(epoch, start position) for a plan resuming from ``state``.

    Raises:
        ConfigError: the state was saved for another dataset size, seed or shuffle mode (it
            would silently yield a different order), or by an unknown version.
    """
    if state.get("version") != STATE_VERSION:
        raise ConfigError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
    mismatches = [
        f"{key}: saved {state.get(key)!r}, now {value!r}"
        for key, value in (("num_total", n), ("seed", seed), ("shuffle", shuffle))
        if state.get(key) != value
    ]
    if mismatches:
        raise ConfigError("the saved loader state does not match this dataset: " + "; ".join(mismatches))
    start = int(state["start"]) + int(state["consumed"]) * int(state["world_size"])
    return int(state["epoch"]), min(start, n)


def normalize_shuffle(shuffle: ShuffleMode | bool | str | None) -> ShuffleMode:
    """``True``/``False``/``None`` or a mode name -> a mode name."""
    if shuffle is True:
        return "global"
    if shuffle is False or shuffle is None:
        return "none"
    if shuffle not in SHUFFLE_MODES:
        raise ConfigError(f"shuffle must be one of {SHUFFLE_MODES} or a bool (got shuffle={shuffle!r})")
    return shuffle  # type: ignore[return-value]
