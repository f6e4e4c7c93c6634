"""Small standard ONNX ops ("glue" between sparse layers) evaluated in numpy.

Running an Add + Relu between two sparse convs through its own ONNX Runtime session costs
one ``InferenceSession.run`` (tens of microseconds of fixed overhead); numpy does it in a
few. Only ops whose numpy result is ONNX's (up to float rounding: LayerNormalization runs
a Numba kernel that accumulates in float64) are here, and only on
float tensors (the partitioner checks the inferred types); anything else runs in ORT.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper

GlueFn = Callable[[list[Any]], list[np.ndarray]]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _binary(fn) -> Callable[[onnx.NodeProto, dict], GlueFn]:
    return lambda node, consts: (lambda xs: [fn(xs[0], xs[1])])


def _relu(node, consts) -> GlueFn:
    def run(xs):
        return [np.maximum(xs[0], xs[0].dtype.type(0))]
    return run


def _identity(node, consts) -> GlueFn:
    return lambda xs: [xs[0]]


def _reshape(node, consts) -> GlueFn:
    allowzero = int(_attrs(node).get("allowzero", 0))

    def run(xs):
        x, shape = xs[0], [int(s) for s in xs[1]]
        if not allowzero:
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return [x.reshape(shape)]
    return run


def _flatten(node, consts) -> GlueFn:
    axis = int(_attrs(node).get("axis", 1))

    def run(xs):
        x = xs[0]
        a = axis + x.ndim if axis < 0 else axis
        lead = int(np.prod(x.shape[:a], dtype=np.int64))
        return [x.reshape(lead, -1)]
    return run


def _reduce_mean(node, consts) -> GlueFn:
    a = _attrs(node)
    keepdims = bool(a.get("keepdims", 1))
    noop = bool(a.get("noop_with_empty_axes", 0))
    static_axes = a.get("axes")  # opset < 18 carries axes as an attribute
    if static_axes is None and len(node.input) > 1 and node.input[1] in consts:
        static_axes = [int(v) for v in np.asarray(consts[node.input[1]]).reshape(-1)]

    def run(xs):
        x = xs[0]
        axes = static_axes if static_axes is not None else (xs[1] if len(xs) > 1 and xs[1] is not None else None)
        if axes is None or len(axes) == 0:
            if noop:
                return [x]
            axes = range(x.ndim)
        axes = tuple(int(ax) % x.ndim for ax in axes)
        count = math.prod(x.shape[ax] for ax in axes)
        # What np.mean computes (add.reduce, then divide by the count) without its Python
        # wrapper (measured 8.4 us vs 4.3 us on a (1, 64, 4, 4) input).
        return [np.add.reduce(x, axis=axes, keepdims=keepdims) / x.dtype.type(count)]
    return run


def _layer_norm(node, consts) -> GlueFn:
    from sparsify.kernels.norm import layer_norm

    a = _attrs(node)
    axis, eps = int(a.get("axis", -1)), float(a.get("epsilon", 1e-5))

    def run(xs):
        x, scale = xs[0], xs[1]
        bias = xs[2] if len(xs) > 2 else None
        ax = axis + x.ndim if axis < 0 else axis
        tail = x.shape[ax:]
        inner = math.prod(tail)
        # float16 is normalized in float32 (as ONNX's default stash_type does), then rounded.
        work = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)

        def flat(v):
            return None if v is None else np.broadcast_to(v, tail).reshape(inner).astype(work, copy=False)

        y = layer_norm(x.reshape(-1, inner).astype(work, copy=False), flat(scale), flat(bias), eps)
        return [y.reshape(x.shape).astype(x.dtype, copy=False)]
    return run


def _global_average_pool(node, consts) -> GlueFn:
    def run(xs):
        x = xs[0]
        axes = tuple(range(2, x.ndim))
        return [np.add.reduce(x, axis=axes, keepdims=True) / x.dtype.type(math.prod(x.shape[2:]))]
    return run


GLUE_OPS: dict[str, Callable[[onnx.NodeProto, dict], GlueFn]] = {
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide),
    "Relu": _relu,
    "Identity": _identity,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "ReduceMean": _reduce_mean,
    "GlobalAveragePool": _global_average_pool,
    "LayerNormalization": _layer_norm,
}
# Node conditions beyond the op type: LayerNormalization only without its optional Mean
# and InvStdDev outputs.
ONLY_IF: dict[str, Callable[[onnx.NodeProto], bool]] = {
    "LayerNormalization": lambda node: not any(node.output[1:]),
}
# Inputs of these ops that are shapes/axes (int64), not float data.
INT_INPUTS = {"Reshape": {1}, "ReduceMean": {1}}


def supports(node: onnx.NodeProto) -> bool:
    """True when ``node`` is a standard-domain op with a numpy implementation here."""
    return (node.domain in ("", "ai.onnx") and node.op_type in GLUE_OPS
            and ONLY_IF.get(node.op_type, lambda n: True)(node))


def compile_node(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> GlueFn:
    """The numpy function for ``node`` (inputs in node order, missing optional inputs as None)."""
    return GLUE_OPS[node.op_type](node, consts)
