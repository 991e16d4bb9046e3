"""The sampling plan, the dataset abstraction and the shared-memory prefetch engine."""

from __future__ import annotations

from .dataset import Dataset, Manifest
from .loader import Loader, LoaderOptions, WorkerDiedError, WorkerError
from .plan import EpochOrder, ShardPlan

__all__ = [
    "Dataset",
    "EpochOrder",
    "Loader",
    "LoaderOptions",
    "Manifest",
    "ShardPlan",
    "WorkerDiedError",
    "WorkerError",
]
