"""The CSR conversion pass on a dense-exported ONNX graph: plan which weights to convert, then rewrite.

:func:`plan_csr` (``csr_plan.py``) decides, per Gemm / MatMul / Conv, whether it becomes an
``ai.sparsify`` op and records why (``csr_decisions.py``), by the rules of ``csr_policy.py``;
:func:`rewrite_csr` (``csr_rewrite.py``) then builds the new model, its arrays made by
``csr_arrays.py``. :class:`CsrPass` runs both.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import onnx

from sparsify.passes.csr_decisions import CsrPlan, LayerDecision
from sparsify.passes.csr_plan import plan_csr
from sparsify.passes.csr_policy import (CONV_CROSSOVER, LINEAR_CROSSOVER, MIN_CONV_MACS, MIN_CONV_WEIGHTS,
                                        MIN_LINEAR_MACS, default_threshold)
from sparsify.passes.csr_rewrite import rewrite_csr


@dataclasses.dataclass
class PassResult:
    """The rewritten model, whether anything changed, and the plan behind it."""

    model: onnx.ModelProto
    modified: bool
    plan: CsrPlan


class CsrPass:
    """Plan, then rewrite: ``CsrPass(threshold, batch).call(model) -> PassResult``."""

    name = "csr"

    def __init__(self, density_threshold: float | None = None, target_batch: int = 1,
                 calibrate: bool | None = None) -> None:
        self.density_threshold = density_threshold
        self.target_batch = target_batch
        self.calibrate = calibrate

    def call(self, model: onnx.ModelProto, base_dir: str | Path | None = None,
             progress: Callable[[int], None] | None = None) -> PassResult:
        """Plan and rewrite ``model``; its external data, if any, is read from ``base_dir``;
        ``progress`` gets the bytes of each weight read (twice per converted layer)."""
        plan = plan_csr(model, self.density_threshold, self.target_batch, base_dir, progress, self.calibrate)
        return PassResult(rewrite_csr(model, plan, base_dir, progress), bool(plan.converted), plan)


__all__: Sequence[str] = ["LINEAR_CROSSOVER", "CONV_CROSSOVER", "MIN_CONV_WEIGHTS", "MIN_CONV_MACS", "MIN_LINEAR_MACS",
                          "default_threshold", "LayerDecision", "CsrPlan", "PassResult", "plan_csr", "rewrite_csr",
                          "CsrPass"]
