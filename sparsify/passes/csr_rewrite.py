"""Rewrite a model by a CSR plan: each converted layer (with the bias Add and activation it
absorbed) becomes one ``ai.sparsify`` node whose CSR arrays and bias are ordinary
initializers; every other node stays as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsify.onnxfile import node_attrs
from sparsify.passes.csr_arrays import stored_arrays
from sparsify.passes.csr_decisions import CsrPlan
from sparsify.passes.onnx_graph import GraphIndex, ValueShapes, taken_names, unique_name
from sparsify.sparse_ops import CONV_OP, DOMAIN, DOMAIN_VERSION, LINEAR_OP, make_node


def rewrite_csr(model: onnx.ModelProto, plan: CsrPlan, base_dir: str | Path | None = None,
                progress: Callable[[int], None] | None = None) -> onnx.ModelProto:
    """A new model with every converted layer of ``plan`` replaced by an ``ai.sparsify`` op.

    Dense weights no longer used are dropped; the ``ai.sparsify`` domain is added to
    ``opset_import``; value_info of the replaced outputs is kept so shape inference can
    continue past the custom ops. Weights kept dense stay where they are (external data
    stays relative to ``base_dir``); the CSR arrays are inline. ``progress`` is called with
    each converted weight's byte count.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not plan.converted:
        return out
    g = GraphIndex(model, base_dir)
    shapes = plan.shapes if plan.shapes is not None and plan.shapes.of(model) else ValueShapes(model)
    taken = taken_names(model)
    new_inits: list[onnx.TensorProto] = []
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    for d in plan.converted:
        main = g.nodes[d.fused[0]]
        w = g.array(d.weight)
        w2d = w.T if d.transpose else w.reshape(w.shape[0], -1)
        data, idx, ptr = stored_arrays(w2d, d.blocksize)
        base = d.source or d.weight
        names = tuple(unique_name(f"{base}.csr_{part}", taken) for part in ("data", "indices", "indptr"))
        for name, arr in zip(names, (data, idx, ptr)):
            new_inits.append(numpy_helper.from_array(arr, name))
        bias = d.bias
        if bias is not None and g.array(bias).shape != (w2d.shape[0],):
            b = g.array(bias).reshape(w2d.shape[0])
            bias = unique_name(f"{bias}.flat", taken)
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(b), bias))
        conv: dict[str, Any] = {}
        if d.op_type == "Conv":
            a = node_attrs(main)
            conv = dict(kernel_shape=list(a.get("kernel_shape", w.shape[2:])), strides=a.get("strides", [1, 1]),
                        pads=a.get("pads", [0, 0, 0, 0]), dilations=a.get("dilations", [1, 1]),
                        group=a.get("group", 1))
        op = CONV_OP if d.op_type == "Conv" else LINEAR_OP
        node = make_node(op, main.input[0], names, bias, d.output, unique_name(f"{d.node}.sparse", taken),
                         tuple(w2d.shape), d.activation, d.source or d.weight, tuple(w.shape), d.op_type,
                         d.blocksize or (1, 1), **conv)
        replace[d.fused[0]] = node
        drop.update(d.fused[1:])
        if progress:
            progress(w.nbytes)
    nodes = []
    for i, n in enumerate(g.nodes):
        if i in replace:
            nodes.append(replace[i])
        elif i not in drop:
            nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {v for n in nodes for v in n.input} | {o.name for o in out.graph.output}
    kept = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + new_inits)
    graph_inputs = [vi for vi in out.graph.input if vi.name in used or vi.name not in g.inits]
    del out.graph.input[:]
    out.graph.input.extend(graph_inputs)
    have_vi = {vi.name for vi in out.graph.value_info} | {o.name for o in out.graph.output}
    values = {v for n in nodes for v in n.output}
    vis = [vi for vi in out.graph.value_info if vi.name in values]
    vis += [vi for vi in (shapes.value_info(d.output) for d in plan.converted if d.output not in have_vi)
            if vi is not None]
    del out.graph.value_info[:]
    out.graph.value_info.extend(vis)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return out
