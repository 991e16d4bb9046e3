"""The manifest: the JSON document that makes a checkpoint exist.

It is written last, after every shard is stored, so a step directory without one is an
unfinished save and is invisible to :meth:`CheckpointStore.list`. It holds the state tree
(see :mod:`.tree`), and for each array its kind, dtype, shape and the shard pieces that hold
its bytes, each with a CRC32C. Loading parses it with :func:`json.loads` and checks every
field against this schema before touching any shard: no value in it is ever executed,
imported or used as a path outside the step directory.

Example (abridged)::

    {"format": "s3dlio-loader.checkpoint", "version": 1, "step": 100, "checksum": "crc32c",
     "created": 1732300000.0, "library": "s3dlio-loader 0.1.0", "total_bytes": 1048576,
     "metadata": {"epoch": 3},
     "shards": [{"file": "shard-00000.safetensors", "size": 1048704, "data_offset": 128}],
     "arrays": [{"name": "model.fc.weight", "kind": "torch", "dtype": "bfloat16", "shape": [512, 1024],
                 "parts": [[0, 128, 1048576, 2874512391]]}],
     "tree": {"t": "dict", "k": ["model"], "v": [{"t": "odict", "k": ["fc.weight"], "v": [{"t": "ref", "i": 0}]}]}}

Each part is ``[shard index, byte offset in the shard object, byte count, crc32c]``; the
parts of an array, in order, are its bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from .dtypes import DType, lookup
from .errors import CheckpointCorruptError
from .tree import KINDS

FORMAT = "s3dlio-loader.checkpoint"
VERSION = 1
MANIFEST_NAME = "manifest.json"
_SHARD_FILE = re.compile(r"shard-\d{5,9}\.safetensors")
_MAX_DIMS = 64


@dataclass(frozen=True)
class ArrayPart:
    shard: int
    offset: int
    nbytes: int
    crc: int


@dataclass(frozen=True)
class ArrayEntry:
    """One stored array, as described by a validated manifest."""

    name: str
    kind: str
    dtype: DType
    shape: tuple[int, ...]
    nbytes: int
    parts: tuple[ArrayPart, ...]


@dataclass(frozen=True)
class ShardEntry:
    file: str
    size: int
    data_offset: int


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest."""

    step: int
    shards: tuple[ShardEntry, ...]
    arrays: tuple[ArrayEntry, ...]
    tree: Any
    metadata: Any
    created: float | None
    raw: dict[str, Any]

    @property
    def total_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def encode(document: dict[str, Any]) -> bytes:
    """The manifest as compact JSON (strict: NaN or infinity in user metadata is refused)."""
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")


def check_metadata(metadata: Any) -> Any:
    """``metadata`` if it is plain JSON (dict/list/str/int/float/bool/None), else ValueError."""
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be plain JSON data (dicts with str keys, lists, str, numbers, "
                         f"bools, None; no NaN): {exc}") from None
    return metadata


def decode(data: bytes, *, uri: str, step: int | None = None) -> Manifest:
    """Parse and validate a manifest read from ``uri``.

    Raises:
        CheckpointCorruptError: not JSON, or not a manifest this version can read.
    """

    def bad(message: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"invalid checkpoint manifest {uri}: {message}", uri=uri)

    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format") != FORMAT:
        raise bad(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("version") != VERSION:
        raise bad(f"version {doc.get('version')!r} is not supported by this library (reads version {VERSION})")
    found_step = doc.get("step")
    if not _is_int(found_step) or found_step < 0 or (step is not None and found_step != step):
        raise bad(f"step {found_step!r} does not match the directory's step {step}")
    if doc.get("checksum") not in ("crc32c",):
        raise bad(f"unknown checksum {doc.get('checksum')!r}")

    shards_raw = doc.get("shards")
    if not isinstance(shards_raw, list):
        raise bad("'shards' is not a list")
    shards = []
    for i, s in enumerate(shards_raw):
        if not isinstance(s, dict):
            raise bad(f"shard {i} is not an object")
        file, size, data_offset = s.get("file"), s.get("size"), s.get("data_offset")
        if not isinstance(file, str) or not _SHARD_FILE.fullmatch(file):
            raise bad(f"shard {i} has an invalid file name {file!r}")
        if not _is_int(size) or not _is_int(data_offset) or not 8 <= data_offset <= size:
            raise bad(f"shard {i} has an invalid size {size!r} / data offset {data_offset!r}")
        shards.append(ShardEntry(file, size, data_offset))

    arrays_raw = doc.get("arrays")
    if not isinstance(arrays_raw, list):
        raise bad("'arrays' is not a list")
    arrays = []
    for i, a in enumerate(arrays_raw):
        if not isinstance(a, dict):
            raise bad(f"array {i} is not an object")
        name, kind, shape, parts_raw = a.get("name"), a.get("kind"), a.get("shape"), a.get("parts")
        if not isinstance(name, str):
            raise bad(f"array {i} has no name")
        if kind not in KINDS:
            raise bad(f"array {name!r} has an unknown kind {kind!r}")
        try:
            dtype = lookup(a.get("dtype"), where=f"array {name!r}")
        except Exception as exc:
            raise bad(str(exc)) from None
        if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
                or not all(_is_int(d) and d >= 0 for d in shape)):
            raise bad(f"array {name!r} has an invalid shape {shape!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        if not isinstance(parts_raw, list):
            raise bad(f"array {name!r} has no parts list")
        parts = []
        for p in parts_raw:
            if not (isinstance(p, list) and len(p) == 4 and all(_is_int(x) for x in p)):
                raise bad(f"array {name!r} has an invalid part {p!r}")
            shard, offset, count, crc = p
            if not 0 <= shard < len(shards):
                raise bad(f"array {name!r} refers to shard {shard}, which does not exist")
            entry = shards[shard]
            if offset < entry.data_offset or count < 0 or offset + count > entry.size:
                raise bad(f"array {name!r} part [{offset}, {offset + count}) lies outside {entry.file} "
                          f"(data from {entry.data_offset} to {entry.size})")
            if not 0 <= crc < 1 << 32:
                raise bad(f"array {name!r} has an invalid crc32c {crc!r}")
            parts.append(ArrayPart(shard, offset, count, crc))
        if sum(p.nbytes for p in parts) != nbytes:
            raise bad(f"array {name!r}: its parts hold {sum(p.nbytes for p in parts)} bytes, its dtype and "
                      f"shape need {nbytes}")
        arrays.append(ArrayEntry(name, kind, dtype, tuple(shape), nbytes, tuple(parts)))
    if kinds_invalid := [a.name for a in arrays if a.kind == "bytes" and (a.dtype.name != "uint8"
                                                                          or len(a.shape) != 1)]:
        raise bad(f"bytes values {kinds_invalid} must be 1-D uint8")

    created = doc.get("created")
    return Manifest(
        step=found_step,
        shards=tuple(shards),
        arrays=tuple(arrays),
        tree=doc.get("tree"),
        metadata=doc.get("metadata"),
        created=float(created) if isinstance(created, int | float) and not isinstance(created, bool) else None,
        raw=doc,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int


__all__ = ["FORMAT", "MANIFEST_NAME", "VERSION", "ArrayEntry", "ArrayPart", "Manifest", "ShardEntry",
           "check_metadata", "decode", "encode"]
