"""The state tree: nested containers of tensors and plain values, to and from JSON.

:func:`flatten` walks a state (``{"model": model.state_dict(), "optimizer": opt.state_dict(),
"step": 10}``, a JAX pytree, numpy arrays...) and returns a JSON-able description of its
structure plus the list of array leaves, each as raw little-endian bytes with a dtype name.
:func:`unflatten` rebuilds the structure from that description and the loaded arrays.

What can be stored:

* containers: ``dict`` (and subclasses, stored as dict) with ``str`` or ``int`` keys,
  ``collections.OrderedDict`` (with the ``_metadata`` torch attaches to a state_dict),
  ``list``, ``tuple`` and named tuples (rebuilt as a named tuple with the same name and fields);
* arrays: ``torch.Tensor`` (dense, any device: copied to host), ``numpy.ndarray`` and numpy
  scalars, ``jax.Array`` (fully addressable), ``bytes``;
* plain values: ``None``, ``bool``, ``int``, ``float`` (NaN and infinities included), ``str``.

Anything else (a function, a custom class, a set, a sparse tensor...) raises
:class:`~s3dlio_loader.checkpoint.errors.UnsupportedStateError` naming its path, e.g.
``state['optimizer']['param_groups'][0]['foo']``, because storing it would need pickle.

The description never holds code: node types are a closed set, named tuple names and fields
must be identifiers, and :func:`unflatten` validates everything it reads.

>>> import numpy as np
>>> tree, leaves = flatten({"w": np.zeros(2, np.float32), "lr": 0.1, "betas": (0.9, 0.99)})
>>> tree["t"], [leaf.dtype for leaf in leaves]
('dict', ['float32'])
>>> unflatten(tree, [np.ones(2, np.float32)])["betas"]
(0.9, 0.99)
"""

from __future__ import annotations

import collections
import keyword
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dtypes
from .errors import CheckpointCorruptError, UnsupportedStateError
from .memory import byte_array

#: Leaf kinds: what the array was saved from, hence what ``as_="auto"`` returns.
KINDS = ("torch", "numpy", "jax", "numpy_scalar", "bytes")

_NODE_TYPES = ("dict", "odict", "list", "tuple", "ntuple", "ref", "float")
_MAX_INT_BITS = 12_000  # ints that json can write without hitting CPython's 4300-digit limit


@dataclass
class Leaf:
    """One array of the state, ready to be written.

    ``data`` is a C-contiguous uint8 view of the little-endian element bytes; ``owner`` keeps
    the memory it points into alive (the host copy of a device tensor, a contiguous copy...).
    """

    kind: str
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray
    path: str
    name: str
    owner: Any = None
    group: int = 0  #: the top-level container of the state it belongs to (numbered as first seen)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def format_path(parts: tuple[Any, ...], root: str = "state") -> str:
    """``state['a'][0]['b']`` for the key path ``('a', 0, 'b')``."""
    return root + "".join(f"[{p!r}]" for p in parts)


# ---------------------------------------------------------------------- flatten


class _Flattener:
    def __init__(self, root: str) -> None:
        self.root = root
        self.leaves: list[Leaf] = []
        self.by_identity: dict[int, int] = {}  # id(obj) -> leaf index (same object twice)
        self.by_storage: dict[tuple[Any, ...], int] = {}  # torch views of the same memory
        self.names: set[str] = set()
        self.groups: dict[Any, int] = {}
        self.active: set[int] = set()  # containers on the current path (cycle detection)
        self.torch = dtypes.loaded_module("torch")
        jax = dtypes.loaded_module("jax")
        self.jax_array = getattr(jax, "Array", None) if jax is not None else None

    def fail(self, parts: tuple[Any, ...], message: str) -> UnsupportedStateError:
        return UnsupportedStateError(message, path=format_path(parts, self.root))

    def node(self, obj: Any, parts: tuple[Any, ...]) -> Any:
        kind = type(obj)
        if obj is None or kind is bool or kind is str:
            return obj
        if kind is int:
            if obj.bit_length() > _MAX_INT_BITS:
                raise self.fail(parts, f"an int of {obj.bit_length()} bits is too large to store")
            return obj
        if kind is float:
            if math.isfinite(obj):
                return obj
            return {"t": "float", "v": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if isinstance(obj, dict):
            return self.mapping(obj, parts)
        if kind is list or kind is tuple:
            return self.sequence(obj, parts, "list" if kind is list else "tuple")
        if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):
            return self.namedtuple(obj, parts)
        ref = self.leaf(obj, parts)
        if ref is not None:
            return {"t": "ref", "i": ref}
        raise self.fail(parts, self.unsupported_message(obj))

    def enter(self, obj: Any, parts: tuple[Any, ...]) -> None:
        if id(obj) in self.active:
            raise self.fail(parts, "the state contains itself (a reference cycle)")
        self.active.add(id(obj))

    def mapping(self, obj: dict[Any, Any], parts: tuple[Any, ...]) -> dict[str, Any]:
        self.enter(obj, parts)
        keys: list[Any] = []
        values: list[Any] = []
        for key, value in obj.items():
            if type(key) is not str and type(key) is not int:
                raise self.fail(
                    parts,
                    f"dict key {key!r} of type {type(key).__qualname__} is not supported (keys must be str or int)",
                )
            keys.append(key)
            values.append(self.node(value, (*parts, key)))
        self.active.discard(id(obj))
        if isinstance(obj, collections.OrderedDict):
            out: dict[str, Any] = {"t": "odict", "k": keys, "v": values}
            meta = getattr(obj, "_metadata", None)
            if meta is not None:
                out["meta"] = _Flattener(f"{format_path(parts, self.root)}._metadata").plain(meta)
            return out
        return {"t": "dict", "k": keys, "v": values}

    def plain(self, obj: Any) -> Any:
        """A value that may hold no arrays (torch's state_dict ``_metadata``)."""
        tree = self.node(obj, ())
        if self.leaves:
            raise self.fail((), "may not contain arrays")
        return tree

    def sequence(self, obj: list[Any] | tuple[Any, ...], parts: tuple[Any, ...], kind: str) -> dict[str, Any]:
        self.enter(obj, parts)
        values = [self.node(v, (*parts, i)) for i, v in enumerate(obj)]
        self.active.discard(id(obj))
        return {"t": kind, "v": values}

    def namedtuple(self, obj: tuple[Any, ...], parts: tuple[Any, ...]) -> dict[str, Any]:
        cls = type(obj)
        fields = list(cls._fields)  # type: ignore[attr-defined]
        if not all(isinstance(f, str) for f in fields) or len(fields) != len(obj):
            raise self.fail(parts, f"{cls.__qualname__} is a tuple subclass that is not a plain named tuple")
        node = self.sequence(obj, parts, "ntuple")
        node["name"] = cls.__name__
        node["fields"] = fields
        return node

    # -- leaves

    def leaf(self, obj: Any, parts: tuple[Any, ...]) -> int | None:
        known = self.by_identity.get(id(obj))
        if known is not None:
            return known
        torch = self.torch
        if torch is not None and isinstance(obj, torch.Tensor):
            index = self.torch_leaf(obj, parts)
        elif isinstance(obj, np.ndarray):
            index = self.numpy_leaf(obj, parts, "numpy")
        elif isinstance(obj, np.generic):
            index = self.numpy_leaf(np.asarray(obj), parts, "numpy_scalar")
        elif self.jax_array is not None and isinstance(obj, self.jax_array):
            index = self.jax_leaf(obj, parts)
        elif type(obj) is bytes:
            index = self.add(parts, "bytes", "uint8", (len(obj),), byte_array(obj), obj)
        else:
            return None
        self.by_identity[id(obj)] = index
        return index

    def add(self, parts: tuple[Any, ...], kind: str, dtype: str, shape: tuple[int, ...], data: np.ndarray,
            owner: Any) -> int:
        name = ".".join(str(p) for p in parts) or "value"
        if name in self.names:
            n = 2
            while f"{name}#{n}" in self.names:
                n += 1
            name = f"{name}#{n}"
        self.names.add(name)
        # Arrays inside a top-level container ("model", "optimizer") are grouped by that entry;
        # arrays at the top level itself (a flat state_dict) all share one group.
        top = (type(parts[0]), parts[0]) if len(parts) > 1 else None
        group = self.groups.setdefault(top, len(self.groups))
        self.leaves.append(Leaf(kind, dtype, shape, data, format_path(parts, self.root), name, owner, group))
        return len(self.leaves) - 1

    def torch_leaf(self, obj: Any, parts: tuple[Any, ...]) -> int:
        torch = self.torch
        t = obj.detach()
        if t.layout != torch.strided:
            raise self.fail(parts, f"a {t.layout} tensor is not supported; convert it with .to_dense() first")
        if t.is_quantized:
            raise self.fail(parts, "quantized tensors are not supported; save .int_repr() and the scale instead")
        if type(t) is not torch.Tensor:
            raise self.fail(
                parts,
                f"tensor subclass {type(t).__qualname__} is not supported (a DTensor or sharded tensor is saved "
                "with torch.distributed.checkpoint and s3dlio_loader.checkpoint.DCPStorageWriter)",
            )
        if t.device.type == "meta":
            raise self.fail(parts, "a tensor on the meta device has no data")
        name = dtypes.name_of_torch(t.dtype)
        if name is None:
            raise self.fail(parts, f"tensors of dtype {t.dtype} are not supported")
        storage_key = None
        if t.device.type == "cpu" and t.numel() > 0:
            storage_key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                           t.dtype)
            known = self.by_storage.get(storage_key)
            if known is not None:
                return known
        elif t.device.type != "cpu":
            t = t.cpu()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        t = t.contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy()
        index = self.add(parts, "torch", name, tuple(int(s) for s in t.shape), data, t)
        if storage_key is not None:
            self.by_storage[storage_key] = index
        return index

    def numpy_leaf(self, arr: np.ndarray, parts: tuple[Any, ...], kind: str) -> int:
        name = dtypes.name_of_numpy(arr.dtype)
        if name is None:
            raise self.fail(parts, f"numpy arrays of dtype {arr.dtype} are not supported")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr = _c_contiguous(arr)
        data = arr.reshape(-1).view(np.uint8)
        return self.add(parts, kind, name, tuple(int(s) for s in arr.shape), data, arr)

    def jax_leaf(self, obj: Any, parts: tuple[Any, ...]) -> int:
        jax = dtypes.loaded_module("jax")
        assert jax is not None
        if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            raise self.fail(parts, "a typed PRNG key array is not supported; save jax.random.key_data(key)")
        if not getattr(obj, "is_fully_addressable", True):
            raise self.fail(
                parts, "a jax.Array sharded over several processes is not supported; gather it or save per process"
            )
        host = np.asarray(obj)
        name = dtypes.name_of_numpy(host.dtype)
        if name is None:
            raise self.fail(parts, f"JAX arrays of dtype {obj.dtype} are not supported")
        host = _c_contiguous(host)
        data = host.reshape(-1).view(np.uint8)
        return self.add(parts, "jax", name, tuple(int(s) for s in host.shape), data, host)

    def unsupported_message(self, obj: Any) -> str:
        kind = type(obj)
        what = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__
        hints = {
            set: "store a sorted list instead",
            frozenset: "store a sorted list instead",
            bytearray: "store bytes(value) instead",
            complex: "store a 0-d numpy array (np.asarray(value)) instead",
        }
        hint = hints.get(kind, "supported values are dict, list, tuple, named tuples, tensors/arrays, bytes, "
                               "None, bool, int, float and str")
        for base in (int, float, str):
            if isinstance(obj, base):
                hint = f"convert it to a plain {base.__qualname__} first"
                break
        return f"cannot store a value of type {what} without pickle; {hint}"


def _c_contiguous(arr: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into a 1-d one.
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def flatten(state: Any, *, root: str = "state") -> tuple[Any, list[Leaf]]:
    """The JSON description of ``state`` and its array leaves (see the module docstring).

    The same array object (or, for torch, the same view of the same memory) reached twice is
    stored once; loading returns one object for both places.

    Raises:
        UnsupportedStateError: a value that cannot be stored, with its path.
    """
    flattener = _Flattener(root)
    return flattener.node(state, ()), flattener.leaves


# ---------------------------------------------------------------------- unflatten

_namedtuple_cache: dict[tuple[str, tuple[str, ...]], type] = {}


def _namedtuple_class(name: Any, fields: Any, where: str) -> type:
    valid = (
        isinstance(name, str)
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and isinstance(fields, list)
        and all(isinstance(f, str) and f.isidentifier() and not keyword.iskeyword(f) and not f.startswith("_")
                for f in fields)
        and len(set(fields)) == len(fields)
    )
    if not valid:
        raise CheckpointCorruptError(f"{where}: invalid named tuple {name!r} with fields {fields!r}")
    key = (name, tuple(fields))
    cls = _namedtuple_cache.get(key)
    if cls is None:
        cls = _namedtuple_cache[key] = collections.namedtuple(name, fields)
    return cls


def unflatten(tree: Any, values: list[Any], *, where: str = "manifest") -> Any:
    """Rebuild the state described by ``tree`` with ``values[i]`` for leaf reference ``i``.

    Raises:
        CheckpointCorruptError: ``tree`` is not a valid description (unknown node type,
            reference out of range, wrong field types...).
    """

    def bad(message: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"{where}: invalid state tree: {message}")

    def build(node: Any, depth: int) -> Any:
        if depth > 10_000:
            raise bad("nesting too deep")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if not isinstance(node, dict):
            raise bad(f"unexpected {type(node).__name__} node")
        kind = node.get("t")
        if kind not in _NODE_TYPES:
            raise bad(f"unknown node type {kind!r}")
        if kind == "ref":
            index = node.get("i")
            if type(index) is not int or not 0 <= index < len(values):
                raise bad(f"array reference {index!r} out of range")
            return values[index]
        if kind == "float":
            special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
            if node.get("v") not in special:
                raise bad(f"float node {node.get('v')!r}")
            return special[node["v"]]
        items = node.get("v")
        if not isinstance(items, list):
            raise bad(f"{kind} node without a value list")
        children = [build(v, depth + 1) for v in items]
        if kind == "list":
            return children
        if kind == "tuple":
            return tuple(children)
        if kind == "ntuple":
            cls = _namedtuple_class(node.get("name"), node.get("fields"), where)
            if len(cls._fields) != len(children):  # type: ignore[attr-defined]
                raise bad(f"named tuple {node.get('name')!r} has {len(children)} values for "
                          f"{len(cls._fields)} fields")  # type: ignore[attr-defined]
            return cls(*children)
        keys = node.get("k")
        if not isinstance(keys, list) or len(keys) != len(children):
            raise bad("dict node whose keys do not match its values")
        for key in keys:
            if type(key) is not str and type(key) is not int:
                raise bad(f"dict key {key!r}")
        if kind == "dict":
            return dict(zip(keys, children, strict=True))
        out: collections.OrderedDict[Any, Any] = collections.OrderedDict(zip(keys, children, strict=True))
        if "meta" in node:
            out._metadata = build(node["meta"], depth + 1)  # type: ignore[attr-defined]
        return out

    try:
        return build(tree, 0)
    except RecursionError:
        raise bad("nesting too deep") from None


def walk_refs(tree: Any, visit: Callable[[int, tuple[Any, ...]], None]) -> None:
    """Call ``visit(index, key_path)`` for every array reference of a (validated) tree."""

    def go(node: Any, parts: tuple[Any, ...]) -> None:
        if not isinstance(node, dict):
            return
        kind = node.get("t")
        if kind == "ref":
            visit(node["i"], parts)
        elif kind in ("dict", "odict"):
            for key, child in zip(node["k"], node["v"], strict=True):
                go(child, (*parts, key))
        elif kind in ("list", "tuple", "ntuple"):
            for i, child in enumerate(node["v"]):
                go(child, (*parts, i))

    go(tree, ())


__all__ = ["KINDS", "Leaf", "flatten", "format_path", "unflatten", "walk_refs"]
