"""Measuring primitives: warm-up, timed calls, interleaved rounds, summary statistics.

A sample is the wall time of one call in integer nanoseconds (``time.perf_counter_ns``).
Two ways to decide how many samples to take:

- ``repeat=N``: exactly N timed calls per candidate;
- ``repeat=None``: adaptive; timed rounds continue until the time spent inside timed calls
  reaches ``min_time`` seconds *per candidate* (pooled over the candidates, so a point with
  3 candidates stops after about ``3 * min_time`` seconds), with at least ``MIN_ROUNDS``
  and at most ``MAX_ROUNDS`` rounds.

When several candidates are measured at one point, they run interleaved in rounds
(A B C, A B C, …) so slow drift (thermal, frequency, other load) hits them all alike. For
fast calls a round gives each candidate a block of back-to-back calls (about 200 ms, after
~30 ms of untimed settle calls) instead of a single call; slow calls run one at a time,
each after a pause that lets the previous candidate's spinning threads go idle; see
:func:`measure_interleaved` for the measured reasons.

Percentiles use numpy's default linear interpolation between order statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from time import perf_counter_ns, sleep

import numpy as np

# Adaptive mode: never fewer rounds than this, even for a slow candidate …
MIN_ROUNDS = 5
# … and never more, so a sub-microsecond call cannot fill memory with samples.
MAX_ROUNDS = 100_000
# Automatic blocks (see measure_interleaved): timed calls adding up to BLOCK_TIME seconds
# (at most MAX_BLOCK), after untimed settle calls for SETTLE_TIME seconds.
BLOCK_TIME = 0.2
SETTLE_TIME = 0.03
MAX_BLOCK = 20_000
# Automatic blocks of long calls (no settle calls) start after a pause of SWITCH_PAUSE
# seconds when several callables alternate, so the previous callable's spinning pool is idle
# before the next one is timed: ONNX Runtime's pool spins 20-50 ms after a call
# (benchmarks/README.md, "Pauses between long calls").
SWITCH_PAUSE = 0.1


@dataclass(frozen=True)
class Stats:
    """Summary of one candidate's samples, all times in milliseconds.

    ``iqr_ms`` is the inter-quartile range (p75 - p25); ``spread`` is ``iqr_ms / p50_ms``,
    a relative, outlier-robust measure of how noisy the measurement was.
    """

    n: int
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    p25_ms: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    iqr_ms: float
    spread: float

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int]) -> Stats:
        """Summarize samples given in nanoseconds (at least one)."""
        if len(samples_ns) == 0:
            raise ValueError("samples_ns is empty; at least one sample is needed for statistics")
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(ms, [25, 50, 75, 90, 99]))
        stdev = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        iqr = p75 - p25
        return cls(
            n=int(ms.size),
            mean_ms=float(ms.mean()),
            stdev_ms=stdev,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            p25_ms=p25,
            p50_ms=p50,
            p75_ms=p75,
            p90_ms=p90,
            p99_ms=p99,
            iqr_ms=iqr,
            spread=iqr / p50 if p50 > 0 else math.inf,
        )

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict of the fields (for JSON)."""
        return asdict(self)


def throughput(batch: int, p50_ms: float) -> float:
    """Samples per second at the median latency: ``batch / p50``."""
    return batch / (p50_ms / 1e3) if p50_ms > 0 else math.inf


def _check_budget(warmup: int, repeat: int | None, min_time: float) -> None:
    if warmup < 0:
        raise ValueError(f"warmup={warmup} should be a non-negative integer")
    if repeat is not None and repeat < 1:
        raise ValueError(f"repeat={repeat} should be a positive integer or None (adaptive)")
    if repeat is None and not min_time > 0:
        raise ValueError(f"min_time={min_time} should be a positive number of seconds")


def plan_blocks(call_ns: float | None) -> tuple[int, int]:
    """(most timed calls per block, settle time per block in ns) for a call of ``call_ns``.

    A block's timed calls run until they add up to ``BLOCK_TIME`` seconds (at most
    MAX_BLOCK calls); before them, untimed settle calls run until ``SETTLE_TIME`` has
    passed (at least one call). Both are timed, not counted from ``call_ns``, which only
    decides whether to block: without an estimate, or for calls longer than
    ``BLOCK_TIME / 2``, blocks are single calls with no settle call (when several
    callables alternate, each after a pause of SWITCH_PAUSE).
    """
    if call_ns is None or call_ns <= 0 or call_ns * 2 > BLOCK_TIME * 1e9:
        return 1, 0
    return MAX_BLOCK, int(SETTLE_TIME * 1e9)


def measure_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    warmup: int = 10,
    repeat: int | None = None,
    min_time: float = 1.0,
    block: int | None = None,
) -> list[list[int]]:
    """Time several zero-argument callables in interleaved rounds; samples in ns per callable.

    Warm-up is interleaved too (``warmup`` untimed calls of each, A B C A B C …), and the
    fastest call of its second half says whether a callable is blocked. Each round then
    gives every callable, in order, one *block*: untimed settle calls for SETTLE_TIME, then
    timed calls, each timed on its own, until they add up to BLOCK_TIME (or ``block``
    calls when given). Both are timed, not counted from the warm-up: strictly interleaved
    calls stall on each other's spinning threads (a 20 us 2-thread kernel beside ONNX
    Runtime: 0.53-0.56 ms per warm-up call), and blocks counted from such an estimate were
    ~7 ms long after ~1 ms of settle calls, inside ORT's spinning (p90 0.54 ms against
    p50 0.020). ``block=None`` sizes blocks per callable with :func:`plan_blocks`;
    ``block=1`` gives strict A B C rounds without settle calls. Automatic blocks of long
    calls have no settle calls (one would cost a whole call); each starts after a pause of
    SWITCH_PAUSE instead, so no callable is timed inside another's spinning pool.

    Why blocks: runtimes whose worker threads spin after a call (ONNX Runtime's intra-op
    pool does by default) steal cores from the next callable for a short while. Measured on
    the 2-core reference machine, strict per-call interleaving of two ORT sessions with two
    threads each made a 1024x1024 MatMul 1.4-3x slower than back-to-back calls (p50 at
    batch 1: 0.050 ms alone, 0.08-0.14 ms strictly interleaved, 0.049 ms in blocks; batch
    16: 0.111, 0.15-0.24, 0.115 ms). Blocks with settle calls measure the back-to-back
    latency while still switching callables several times per point, so drift hits all
    of them alike. Blocks are long because switching costs more than the first calls:
    ONNX Runtime's pool keeps spinning ~27 ms after its last call, and the demo's sparse MLP
    in sparsify's runtime (batch 1, 2 threads), alternating with its dense ORT original,
    measured p50 0.61 ms in 20 ms blocks after 1 ms of settle calls, 0.42 ms after 30 ms of
    settle calls, and 0.20 ms in 200 ms blocks after 30 ms (ORT itself: 0.42-0.43 ms in
    every case; the sparse model alone: 0.18-0.21 ms).

    With ``repeat`` every callable gets exactly ``repeat`` samples (a callable that has them
    sits out later rounds). Otherwise rounds continue until the timed total reaches
    ``min_time * len(fns)`` seconds, with at least ``MIN_ROUNDS`` and at most ``MAX_ROUNDS``.
    """
    _check_budget(warmup, repeat, min_time)
    if block is not None and block < 1:
        raise ValueError(f"block={block} should be a positive integer or None (automatic)")
    if not fns:
        return []
    clock = perf_counter_ns  # module global, so tests can substitute a fake clock
    fastest: list[int | None] = [None] * len(fns)
    timed_from = warmup // 2
    for k in range(warmup):
        for i, fn in enumerate(fns):
            t0 = clock()
            fn()
            if k >= timed_from:
                dt = clock() - t0
                fastest[i] = dt if fastest[i] is None else min(fastest[i], dt)
    if block is not None:
        plans = [(block, 0)] * len(fns)
    else:
        plans = [plan_blocks(w) for w in fastest]
    pause = block is None and len(fns) > 1
    samples: list[list[int]] = [[] for _ in fns]
    budget_ns = int(min_time * 1e9) * len(fns)
    spent_ns = 0
    rounds = 0
    while True:
        if repeat is not None:
            if all(len(out) >= repeat for out in samples):
                break
        elif rounds >= MAX_ROUNDS or (rounds >= MIN_ROUNDS and spent_ns >= budget_ns):
            break
        for fn, out, (n_block, settle_ns) in zip(fns, samples, plans):
            if repeat is not None:
                n_block = min(n_block, repeat - len(out))
                if n_block <= 0:
                    continue
            if pause and not settle_ns:
                sleep(SWITCH_PAUSE)
            if settle_ns:
                deadline = clock() + settle_ns
                fn()
                while clock() < deadline:
                    fn()
            block_ns = 0
            for _ in range(n_block):
                t0 = clock()
                fn()
                dt = clock() - t0
                out.append(dt)
                spent_ns += dt
                block_ns += dt
                if settle_ns and block_ns >= BLOCK_TIME * 1e9:
                    break
        rounds += 1
    return samples


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 10,
    repeat: int | None = None,
    min_time: float = 1.0,
) -> list[int]:
    """Time one zero-argument callable; samples in ns (see :func:`measure_interleaved`)."""
    return measure_interleaved([fn], warmup=warmup, repeat=repeat, min_time=min_time, block=1)[0]
