"""The framework-free Loader and its shared-memory prefetch engine, with real worker processes."""

from __future__ import annotations

import ctypes
import gc
import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from s3dlio_loader import ConfigError, FormatError
from s3dlio_loader.engine.dataset import Dataset, Manifest
from s3dlio_loader.engine.loader import Loader, LoaderOptions, WorkerDiedError, WorkerError

ROWS_PER_FILE = 50
FILES = 6
N = ROWS_PER_FILE * FILES


def shm_segments() -> set[str]:
    return set(glob.glob("/dev/shm/s3dlio-*"))


@pytest.fixture
def npy_dir(tmp_path):
    """Six .npy files whose rows hold their own global sample id (and a 64-float payload)."""
    data = tmp_path / "data"
    data.mkdir()
    for f in range(FILES):
        ids = np.arange(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE, dtype=np.int64)
        rows = np.concatenate([ids[:, None].astype(np.float64), np.random.default_rng(f).random((50, 64))], axis=1)
        np.save(data / f"part-{f}.npy", rows)
    return data


@pytest.fixture(autouse=True)
def no_leaked_segments():
    before = shm_segments()
    yield
    gc.collect()
    assert shm_segments() - before == set(), "a shared-memory segment outlived its loader"


def ids_of(batch) -> list[int]:
    return batch[:, 0].astype(np.int64).tolist()


def collect(loader) -> list[int]:
    return [i for batch in loader for i in ids_of(batch)]


def make(npy_dir, **kw) -> Loader:
    kw.setdefault("batch_size", 16)
    return Loader(f"file://{npy_dir}/", format="npy", rows=True, **kw)


@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
@pytest.mark.parametrize("shuffle", [False, "global", "block"])
def test_every_sample_once_per_epoch(npy_dir, num_workers, shuffle):
    loader = make(npy_dir, num_workers=num_workers, shuffle=shuffle, seed=5)
    first = collect(loader)
    assert sorted(first) == list(range(N))
    assert len(loader) == -(-N // 16)
    second = collect(loader)  # the next iteration is the next epoch
    assert sorted(second) == list(range(N))
    if shuffle:
        assert first != second, "each epoch is shuffled anew"
    else:
        assert first == second == list(range(N))
    loader.close()


def test_order_is_independent_of_workers_and_timing(npy_dir):
    orders = [collect(make(npy_dir, num_workers=w, shuffle=True, seed=11)) for w in (0, 1, 3)]
    assert orders[0] == orders[1] == orders[2]


def test_unordered_delivery_is_still_exactly_once(npy_dir):
    got = collect(make(npy_dir, num_workers=3, shuffle=True, ordered=False))
    assert sorted(got) == list(range(N))


def test_spawn_start_method_with_a_lambda_transform(npy_dir):
    loader = make(npy_dir, num_workers=2, transform=lambda row: row * 2, options=LoaderOptions(start_method="spawn"))
    got = sorted(int(v) // 2 for b in loader for v in b[:, 0])
    assert got == list(range(N))


def test_batches_are_zero_copy_views_into_shared_memory(npy_dir):
    loader = make(npy_dir, num_workers=2)
    batch = next(iter(loader))
    assert isinstance(batch, np.ndarray) and batch.shape == (16, 65)
    base = batch.base
    while isinstance(base, np.ndarray):
        base = base.base
    # The batch's lease: a ctypes array over the consumer's mapping of the slot (no copy).
    (exported,) = base._objects.values()
    assert type(exported.obj).__name__ == "mmap", "the batch is a view over the shared-memory mapping, not a copy"
    assert ctypes.addressof(base) <= batch.ctypes.data < ctypes.addressof(base) + ctypes.sizeof(base)
    loader.close()


def test_kept_batches_stay_valid_and_memory_is_recycled(npy_dir):
    loader = make(npy_dir, num_workers=2, batch_size=8, options=LoaderOptions(slots_per_worker=2))
    kept = list(loader)  # every batch kept alive: the pool grows instead of deadlocking
    assert sorted(i for b in kept for i in ids_of(b)) == list(range(N))
    loader.close()  # its workers would otherwise wait for another epoch, keeping their grown slots
    assert sorted(i for b in kept for i in ids_of(b)) == list(range(N)), "kept batches outlive the loader"
    del kept
    gc.collect()
    # a consumer that drops its batches runs within the slots it has
    loader = make(npy_dir, num_workers=2, batch_size=8, options=LoaderOptions(slots_per_worker=2))
    seen = 0
    for batch in loader:
        seen += len(batch)
        assert len(shm_segments()) <= 2 * 2 + 2
    assert seen == N


def test_workers_persist_from_one_epoch_to_the_next(npy_dir):
    loader = make(npy_dir, num_workers=2, shuffle=True, seed=4)
    first = collect(loader)
    pids = [p.pid for p in loader._engine.procs]
    prefix = loader._engine.prefix
    second = collect(loader)  # the next epoch, on the same workers and slots
    assert sorted(first) == sorted(second) == list(range(N)) and first != second, "re-shuffled, exactly once"
    assert [p.pid for p in loader._engine.procs] == pids and loader._engine.prefix == prefix
    loader.set_epoch(0)  # between epochs: the idle workers take any epoch
    assert collect(loader) == first and [p.pid for p in loader._engine.procs] == pids
    loader.load_state_dict(make(npy_dir, shuffle=True, seed=4).state_dict())
    assert collect(loader) == first and [p.pid for p in loader._engine.procs] == pids

    it = iter(loader)
    next(it)
    it.close()  # an abandoned epoch cannot be handed over: its workers stop
    assert loader._engine is None and not glob.glob(f"/dev/shm/{prefix}*")
    assert len(collect(loader)) == N  # new workers start
    loader.close()

    one_shot = make(npy_dir, num_workers=2, options=LoaderOptions(persistent_workers=False))
    assert collect(one_shot) == list(range(N)) and one_shot._engine is None


def test_a_worker_killed_between_epochs_is_reported_at_the_next(npy_dir):
    loader = make(npy_dir, num_workers=2, options=LoaderOptions(poll_interval=0.05))
    assert collect(loader) == list(range(N))
    victim = loader._engine.procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    with pytest.raises(WorkerDiedError, match="SIGKILL"):
        collect(loader)
    assert collect(loader) == list(range(N)), "the next iteration starts new workers"
    loader.close()


def test_a_terminated_idle_worker_removes_its_segments(npy_dir):
    """multiprocessing terminates daemonic workers at the consumer's exit (SIGTERM), perhaps
    before the consumer cleans up, or instead of it (a Jupyter kernel shutting down)."""
    loader = make(npy_dir, num_workers=2, options=LoaderOptions(poll_interval=0.05))
    assert collect(loader) == list(range(N))
    prefix = loader._engine.prefix
    victim = loader._engine.procs[0]
    assert glob.glob(f"/dev/shm/{prefix}0-*"), "an idle worker keeps its slots for the next epoch"
    os.kill(victim.pid, signal.SIGTERM)
    victim.join(5)
    assert victim.exitcode == 0 and not glob.glob(f"/dev/shm/{prefix}0-*")
    with pytest.raises(WorkerDiedError, match="exited with code 0"):
        collect(loader)
    loader.close()
    assert not glob.glob(f"/dev/shm/{prefix}*")


def test_dict_samples_collate_per_key(tmp_path):
    for f in range(3):
        np.savez(tmp_path / f"d{f}.npz", x=np.full((10, 3), f, dtype=np.float32), y=np.arange(10) + 10 * f)
    loader = Loader(f"file://{tmp_path}/", format="npz", rows=True, batch_size=4, num_workers=2)
    batches = list(loader)
    assert set(batches[0]) == {"x", "y"}
    assert batches[0]["x"].shape == (4, 3) and batches[0]["x"].dtype == np.float32
    assert sorted(int(v) for b in batches for v in b["y"]) == list(range(30))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_with_another_number_of_workers(npy_dir, num_workers):
    loader = make(npy_dir, num_workers=2, shuffle=True, seed=3)
    it = iter(loader)
    consumed = [i for _ in range(5) for i in ids_of(next(it))]
    state = loader.state_dict()
    it.close()
    loader.close()
    assert state["consumed"] == 5 * 16
    resumed = make(npy_dir, num_workers=num_workers, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    rest = collect(resumed)
    assert sorted(consumed + rest) == list(range(N)), "no repeats, no skips"
    assert len(rest) == N - 80
    assert sorted(collect(resumed)) == list(range(N)), "after the resumed epoch, a full new epoch"


def test_state_from_another_dataset_is_refused(npy_dir):
    state = make(npy_dir, shuffle=True, seed=1).state_dict()
    with pytest.raises(ConfigError, match="seed"):
        make(npy_dir, shuffle=True, seed=2).load_state_dict(state)


def test_ranks_are_disjoint_and_even(npy_dir):
    shards = [collect(make(npy_dir, rank=r, world_size=3, shuffle=True, num_workers=1, drop_last=True))
              for r in range(3)]  # fmt: skip
    assert len({len(s) for s in shards}) == 1
    union = [i for s in shards for i in s]
    assert len(union) == len(set(union))
    assert len(union) == N // 3 // 16 * 16 * 3


def test_bad_object_errors_name_the_uri(npy_dir):
    good = make(npy_dir, num_workers=2)  # indexes built while the files are intact
    path = npy_dir / "part-3.npy"
    path.write_bytes(path.read_bytes()[:200])  # truncated after indexing: fails in a worker
    with pytest.raises(WorkerError) as err:
        collect(good)
    assert "part-3.npy" in str(err.value)
    path.write_bytes(b"\x93NUMPY garbage that is not a header")
    from s3dlio_loader.cache import get_cache

    get_cache().refresh()
    with pytest.raises(FormatError) as ferr:
        make(npy_dir, num_workers=2)
    assert "part-3.npy" in str(ferr.value)


def test_transform_error_in_worker_names_worker_and_traceback(npy_dir):
    def explode(row):
        if int(row[0]) == 77:
            raise ValueError("sample 77 is cursed")
        return row

    loader = make(npy_dir, num_workers=2, transform=explode)
    with pytest.raises(WorkerError) as err:
        collect(loader)
    assert "sample 77 is cursed" in str(err.value)
    assert "explode" in err.value.worker_traceback
    assert isinstance(err.value.__cause__, ValueError)


def test_sigkilled_worker_is_reported_quickly(npy_dir):
    slow = LoaderOptions(slots_per_worker=1, poll_interval=0.05)

    def sleepy(row):
        time.sleep(0.01)
        return row

    loader = make(npy_dir, num_workers=2, batch_size=4, transform=sleepy, options=slow)
    it = iter(loader)
    next(it)
    victim = loader._engine.procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(WorkerDiedError, match="SIGKILL"):
        for _ in it:
            pass
    assert time.monotonic() - started < 5
    loader.close()


def test_close_and_garbage_collection_remove_segments(npy_dir):
    before = shm_segments()
    loader = make(npy_dir, num_workers=2)
    it = iter(loader)
    batch = next(it)
    assert shm_segments() - before, "workers created segments"
    procs = list(loader._engine.procs)
    del it, loader
    gc.collect()
    assert shm_segments() - before == set()
    assert all(not p.is_alive() for p in procs)
    assert batch.sum() == batch.sum(), "a batch still held stays readable after the loader is gone"


def test_segment_names_never_collide_between_loaders(npy_dir):
    a, b = make(npy_dir, num_workers=1), make(npy_dir, num_workers=1)
    ia, ib = iter(a), iter(b)
    next(ia), next(ib)
    prefixes = {a._engine.prefix, b._engine.prefix}
    assert len(prefixes) == 2
    a.close(), b.close()


def test_consumer_killed_leaves_no_segment(npy_dir, tmp_path):
    """SIGKILL the consumer process mid-epoch: its workers remove the segments and exit."""
    script = tmp_path / "consumer.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from s3dlio_loader.engine.loader import Loader
        loader = Loader("file://{npy_dir}/", format="npy", rows=True, batch_size=4, num_workers=2)
        it = iter(loader)
        next(it)
        print(loader._engine.prefix, flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    prefix = proc.stdout.readline().strip()
    assert prefix.startswith("s3dlio-") and glob.glob(f"/dev/shm/{prefix}*")
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while glob.glob(f"/dev/shm/{prefix}*") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not glob.glob(f"/dev/shm/{prefix}*")


def test_keyboard_interrupt_shuts_down(npy_dir, tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(textwrap.dedent(f"""
        import glob, os, signal
        from s3dlio_loader.engine.loader import Loader
        loader = Loader("file://{npy_dir}/", format="npy", rows=True, batch_size=4, num_workers=2)
        try:
            for i, batch in enumerate(loader):
                if i == 2:
                    os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            print("interrupted", sorted(glob.glob("/dev/shm/s3dlio-*")), flush=True)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "interrupted []", out.stdout + out.stderr


def test_manifest_source_needs_no_listing(npy_dir, tmp_path):
    from s3dlio_loader import Store

    store = Store.from_uri(str(npy_dir))
    objects = store.list(f"file://{npy_dir}/")
    Manifest(objects).write(f"file://{tmp_path}/manifest.jsonl")
    manifest = Manifest.read(f"file://{tmp_path}/manifest.jsonl")
    assert [o.uri for o in manifest.objects] == [o.uri for o in objects]
    dataset = Dataset(manifest, format="npy", rows=True)
    assert len(dataset) == N
    (tmp_path / "bad.jsonl").write_text('{"uri": "x"}\n')
    with pytest.raises(FormatError, match="line 1"):
        Manifest.read(f"file://{tmp_path}/bad.jsonl")


def test_bad_arguments(npy_dir, tmp_path):
    with pytest.raises(ConfigError, match="batch_size=0"):
        make(npy_dir, batch_size=0)
    with pytest.raises(ConfigError, match="num_workers=-1"):
        make(npy_dir, num_workers=-1)
    with pytest.raises(ConfigError, match="start_method"):
        LoaderOptions(start_method="thread")
    from s3dlio_loader import ObjectNotFoundError

    with pytest.raises(ObjectNotFoundError):
        Loader(f"file://{tmp_path}/empty/", format="npy")


def test_slow_consumer_stays_within_the_memory_budget(npy_dir):
    budget = 4 << 20
    opts = LoaderOptions(memory_budget=budget, slots_per_worker=2)
    loader = make(npy_dir, num_workers=2, batch_size=8, options=opts)
    peak = 0
    for batch in loader:
        time.sleep(0.01)  # the workers are faster than this consumer
        engine = loader._engine
        sizes = [os.stat(p).st_size for p in glob.glob(f"/dev/shm/{engine.prefix}*")]
        peak = max(peak, sum(sizes))
        del batch
    assert 0 < peak <= budget
