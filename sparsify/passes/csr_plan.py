"""Plan the CSR pass: for every Gemm / MatMul (+ bias Add) / Conv whose weight is an
initializer, decide whether it becomes an ``ai.sparsify`` op and record why, changing nothing.

A layer is first checked for structure (weight an initializer, supported attributes, a bias
it can take, a Relu or exact GELU it can absorb), then decided by :mod:`sparsify.passes.csr_policy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from sparsify.errors import ExportError
from sparsify.onnxfile import node_attrs
from sparsify.passes.blocks import block_candidates, conv_block_candidates, fixed_rule_block
from sparsify.passes.csr_decisions import CsrPlan, LayerDecision
from sparsify.passes.csr_policy import decide_by_measurement, decide_by_threshold, keep_small_models_dense
from sparsify.passes.onnx_graph import GraphIndex, ValueShapes, source_parameter
from sparsify.passes.onnx_patterns import fuse_activation
from sparsify.sparse_ops import node_label


def _candidate(g: GraphIndex, idx: int) -> LayerDecision | None:
    """Structural checks for node ``idx``; a decision with convert=True means "eligible"."""
    node = g.nodes[idx]
    if node.op_type not in ("Gemm", "MatMul", "Conv") or node.domain not in ("", "ai.onnx"):
        return None
    label = node_label(node)
    weight = node.input[1] if len(node.input) > 1 else None

    def skip(reason: str, shape=None) -> LayerDecision:
        return LayerDecision(label, node.op_type, weight, shape, None, None, False, reason)

    if weight not in g.inits:
        if node.op_type == "MatMul" and node.input[0] in g.inits:
            return skip("weight is the left operand of MatMul (only X @ W is converted)")
        return skip("weight is not an initializer")
    shape, dtype = g.shape(weight), g.dtype(weight)
    if dtype not in (np.float32, np.float64):
        return skip(f"weight dtype {dtype} is not float32/float64", shape)
    attrs = node_attrs(node)
    bias = None
    transpose = False
    fused = [idx]
    out = node.output[0]
    if node.op_type == "Gemm":
        if len(shape) != 2:
            return skip(f"Gemm weight has rank {len(shape)}, expected 2", shape)
        if attrs.get("transA", 0):
            return skip("Gemm transA=1", shape)
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return skip(f"Gemm alpha={attrs.get('alpha', 1.0)} beta={attrs.get('beta', 1.0)} (only 1.0 is converted)", shape)
        transpose = not attrs.get("transB", 0)
        rows = shape[1] if transpose else shape[0]
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if bias not in g.inits:
                return skip("Gemm bias C is not an initializer", shape)
            b = g.array(bias)
            if b.size != rows or b.shape not in ((rows,), (1, rows)) or b.dtype != dtype:
                return skip(f"Gemm bias C has shape {tuple(b.shape)} {b.dtype}, expected ({rows},) {dtype}", shape)
    elif node.op_type == "MatMul":
        if len(shape) != 2:
            return skip(f"MatMul weight has rank {len(shape)}, expected 2", shape)
        transpose = True
        add = g.sole_consumer(out)
        if add is not None and g.nodes[add].op_type == "Add":
            other = [v for v in g.nodes[add].input if v != out]
            if len(other) == 1 and other[0] in g.inits:
                b = g.array(other[0])
                if b.dtype == dtype and b.size == shape[1] and b.shape[-1:] == (shape[1],) and b.ndim <= 2:
                    bias = other[0]
                    fused.append(add)
                    out = g.nodes[add].output[0]
    else:  # Conv
        if len(shape) != 4:
            return skip(f"Conv weight has rank {len(shape)}; only 2-D convs (rank 4) are converted", shape)
        if attrs.get("auto_pad", "NOTSET") != "NOTSET":
            return skip(f"Conv auto_pad={attrs['auto_pad']} (only explicit pads are converted)", shape)
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            return skip(f"Conv pads {pads} are asymmetric", shape)
        group = int(attrs.get("group", 1))
        if group > 1 and shape[1] == 1:
            return skip(f"Conv groups={group} is depthwise (one kernel launch per channel; kept dense)", shape)
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if bias not in g.inits:
                return skip("Conv bias is not an initializer", shape)
    activation, act_nodes, out = fuse_activation(g, out)
    return LayerDecision(label, node.op_type, weight, shape, None, None, True, "", activation, bias, out,
                         fused=tuple(fused + act_nodes), transpose=transpose,
                         source=source_parameter(node, weight))


def plan_csr(model: onnx.ModelProto, density_threshold: float | None = None,
             target_batch: int = 1, base_dir: str | Path | None = None,
             progress: Callable[[int], None] | None = None, calibrate: bool | None = None) -> CsrPlan:
    """Decide, for each Gemm / MatMul / Conv of ``model``, whether to convert it and why.

    With ``density_threshold`` a layer is converted when its weight density is strictly
    below it (1.0: every eligible layer, fully dense ones included). Otherwise, with
    ``calibrate`` (default: unless ``$SPARSIFY_CALIBRATION`` is off), each layer is timed
    on this host at ``target_batch`` against ONNX Runtime's dense op and converted when
    our kernel wins (``sparsify.runtime.calibrate``; cached per host); without it, the
    fixed rules of :mod:`sparsify.passes.csr_policy` apply. External data is read from
    ``base_dir``; ``progress`` is called with each weight's byte count once it has been read.
    """
    if density_threshold is not None and not (isinstance(density_threshold, (int, float))
                                              and 0.0 <= density_threshold <= 1.0):
        raise ExportError(f"density threshold {density_threshold!r} should be a number in [0, 1]")
    if not isinstance(target_batch, int) or target_batch < 1:
        raise ExportError(f"target batch {target_batch!r} should be a positive int")
    g = GraphIndex(model, base_dir)
    shapes = ValueShapes(model)
    calibrator = None
    if density_threshold is None:
        from sparsify.runtime import calibrate as calib

        if calib.enabled() if calibrate is None else calibrate:
            calibrator = calib.Calibrator()
    decisions: list[LayerDecision] = []
    claimed: set[int] = set()
    for idx in range(len(g.nodes)):
        if idx in claimed:
            continue
        d = _candidate(g, idx)
        if d is None:
            continue
        decisions.append(d)
        if not d.convert:
            continue
        w = g.array(d.weight)
        nnz = int(np.count_nonzero(w))
        d.nnz, d.density = nnz, nnz / max(1, w.size)
        if d.op_type == "Conv":
            blocks = conv_block_candidates(w, int(node_attrs(g.nodes[d.fused[0]]).get("group", 1)))
        else:
            blocks = block_candidates(w.T if d.transpose else w)
        d.blocksize = fixed_rule_block(blocks)
        if progress:
            progress(w.nbytes)
        measured = False
        if calibrator is not None:
            with calibrator.exclusive():
                measured = decide_by_measurement(g, d, w, shapes, target_batch, calibrator, blocks)
        del w
        if not measured:
            decide_by_threshold(g, d, shapes, target_batch, density_threshold)
        if d.convert:
            claimed.update(d.fused)
    if calibrator is None and density_threshold is None:
        keep_small_models_dense(g, decisions, target_batch, shapes)
    return CsrPlan(decisions, target_batch, density_threshold, shapes)
