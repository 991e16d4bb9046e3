"""Shard objects: how tensors are packed into safetensors files of about ``shard_size`` bytes.

A shard is a valid `safetensors <https://huggingface.co/docs/safetensors>`_ file: an 8-byte
little-endian header length, a JSON header (padded with spaces so that the data starts at a
multiple of 64 bytes), then the tensors' bytes back to back. Tensors are ordered by element
size, largest first (as safetensors itself does), so every tensor starts at a multiple of its
element size and can be viewed in place without an alignment fault.

A tensor larger than what is left in a shard continues in the next one (it *spans* shards):
objects stay close to ``shard_size``, so a checkpoint with one 4 GiB embedding is still
uploaded and fetched as many objects in parallel. In the safetensors header a whole tensor
appears with its dtype and shape; a piece of a spanning tensor, or a dtype safetensors has no
code for, appears as raw ``U8`` bytes. The manifest, not the header, is what the loader reads.

>>> import numpy as np
>>> from s3dlio_loader.checkpoint.tree import flatten
>>> _, leaves = flatten({"model": {"a": np.zeros(1000, np.float32), "b": np.zeros(10, np.int8)}})
>>> shards = plan_shards(leaves, shard_size=2048, step=1)
>>> for s in shards:
...     print(s.name, [(leaves[p.leaf].name, p.start, p.nbytes) for p in s.parts])
shard-00000.safetensors [('model.a', 0, 2048)]
shard-00001.safetensors [('model.a', 2048, 1952), ('model.b', 0, 10)]
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from .dtypes import DTYPES
from .tree import Leaf

#: The data section of a shard starts at a multiple of this many bytes.
DATA_ALIGNMENT = 64


def shard_name(index: int) -> str:
    """The object name of shard ``index`` inside a step directory."""
    return f"shard-{index:05d}.safetensors"


@dataclass
class Part:
    """Bytes ``[start, start + nbytes)`` of leaf ``leaf``, stored at ``offset`` in the shard object."""

    leaf: int
    start: int
    nbytes: int
    offset: int = 0
    crc: int = 0


@dataclass
class Shard:
    """One shard object: its parts in file order and its encoded safetensors header."""

    index: int
    parts: list[Part] = field(default_factory=list)
    header: bytes = b""

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def data_offset(self) -> int:
        return len(self.header)

    @property
    def size(self) -> int:
        return len(self.header) + sum(p.nbytes for p in self.parts)


PADDING = -1  #: ``Part.leaf`` of the zero bytes that keep the next array aligned


def plan_shards(leaves: list[Leaf], shard_size: int, *, step: int) -> list[Shard]:
    """Pack ``leaves`` into shards of at most ``shard_size`` data bytes (see the module docstring).

    * A tensor of at most a quarter of ``shard_size`` that does not fit in the current shard
      starts the next one instead of being cut; larger ones fill the current shard and continue.
    * Each top-level entry of the state that is a container (``"model"``, ``"optimizer"``...)
      starts a new shard once the current one is an eighth full: arrays loaded from object
      stores are views of their shard's buffer, so an entry dropped after loading frees its
      memory without waiting for the others, while small entries still share shards.
    * Every array starts at a multiple of its element size (up to 16) from the data start;
      where the order alone does not ensure it, a few zero bytes are inserted, described in
      the header as a ``U8`` entry named ``__padding_<offset>__`` (safetensors allows no holes).
    """
    order = sorted(range(len(leaves)), key=lambda i: (leaves[i].group, -DTYPES[leaves[i].dtype].itemsize, i))
    min_piece = max(1, min(1 << 20, shard_size // 16))
    shards: list[Shard] = []
    current = Shard(0)
    used = 0

    def close() -> None:
        nonlocal current, used
        if current.parts:
            shards.append(current)
            current = Shard(len(shards))
        used = 0

    def place(index: int, start: int, nbytes: int, align: int) -> None:
        nonlocal used
        pad = -used % align
        if pad:
            current.parts.append(Part(PADDING, 0, pad))
            used += pad
        current.parts.append(Part(index, start, nbytes))
        used += nbytes

    group = None
    for i in order:
        leaf = leaves[i]
        if leaf.group != group:
            if used >= shard_size // 8:
                close()
            group = leaf.group
        total = leaf.nbytes
        item = DTYPES[leaf.dtype].itemsize
        align = min(item, 16)
        if total == 0:
            current.parts.append(Part(i, 0, 0))
            continue
        start = 0
        while start < total:
            room = shard_size - used - (-used % align)
            rest = total - start
            if rest <= room:
                place(i, start, rest, align)
                break
            take = room - room % item if room > 0 else 0
            small = start == 0 and total <= shard_size // 4
            if used and (small or take < min(rest, min_piece)):
                close()
                continue
            take = max(take, min(rest, item))  # an empty shard always takes at least one element
            place(i, start, take, align)
            start += take
            close()
    close()
    for shard in shards:
        _encode_header(shard, leaves, step)
    return shards


def _encode_header(shard: Shard, leaves: list[Leaf], step: int) -> None:
    entries: dict[str, Any] = {"__metadata__": {"format": "s3dlio-loader", "step": str(step)}}
    position = 0
    for part in shard.parts:
        if part.leaf == PADDING:
            entries[f"__padding_{position}__"] = {"dtype": "U8", "shape": [part.nbytes],
                                                  "data_offsets": [position, position + part.nbytes]}
            position += part.nbytes
            continue
        leaf = leaves[part.leaf]
        code = DTYPES[leaf.dtype].safetensors
        whole = part.start == 0 and part.nbytes == leaf.nbytes
        name = leaf.name if whole else f"{leaf.name}[{part.start}:{part.start + part.nbytes}]"
        if whole and code is not None:
            entry = {"dtype": code, "shape": list(leaf.shape)}
        else:
            entry = {"dtype": "U8", "shape": [part.nbytes]}
        entry["data_offsets"] = [position, position + part.nbytes]
        entries[name] = entry
        position += part.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode("ascii")
    pad = -(8 + len(text)) % DATA_ALIGNMENT
    text += b" " * pad
    shard.header = struct.pack("<Q", len(text)) + text
    offset = len(shard.header)
    for part in shard.parts:
        part.offset = offset
        offset += part.nbytes


def parse_header(data: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data starts.

    Only the first ``8 + header length`` bytes are needed. Raises ValueError on a malformed header.
    """
    view = memoryview(data)
    if view.nbytes < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", view[:8])
    if length > view.nbytes - 8 or length > 100 << 20:
        raise ValueError(f"header length {length} is not plausible")
    header = json.loads(bytes(view[8 : 8 + length]))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + length


__all__ = ["DATA_ALIGNMENT", "PADDING", "Part", "Shard", "parse_header", "plan_shards", "shard_name"]
