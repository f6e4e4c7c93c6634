"""Statistics on known samples, budgets, and the interleaving order of measure_interleaved."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sparsify.bench import timing
from sparsify.bench.timing import Stats, measure, measure_interleaved, plan_blocks, throughput


def test_stats_exact_on_1_to_100_ms():
    s = Stats.from_ns([k * 1_000_000 for k in range(100, 0, -1)])  # order must not matter
    assert s.n == 100
    assert s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.mean_ms == pytest.approx(50.5)
    # numpy linear interpolation: position q/100 * (n - 1) into the sorted samples
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.p25_ms == pytest.approx(25.75) and s.p75_ms == pytest.approx(75.25)
    assert s.iqr_ms == pytest.approx(49.5)
    assert s.spread == pytest.approx(49.5 / 50.5)
    assert s.stdev_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))


def test_stats_single_sample_and_outlier_robust_spread():
    one = Stats.from_ns([2_500_000])
    assert (one.p50_ms, one.p99_ms, one.stdev_ms, one.iqr_ms) == (2.5, 2.5, 0.0, 0.0)
    s = Stats.from_ns([1_000_000] * 9 + [1_000_000_000])
    assert s.p50_ms == 1.0 and s.spread == 0.0 and s.max_ms == 1000.0


def test_stats_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        Stats.from_ns([])


def test_throughput_is_batch_over_p50():
    assert throughput(8, 2.0) == pytest.approx(4000.0)
    assert throughput(1, 0.5) == pytest.approx(2000.0)


def _recorder(log, name):
    return lambda: log.append(name)


def test_strict_rounds_order_and_counts():
    log: list[str] = []
    fns = [_recorder(log, n) for n in "ABC"]
    samples = measure_interleaved(fns, warmup=2, repeat=3, block=1)
    assert log == list("ABC") * 5  # 2 warm-up rounds + 3 timed rounds
    assert [len(s) for s in samples] == [3, 3, 3]


def test_samples_come_from_the_clock(monkeypatch):
    clock = [0]
    costs = {"A": 7, "B": 3}

    def fn(name):
        def call():
            clock[0] += costs[name]
        return call

    monkeypatch.setattr(timing, "perf_counter_ns", lambda: clock[0])
    a, b = measure_interleaved([fn("A"), fn("B")], warmup=0, repeat=4, block=1)
    assert a == [7] * 4 and b == [3] * 4


def test_auto_blocks_group_fast_calls_with_settle_calls(monkeypatch):
    clock = [0]
    log: list[str] = []

    def fn(name, cost):
        def call():
            log.append(name)
            clock[0] += cost
        return call

    monkeypatch.setattr(timing, "perf_counter_ns", lambda: clock[0])
    # 1 ms per call: blocks of 200 ms (200 timed calls) after 30 ms (30 calls) of settle calls
    assert plan_blocks(1_000_000) == (timing.MAX_BLOCK, 30_000_000)
    samples = measure_interleaved([fn("A", 1_000_000), fn("B", 1_000_000)], warmup=4, repeat=300)
    runs = [(k, len(list(g))) for k, g in itertools.groupby(log)]
    assert runs[:8] == [("A", 1), ("B", 1)] * 4  # interleaved warm-up
    assert runs[8:] == [("A", 230), ("B", 230), ("A", 130), ("B", 130)]  # settle + block, then the rest
    assert [len(s) for s in samples] == [300, 300]


def test_slow_calls_are_not_blocked():
    assert plan_blocks(150_000_000) == (1, 0)
    assert plan_blocks(None) == (1, 0)
    assert plan_blocks(10) == (timing.MAX_BLOCK, int(timing.SETTLE_TIME * 1e9))
    assert plan_blocks(timing.BLOCK_TIME * 1e9 / 2) == (timing.MAX_BLOCK, int(timing.SETTLE_TIME * 1e9))


def test_blocks_and_settle_calls_are_timed_not_counted_from_the_warmup(monkeypatch):
    # B's warm-up calls stall (as beside a spinning pool): 9, 9, 9, 4 ms, then 2 ms each.
    # Its blocks still hold 200 ms of timed calls after 30 ms of settle calls.
    clock = [0]
    log: list[str] = []
    b_costs = iter([9_000_000, 9_000_000, 9_000_000, 4_000_000] + [2_000_000] * 10_000)

    def fn(name):
        def call():
            log.append(name)
            clock[0] += 1_000_000 if name == "A" else next(b_costs)
        return call

    monkeypatch.setattr(timing, "perf_counter_ns", lambda: clock[0])
    a, b = measure_interleaved([fn("A"), fn("B")], warmup=4, repeat=200)
    runs = [(k, len(list(g))) for k, g in itertools.groupby(log)]
    assert runs[:8] == [("A", 1), ("B", 1)] * 4
    assert runs[8] == ("A", 30 + 200)  # one block does it; A then sits out
    # Two blocks of 15 settle + 100 timed calls. Counted from the 4 ms estimate they would
    # be 50 timed calls after 8 settle calls (4 blocks, 232 calls).
    assert runs[9:] == [("B", 2 * (15 + 100))]
    assert [len(s) for s in (a, b)] == [200, 200] and set(b) == {2_000_000}


def test_slow_calls_alternate_after_a_pause_and_alone_without_one(monkeypatch):
    # 150 ms calls: no settle calls, so each timed call of one callable after another's
    # starts after SWITCH_PAUSE (the other's spinning threads go idle); strict rounds
    # (block=1) and a single callable never pause.
    clock = [0]
    log: list[str] = []

    def fn(name):
        def call():
            log.append(name)
            clock[0] += 150_000_000
        return call

    monkeypatch.setattr(timing, "perf_counter_ns", lambda: clock[0])
    monkeypatch.setattr(timing, "sleep", lambda s: log.append(f"pause {s}"))
    measure_interleaved([fn("A"), fn("B")], warmup=2, repeat=2)
    pause = f"pause {timing.SWITCH_PAUSE}"
    assert log == ["A", "B", "A", "B"] + [pause, "A", pause, "B"] * 2
    assert timing.SWITCH_PAUSE >= 0.05  # ORT's pool spins 20-50 ms after a call
    log.clear()
    measure_interleaved([fn("A"), fn("B")], warmup=0, repeat=2, block=1)
    measure_interleaved([fn("C")], warmup=0, repeat=2)
    assert log == ["A", "B", "A", "B", "C", "C"]


def test_adaptive_stops_on_pooled_budget(monkeypatch):
    clock = [0]

    def call():
        clock[0] += 100_000_000  # 0.1 s per call

    monkeypatch.setattr(timing, "perf_counter_ns", lambda: clock[0])
    a, b = measure_interleaved([call, call], warmup=0, min_time=1.0, block=1)
    # budget 2 x 1.0 s pooled; each round spends 0.2 s -> 10 rounds
    assert len(a) == len(b) == 10
    # a very short budget still takes MIN_ROUNDS rounds
    (c,) = measure_interleaved([call], warmup=0, min_time=1e-9, block=1)
    assert len(c) == timing.MIN_ROUNDS


def test_measure_single_and_bad_budgets():
    calls = []
    assert len(measure(lambda: calls.append(1), warmup=3, repeat=5)) == 5
    assert len(calls) == 8
    with pytest.raises(ValueError, match="repeat=0"):
        measure(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        measure(lambda: None, warmup=-1, repeat=1)
    with pytest.raises(ValueError, match="min_time=0"):
        measure(lambda: None, min_time=0)
