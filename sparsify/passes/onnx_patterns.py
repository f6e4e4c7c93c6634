"""Subgraph patterns a sparse op can absorb: a Relu, ReLU6 (``Clip`` to constant bounds 0 and
6), or the exact-erf GELU the torch exporter emits (``x * (0.5 * (erf(x / sqrt2) + 1))``), as
the sole reader of a layer's output."""

from __future__ import annotations

import math

from sparsify.passes.onnx_graph import GraphIndex
from sparsify.runtime.glue import clip_bounds


def _with_constant(g: GraphIndex, value: str, op_type: str, constant: float) -> int | None:
    """The sole consumer of ``value`` if it is ``op_type(value, constant)`` (either input order)."""
    user = g.sole_consumer(value)
    if user is None or g.nodes[user].op_type != op_type:
        return None
    other = [v for v in g.nodes[user].input if v != value]
    return user if len(other) == 1 and g.scalar(other[0]) == constant else None


def match_gelu(g: GraphIndex, value: str) -> tuple[list[int], str] | None:
    """Node indices and output of ``value * (0.5 * (erf(value / sqrt2) + 1))`` (the exporter's exact GELU)."""
    users = g.consumers.get(value, [])
    if value in g.outputs or len(users) != 2:
        return None
    div = next((i for i in users if g.nodes[i].op_type == "Div" and g.nodes[i].input[0] == value), None)
    mul_out = next((i for i in users if g.nodes[i].op_type == "Mul"), None)
    if div is None or mul_out is None:
        return None
    s = g.scalar(g.nodes[div].input[1])
    if s is None or abs(s - math.sqrt(2.0)) > 1e-6:
        return None
    chain = [div]
    erf = g.sole_consumer(g.nodes[div].output[0])
    if erf is None or g.nodes[erf].op_type != "Erf":
        return None
    add = _with_constant(g, g.nodes[erf].output[0], "Add", 1.0)
    if add is None:
        return None
    half = _with_constant(g, g.nodes[add].output[0], "Mul", 0.5)
    if half is None:
        return None
    if g.sole_consumer(g.nodes[half].output[0]) != mul_out:
        return None
    if sorted(g.nodes[mul_out].input) != sorted([value, g.nodes[half].output[0]]):
        return None
    chain += [erf, add, half, mul_out]
    return chain, g.nodes[mul_out].output[0]


def is_relu6(g: GraphIndex, node) -> bool:
    """Whether ``node`` is ``Clip(x, 0, 6)``: bounds as constant inputs (opset 11 on) or
    attributes (earlier opsets), read as the runtime's Clip reads them."""
    if node.op_type != "Clip":
        return False
    consts = {v: g.array(v) for v in node.input[1:3] if v in g.inits}
    try:
        return clip_bounds(node, consts) == (0.0, 6.0)
    except (KeyError, ValueError):  # a bound that is not a constant scalar
        return False


def fuse_activation(g: GraphIndex, value: str) -> tuple[str, list[int], str]:
    """(activation, fused node indices, new output) for the activation consuming ``value``, if any."""
    nxt = g.sole_consumer(value)
    if nxt is not None and g.nodes[nxt].op_type == "Relu":
        return "relu", [nxt], g.nodes[nxt].output[0]
    if nxt is not None and g.nodes[nxt].input[0] == value and is_relu6(g, g.nodes[nxt]):
        return "relu6", [nxt], g.nodes[nxt].output[0]
    gelu = match_gelu(g, value)
    if gelu is not None:
        return "gelu", gelu[0], gelu[1]
    return "none", [], value
