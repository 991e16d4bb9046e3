"""Element types a checkpoint can hold, by name, and the frameworks they map to.

A tensor is stored as its raw little-endian bytes plus a dtype *name* from :data:`DTYPES`
(``"bfloat16"``, ``"float8_e4m3fn"``, ``"complex32"``...). Names read back from a manifest
are looked up in this table only, never passed to ``np.dtype()`` or ``getattr(torch, ...)``
unchecked, so an edited manifest cannot ask for object arrays or anything else.

Frameworks are imported lazily; a missing one raises
:class:`~s3dlio_loader.errors.MissingDependencyError` naming the extra to install.

>>> DTYPES["bfloat16"].itemsize, DTYPES["bfloat16"].safetensors
(2, 'BF16')
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MissingDependencyError
from .errors import CheckpointError


@dataclass(frozen=True)
class DType:
    """One storable element type.

    Attributes:
        name: the canonical name (numpy's / ml_dtypes' / torch's spelling, which agree).
        itemsize: bytes per element.
        safetensors: the safetensors dtype code, or None when the format has none (the shard
            header then describes the tensor as raw ``U8`` bytes).
        numpy: ``"builtin"``, ``"ml_dtypes"``, or None (no numpy equivalent).
        torch: True when torch has this dtype (``torch.<name>``).
        x64: a 64-bit type, which JAX keeps only with ``jax_enable_x64``.
    """

    name: str
    itemsize: int
    safetensors: str | None
    numpy: str | None
    torch: bool
    x64: bool = False


def _table() -> dict[str, DType]:
    rows = [
        DType("bool", 1, "BOOL", "builtin", True),
        DType("uint8", 1, "U8", "builtin", True),
        DType("int8", 1, "I8", "builtin", True),
        DType("int16", 2, "I16", "builtin", True),
        DType("uint16", 2, "U16", "builtin", True),
        DType("int32", 4, "I32", "builtin", True),
        DType("uint32", 4, "U32", "builtin", True),
        DType("int64", 8, "I64", "builtin", True, x64=True),
        DType("uint64", 8, "U64", "builtin", True, x64=True),
        DType("float16", 2, "F16", "builtin", True),
        DType("bfloat16", 2, "BF16", "ml_dtypes", True),
        DType("float32", 4, "F32", "builtin", True),
        DType("float64", 8, "F64", "builtin", True, x64=True),
        DType("complex32", 4, None, "ml_dtypes", True),
        DType("complex64", 8, None, "builtin", True),
        DType("complex128", 16, None, "builtin", True, x64=True),
        DType("float8_e4m3fn", 1, "F8_E4M3", "ml_dtypes", True),
        DType("float8_e5m2", 1, "F8_E5M2", "ml_dtypes", True),
        DType("float8_e4m3fnuz", 1, None, "ml_dtypes", True),
        DType("float8_e5m2fnuz", 1, None, "ml_dtypes", True),
        DType("float8_e8m0fnu", 1, None, "ml_dtypes", True),
        DType("float4_e2m1fn_x2", 1, None, None, True),
        # ml_dtypes-only types (JAX arrays, numpy arrays with ml_dtypes): one element per byte.
        DType("bcomplex32", 4, None, "ml_dtypes", False),
        DType("float8_e4m3b11fnuz", 1, None, "ml_dtypes", False),
        DType("float8_e3m4", 1, None, "ml_dtypes", False),
        DType("float8_e4m3", 1, None, "ml_dtypes", False),
        DType("float6_e2m3fn", 1, None, "ml_dtypes", False),
        DType("float6_e3m2fn", 1, None, "ml_dtypes", False),
        DType("float4_e2m1fn", 1, None, "ml_dtypes", False),
        DType("int1", 1, None, "ml_dtypes", False),
        DType("int2", 1, None, "ml_dtypes", False),
        DType("int4", 1, None, "ml_dtypes", False),
        DType("uint1", 1, None, "ml_dtypes", False),
        DType("uint2", 1, None, "ml_dtypes", False),
        DType("uint4", 1, None, "ml_dtypes", False),
    ]
    return {d.name: d for d in rows}


#: Every dtype a checkpoint may contain, by canonical name.
DTYPES: dict[str, DType] = _table()

_TORCH_EXTRA = "pip install 's3dlio-loader[torch]'"
_JAX_EXTRA = "pip install 's3dlio-loader[jax]'"


# ---------------------------------------------------------------------- frameworks


def import_torch(why: str = "torch tensors") -> Any:
    """``torch``, or MissingDependencyError naming the extra."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(f"{why} need PyTorch, which is not installed: {_TORCH_EXTRA}") from exc
    return torch


def import_jax(why: str = "JAX arrays") -> Any:
    """``jax``, or MissingDependencyError naming the extra."""
    try:
        import jax
    except ImportError as exc:
        raise MissingDependencyError(f"{why} need JAX, which is not installed: {_JAX_EXTRA}") from exc
    return jax


def _ml_dtypes(name: str) -> Any:
    try:
        import ml_dtypes
    except ImportError as exc:
        raise MissingDependencyError(
            f"the numpy dtype {name} comes from the ml_dtypes package, which is not installed: "
            f"pip install ml_dtypes (it comes with {_JAX_EXTRA})"
        ) from exc
    return ml_dtypes


def loaded_module(name: str) -> Any:
    """The module if it is already imported, else None (never imports it)."""
    return sys.modules.get(name)


# ---------------------------------------------------------------------- to names


def name_of_numpy(dtype: np.dtype[Any]) -> str | None:
    """The canonical name of a numpy dtype (byte order ignored), or None if it cannot be stored."""
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    entry = DTYPES.get(dtype.name)
    if entry is None:
        return None
    if dtype.kind in "biufc":
        return entry.name if entry.numpy == "builtin" else None
    module = getattr(dtype.type, "__module__", "") or ""
    return entry.name if entry.numpy == "ml_dtypes" and module.startswith("ml_dtypes") else None


def name_of_torch(dtype: Any) -> str | None:
    """The canonical name of a ``torch.dtype``, or None if it cannot be stored."""
    name = str(dtype).removeprefix("torch.")
    entry = DTYPES.get(name)
    return name if entry is not None and entry.torch else None


# ---------------------------------------------------------------------- from names


def lookup(name: object, *, where: str) -> DType:
    """The table entry for a name read from a manifest (CheckpointError if unknown)."""
    entry = DTYPES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise CheckpointError(f"{where}: unknown dtype {name!r}")
    return entry


def numpy_dtype(entry: DType, *, what: str) -> np.dtype[Any]:
    """The numpy dtype of ``entry`` (ml_dtypes for bfloat16, float8...)."""
    if entry.numpy == "builtin":
        return np.dtype(entry.name)
    if entry.numpy == "ml_dtypes":
        module = _ml_dtypes(entry.name)
        kind = getattr(module, entry.name, None)
        if kind is None:
            raise MissingDependencyError(
                f"{what} has dtype {entry.name}, which this ml_dtypes version lacks: pip install -U ml_dtypes"
            )
        return np.dtype(kind)
    raise CheckpointError(f"{what} has dtype {entry.name}, which numpy cannot represent: load it with as_='torch'")


def torch_dtype(entry: DType, *, what: str) -> Any:
    """The ``torch.dtype`` of ``entry``."""
    torch = import_torch()
    value = getattr(torch, entry.name, None) if entry.torch else None
    if value is None or not isinstance(value, torch.dtype):
        raise CheckpointError(
            f"{what} has dtype {entry.name}, which this PyTorch ({torch.__version__}) does not have: "
            "load it with as_='numpy' (or 'jax')"
        )
    return value


__all__ = [
    "DTYPES",
    "DType",
    "import_jax",
    "import_torch",
    "loaded_module",
    "lookup",
    "name_of_numpy",
    "name_of_torch",
    "numpy_dtype",
    "torch_dtype",
]
