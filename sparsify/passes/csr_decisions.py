"""What the CSR pass decided for each layer and why (:class:`LayerDecision`), and the plan of a
whole model (:class:`CsrPlan`): what ``sparsify inspect`` and the export report show."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from sparsify.passes.onnx_graph import ValueShapes

# The end of the reason of a layer kept dense that --density-threshold would convert.
OVERRIDE_HINT = "; --density-threshold converts it anyway"


class Conversion(NamedTuple):
    """What converting a layer takes: the activation it absorbs, the nodes it replaces (the
    main node first) and its block shape (None: CSR)."""

    activation: str
    fused: tuple[int, ...]
    blocksize: tuple[int, int] | None


@dataclasses.dataclass
class LayerDecision:
    """What the pass decided for one Gemm / MatMul / Conv node, and why."""

    node: str
    op_type: str
    weight: str | None
    weight_shape: tuple[int, ...] | None
    nnz: int | None
    density: float | None
    convert: bool
    reason: str
    activation: str = "none"
    bias: str | None = None
    output: str = ""
    threshold: float | None = None
    # Node indices (in graph order) replaced by the sparse op: the main node first.
    fused: tuple[int, ...] = ()
    transpose: bool = False  # CSR holds weight.T (MatMul / Gemm transB=0)
    # The torch parameter behind an exporter-made initializer ("val_9" -> "fc1.weight"), if known.
    source: str | None = None
    # (R, C) when the converted weight is stored as a BSR of R x C blocks (sparsify.passes.blocks), else None.
    blocksize: tuple[int, int] | None = None
    # Dense time over sparse time (with its ONNX Runtime call) when the layer was timed, else None.
    speedup: float | None = None
    # Kept when a layer that can be converted is decided dense, so that a later step (the
    # whole-model check) can convert it.
    convertible: Conversion | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str | None:
        """The weight's name for people: the torch parameter when known, else the initializer."""
        if self.source and self.source != self.weight:
            return f"{self.source} (initializer {self.weight})"
        return self.weight

    @property
    def eligible(self) -> bool:
        """Whether the layer is converted or could be (:meth:`convert_again`)."""
        return self.convert or self.convertible is not None

    def keep_dense(self, reason: str) -> None:
        """Decide against converting, for ``reason`` (nothing fused)."""
        if self.convert:
            self.convertible = Conversion(self.activation, self.fused, self.blocksize)
        self.convert, self.reason = False, reason
        self.activation, self.fused, self.blocksize = "none", (), None

    def convert_again(self, reason: str) -> None:
        """Convert a layer decided dense by :meth:`keep_dense`, as it would have been, for ``reason``."""
        if self.convertible is None:
            raise ValueError(f"layer {self.node!r} cannot be converted: {self.reason}")
        self.activation, self.fused, self.blocksize = self.convertible
        self.convert, self.reason = True, reason

    def line(self) -> str:
        """One human-readable line."""
        what = f"{self.op_type} {self.node!r}" + (f" (weight {self.label}, {list(self.weight_shape)})"
                                                  if self.weight and self.weight_shape else "")
        fused = f", fused {self.activation}" if self.convert and self.activation != "none" else ""
        if self.convert and self.blocksize:
            fused += f", {self.blocksize[0]}x{self.blocksize[1]} blocks"
        return f"{'converted' if self.convert else 'kept dense'}: {what}: {self.reason}{fused}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (no internal indices)."""
        return {"node": self.node, "op_type": self.op_type, "weight": self.weight, "source": self.source,
                "weight_shape": list(self.weight_shape) if self.weight_shape else None,
                "nnz": self.nnz, "density": self.density, "convert": self.convert, "reason": self.reason,
                "activation": self.activation, "threshold": self.threshold,
                "blocksize": list(self.blocksize) if self.blocksize else None, "speedup": self.speedup}


@dataclasses.dataclass
class CsrPlan:
    """Decisions for every candidate node, with the inputs of the choice."""

    decisions: list[LayerDecision]
    target_batch: int
    density_threshold: float | None  # the user's override, None when measured defaults were used
    # Shape inference of the planned model, reused by rewrite_csr on the same model.
    shapes: ValueShapes | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def converted(self) -> list[LayerDecision]:
        """The decisions to convert, in graph order."""
        return [d for d in self.decisions if d.convert]

    @property
    def eligible(self) -> list[LayerDecision]:
        """The decisions converted or convertible (:meth:`LayerDecision.convert_again`), in graph order."""
        return [d for d in self.decisions if d.eligible]

    @property
    def skipped(self) -> list[LayerDecision]:
        """The decisions to keep dense, in graph order."""
        return [d for d in self.decisions if not d.convert]

    def lines(self) -> list[str]:
        """One human-readable line per decision."""
        return [d.line() for d in self.decisions]
