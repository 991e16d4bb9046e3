"""The framework-free loader and its shared-memory prefetch engine.

``Loader(source, format=..., batch_size=..., num_workers=...)`` iterates batches (a dict
of numpy arrays, an array, or a list of samples where shapes differ). With
``num_workers > 0``, worker processes (the ``multiprocess`` package, so transforms may be
lambdas or closures) fetch, decode, transform and collate whole batches and write them into
shared-memory slots; the consumer gets numpy views of those slots without a copy.

Memory: each worker owns ``slots_per_worker`` slots sized from ``memory_budget``. A worker
waits for a free slot before it writes a batch (back-pressure), so memory stays within the
budget whatever the consumer's speed. A slot is free again when the consumer has dropped
every view into the batch it holds (tracked with a weak reference to the batch's lease),
so a batch a user keeps stays valid; a user who keeps every batch makes the pool grow
(with a warning) instead of deadlocking.

Failures: an exception in a worker is raised in the consumer as :class:`WorkerError`
carrying the worker's traceback; a worker that dies (even by SIGKILL) is reported as
:class:`WorkerDiedError` within ``poll_interval`` seconds; closing the loader, garbage
collection, interpreter exit and KeyboardInterrupt all stop the workers and remove every
shared-memory segment, and workers remove theirs and exit if the consumer dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import queue
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, S3dlioError
from ..formats import OnError
from ..options import DOCUMENTED_OPTIONS, OptionsBase, _opt
from ..storage import Store
from . import shm
from .dataset import Dataset, Source
from .plan import EpochOrder, ShardPlan, ShuffleMode, normalize_shuffle, resume_start

log = logging.getLogger(__name__)

MiB = 1 << 20


class WorkerError(S3dlioError):
    """An exception raised in a loader worker, re-raised in the consumer.

    Attributes:
        worker_id: the worker that failed.
        batch: the batch number it was producing.
        worker_traceback: the formatted traceback from the worker process.
    """

    def __init__(self, message: str, *, worker_id: int, batch: int, worker_traceback: str) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.batch = batch
        self.worker_traceback = worker_traceback


class WorkerDiedError(S3dlioError):
    """A loader worker process ended without finishing (killed, crashed, out of memory)."""


@dataclass(frozen=True)
class LoaderOptions(OptionsBase):
    """The prefetch engine of :class:`Loader`."""

    memory_budget: int = _opt(512 * MiB, "Shared memory for prefetched batches across all workers (bytes).")
    slots_per_worker: int = _opt(2, "Batches each worker may have written ahead of the consumer.")
    prefetch_batches: int = _opt(2, "Batches each worker (or the in-process loader) reads ahead, concurrently.")
    start_method: str = _opt("fork", "How workers start: fork (fast) or spawn (no state inherited).")
    poll_interval: float = _opt(0.1, "Seconds between checks that workers are alive while waiting.")
    worker_timeout: float = _opt(0.0, "Seconds to wait for one batch before failing; 0 waits forever.")
    persistent_workers: bool = _opt(
        True, "Keep the workers (and their slots) from one finished epoch to the next instead of starting new ones."
    )

    def __post_init__(self) -> None:
        if self.start_method not in ("fork", "spawn", "forkserver"):
            raise ConfigError(f"start_method must be fork, spawn or forkserver (got {self.start_method!r})")
        for name in ("memory_budget", "slots_per_worker", "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LoaderOptions.{name} must be >= 1 (got {name}={getattr(self, name)!r})")
        if self.poll_interval <= 0 or self.worker_timeout < 0:
            raise ConfigError("poll_interval must be > 0 and worker_timeout >= 0")


DOCUMENTED_OPTIONS.append(LoaderOptions)


class Loader:
    """Iterate batches of a dataset, with optional worker processes and shared memory.

    Args:
        source: a URI prefix or glob, a list of URIs, or a :class:`~s3dlio_loader.Manifest`.
        format: ``"parquet"``, ``"npy"``, ``"npz"``, ``"tfrecord"``, ``"hdf5"``, ``"raw"``
            (inferred from the extension when None).
        batch_size: samples per batch.
        shuffle: ``False``/``"none"``, ``True``/``"global"``, or ``"block"``.
        seed: shuffle seed; the order of an epoch depends only on (seed, epoch).
        num_workers: worker processes (0: everything in this process).
        rank, world_size: this process's shard (``None``: from ``RANK``/``WORLD_SIZE`` in the
            environment, else 0 and 1).
        drop_last: drop the tail so every rank yields the same number of full batches.
        pad: repeat samples so every rank yields the same number of samples (default: when
            ``world_size > 1`` and not ``drop_last``).
        transform: applied to each sample in the worker, before collation.
        collate: turns a list of samples into a batch (default: stack arrays, dicts per key).
        ordered: deliver batches in the plan's order (default) or as they complete.
        shuffle_window: window of the ``block`` shuffle.
        storage_options, store: backend configuration (see :class:`~s3dlio_loader.Store`).
        on_error: ``"raise"`` or ``"skip"`` samples that fail to decode.
        options: engine knobs (:class:`LoaderOptions`); ``**format_options`` go to the reader.

    >>> # loader = Loader("s3://bucket/train/", format="npz", batch_size=64, num_workers=4)
    >>> # for batch in loader: ...
    """

    def __init__(
        self,
        source: Source | Dataset,
        format: str | None = None,
        *,
        batch_size: int = 32,
        shuffle: ShuffleMode | bool = False,
        seed: int = 0,
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        pad: bool | None = None,
        transform: Callable[[Any], Any] | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
        ordered: bool = True,
        shuffle_window: int = 1024,
        storage_options: Mapping[str, Any] | None = None,
        store: Store | None = None,
        on_error: OnError = "raise",
        options: LoaderOptions | None = None,
        **format_options: Any,
    ) -> None:
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0 (got num_workers={num_workers})")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (got batch_size={batch_size})")
        self.dataset = source if isinstance(source, Dataset) else Dataset(
            source, format, storage_options=storage_options, store=store, on_error=on_error, **format_options
        )
        self.batch_size = batch_size
        self.shuffle = normalize_shuffle(shuffle)
        self.seed = int(seed)
        self.num_workers = num_workers
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        self.drop_last = drop_last
        self.pad = pad
        self.transform = transform
        self.collate_fn = collate
        self.ordered = ordered
        self.shuffle_window = shuffle_window
        self.options = options or LoaderOptions.from_env()
        self.epoch = 0
        self._start = 0  # epoch positions consumed by all ranks before this iteration (resume)
        self._delivered = 0  # batches delivered in the current epoch
        self._resuming = False  # load_state_dict() was called: the next iteration continues from there
        self._finished = False  # the last iteration ran to the end of its epoch
        self._plan = self._make_plan()
        self._engine: _Engine | None = None

    # ------------------------------------------------------------------ plan and state

    def _make_plan(self) -> ShardPlan:
        order = EpochOrder(self.dataset.sizes, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                           shuffle_window=self.shuffle_window)  # fmt: skip
        return ShardPlan(order, rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
                         drop_last=self.drop_last, pad=self.pad, start=self._start)  # fmt: skip

    def __len__(self) -> int:
        """Batches in the current epoch of this rank."""
        return self._plan.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order for the next iteration (the shuffle is re-seeded per epoch)."""
        self._close_unless_idle()
        self.epoch = int(epoch)
        self._start = 0
        self._delivered = 0
        self._plan = self._make_plan()
        self._resuming = self._finished = False

    def state_dict(self) -> dict[str, Any]:
        """The position in the epoch: a few integers. Save it with the model."""
        return self._plan.state(self._delivered)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the saved position: the next iteration yields exactly the rest of the epoch.

        Works with a different ``num_workers``, and with a different ``world_size`` when the
        state was saved on all ranks at the same step.

        Raises:
            ConfigError: the state belongs to another dataset, seed or shuffle mode.
        """
        self._close_unless_idle()
        epoch, start = resume_start(dict(state), n=len(self.dataset), seed=self.seed, shuffle=self.shuffle)
        self.epoch, self._start, self._delivered = epoch, start, 0
        self._plan = self._make_plan()
        self._resuming, self._finished = True, False

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Any]:
        """Iterate one epoch (the rest of it after :meth:`load_state_dict`).

        A new iteration after a finished one moves to the next epoch (as if
        ``set_epoch(epoch + 1)`` had been called); an iteration abandoned half-way starts
        its epoch again, as ``torch.utils.data.DataLoader`` does.
        """
        if self._finished:
            self.set_epoch(self.epoch + 1)
        elif not self._resuming:
            self._delivered = 0
        self._resuming = False
        self._finished = False
        plan = self._plan
        first = self._delivered
        if self.num_workers == 0:
            batches = self._iter_local(plan, first)
        else:
            workers = min(self.num_workers, max(1, plan.num_batches - first))
            engine = self._engine
            if engine is not None and engine.idle and engine.num_workers == workers:
                engine.start_epoch(plan, first)  # persistent workers: no new processes
            else:
                self.close()
                engine = self._engine = _Engine(self, plan, first)
            batches = engine.batches()
        try:
            for batch in batches:
                self._delivered += 1
                yield batch
            self._finished = True
        finally:
            if self._engine is not None and not (self._finished and self.options.persistent_workers):
                self.close()

    def _iter_local(self, plan: ShardPlan, first: int) -> Iterator[Any]:
        import concurrent.futures as cf

        depth = self.options.prefetch_batches
        with cf.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="s3dlio-prefetch") as pool:
            pending: deque[cf.Future[Any]] = deque()
            next_batch = first
            while True:
                while len(pending) < depth and next_batch < plan.num_batches:
                    pending.append(pool.submit(_make_batch, self, plan, next_batch, lazy=False))
                    next_batch += 1
                if not pending:
                    return
                yield pending.popleft().result()

    def _close_unless_idle(self) -> None:
        # Workers waiting between epochs can take the next one; an epoch in progress cannot be redirected.
        if self._engine is not None and not self._engine.idle:
            self.close()

    def close(self) -> None:
        """Stop the workers and remove every shared-memory segment (idempotent). The loader can
        still be iterated: new workers start then."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"] = None
        return state

    def __repr__(self) -> str:
        return (f"Loader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle!r}, "
                f"num_workers={self.num_workers}, rank={self.rank}/{self.world_size})")  # fmt: skip


def _make_batch(loader: Loader, plan: ShardPlan, batch: int, *, lazy: bool) -> Any:
    ids = plan.batch_samples(batch)
    if lazy and loader.transform is None and loader.collate_fn is None:
        files = loader.dataset.open_local_raw(ids)
        if files is not None:
            return files  # shm.write reads them straight into the worker's shared-memory slot
    samples = loader.dataset.read_samples(ids)
    if loader.transform is not None:
        samples = [loader.transform(s) for s in samples]
    if loader.collate_fn is not None:
        return loader.collate_fn(samples)
    return shm.collate_lazy(samples) if lazy else shm.collate(samples)


# ============================================================================ the engine


class _Engine:
    """Worker processes, their slots, and the consumer's side of the protocol."""

    def __init__(self, loader: Loader, plan: ShardPlan, first_batch: int) -> None:
        import multiprocess as mp  # dill-based: transforms may be lambdas or closures

        opts = loader.options
        self.loader = loader
        self.plan = plan
        self.first = first_batch
        self.num_workers = min(loader.num_workers, max(1, plan.num_batches - first_batch))
        self.prefix = shm.new_prefix()
        self.ctx = mp.get_context(opts.start_method)
        self.results = self.ctx.Queue()
        # Free slots go back to each worker through its own pipe, written synchronously: a
        # Queue's feeder thread added a GIL hand-off to every slot's round trip (measured: the
        # workers then spent as long waiting for slots as reading).
        self.free: list[Any] = [self.ctx.SimpleQueue() for _ in range(self.num_workers)]
        # A flag in shared memory, not an Event: a worker SIGKILLed while holding an Event's
        # lock would leave every later set()/wait() blocked forever.
        self.stop_event = _StopFlag(self.ctx)
        slot_size = max(1 * MiB, opts.memory_budget // (self.num_workers * opts.slots_per_worker))
        self.leased = [0] * self.num_workers
        self.slots = [opts.slots_per_worker] * self.num_workers
        self.grants = [0] * self.num_workers
        self.closed = False
        self.done: set[int] = set()  # workers that finished the current epoch
        self.idle = False  # every batch of the epoch delivered: the workers can take another epoch
        self._mappings: dict[str, mmap.mmap] = {}  # segment name -> this process's mapping of it
        # Re-entrant: a batch's finalizer (which releases its slot) may run inside a locked section.
        self._lock = threading.RLock()
        self.procs = []
        for w in range(self.num_workers):
            for slot in range(opts.slots_per_worker):
                self.free[w].put(slot)
            proc = self.ctx.Process(
                target=_worker_main,
                args=(loader, plan, w, self.num_workers, first_batch, self.prefix, slot_size,
                      self.results, self.free[w], self.stop_event, os.getpid()),
                name=f"s3dlio-worker-{w}",
                daemon=True,
            )
            proc.start()
            self.procs.append(proc)
        self._finalizer = weakref.finalize(self, _cleanup, self.procs, self.stop_event, self.prefix, self.results,
                                           self.free)  # fmt: skip

    def start_epoch(self, plan: ShardPlan, first_batch: int) -> None:
        """Give the idle workers another epoch (after every worker has finished the last one)."""
        pending: dict[int, Any] = {}
        while len(self.done) < self.num_workers:
            self._receive(pending, None, self.done)
        self.done = set()
        self.plan, self.first, self.idle = plan, first_batch, False
        for w in range(self.num_workers):
            self.free[w].put(("epoch", plan, first_batch))

    def batches(self) -> Iterator[Any]:
        pending: dict[int, tuple[int, str, int, Any]] = {}
        expected = range(self.first, self.plan.num_batches)
        done_workers = self.done
        if self.loader.ordered:
            for b in expected:
                worker = (b - self.first) % self.num_workers
                while b not in pending:
                    self._receive(pending, worker, done_workers)
                yield self._deliver(b, pending.pop(b))
        else:
            remaining = len(expected)
            while remaining:
                while not pending:
                    self._receive(pending, None, done_workers)
                b = next(iter(pending))
                yield self._deliver(b, pending.pop(b))
                remaining -= 1
        self.idle = True

    def _receive(self, pending: dict[int, Any], waiting_for: int | None, done_workers: set[int]) -> None:
        opts = self.loader.options
        started = time.monotonic()
        while True:
            for w in [waiting_for] if waiting_for is not None else range(self.num_workers):
                if w not in done_workers:
                    self._maybe_grow(w)
            try:
                msg = self.results.get(timeout=opts.poll_interval)
                break
            except queue.Empty:
                self._check_workers(done_workers)
                if opts.worker_timeout and time.monotonic() - started > opts.worker_timeout:
                    raise WorkerDiedError(
                        f"no batch from the workers within worker_timeout={opts.worker_timeout}s"
                    ) from None
        kind = msg[0]
        if kind == "batch":
            _, batch, worker, _slot, name, used, layout = msg
            pending[batch] = (worker, name, used, layout)
        elif kind == "error":
            _, batch, worker, text, tb, original = msg
            err = WorkerError(f"worker {worker} failed on batch {batch}: {text}\n\nWorker traceback:\n{tb}",
                              worker_id=worker, batch=batch, worker_traceback=tb)  # fmt: skip
            if original is not None:
                raise err from original
            raise err
        elif kind == "done":
            done_workers.add(msg[1])

    def _check_workers(self, done_workers: set[int]) -> None:
        for w, proc in enumerate(self.procs):
            if proc.is_alive() or w in done_workers:
                continue
            code = proc.exitcode
            how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else \
                f"exited with code {code}"
            raise WorkerDiedError(f"loader worker {w} (pid {proc.pid}) {how} before finishing its batches")

    def _maybe_grow(self, worker: int) -> None:
        # The consumer waits for this worker, and every slot it has is held by live batches of
        # the user's: waiting would never end, so let the worker add a slot.
        with self._lock:
            if self.leased[worker] >= self.slots[worker] + self.grants[worker]:
                self.grants[worker] += 1
                self.free[worker].put(-1)
                if sum(self.grants) == 1:
                    log.warning("batches are kept alive by the caller; the loader's shared memory grows beyond "
                                "memory_budget (drop references to old batches, or copy them)")  # fmt: skip

    def _deliver(self, batch: int, item: tuple[int, str, int, Any]) -> Any:
        worker, name, used, layout = item
        mapping = self._mappings.get(name)
        if mapping is None:
            slot_prefix = name.rsplit("-", 1)[0] + "-"  # a grown slot has a new segment: forget the old one
            for old in [n for n in self._mappings if n.startswith(slot_prefix)]:
                del self._mappings[old]  # unmapped when the last batch viewing it is gone
            mapping = self._mappings[name] = shm.map_segment(name)
        # A lease over the batch's bytes: every view of the batch holds it, and the slot goes
        # back to its worker only when the last view is gone. (Views of the mapping itself would
        # not tell one batch from the next in the same slot.)
        lease = (ctypes.c_char * used).from_buffer(mapping)
        data = shm.read(layout, lease)
        with self._lock:
            self.leased[worker] += 1
        weakref.finalize(lease, _release, weakref.ref(self), worker, name)
        return data

    def release(self, worker: int, name: str) -> None:
        with self._lock:
            self.leased[worker] -= 1
        if not self.closed:
            with contextlib.suppress(Exception):
                self.free[worker].put(_slot_of(name))

    def shutdown(self) -> None:
        self.closed = True
        self._finalizer()
        mappings, self._mappings = self._mappings, {}
        for mapping in mappings.values():
            with contextlib.suppress(BufferError):  # batches still held keep theirs until they go
                mapping.close()


def _slot_of(name: str) -> int:
    return int(name.rsplit("-", 2)[-2])


def _release(engine_ref: weakref.ReferenceType[_Engine], worker: int, name: str) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.release(worker, name)


def _cleanup(procs: list[Any], stop_event: Any, prefix: str, results: Any, free: list[Any]) -> None:
    stop_event.set()
    deadline = time.monotonic() + 2.0
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    with contextlib.suppress(Exception):
        results.cancel_join_thread()
        results.close()
    for q in free:
        with contextlib.suppress(Exception):
            q.close()
    shm.unlink_prefix(prefix)


# ============================================================================ the worker


def _worker_main(loader: Loader, plan: ShardPlan, worker_id: int, num_workers: int, first_batch: int, prefix: str,
                 slot_size: int, results: Any, free: Any, stop_event: Any, parent_pid: int) -> None:  # fmt: skip
    """Produce this worker's batches into shared-memory slots until done or told to stop."""
    import concurrent.futures as cf

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle
    _limit_framework_threads()
    segments: dict[int, tuple[str, mmap.mmap, int]] = {}
    generation = 0

    def terminated(signum: int, frame: Any) -> None:
        # multiprocessing terminates daemonic children at the consumer's exit, possibly before the
        # consumer's own clean-up runs (or when it never runs: a Jupyter kernel shutting down).
        for name, _, _ in list(segments.values()):
            shm.unlink_segment(name)
        os._exit(0)

    signal.signal(signal.SIGTERM, terminated)
    watchdog = threading.Thread(target=_watch_parent, args=(parent_pid, stop_event, prefix, worker_id), daemon=True)
    watchdog.start()

    def segment_for(slot: int, need: int) -> tuple[str, mmap.mmap, int]:
        nonlocal generation
        current = segments.get(slot)
        if current is not None and current[2] >= need:
            return current
        if current is not None:
            current[1].close()
            shm.unlink_segment(current[0])
        generation += 1
        size = max(slot_size, need)
        name = f"{prefix}{worker_id}-{slot}-{generation}"
        segments[slot] = (name, shm.create_segment(name, size), size)
        return segments[slot]

    next_slot = loader.options.slots_per_worker
    depth = loader.options.prefetch_batches
    pool = cf.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="s3dlio-prefetch")
    free_slots: deque[int] = deque()  # slots given back while this worker waited between epochs
    current = -1

    def next_epoch() -> tuple[ShardPlan, int] | None:
        # Between epochs the consumer sends ("epoch", plan, first batch), or stops the workers.
        while (msg := _next_message(free, stop_event)) is not None:
            if isinstance(msg, tuple):
                return msg[1], msg[2]
            free_slots.append(msg)
        return None

    epoch: tuple[ShardPlan, int] | None = (plan, first_batch)
    try:
        while epoch is not None and not stop_event.is_set():
            plan, first = epoch
            pending: deque[tuple[int, cf.Future[Any]]] = deque()
            it = iter(plan.worker_batches(worker_id, num_workers, first))
            while not stop_event.is_set():
                while len(pending) < depth:
                    b = next(it, None)
                    if b is None:
                        break
                    pending.append((b, pool.submit(_make_batch, loader, plan, b, lazy=True)))
                if not pending:
                    break
                current, fut = pending.popleft()
                tree = fut.result()
                slot = free_slots.popleft() if free_slots else _next_message(free, stop_event)
                if slot is None:
                    break
                if slot == -1:  # the consumer let this worker grow its pool
                    slot = next_slot
                    next_slot += 1
                need = shm.measure(tree)
                name, mapping, _ = segment_for(slot, need)
                layout, used = shm.write(tree, memoryview(mapping))
                results.put(("batch", current, worker_id, slot, name, max(used, 1), layout))
            if stop_event.is_set():
                break
            results.put(("done", worker_id))
            # Wait for the next epoch, or until the consumer closes: the watchdog then still
            # removes this loader's segments if the consumer dies without cleaning up.
            epoch = next_epoch()
    except BaseException as exc:  # everything goes back to the consumer
        original: BaseException | None = exc
        try:
            import pickle

            pickle.dumps(exc)
        except Exception:
            original = None
        with contextlib.suppress(Exception):
            results.put(("error", current, worker_id, f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                         original))  # fmt: skip
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if stop_event.is_set():
            results.cancel_join_thread()  # nobody reads any more: do not wait to flush
        results.close()
        for _, mapping, _ in segments.values():
            with contextlib.suppress(Exception):
                mapping.close()


class _StopFlag:
    """A stop flag readable and settable without locks, across processes."""

    def __init__(self, ctx: Any) -> None:
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def _next_message(free: Any, stop_event: Any) -> Any:
    """The next message of a worker's queue (a free slot, -1 for a new one, or the next epoch), or
    None once the loader stops."""
    while not stop_event.is_set():
        if free._reader.poll(0.1):  # only this worker reads its queue
            return free.get()
    return None


def _watch_parent(parent_pid: int, stop_event: Any, prefix: str, worker_id: int) -> None:
    """If the consumer dies, remove this loader's segments and end the worker."""
    # With fork and spawn the consumer is this worker's parent; with forkserver the parent is
    # the fork server, so the consumer is watched by pid (and the parent for a re-parenting).
    first_ppid = os.getppid()
    while not stop_event.wait(0.5):
        if os.getppid() != first_ppid or not _pid_alive(parent_pid):
            shm.unlink_prefix(prefix)
            os._exit(1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _limit_framework_threads() -> None:
    # A forked child that uses an OpenMP pool the parent had started hangs; one thread is safe.
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.set_num_threads(1)


