"""The sampling plan: exactly-once coverage, determinism, even ranks, elastic resume."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3dlio_loader import ConfigError
from s3dlio_loader.engine.permute import FeistelPermutation
from s3dlio_loader.engine.plan import EpochOrder, ShardPlan, normalize_shuffle, resume_start


def rank_worker_samples(sizes, *, shuffle, seed, epoch, world, workers, batch, drop_last=False, pad=None,
                        start=0):  # fmt: skip
    """Every (rank, sample) the plan yields, walking each worker's batches."""
    order = EpochOrder(sizes, shuffle=shuffle, seed=seed, epoch=epoch, shuffle_window=7)
    per_rank = []
    for rank in range(world):
        plan = ShardPlan(order, rank=rank, world_size=world, batch_size=batch, drop_last=drop_last, pad=pad,
                         start=start)  # fmt: skip
        by_batch = {}
        for w in range(workers):
            for b in plan.worker_batches(w, workers):
                assert b not in by_batch, "two workers produced the same batch"
                by_batch[b] = plan.batch_samples(b)
        assert sorted(by_batch) == list(range(plan.num_batches))
        samples = np.concatenate([by_batch[b] for b in range(plan.num_batches)]) if by_batch else np.array([])
        assert np.array_equal(samples, plan.all_samples())
        per_rank.append(samples.astype(np.int64))
    return per_rank


sizes_strategy = st.lists(st.integers(0, 40), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    sizes=sizes_strategy,
    shuffle=st.sampled_from(["none", "global", "block"]),
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 5),
    world=st.integers(1, 5),
    workers=st.integers(1, 4),
    batch=st.integers(1, 9),
)
def test_every_sample_exactly_once_without_padding(sizes, shuffle, seed, epoch, world, workers, batch):
    per_rank = rank_worker_samples(sizes, shuffle=shuffle, seed=seed, epoch=epoch, world=world, workers=workers,
                                   batch=batch, pad=False)  # fmt: skip
    everything = np.concatenate(per_rank) if per_rank else np.array([])
    assert sorted(everything.tolist()) == list(range(sum(sizes)))
    counts = [len(r) for r in per_rank]
    assert max(counts) - min(counts) <= 1


@settings(max_examples=100, deadline=None)
@given(sizes=sizes_strategy, shuffle=st.sampled_from(["none", "global", "block"]), world=st.integers(2, 5),
       workers=st.integers(1, 3), batch=st.integers(1, 6))  # fmt: skip
def test_padding_and_drop_last_give_every_rank_the_same_batches(sizes, shuffle, world, workers, batch):
    n = sum(sizes)
    padded = rank_worker_samples(sizes, shuffle=shuffle, seed=1, epoch=0, world=world, workers=workers,
                                 batch=batch)  # fmt: skip
    assert len({len(r) for r in padded}) == 1
    seen = collections.Counter(np.concatenate(padded).tolist())
    assert set(seen) == set(range(n)), "padding must still cover every sample"
    assert all(c <= 1 + -(-(world - 1) // max(n, 1)) for c in seen.values())
    assert sum(seen.values()) - n < world
    dropped = rank_worker_samples(sizes, shuffle=shuffle, seed=1, epoch=0, world=world, workers=workers,
                                  batch=batch, drop_last=True)  # fmt: skip
    assert len({len(r) for r in dropped}) == 1
    assert all(len(r) % batch == 0 for r in dropped)
    flat = np.concatenate(dropped).tolist()
    assert len(flat) == len(set(flat)), "drop_last never repeats a sample"
    assert len(flat) > n - world * batch


def test_same_seed_same_order_and_epochs_differ():
    a = EpochOrder([100, 50, 75], shuffle="global", seed=9, epoch=1)
    b = EpochOrder([100, 50, 75], shuffle="global", seed=9, epoch=1)
    c = EpochOrder([100, 50, 75], shuffle="global", seed=9, epoch=2)
    pos = np.arange(225)
    assert np.array_equal(a.samples(pos), b.samples(pos))
    assert not np.array_equal(a.samples(pos), c.samples(pos))
    assert not np.array_equal(a.samples(pos), pos)


def test_block_shuffle_keeps_samples_near_their_object():
    sizes = [1000] * 20
    order = EpochOrder(sizes, shuffle="block", seed=5, shuffle_window=64)
    samples = order.samples(np.arange(20_000))
    assert sorted(samples.tolist()) == list(range(20_000))
    objects = samples // 1000
    # within one window of 64 positions at most two objects appear (a window can straddle a boundary)
    for w in range(0, 20_000, 64):
        assert len(set(objects[w : w + 64].tolist())) <= 2
    assert objects[0] != 0 or objects[-1] != 19, "object order is shuffled"


def test_global_shuffle_scales_without_arrays():
    order = EpochOrder([10_000_000], shuffle="global", seed=1)
    plan = ShardPlan(order, rank=3, world_size=8, batch_size=256)
    assert plan.num_batches == 4883
    batch = plan.batch_samples(4000)
    assert len(batch) == 256 and batch.min() >= 0 and batch.max() < 10_000_000


@pytest.mark.parametrize("shuffle", ["none", "global", "block"])
@pytest.mark.parametrize(("old_world", "new_world"), [(1, 1), (2, 2), (2, 3), (3, 1), (4, 2)])
def test_resume_elastic_yields_exactly_the_rest(shuffle, old_world, new_world):
    sizes, seed, batch = [37, 0, 51, 12], 4, 5
    n = sum(sizes)
    order = EpochOrder(sizes, shuffle=shuffle, seed=seed, epoch=3, shuffle_window=16)
    old = [ShardPlan(order, rank=r, world_size=old_world, batch_size=batch, drop_last=True) for r in range(old_world)]
    done = 3  # every rank consumed three batches, in lockstep
    consumed = [s for p in old for s in np.concatenate([p.batch_samples(b) for b in range(done)]).tolist()]
    state = old[0].state(done)
    epoch, start = resume_start(state, n=n, seed=seed, shuffle=shuffle)
    assert epoch == 3
    new_order = EpochOrder(sizes, shuffle=shuffle, seed=seed, epoch=epoch, shuffle_window=16)
    rest = [s for r in range(new_world)
            for s in ShardPlan(new_order, rank=r, world_size=new_world, batch_size=batch, pad=False,
                               start=start).all_samples().tolist()]  # fmt: skip
    assert sorted(consumed + rest) == list(range(n)), "no repeats, no skips"


def test_resume_refuses_a_mismatched_state():
    order = EpochOrder([10], shuffle="global", seed=1)
    state = ShardPlan(order).state(1)
    with pytest.raises(ConfigError, match="seed"):
        resume_start(state, n=10, seed=2, shuffle="global")
    with pytest.raises(ConfigError, match="num_total"):
        resume_start(state, n=11, seed=1, shuffle="global")
    with pytest.raises(ConfigError, match="version"):
        resume_start({**state, "version": 99}, n=10, seed=1, shuffle="global")


def test_worker_batches_resume_from_a_batch():
    order = EpochOrder([100])
    plan = ShardPlan(order, batch_size=10)
    got = sorted(b for w in range(3) for b in plan.worker_batches(w, 3, first_batch=4))
    assert got == list(range(4, 10))
    assert list(plan.worker_batches(0, 3, first_batch=4)) == [4, 7]


def test_bad_arguments_name_the_value():
    with pytest.raises(ConfigError, match="rank=2"):
        ShardPlan(EpochOrder([3]), rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size=0"):
        ShardPlan(EpochOrder([3]), batch_size=0)
    with pytest.raises(ConfigError, match="shuffle="):
        normalize_shuffle("random")
    with pytest.raises(ConfigError):
        EpochOrder([3, -1])
    assert normalize_shuffle(True) == "global" and normalize_shuffle(False) == "none"


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 5000), seed=st.integers(0, 2**63))
def test_feistel_is_a_bijection(n, seed):
    perm = FeistelPermutation(n, seed)
    mapped = perm.map_many(np.arange(n))
    assert sorted(mapped.tolist()) == list(range(n))
    if n:
        assert perm.map(n - 1) == mapped[-1]
