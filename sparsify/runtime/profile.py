"""Where a sparse model's run spends its time: per execution step and per op type.

``Session(path, profile=True)`` times every step of every run (sparse kernel, numpy glue, ONNX
Runtime segment) with ``perf_counter_ns`` and turns on ONNX Runtime's own per-node profiler in
its segments, so the time inside a segment is split by op type too. ``Session.profile()``
returns a :class:`RunProfile`: per step and per op, milliseconds per run, and what is left
over (``overhead``: the Session's own Python between steps, and for ORT segments the time
between the segment's call and its nodes: input/output copies and the call itself).

Profiling costs a little (two clock reads per step, ONNX Runtime's per-node events), so
a profiled session runs a few percent slower than an unprofiled one; compare shares, not
absolute figures, with unprofiled timings.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


@dataclasses.dataclass
class StepTimer:
    """Accumulated wall time of one execution step."""

    index: int
    kind: str
    label: str
    op_types: tuple[str, ...]
    calls: int = 0
    total_ns: int = 0
    # ORT segments: the session whose per-node profile splits this step, and how many runs it
    # had made when the counters were last reset (those runs are left out).
    ort_session: Any = None
    ort_runs_before: int = 0
    ort_runs: int = 0

    def wrap(self, run: Callable[[list[Any]], list[np.ndarray]]) -> Callable[[list[Any]], list[np.ndarray]]:
        clock = time.perf_counter_ns

        def timed(xs: list[Any]) -> list[np.ndarray]:
            t0 = clock()
            try:
                return run(xs)
            finally:
                self.total_ns += clock() - t0
                self.calls += 1
                self.ort_runs += 1
        return timed


def _ort_node_times(events: list[dict[str, Any]], skip_runs: int) -> tuple[dict[str, int], int]:
    """(op type -> microseconds, runs counted) from ONNX Runtime profiler events, leaving out
    the first ``skip_runs`` runs (a node event belongs to the run whose interval holds it)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept = runs[skip_runs:]
    if not kept:
        return {}, 0
    start = kept[0][0]
    out: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < start:
            continue
        op = (e.get("args") or {}).get("op_name") or "?"
        out[op] += int(e["dur"])
    return dict(out), len(kept)


@dataclasses.dataclass
class RunProfile:
    """Milliseconds per run, by step and by op type (see the module docstring)."""

    runs: int
    total_ms: float  # Session.run wall time per run
    steps: list[dict[str, Any]]  # per step: index, kind, label, op_types, ms
    ops: dict[str, float]  # "sparse SparseLinear", "ort MatMul", "numpy LayerNormalization", ... -> ms per run

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "total_ms": self.total_ms, "steps": self.steps, "ops": self.ops}

    def table(self, top: int = 20) -> list[str]:
        """Lines for people: the ops by time, then the slowest steps."""
        lines = [f"{self.runs} run(s), {self.total_ms:.3f} ms per run"]
        total = max(self.total_ms, 1e-12)
        for name, ms in sorted(self.ops.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {ms:9.3f} ms {100 * ms / total:5.1f}%  {name}")
        slow = sorted(self.steps, key=lambda s: -s["ms"])[:top]
        if slow:
            lines.append(f"slowest steps (of {len(self.steps)}):")
            for s in slow:
                lines.append(f"  {s['ms']:9.3f} ms  #{s['index']} {s['kind']}: {s['label'][:100]}")
        return lines


class Profiler:
    """The timers of one Session's steps and its whole runs."""

    def __init__(self) -> None:
        self.timers: list[StepTimer] = []
        self.runs = 0
        self.run_ns = 0
        self._ort_done: dict[int, tuple[dict[str, int], int]] = {}

    def add(self, index: int, kind: str, label: str, op_types: Sequence[str], ort_session: Any = None) -> StepTimer:
        timer = StepTimer(index, kind, label, tuple(op_types), ort_session=ort_session)
        self.timers.append(timer)
        return timer

    def reset(self) -> None:
        """Forget everything measured so far (e.g. the warm-up runs)."""
        self.runs, self.run_ns = 0, 0
        for t in self.timers:
            t.calls, t.total_ns = 0, 0
            t.ort_runs_before = t.ort_runs

    def _ort_ops(self, timer: StepTimer) -> tuple[dict[str, int], int]:
        """Per-op microseconds of an ORT step's runs since the reset (ends ORT's profiler once)."""
        if timer.index not in self._ort_done:
            events: list[dict[str, Any]] = []
            try:
                path = timer.ort_session.end_profiling()
                if path:
                    events = json.loads(Path(path).read_text())
                    Path(path).unlink(missing_ok=True)
            except (OSError, ValueError, RuntimeError):
                events = []
            self._ort_done[timer.index] = _ort_node_times(events, timer.ort_runs_before)
        return self._ort_done[timer.index]

    def report(self) -> RunProfile:
        """The profile so far. The first call ends ONNX Runtime's per-node profiling (later
        runs still count in the step times, but ORT segments are no longer split by op)."""
        runs = max(self.runs, 1)
        steps = []
        ops: dict[str, float] = defaultdict(float)
        for t in self.timers:
            ms = t.total_ns / 1e6 / runs
            steps.append({"index": t.index, "kind": t.kind, "label": t.label, "op_types": list(t.op_types),
                          "ms": ms})
            if t.kind == "sparse":
                ops[f"sparse {t.op_types[0]}"] += ms
            elif t.kind == "numpy":
                share = ms / max(1, len(t.op_types))  # numpy steps are not split further
                for op in t.op_types:
                    ops[f"numpy {op}"] += share
            else:
                node_us, counted = self._ort_ops(t) if t.ort_session is not None else ({}, 0)
                inside = 0.0
                if counted:
                    for op, us in node_us.items():
                        v = us / 1e3 / counted
                        ops[f"ort {op}"] += v
                        inside += v
                    ops["ort call overhead (copies, dispatch)"] += max(0.0, ms - inside)
                else:
                    ops["ort segments (not split)"] += ms
        accounted = sum(s["ms"] for s in steps)
        total = self.run_ns / 1e6 / runs
        ops["session overhead (between steps)"] = max(0.0, total - accounted)
        return RunProfile(self.runs, total, steps, {k: round(v, 6) for k, v in ops.items()})


__all__ = ["Profiler", "RunProfile", "StepTimer"]
