"""``torch.distributed.checkpoint`` storage on any URI (s3://, gs://, az://, file://, direct://).

Usage::

    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=DCPStorageWriter("s3://bucket/ckpt/step-100", storage_options))
    dcp.load(state, storage_reader=DCPStorageReader("s3://bucket/ckpt/step-100", storage_options))

Layout of one DCP checkpoint (a directory per checkpoint, as with ``FileSystemWriter``)::

    <uri>/r00000-00000.data   rank 0's items, concatenated raw bytes (several files of ~shard_size)
    <uri>/r00001-00000.data   rank 1's items
    <uri>/metadata.json       written last, by the coordinator: the checkpoint exists from here on

How it differs from torch's ``FileSystemWriter`` / ``FileSystemReader``:

* no pickle in what this module reads: tensors are stored as raw little-endian bytes with
  their dtype and shape, and the metadata is JSON (torch pickles both). Non-tensor values are
  still pickled by DCP's planner (``torch.save`` into a buffer, ``BYTE_IO`` items); before the
  planner sees one, the reader checks that torch's ``weights_only`` unpickler accepts it, so
  a checkpoint cannot make the default load planner run arbitrary code
  (``allow_pickle=True`` skips the check, for checkpoints you trust that hold custom objects);
* every item has a CRC32C, checked on load;
* files are written and read concurrently through the Store (any backend), each rank's
  items split into files of about ``shard_size`` bytes, and read with one request per run of
  needed items;
* an existing checkpoint at the URI is replaced safely: the coordinator deletes the old
  metadata (so the old checkpoint is no longer visible) and the old files before any rank
  writes (``overwrite=False`` raises instead).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import io
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from ..errors import ConfigError, InvalidRangeError, ObjectNotFoundError, S3dlioError
from ..storage import Store, parse_uri
from . import dtypes
from .errors import CheckpointCorruptError, CheckpointError, CheckpointExistsError, CheckpointNotFoundError
from .memory import adopt, byte_array, crc32c, empty, pread_into, staging_bytearray
from .options import CheckpointOptions
from .tree import flatten, unflatten

FORMAT = "s3dlio-loader.dcp"
VERSION = 1
DCP_METADATA_VERSION = "1.0.0"
_LOCAL = ("file", "direct")
_GAP = 1 << 20  # needed items this close together are fetched with one request


def _metadata_name(rank: int | None) -> str:
    return "metadata.json" if rank is None else f"metadata.rank-{rank:05d}.json"


@dataclass(frozen=True)
class _RankFiles:
    """``SavePlan.storage_data``: the file name prefix of one rank."""

    prefix: str


@dataclass(frozen=True)
class StoredItem:
    """Where one DCP item is stored (``WriteResult.storage_data`` and ``Metadata.storage_data``)."""

    file: str
    offset: int
    length: int
    crc32c: int
    dtype: str | None = None  # tensors: the element type
    shape: tuple[int, ...] | None = None  # tensors: the stored chunk's shape


class _Base:
    """What the writer and the reader share: URI, store, options."""

    def __init__(self, uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None,
                 options: CheckpointOptions | None, store: Store | None, overrides: dict[str, Any]) -> None:
        base = options if options is not None else CheckpointOptions.from_env()
        self.options = base.replace(**overrides) if overrides else base
        self.uri = self._normalize(uri)
        self._store = store if store is not None else Store.from_uri(self.uri, storage_options)
        if self._store.scheme != parse_uri(self.uri).scheme:
            raise ConfigError(f"the store serves {self._store.scheme}:// but the checkpoint URI is {self.uri}")
        self.rank: int | None = None
        self.use_collectives = True

    @staticmethod
    def _normalize(uri: str | os.PathLike[str]) -> str:
        return parse_uri(os.fspath(uri)).uri.rstrip("/")

    def _reset_uri(self, checkpoint_id: str | os.PathLike[str] | None) -> None:
        if checkpoint_id:
            uri = self._normalize(checkpoint_id)
            if parse_uri(uri).scheme != self._store.scheme:
                raise ConfigError(f"checkpoint_id {uri} is not on this writer's backend ({self._store.scheme}://)")
            self.uri = uri

    def _child(self, name: str) -> str:
        return f"{self.uri}/{name}"

    @property
    def checkpoint_id(self) -> str:
        """The checkpoint directory URI."""
        return self.uri

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        try:
            parse_uri(os.fspath(checkpoint_id))
        except (S3dlioError, TypeError):
            return False
        return True

    def _parallel(self, fn: Any, items: list[Any]) -> list[Any]:
        if len(items) <= 1 or self.options.max_in_flight == 1:
            return [fn(item) for item in items]
        with cf.ThreadPoolExecutor(min(self.options.max_in_flight, len(items)),
                                   thread_name_prefix="s3dlio-dcp") as pool:
            return list(pool.map(fn, items))

    def _fsync(self, uri: str) -> None:
        scheme, path = parse_uri(uri)
        if scheme in _LOCAL and self.options.fsync:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ---------------------------------------------------------------------- writer


class DCPStorageWriter(_Base, StorageWriter):
    """A ``torch.distributed.checkpoint.StorageWriter`` for any URI (see the module docstring).

    Args:
        uri: the checkpoint directory (one directory per checkpoint). ``dcp.save(...,
            checkpoint_id=...)`` replaces it.
        storage_options: fsspec options for the backend.
        overwrite: replace a checkpoint that already exists at the URI (default, as torch's
            FileSystemWriter); False raises :class:`CheckpointExistsError`.
        options / store / **option_overrides: as for :class:`~s3dlio_loader.checkpoint.CheckpointStore`
            (``shard_size``: size of the data files; ``max_in_flight``: files written at once).
    """

    def __init__(self, uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, *,
                 overwrite: bool = True, options: CheckpointOptions | None = None, store: Store | None = None,
                 **option_overrides: Any) -> None:
        _Base.__init__(self, uri, storage_options, options, store, option_overrides)
        self.overwrite = overwrite
        self.save_id = uuid.uuid4().hex
        self.is_coordinator = False

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._reset_uri(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")
        self.use_collectives = kwargs.get("use_collectives", True)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.uri, save_id=self.save_id)

    def _clear(self, metadata_uri: str, *, everything: bool) -> None:
        if self._store.exists(metadata_uri):
            if not self.overwrite:
                raise CheckpointExistsError(f"a checkpoint already exists at {self.uri} (overwrite=False)",
                                            uri=self.uri)
            self._store.delete(metadata_uri)  # no longer a checkpoint, before anything is replaced
        if everything:
            self._store.delete(self.uri + "/", recursive=True)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if not self.use_collectives and self.rank is not None:
            # No coordinator: each rank owns its files and its metadata.
            prefix = f"r{self.rank:05d}-"
            self._clear(self._child(_metadata_name(self.rank)), everything=False)
            stale = [o.uri for o in self._store.list(self.uri + "/") if o.uri.rsplit("/", 1)[-1].startswith(prefix)]
            if stale:
                self._store.delete(stale)
            return dataclasses.replace(plan, storage_data=_RankFiles(f"r{self.rank:05d}"))
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # The coordinator runs this before any rank writes: the safe moment to clear the directory.
        self._clear(self._child(_metadata_name(None)), everything=True)
        return [dataclasses.replace(plan, storage_data=_RankFiles(f"r{i:05d}"))
                if not isinstance(plan.storage_data, _RankFiles) else plan
                for i, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        prefix = plan.storage_data.prefix if isinstance(plan.storage_data, _RankFiles) else f"r{self.rank or 0:05d}"
        groups = _split_items(plan.items, self.options.shard_size)
        jobs = [(f"{prefix}-{k:05d}.data", group) for k, group in enumerate(groups)]
        results: list[WriteResult] = []
        for written in self._parallel(lambda job: self._write_file(job[0], job[1], planner), jobs):
            results.extend(written)
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def _write_file(self, name: str, items: list[WriteItem], planner: SavePlanner) -> list[WriteResult]:
        pieces: list[np.ndarray] = []
        results: list[WriteResult] = []
        offset = 0
        for item in items:
            data: Any = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                buf = byte_array(data.getvalue())
                dtype_name, shape = None, None
            else:
                tensor = data.detach()
                if tensor.device.type != "cpu":
                    tensor = tensor.cpu()
                if tensor.is_conj():
                    tensor = tensor.resolve_conj()
                if tensor.is_neg():
                    tensor = tensor.resolve_neg()
                tensor = tensor.contiguous()
                dtype_name = dtypes.name_of_torch(tensor.dtype)
                if dtype_name is None:
                    raise CheckpointError(f"{item.index.fqn}: tensors of dtype {tensor.dtype} are not supported")
                shape = tuple(int(s) for s in tensor.shape)
                buf = tensor.reshape(-1).view(torch.uint8).numpy()
            location = StoredItem(name, offset, int(buf.nbytes), crc32c(buf), dtype_name, shape)
            results.append(WriteResult(index=item.index, size_in_bytes=int(buf.nbytes), storage_data=location))
            pieces.append(buf)
            offset += int(buf.nbytes)
        uri = self._child(name)
        if self._store.scheme in _LOCAL:
            with self._store.open_writer(uri) as writer:
                for piece in pieces:
                    writer.write(piece.data)
            self._fsync(uri)
        else:
            body = staging_bytearray(offset)
            dest = byte_array(body)
            position = 0
            for piece in pieces:
                dest[position : position + piece.nbytes] = piece
                position += piece.nbytes
            self._store.put(uri, body)
        return results

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        storage: dict[MetadataIndex, StoredItem] = {}
        for rank_results in results:
            for result in rank_results:
                storage[result.index] = result.storage_data
        metadata.storage_data = storage
        metadata.storage_meta = self.storage_meta()
        if metadata.version is None:
            metadata.version = DCP_METADATA_VERSION
        name = _metadata_name(self.rank if not self.use_collectives and self.rank is not None else None)
        uri = self._child(name)
        body = json.dumps(_encode_metadata(metadata), separators=(",", ":"), allow_nan=False).encode()
        if self._store.scheme == "direct":
            with self._store.open_writer(uri) as writer:
                writer.write(body)
        else:
            self._store.put(uri, body)
        self._fsync(uri)


def _item_size(item: WriteItem) -> int:
    if item.tensor_data is not None:
        return int(item.tensor_storage_size() or 0)
    return int(item.bytes_io_data.nbytes) if item.bytes_io_data is not None else 0


def _split_items(items: list[WriteItem], target: int) -> list[list[WriteItem]]:
    """Items in groups of about ``target`` bytes (an item larger than that is a group of its own)."""
    groups: list[list[WriteItem]] = []
    current: list[WriteItem] = []
    size = 0
    for item in items:
        n = _item_size(item)
        if current and size + n > target:
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        groups.append(current)
    return groups


# ---------------------------------------------------------------------- metadata as JSON


def _encode_metadata(metadata: Metadata) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            entries[fqn] = {"type": "bytes"}
        elif isinstance(md, TensorStorageMetadata):
            name = dtypes.name_of_torch(md.properties.dtype)
            if name is None:
                raise CheckpointError(f"{fqn}: tensors of dtype {md.properties.dtype} are not supported")
            entries[fqn] = {
                "type": "tensor", "dtype": name, "size": list(md.size),
                "requires_grad": bool(md.properties.requires_grad),
                "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in md.chunks],
            }
        else:
            raise CheckpointError(f"{fqn}: unknown DCP storage metadata {type(md).__qualname__}")
    storage = []
    for index, item in (metadata.storage_data or {}).items():
        storage.append({
            "fqn": index.fqn, "offset": None if index.offset is None else list(index.offset), "index": index.index,
            "file": item.file, "byte_offset": item.offset, "length": item.length, "crc32c": item.crc32c,
            "dtype": item.dtype, "shape": None if item.shape is None else list(item.shape),
        })
    try:
        planner_tree, arrays = flatten(metadata.planner_data, root="planner_data")
    except CheckpointError as exc:
        raise CheckpointError(f"the planner's data cannot be stored as JSON: {exc}") from None
    if arrays:
        raise CheckpointError("the planner's data holds arrays, which the metadata cannot store")
    meta = metadata.storage_meta
    return {
        "format": FORMAT,
        "version": VERSION,
        "dcp_version": metadata.version,
        "state_dict_metadata": entries,
        "planner_data": planner_tree,
        "storage_data": storage,
        "storage_meta": None if meta is None else {
            "checkpoint_id": None if meta.checkpoint_id is None else os.fspath(meta.checkpoint_id),
            "save_id": meta.save_id, "modules": list(meta.modules),
        },
    }


def _decode_metadata(data: bytes, uri: str) -> Metadata:
    def bad(message: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"invalid DCP metadata {uri}: {message}", uri=uri)

    def ints(value: Any, what: str) -> list[int]:
        if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
            raise bad(f"{what} is not a list of integers >= 0: {value!r}")
        return value

    def text(value: Any, what: str, *, optional: bool = False) -> Any:
        if (value is None and optional) or isinstance(value, str):
            return value
        raise bad(f"{what} is not a string: {value!r}")

    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise bad("not a metadata document of this format and version")
    entries: dict[str, Any] = {}
    raw_entries = doc.get("state_dict_metadata")
    if not isinstance(raw_entries, dict):
        raise bad("state_dict_metadata is not an object")
    for fqn, md in raw_entries.items():
        if not isinstance(md, dict):
            raise bad(f"{fqn}: not an object")
        if md.get("type") == "bytes":
            entries[fqn] = BytesStorageMetadata()
        elif md.get("type") == "tensor":
            try:
                kind = dtypes.torch_dtype(dtypes.lookup(md.get("dtype"), where=fqn), what=fqn)
            except CheckpointError as exc:
                raise bad(str(exc)) from None
            chunks = md.get("chunks")
            if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
                raise bad(f"{fqn}: chunks is not a list of objects")
            entries[fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=kind, requires_grad=md.get("requires_grad") is True),
                size=torch.Size(ints(md.get("size"), f"{fqn} size")),
                chunks=[ChunkStorageMetadata(offsets=torch.Size(ints(c.get("offsets"), f"{fqn} chunk offsets")),
                                             sizes=torch.Size(ints(c.get("sizes"), f"{fqn} chunk sizes")))
                        for c in chunks],
            )
        else:
            raise bad(f"{fqn}: unknown type {md.get('type')!r}")
    storage: dict[MetadataIndex, StoredItem] = {}
    raw_storage = doc.get("storage_data")
    if not isinstance(raw_storage, list):
        raise bad("storage_data is not a list")
    for s in raw_storage:
        if not isinstance(s, dict):
            raise bad("a storage_data entry is not an object")
        file = text(s.get("file"), "file")
        if "/" in file or file in ("", ".", "..") or not file.endswith(".data"):
            raise bad(f"invalid data file name {file!r}")
        byte_offset, length, crc = s.get("byte_offset"), s.get("length"), s.get("crc32c")
        if not (_uint(byte_offset) and _uint(length) and _uint(crc) and crc < 1 << 32):
            raise bad(f"invalid location {byte_offset!r}/{length!r}/{crc!r} in {file}")
        dtype_name = text(s.get("dtype"), "dtype", optional=True)
        shape = s.get("shape")
        if dtype_name is not None:
            try:
                entry = dtypes.lookup(dtype_name, where=file)
            except CheckpointError as exc:
                raise bad(str(exc)) from None
            shape_t = tuple(ints(shape, "shape"))
            if int(np.prod(shape_t, dtype=np.int64)) * entry.itemsize != length:
                raise bad(f"{s.get('fqn')!r}: {length} bytes do not hold {dtype_name} {list(shape_t)}")
        else:
            shape_t = None
        offset = s.get("offset")
        index = s.get("index")
        if index is not None and type(index) is not int:
            raise bad(f"invalid chunk index {index!r}")
        key = MetadataIndex(text(s.get("fqn"), "fqn"), None if offset is None else ints(offset, "offset"), index)
        storage[key] = StoredItem(file, byte_offset, length, crc, dtype_name, shape_t)
    planner_data = unflatten(doc.get("planner_data"), [], where=f"{uri} planner_data")
    meta = doc.get("storage_meta")
    storage_meta = StorageMeta()
    if isinstance(meta, dict):
        storage_meta = StorageMeta(checkpoint_id=text(meta.get("checkpoint_id"), "checkpoint_id", optional=True),
                                   save_id=text(meta.get("save_id"), "save_id", optional=True),
                                   modules=[m for m in meta.get("modules") or [] if isinstance(m, str)])
    version = doc.get("dcp_version")
    return Metadata(state_dict_metadata=entries, planner_data=planner_data, storage_data=storage,
                    storage_meta=storage_meta, version=version if isinstance(version, str) else None)


def _uint(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


# ---------------------------------------------------------------------- reader


class DCPStorageReader(_Base, StorageReader):
    """A ``torch.distributed.checkpoint.StorageReader`` for any URI (see the module docstring).

    Args:
        uri: the checkpoint directory.
        storage_options: fsspec options for the backend.
        verify: check each item's CRC32C (default ``options.verify``).
        allow_pickle: hand DCP's pickled non-tensor values to the planner without first
            checking that torch's ``weights_only`` unpickler accepts them. Only for checkpoints
            you trust.
    """

    def __init__(self, uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, *,
                 verify: bool | None = None, allow_pickle: bool = False, options: CheckpointOptions | None = None,
                 store: Store | None = None, **option_overrides: Any) -> None:
        _Base.__init__(self, uri, storage_options, options, store, option_overrides)
        self.verify = self.options.verify if verify is None else bool(verify)
        self.allow_pickle = allow_pickle
        self.load_id = uuid.uuid4().hex
        self.storage_data: dict[MetadataIndex, StoredItem] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._reset_uri(checkpoint_id)
        self.storage_data = {}
        self.load_id = uuid.uuid4().hex

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        uri = self._child(_metadata_name(kwargs.get("rank")))
        try:
            data = self._store.get(uri)
        except ObjectNotFoundError:
            raise CheckpointNotFoundError(f"no DCP checkpoint at {self.uri} ({uri} does not exist)", uri=uri) from None
        metadata = _decode_metadata(data, uri)
        if metadata.storage_meta is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = dict(metadata.storage_data or {})
        self.rank = kwargs.get("rank")
        self.use_collectives = kwargs.get("use_collectives", True)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        # Which stored items are needed, grouped by file, and which requests want each.
        wanted: dict[str, dict[StoredItem, list[ReadItem]]] = {}
        for request in plan.items:
            item = self.storage_data.get(request.storage_index)
            if item is None:
                raise CheckpointCorruptError(f"{request.storage_index.fqn}: not in the checkpoint's storage data",
                                             uri=self.uri)
            wanted.setdefault(item.file, {}).setdefault(item, []).append(request)
        runs: list[tuple[str, int, int, list[StoredItem]]] = []
        for file, items in wanted.items():
            ordered = sorted(items, key=lambda i: i.offset)
            start, end, members = ordered[0].offset, ordered[0].offset + ordered[0].length, [ordered[0]]
            for item in ordered[1:]:
                if item.offset - end <= _GAP:
                    end = max(end, item.offset + item.length)
                    members.append(item)
                else:
                    runs.append((file, start, end, members))
                    start, end, members = item.offset, item.offset + item.length, [item]
            runs.append((file, start, end, members))

        def fetch(run: tuple[str, int, int, list[StoredItem]]) -> list[tuple[StoredItem, np.ndarray]]:
            file, start, end, members = run
            uri = self._child(file)
            buf = self._read(uri, start, end - start)
            out = []
            for item in members:
                view = buf[item.offset - start : item.offset - start + item.length]
                if self.verify and crc32c(view) != item.crc32c:
                    raise CheckpointCorruptError(
                        f"checksum mismatch in {uri} (bytes {item.offset}..{item.offset + item.length}): "
                        "the checkpoint is damaged", uri=uri)
                out.append((item, view))
            return out

        workers = max(1, min(self.options.max_in_flight, len(runs)))
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="s3dlio-dcp-read") as pool:
            futures = [pool.submit(fetch, run) for run in runs]
            try:
                for done in cf.as_completed(futures):
                    for item, view in done.result():  # planner calls stay on this thread
                        for request in wanted[item.file][item]:
                            self._apply(request, item, view, planner)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _read(self, uri: str, offset: int, length: int) -> np.ndarray:
        try:
            if self._store.scheme == "file":
                buf = empty(length)
                fd = os.open(parse_uri(uri).path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    got = pread_into(fd, offset, [buf])
                finally:
                    os.close(fd)
                if got < length:
                    raise CheckpointCorruptError(f"{uri} is truncated: {got} of {length} bytes at {offset}", uri=uri)
                return buf
            return adopt(self._store.get_range(uri, offset, length))
        except (FileNotFoundError, ObjectNotFoundError):
            raise CheckpointCorruptError(f"{uri} is missing: the checkpoint is damaged", uri=uri) from None
        except InvalidRangeError as exc:
            raise CheckpointCorruptError(f"{uri} is truncated: {exc}", uri=uri) from None

    def _apply(self, request: ReadItem, item: StoredItem, view: np.ndarray, planner: LoadPlanner) -> None:
        fqn = request.storage_index.fqn
        if request.type == LoadItemType.BYTE_IO:
            data = view.tobytes()
            if not self.allow_pickle:
                try:
                    torch.load(io.BytesIO(data), weights_only=True)
                except Exception as exc:
                    raise CheckpointError(
                        f"{fqn}: this value was pickled by DCP and holds objects torch's weights_only loader "
                        f"refuses ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pass "
                        "allow_pickle=True to DCPStorageReader only if you trust this checkpoint", uri=self.uri
                    ) from None
            planner.load_bytes(request, io.BytesIO(data))
            return
        if item.dtype is None or item.shape is None:
            raise CheckpointCorruptError(f"{fqn}: stored without dtype/shape but read as a tensor", uri=self.uri)
        kind = dtypes.torch_dtype(dtypes.lookup(item.dtype, where=fqn), what=fqn)
        with warnings_ignored(item.dtype == "complex32"):
            if item.length == 0:
                tensor = torch.empty(item.shape, dtype=kind)
            else:
                tensor = torch.from_numpy(view).view(kind).reshape(item.shape)
        for dim, (start, length) in enumerate(zip(request.storage_offsets, request.lengths, strict=True)):
            if length < tensor.shape[dim]:
                tensor = tensor.narrow(dim, start, length)
        target = planner.resolve_tensor(request).detach()
        if target.size() != tensor.size():
            raise CheckpointCorruptError(
                f"{fqn}: the stored chunk gives shape {tuple(tensor.shape)}, the destination expects "
                f"{tuple(target.shape)}", uri=self.uri)
        target.copy_(tensor)
        planner.commit_tensor(request, target)


@contextlib.contextmanager
def warnings_ignored(active: bool) -> Any:
    """Silence torch's 'ComplexHalf support is experimental' warning for complex32 data."""
    if not active:
        yield
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


__all__ = ["DCPStorageReader", "DCPStorageWriter", "StoredItem"]
