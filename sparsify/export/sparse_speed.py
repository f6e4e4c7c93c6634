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
none. It keeps the fastest that beats the dense model (none converted where nothing does), and
the layers it leaves dense say why.

The other way round, a layer that loses on its own can pay off in its model: when it and
numpy glue are all that is left of an ONNX Runtime step, converting it saves that step's
ORT call. So the export also times the model with such layers converted
(:func:`step_saving_layers`) and keeps it where it runs WIDER_GAIN faster than the plan.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from sparsify.passes.csr_decisions import OVERRIDE_HINT, CsrPlan
from sparsify.runtime import glue
from sparsify.runtime.partition import standard_runs

# Seconds of timed calls per model and candidate (interleaved with the dense model).
MIN_TIME_S = 0.5
# Least gain (time ratio) for which the model with step-saving layers converted replaces the
# plan: timings of one model 0.5 s long agree within a few percent here, and the margin keeps
# a choice from resting on that noise (the same margin as the batch-1 forms timed at load).
WIDER_GAIN = 0.9


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


def step_saving_layers(plan: CsrPlan, nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """The layers ``plan`` keeps dense but could convert whose conversion leaves an ONNX
    Runtime step of the converted model (a run of standard nodes between sparse ones,
    ``partition.standard_runs``) with nothing but numpy glue, so that the step no longer
    calls ORT. ``nodes`` are the nodes of the model the plan was made on."""
    sparse = {i for d in plan.converted for i in d.fused}
    spare = [d for d in plan.decisions if not d.convert and d.convertible is not None
             and not sparse.intersection(d.convertible.fused)]
    picked: list[str] = []
    for run in standard_runs(nodes, sparse):
        inside = [d for d in spare if d.convertible.fused[0] in run]
        covered = {i for d in inside for i in d.convertible.fused}
        if inside and all(i in covered or glue.supports(nodes[i]) for i in run):
            picked += [d.node for d in inside]
    return picked


def wider(plan: CsrPlan, layers: Sequence[str]) -> CsrPlan:
    """A copy of ``plan`` that also converts ``layers`` (names of layers it keeps dense but could
    convert), their reasons unchanged until the check keeps them."""
    decisions = [copy.copy(d) for d in plan.decisions]
    for d in decisions:
        if d.node in layers:
            d.convert_again(d.reason)
    return dataclasses.replace(plan, decisions=decisions)


def fit_whole_model(plan: CsrPlan, write: Callable[[CsrPlan], None], tried_first: Tried,
                    time_file: Callable[[int], Tried], extra: Sequence[str] = ()) -> tuple[CsrPlan, list[Tried]]:
    """The plan to keep. ``plan`` (already written and timed as ``tried_first``) gives way to
    the plan that also converts the ``extra`` layers (:func:`step_saving_layers`) where that
    runs WIDER_GAIN faster. Where the better of the two does not beat the dense model, the
    half of ``plan``'s conversions that won by the most and then none are timed too, and the
    fastest candidate that beats the dense model is kept, else none. ``write`` writes a plan's
    model to the export's target and ``time_file(converted)`` times that file; the target ends
    holding the plan returned, whose layers say why the check changed them."""
    plans = {len(plan.converted): plan}
    tried = [tried_first]
    best = tried_first
    if extra:
        plans[len(plan.converted) + len(extra)] = widened = wider(plan, extra)
        write(widened)
        tried.append(time_file(len(widened.converted)))
        if tried[-1].ratio < WIDER_GAIN * tried_first.ratio:
            best = tried[-1]
    if best.ratio >= 1.0:
        total = len(plan.converted)
        for keep in sorted({total // 2, 0}, reverse=True):
            if keep == total:
                continue
            plans[keep] = fewer(plan, keep)
            write(plans[keep])
            tried.append(time_file(keep))
            if tried[-1].ratio < 1.0:
                break
        # Where nothing beats the dense model, nothing is converted: a file of standard ops runs
        # in plain ONNX Runtime as fast as the dense export, which every candidate lost to.
        winners = [t for t in tried if t.ratio < 1.0]
        best = min(winners or [t for t in tried if t.converted == 0] or tried, key=lambda t: t.ratio)
    if len(tried) == 1:
        return plan, tried
    if best is not tried[-1]:
        write(plans[best.converted])
    chosen = plans[best.converted]
    planned = {d.node for d in plan.converted}
    kept = {d.node for d in chosen.converted}
    why = "; ".join(t.describe(len(plan.eligible)) for t in tried)
    for d in chosen.decisions:
        if d.node in planned - kept:
            d.keep_dense(f"{d.reason}; left dense by the whole-model check at batch {plan.target_batch} ({why})")
        elif d.node in kept - planned:
            d.reason = (f"converted by the whole-model check at batch {plan.target_batch}, which saves an ONNX "
                        f"Runtime step ({why}); on its own: {d.reason.removesuffix(OVERRIDE_HINT)}")
    return chosen, tried


__all__ = ["Tried", "fit_whole_model", "fewer", "step_saving_layers", "wider", "time_against_dense", "timing_feeds",
           "MIN_TIME_S", "WIDER_GAIN"]
