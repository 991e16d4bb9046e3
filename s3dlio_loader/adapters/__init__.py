"""Framework adapters: thin, framework-shaped wrappers over the engine.

Each adapter module imports its framework when it is itself imported, and importing this
package imports none of them: ``s3dlio_loader.adapters.torch`` is loaded on first use,
e.g. ``from s3dlio_loader.adapters.torch import S3IterableDataset`` or
``s3dlio_loader.adapters.torch`` as an attribute. A missing framework raises
:class:`~s3dlio_loader.errors.MissingDependencyError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Adapter modules of this package, imported on first attribute access.
ADAPTERS = ("torch", "tf", "jax", "grain")


def __getattr__(name: str) -> ModuleType:
    if name in ADAPTERS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__: list[str] = []
