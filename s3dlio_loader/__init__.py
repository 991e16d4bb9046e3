"""s3dlio-loader: a multi-process data loader for PyTorch, JAX and TensorFlow over object storage.

Importing this package imports no ML framework; each adapter imports its framework when used.
"""

from __future__ import annotations

from .errors import (
    AccessDeniedError,
    ConfigError,
    DirectIOError,
    FormatError,
    InvalidRangeError,
    MissingDependencyError,
    ObjectNotFoundError,
    PathTraversalError,
    S3dlioError,
    StorageError,
    TransientStorageError,
    UnsupportedSchemeError,
)
from .engine import Dataset, Loader, LoaderOptions, Manifest, WorkerDiedError, WorkerError
from .options import StoreOptions
from .storage import ObjectInfo, Store, parse_uri, store_for

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "ConfigError",
    "Dataset",
    "DirectIOError",
    "FormatError",
    "InvalidRangeError",
    "Loader",
    "LoaderOptions",
    "Manifest",
    "MissingDependencyError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "PathTraversalError",
    "S3dlioError",
    "StorageError",
    "Store",
    "StoreOptions",
    "TransientStorageError",
    "UnsupportedSchemeError",
    "WorkerDiedError",
    "WorkerError",
    "__version__",
    "parse_uri",
    "store_for",
]
