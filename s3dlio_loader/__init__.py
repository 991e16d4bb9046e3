"""s3dlio-loader: a multi-process data loader for PyTorch, JAX and TensorFlow over object storage.

Importing this package imports no ML framework; each adapter imports its framework when used.
"""

from __future__ import annotations

from .datagen import DataGenerator, generate_data, generate_dataset, put_template
from .engine import Dataset, Loader, LoaderOptions, Manifest, WorkerDiedError, WorkerError
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
from .options import StoreOptions
from .storage import ObjectInfo, Store, parse_uri, store_for
from .storage.multi import MultiEndpointStore, create_multi_endpoint_store

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "ConfigError",
    "DataGenerator",
    "Dataset",
    "DirectIOError",
    "FormatError",
    "InvalidRangeError",
    "Loader",
    "LoaderOptions",
    "Manifest",
    "MissingDependencyError",
    "MultiEndpointStore",
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
    "create_multi_endpoint_store",
    "generate_data",
    "generate_dataset",
    "parse_uri",
    "put_template",
    "store_for",
]
