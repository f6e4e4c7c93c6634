"""Whether a sparse export pays off as a whole: the converted model timed against the dense one.

The CSR pass decides layer by layer: each layer's kernel against ONNX Runtime's dense op,
plus one ONNX Runtime call. A converted layer can cost its model more than that, because
it splits ONNX Runtime's graph: ops that ORT fuses across it run apart (a Conv and the
Clip after it), and convolutions in ORT's blocked channel layout convert their inputs
and outputs at every split. A MobileNetV2-shaped CNN at 90% sparsity, batch 1, ran 2x
slower than its dense export with its 34 1x1 convs, stem and classifier converted, each
of which won on its own (benchmarks/README.md, "Whole-model check"). So the export times the
converted model against the dense one at the target batch and, where it does not win,
the models with fewer layers converted: the half whose own timings won by the most, then
none. It keeps the fastest, and the layers it leaves dense say why.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sparsify.passes.csr_decisions import CsrPlan

# Seconds of timed calls per model and candidate (interleaved with the dense model).
MIN_TIME_S = 0.5


@dataclasses.dataclass(frozen=True)
class Tried:
    """One candidate conversion timed against the dense model at the same time."""

    converted: int
    sparse_ms: float
    dense_ms: float

    @property
    def ratio(self) -> float:
        """Time of the converted model over the dense one's (below 1: it wins)."""
        return self.sparse_ms / max(self.dense_ms, 1e-9)

    def describe(self, total: int) -> str:
        return (f"{self.converted} of {total} layers converted: {self.sparse_ms:.3f} ms against dense ONNX "
                f"Runtime {self.dense_ms:.3f} ms (x{1 / max(self.ratio, 1e-9):.2f})")


def timing_feeds(names: Sequence[str], input_sets: dict[str, Sequence[np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    """Feeds for a model whose inputs are ``names`` at ``batch``: the first verification set
    of batch 1 (else the first set), each input repeated along its batch axis."""
    arrays = input_sets.get("random b1") or next(iter(input_sets.values()))
    return {n: np.ascontiguousarray(np.repeat(a[:1], batch, axis=0)) for n, a in zip(names, arrays)}


def time_against_dense(dense_session, path: Path, feeds: dict[str, np.ndarray], threads: int,
                       converted: int) -> Tried:
    """The sparse runtime on ``path`` and ``dense_session`` (ONNX Runtime on the dense
    export), timed interleaved on ``feeds``: medians."""
    from sparsify.bench.timing import Stats, measure_interleaved
    from sparsify.runtime import Session

    sparse = Session(path, threads=threads)
    samples = measure_interleaved([lambda: dense_session.run(None, feeds), lambda: sparse.run(None, feeds)],
                                  min_time=MIN_TIME_S)
    dense_ms, sparse_ms = (Stats.from_ns(s).p50_ms for s in samples)
    return Tried(converted, sparse_ms, dense_ms)


def fewer(plan: CsrPlan, keep: int) -> CsrPlan:
    """A copy of ``plan`` converting only the ``keep`` converted layers whose own timings won
    by the most (threshold-decided layers last)."""
    decisions = [copy.copy(d) for d in plan.decisions]
    chosen = sorted((d for d in decisions if d.convert), key=lambda d: -(d.speedup or 0.0))
    for d in chosen[keep:]:
        d.keep_dense(d.reason)
    return dataclasses.replace(plan, decisions=decisions)


def fit_whole_model(plan: CsrPlan, write: Callable[[CsrPlan], None], tried_first: Tried,
                    time_file: Callable[[int], Tried]) -> tuple[CsrPlan, list[Tried]]:
    """The plan to keep: ``plan`` (already written and timed as ``tried_first``) where it
    beats the dense model, else the fastest of it, the half of its conversions that won by
    the most, and none. ``write`` writes a plan's model to the export's target and
    ``time_file(converted)`` times that file; the target ends holding the plan returned,
    whose layers left dense say why."""
    total = len(plan.converted)
    tried = [tried_first]
    if tried_first.ratio < 1.0:
        return plan, tried
    plans = {total: plan}
    for keep in sorted({total // 2, 0}, reverse=True):
        if keep == total:
            continue
        plans[keep] = fewer(plan, keep)
        write(plans[keep])
        tried.append(time_file(keep))
        if tried[-1].ratio < 1.0:
            break
    best = min(tried, key=lambda t: t.ratio)
    if best is not tried[-1]:
        write(plans[best.converted])
    chosen = plans[best.converted]
    reverted = {d.node for d in plan.converted} - {d.node for d in chosen.converted}
    why = "; ".join(t.describe(total) for t in tried)
    for d in chosen.decisions:
        if d.node in reverted:
            d.keep_dense(f"{d.reason}; left dense by the whole-model check at batch {plan.target_batch} ({why})")
    return chosen, tried


__all__ = ["Tried", "fit_whole_model", "fewer", "time_against_dense", "timing_feeds", "MIN_TIME_S"]
