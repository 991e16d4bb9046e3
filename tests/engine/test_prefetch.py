"""prefetch_ordered: in-order results, bounded read-ahead, errors at their turn, clean stop."""

from __future__ import annotations

import threading
import time

import pytest

from s3dlio_loader import ConfigError
from s3dlio_loader.engine.prefetch import prefetch_ordered


def test_results_in_input_order_whatever_the_timing():
    def slow_first(i: int) -> int:
        time.sleep(0.02 if i % 3 == 0 else 0)
        return i * 10

    assert list(prefetch_ordered(slow_first, range(12), depth=4)) == [i * 10 for i in range(12)]


def test_reads_at_most_depth_ahead_and_lazily():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    it = prefetch_ordered(lambda x: x, source(), depth=3)
    assert pulled == [], "nothing starts before the first next()"
    assert next(it) == 0
    assert len(pulled) <= 4, "the first item and at most depth more"
    it.close()


def test_depth_zero_runs_in_the_calling_thread():
    threads = list(prefetch_ordered(lambda _: threading.current_thread(), range(3), depth=0))
    assert threads == [threading.current_thread()] * 3


def test_an_error_is_raised_at_its_turn_and_later_work_is_cancelled():
    started = []

    def fn(i: int) -> int:
        started.append(i)
        if i == 2:
            raise ValueError("item 2 is bad")
        time.sleep(0.01)
        return i

    it = prefetch_ordered(fn, range(50), depth=2)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError, match="item 2"):
        next(it)
    time.sleep(0.05)
    assert max(started) < 10, "the rest is not run after the failure"


def test_closing_stops_the_threads():
    before = threading.active_count()
    it = prefetch_ordered(lambda x: x, range(1000), depth=3, thread_name_prefix="test-prefetch")
    next(it)
    it.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name.startswith("test-prefetch")]


def test_negative_depth_is_refused():
    with pytest.raises(ConfigError, match="depth=-1"):
        prefetch_ordered(lambda x: x, [], depth=-1)
