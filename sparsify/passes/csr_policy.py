"""When a layer is worth converting to an ``ai.sparsify`` op: timed on this host, or by the
fixed rules below when calibration is off (``SPARSIFY_CALIBRATION=off``) or a conv's input
shape is unknown, or by the user's ``--density-threshold``.

Every number here is measured; the measurements and the commands that reproduce them are in
benchmarks/README.md, "Conversion thresholds".
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sparsify.onnxfile import node_attrs
from sparsify.passes.blocks import MAX_TIMED
from sparsify.passes.csr_decisions import OVERRIDE_HINT, LayerDecision
from sparsify.passes.onnx_graph import GraphIndex, ValueShapes

# A linear layer converts below the density where CSR beat ONNX Runtime's dense op, per batch
# (batches between entries take the next larger entry): sparse_crossover*.json.
LINEAR_CROSSOVER: dict[int, float] = {1: 0.4, 8: 0.2, 64: 0.3}
# A stride-1 conv with a kernel larger than 1x1 converts below 0.05, where every measured shape won.
CONV_CROSSOVER: float = 0.05
# A conv smaller than the smallest measured winner (64x64x3x3 over 8x8) stays dense: the fixed
# per-call cost dominates below it (digits-cnn, models.json); the weight count serves when the
# output size is unknown.
MIN_CONV_WEIGHTS = 64 * 64 * 3 * 3
MIN_CONV_MACS = MIN_CONV_WEIGHTS * 8 * 8
# A model whose converted layers are all linear and all below this many multiply-adds per call
# stays dense as a whole: its runtime steps and ORT segments cost more than its layers save
# (digits-mlp, digits-vit, models.json).
MIN_LINEAR_MACS = 1 << 20
# 1x1 and strided convs never won at both thread counts, so the fixed rules never convert them.


def default_threshold(kind: str, target_batch: int = 1, kernel_shape: Sequence[int] = (3, 3),
                      strides: Sequence[int] = (1, 1)) -> float:
    """The measured crossover density for ``kind`` ("linear" or "conv") at ``target_batch``.

    For convs it depends on the kernel: CONV_CROSSOVER for stride-1 convs larger than
    1x1, 0.0 (never convert) for 1x1 or strided ones.
    """
    if kind == "conv":
        spatial = any(k > 1 for k in kernel_shape)
        return CONV_CROSSOVER if spatial and all(st == 1 for st in strides) else 0.0
    for batch in sorted(LINEAR_CROSSOVER):
        if target_batch <= batch:
            return LINEAR_CROSSOVER[batch]
    return LINEAR_CROSSOVER[max(LINEAR_CROSSOVER)]


def conv_too_small(weights: int, positions: int | None) -> str | None:
    """Why a conv is too small to convert by default (see MIN_CONV_MACS), or None."""
    if positions is not None:
        macs = weights * positions
        if macs < MIN_CONV_MACS:
            return (f"{macs:,} multiply-adds per image, fewer than the {MIN_CONV_MACS:,} of the smallest "
                    "conv measured faster than ONNX Runtime")
    elif weights < MIN_CONV_WEIGHTS:
        return (f"{weights:,} weights, fewer than the {MIN_CONV_WEIGHTS:,} of the smallest conv measured "
                "faster than ONNX Runtime")
    return None


def decide_by_threshold(g: GraphIndex, d: LayerDecision, shapes: ValueShapes, target_batch: int,
                        density_threshold: float | None) -> None:
    """Decide ``d`` by its density: below ``density_threshold`` when given (1.0 converts every
    layer), else below :func:`default_threshold` for layers not under the size floors."""
    kind = "conv" if d.op_type == "Conv" else "linear"
    if density_threshold is not None:
        threshold = float(density_threshold)
    elif kind == "conv":
        a = node_attrs(g.nodes[d.fused[0]])
        threshold = default_threshold(kind, target_batch, a.get("kernel_shape", d.weight_shape[2:]),
                                      a.get("strides", (1, 1)))
    else:
        threshold = default_threshold(kind, target_batch)
    too_small = (conv_too_small(math.prod(d.weight_shape), shapes.positions(g.nodes[d.fused[0]].output[0]))
                 if density_threshold is None and kind == "conv" and threshold > 0 else None)
    if too_small:
        d.keep_dense(too_small + OVERRIDE_HINT)
        return
    d.threshold = threshold
    source = "set by --density-threshold" if density_threshold is not None else f"for batch {target_batch}"
    prefix = d.reason  # why it was not timed, if it was not
    if d.density < threshold or threshold >= 1.0:
        d.reason = f"{prefix}density {d.density:.3f} below threshold {threshold:.2f} {source}"
        if d.density >= threshold:
            d.reason = f"{prefix}density {d.density:.3f}, threshold {threshold:.2f} {source} converts every layer"
    else:
        reason = f"{prefix}density {d.density:.3f} not below threshold {threshold:.2f} {source}"
        if density_threshold is None and threshold == 0.0:
            what = "1x1 and strided conv" if kind == "conv" else kind
            reason += f" ({what} kernels measured slower than ONNX Runtime at every density)"
        d.keep_dense(reason)


def decide_by_measurement(g: GraphIndex, d: LayerDecision, w: np.ndarray, shapes: ValueShapes, target_batch: int,
                          calibrator, blocks: Sequence[tuple[int, int]] = ()) -> bool:
    """Decide ``d`` by timing it on this host (True), or return False when it cannot be timed
    (a conv's input shape unknown, or the timing refused it), leaving it to the fixed rules.
    A weight with block shapes ``blocks`` is timed as a CSR and as a BSR of each of the first
    MAX_TIMED of them; the fastest is the one stored and compared with dense."""
    layouts = ""
    node = g.nodes[d.fused[0]]
    try:
        if d.op_type == "Conv":
            dims = shapes.dims(node.input[0])
            if len(dims) != 4 or None in dims[1:]:
                d.reason = "input shape unknown, not timed; "
                return False
            a = node_attrs(node)
            spatial = len(w.shape) - 2
            conv = ((target_batch, *dims[1:]), a.get("strides", [1] * spatial), a.get("pads", [0] * 2 * spatial),
                    a.get("dilations", [1] * spatial), int(a.get("group", 1)))
            timed = [(calibrator.conv(w, *conv, blocksize=b), b) for b in (None, *blocks[:MAX_TIMED])]
        else:
            w2d = w.T if d.transpose else w.reshape(w.shape[0], -1)
            rows = target_batch * shapes.rows_per_sample(node.input[0])
            timed = [(calibrator.linear(w2d, rows, b), b) for b in (None, *blocks[:MAX_TIMED])]
        m, d.blocksize = min(timed, key=lambda t: t[0].sparse_ms)
        if len(timed) > 1:
            layouts = "; layouts timed: " + ", ".join(
                f"{'CSR' if b is None else f'{b[0]}x{b[1]} blocks'} {t.sparse_ms:.4f} ms" for t, b in timed)
    except Exception as exc:  # a layer the timing cannot run (ORT or a kernel refusing it): fixed rules
        d.reason = f"not timed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        return False
    reason = f"density {d.density:.3f}, {m.reason(calibrator.where)} at batch {target_batch}{layouts}"
    d.speedup = m.speedup
    if m.convert:
        d.reason = reason
    else:
        d.keep_dense(reason + OVERRIDE_HINT)
    return True


def keep_small_models_dense(g: GraphIndex, decisions: list[LayerDecision], target_batch: int,
                            shapes: ValueShapes) -> None:
    """Revert every conversion when all converted layers are linear and each does fewer
    than MIN_LINEAR_MACS multiply-adds per call at ``target_batch`` (see there)."""
    chosen = [d for d in decisions if d.convert]
    if not chosen or any(d.op_type == "Conv" for d in chosen):
        return
    macs = [math.prod(d.weight_shape) * target_batch * shapes.rows_per_sample(g.nodes[d.fused[0]].input[0])
            for d in chosen]
    if max(macs) >= MIN_LINEAR_MACS:
        return
    reason = (f"the model's largest convertible layer does {max(macs):,} multiply-adds per call at "
              f"batch {target_batch}, fewer than {MIN_LINEAR_MACS:,}: a model this small runs "
              "faster as one ONNX Runtime call; a larger --target-batch or --density-threshold "
              "converts it anyway")
    for d in chosen:
        d.keep_dense(reason)
