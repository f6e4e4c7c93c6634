"""Lower every ``ai.sparsify`` op of a model back to standard ONNX ops with dense weights.

The inverse of the CSR pass: ``SparseLinear`` becomes ``MatMul`` (weight stored [in, out]),
``SparseConv`` becomes ``Conv``, each followed by the bias ``Add`` (Linear) and the fused
activation (``Relu``, or exact-erf GELU as ``Div``, ``Erf``, ``Add``, ``Mul``, ``Mul``, the form
torch exports at opset 18). Weights not stored are zeros, so the result is the dense model
the sparse one was converted from, up to float rounding of the summation order; it runs in
plain ONNX Runtime and the CSR pass can convert it again (``sparsify export FILE.onnx``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsify.passes.onnx_graph import taken_names, unique_name
from sparsify.sparse_ops import CONV_OP, DOMAIN, SparseOpAttrs, node_label, parse_attrs, read_csr, scipy_matrix


def _activation(kind: str, x: str, y: str, name: str, fresh: Callable[[str], str],
                inits: list[onnx.TensorProto], dtype: np.dtype) -> list[onnx.NodeProto]:
    """Nodes computing ``y = kind(x)`` for ``relu``, exact-erf ``gelu`` and ``relu6``."""
    if kind == "relu":
        return [helper.make_node("Relu", [x], [y], name=fresh(f"{name}.relu"))]
    if kind == "relu6":
        bounds = [fresh(f"{name}.relu6_min"), fresh(f"{name}.relu6_max")]
        inits += [numpy_helper.from_array(np.array(v, dtype=dtype), b) for v, b in zip((0.0, 6.0), bounds)]
        return [helper.make_node("Clip", [x, *bounds], [y], name=fresh(f"{name}.relu6"))]
    consts = {}
    for key, value in (("sqrt2", math.sqrt(2.0)), ("one", 1.0), ("half", 0.5)):
        consts[key] = fresh(f"{name}.gelu_{key}")
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), consts[key]))
    scaled, erf, shifted, product = (fresh(f"{name}.gelu_{part}") for part in ("div", "erf", "add", "mul"))
    return [helper.make_node("Div", [x, consts["sqrt2"]], [scaled], name=fresh(f"{name}.gelu_div")),
            helper.make_node("Erf", [scaled], [erf], name=fresh(f"{name}.gelu_erf")),
            helper.make_node("Add", [erf, consts["one"]], [shifted], name=fresh(f"{name}.gelu_add")),
            helper.make_node("Mul", [x, shifted], [product], name=fresh(f"{name}.gelu_mul")),
            helper.make_node("Mul", [product, consts["half"]], [y], name=fresh(f"{name}.gelu_half"))]


def _lower(node: onnx.NodeProto, attrs: SparseOpAttrs, weight: np.ndarray, bias: str | None,
           fresh: Callable[[str], str], inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Standard nodes computing what the ``ai.sparsify`` ``node`` computes, given its dense
    [rows, cols] ``weight``; new initializers go to ``inits``."""
    # The CSR pass names a converted node after the one it replaced, plus ".sparse".
    label = node.name.removesuffix(".sparse") or attrs.weight_name or node.output[0]
    w_name = fresh(attrs.weight_name or f"{label}.weight")
    act = attrs.activation
    y = node.output[0]
    out = fresh(f"{label}.pre_activation") if act != "none" else y
    if node.op_type == CONV_OP:
        rows, cols = attrs.shape
        kh, kw = attrs.kernel_shape
        inits.append(numpy_helper.from_array(weight.reshape(rows, cols // (kh * kw), kh, kw), w_name))
        nodes = [helper.make_node("Conv", [node.input[0], w_name] + ([bias] if bias else []), [out],
                                  name=fresh(label), kernel_shape=list(attrs.kernel_shape),
                                  strides=list(attrs.strides), pads=list(attrs.pads),
                                  dilations=list(attrs.dilations), group=attrs.group)]
    else:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), w_name))
        product = fresh(f"{label}.matmul") if bias else out
        nodes = [helper.make_node("MatMul", [node.input[0], w_name], [product], name=fresh(label))]
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out], name=fresh(f"{label}.bias")))
    if act != "none":
        nodes += _activation(act, out, y, label, fresh, inits, weight.dtype)
    return nodes


def densify(model: onnx.ModelProto, base_dir: str | Path | None = None, where: str = "model",
            progress: Callable[[int], None] | None = None) -> onnx.ModelProto:
    """A new model with every ``ai.sparsify`` node of ``model`` replaced by standard ops with a
    dense weight (its CSR arrays checked first: ModelFileError naming the node and tensor);
    every other node, initializer and metadata entry stays. External data is read from
    ``base_dir``; ``progress`` gets each dense weight's bytes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    sparse = [n for n in model.graph.node if n.domain == DOMAIN]
    if not sparse:
        return out
    taken = taken_names(model)

    def fresh(base: str) -> str:
        return unique_name(base, taken)

    inits = {i.name: i for i in model.graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    dropped: set[str] = set()
    for node in model.graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        attrs = parse_attrs(node, where)
        csr = read_csr(node, inits, attrs, where, base_dir)
        weight = scipy_matrix(csr.data, csr.indices, csr.indptr, attrs.shape, attrs.blocksize).toarray()
        nodes += _lower(node, attrs, weight, csr.names.get("bias"), fresh, new_inits)
        dropped |= {csr.names[role] for role in ("data", "indices", "indptr")}
        if progress:
            progress(weight.nbytes)
        del weight
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {v for n in nodes for v in n.input}
    kept = [i for i in out.graph.initializer if i.name not in dropped or i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + new_inits)
    inputs = [vi for vi in out.graph.input if vi.name not in dropped or vi.name in used]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    opsets = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(opsets)
    return out


def sparse_node_labels(model: onnx.ModelProto) -> list[str]:
    """Labels of the model's ``ai.sparsify`` nodes, in graph order."""
    return [node_label(n) for n in model.graph.node if n.domain == DOMAIN]


__all__ = ["densify", "sparse_node_labels"]
