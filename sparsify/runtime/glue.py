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

from sparsify.onnxfile import node_attrs

GlueFn = Callable[[list[Any]], list[np.ndarray]]


def _axis(axis: int, rank: int, what: str, extra: int = 0) -> int:
    """``axis`` made non-negative; ValueError unless it is in [-rank, rank - 1 + extra] as ONNX says."""
    if not -rank <= axis < rank + extra:
        raise ValueError(f"{what} {axis} is out of range for an input of rank {rank}; "
                         f"expected [{-rank}, {rank - 1 + extra}]")
    return axis + rank if axis < 0 else axis


def _int_list(consts: dict[str, np.ndarray], name: str, what: str) -> list[int] | None:
    """A constant int64 1-D input as a list (None when the input is not a constant)."""
    if name not in consts:
        return None
    a = np.asarray(consts[name])
    if a.dtype != np.int64 or a.ndim != 1:
        raise ValueError(f"{what} {name!r} is {a.dtype} of shape {list(a.shape)}; expected a 1-D int64 tensor")
    return [int(v) for v in a]


def reshape_target(shape_in: tuple[int, ...], shape: list[int], allowzero: bool) -> list[int]:
    """The output shape of ONNX ``Reshape`` (ValueError for what ONNX rejects: values below -1, two -1s,
    a 0 that copies a missing axis, 0 with -1 under allowzero, a size that does not fit)."""
    if any(s < -1 for s in shape):
        raise ValueError(f"Reshape shape {shape} has a value below -1")
    if shape.count(-1) > 1:
        raise ValueError(f"Reshape shape {shape} has more than one -1")
    if allowzero and 0 in shape and -1 in shape:
        raise ValueError(f"Reshape shape {shape} has both 0 and -1 with allowzero=1")
    out = list(shape)
    if not allowzero:
        for i, s in enumerate(shape):
            if s == 0:
                if i >= len(shape_in):
                    raise ValueError(f"Reshape shape {shape} copies axis {i} (0), but the input has rank {len(shape_in)}")
                out[i] = shape_in[i]
    size = math.prod(shape_in)
    if -1 in out:
        known = math.prod(s for s in out if s != -1)
        if known == 0 or size % known:
            raise ValueError(f"Reshape cannot fit {size} elements of shape {list(shape_in)} into {shape}")
        out[out.index(-1)] = size // known
    if math.prod(out) != size:
        raise ValueError(f"Reshape cannot fit {size} elements of shape {list(shape_in)} into {shape}")
    return out


def _binary(fn) -> Callable[[onnx.NodeProto, dict], GlueFn]:
    return lambda node, consts: (lambda xs: [fn(xs[0], xs[1])])


def _relu(node, consts) -> GlueFn:
    def run(xs):
        return [np.maximum(xs[0], xs[0].dtype.type(0))]
    return run


def _identity(node, consts) -> GlueFn:
    return lambda xs: [xs[0]]


def _reshape(node, consts) -> GlueFn:
    allowzero = bool(node_attrs(node).get("allowzero", 0))
    static = _int_list(consts, node.input[1], "Reshape shape") if len(node.input) > 1 else None
    cache: dict[tuple[int, ...], list[int]] = {}

    def run(xs):
        x = xs[0]
        if static is None:
            shape = np.asarray(xs[1])
            if shape.dtype != np.int64 or shape.ndim != 1:
                raise ValueError(f"Reshape shape is {shape.dtype} of shape {list(shape.shape)}; expected 1-D int64")
            return [x.reshape(reshape_target(x.shape, [int(s) for s in shape], allowzero))]
        target = cache.get(x.shape)
        if target is None:
            target = cache[x.shape] = reshape_target(x.shape, static, allowzero)
        return [x.reshape(target)]
    return run


def _flatten(node, consts) -> GlueFn:
    axis = int(node_attrs(node).get("axis", 1))

    def run(xs):
        x = xs[0]
        a = _axis(axis, x.ndim, "Flatten axis", extra=1)
        lead = math.prod(x.shape[:a])
        return [x.reshape(lead, math.prod(x.shape[a:]))]
    return run


def _reduce_axes(axes, rank: int) -> tuple[int, ...]:
    """Axes made non-negative after the range check; an axis named twice counts once (as in ORT)."""
    return tuple(sorted({_axis(int(ax), rank, "ReduceMean axis") for ax in axes}))


def _reduce_mean(node, consts) -> GlueFn:
    a = node_attrs(node)
    keepdims = bool(a.get("keepdims", 1))
    noop = bool(a.get("noop_with_empty_axes", 0))
    static_axes = a.get("axes")  # opset < 18 carries axes as an attribute
    if static_axes is None and len(node.input) > 1 and node.input[1]:
        static_axes = _int_list(consts, node.input[1], "ReduceMean axes")

    def run(xs):
        x = xs[0]
        axes = static_axes if static_axes is not None else (xs[1] if len(xs) > 1 and xs[1] is not None else None)
        if axes is not None and static_axes is None:
            axes = np.asarray(axes)
            if axes.dtype != np.int64 or axes.ndim != 1:
                raise ValueError(f"ReduceMean axes are {axes.dtype} of shape {list(axes.shape)}; expected 1-D int64")
        if axes is None or len(axes) == 0:
            if noop:
                return [x]
            axes = range(x.ndim)
        axes = _reduce_axes(axes, x.ndim)
        count = math.prod(x.shape[ax] for ax in axes)
        # What np.mean computes (add.reduce, then divide by the count) without its Python
        # wrapper (measured 8.4 us vs 4.3 us on a (1, 64, 4, 4) input).
        return [np.add.reduce(x, axis=axes, keepdims=keepdims) / x.dtype.type(count)]
    return run


def _layer_norm(node, consts) -> GlueFn:
    from sparsify.kernels.norm import layer_norm

    a = node_attrs(node)
    axis, eps = int(a.get("axis", -1)), float(a.get("epsilon", 1e-5))

    def run(xs):
        x, scale = xs[0], xs[1]
        bias = xs[2] if len(xs) > 2 else None
        ax = _axis(axis, x.ndim, "LayerNormalization axis")
        tail = x.shape[ax:]
        inner = math.prod(tail)
        # float16 is normalized in float32 (as ONNX's default stash_type does), then rounded.
        work = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)

        def flat(v):
            return None if v is None else np.broadcast_to(v, tail).reshape(inner).astype(work, copy=False)

        y = layer_norm(x.reshape(-1, inner).astype(work, copy=False), flat(scale), flat(bias), eps)
        return [y.reshape(x.shape).astype(x.dtype, copy=False)]
    return run


# Ops whose result is a fresh array that a following Relu may overwrite.
IN_PLACE_RELU = {"Add", "Sub", "Mul", "Div"}


def _same_float_arrays(x: Any, y: Any) -> bool:
    """True when x and y are float32/float64 ndarrays of one shape and dtype (no broadcast): what
    the fused Numba kernels take."""
    return (type(x) is np.ndarray and type(y) is np.ndarray and x.shape == y.shape and x.dtype == y.dtype
            and x.dtype in (np.float32, np.float64))


def compile_with_relu(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> GlueFn:
    """``node`` (one of IN_PLACE_RELU) followed by a Relu applied in place on its result; an
    Add of two float arrays of one shape runs as one parallel kernel (``kernels.elementwise``)."""
    first = compile_node(node, consts)

    def run(xs):
        y = first(xs)[0]
        if type(y) is np.ndarray and y.flags.writeable and y.flags.owndata:
            np.maximum(y, y.dtype.type(0), out=y)
            return [y]
        return [np.maximum(y, y.dtype.type(0))]
    if node.op_type != "Add":
        return run
    from sparsify.kernels.elementwise import add_relu

    def run_add(xs):
        return [add_relu(xs[0], xs[1])] if _same_float_arrays(xs[0], xs[1]) else run(xs)
    return run_add


def fusable_add_layer_norm(add: onnx.NodeProto, ln: onnx.NodeProto) -> bool:
    """True when ``ln`` normalizes the output of ``add`` (a residual Add, then LayerNormalization)."""
    return (add.op_type == "Add" and ln.op_type == "LayerNormalization" and supports(add) and supports(ln)
            and len(ln.input) > 1 and ln.input[0] == add.output[0])


def compile_add_layer_norm(add: onnx.NodeProto, ln: onnx.NodeProto, consts: dict[str, np.ndarray]) -> GlueFn:
    """One function for an Add and the LayerNormalization of its result (``fusable_add_layer_norm``):
    inputs (a, b, scale[, bias]), outputs (a + b, layer_norm(a + b)); one Numba pass over the rows
    when a and b have one shape and the norm is over the last axis, else the two ops in turn."""
    from sparsify.kernels.norm import add_layer_norm

    separate = _layer_norm(ln, consts)
    a = node_attrs(ln)
    axis, eps = int(a.get("axis", -1)), float(a.get("epsilon", 1e-5))

    def run(xs):
        x, y, scale = xs[0], xs[1], xs[2]
        bias = xs[3] if len(xs) > 3 else None
        if (_same_float_arrays(x, y) and x.ndim >= 1
                and _axis(axis, x.ndim, "LayerNormalization axis") == x.ndim - 1):
            n = x.shape[-1]
            flat = [None if v is None else np.broadcast_to(v, (n,)).astype(x.dtype, copy=False) for v in (scale, bias)]
            out, total = add_layer_norm(x.reshape(-1, n), y.reshape(-1, n), flat[0], flat[1], eps)
            return [total.reshape(x.shape), out.reshape(x.shape)]
        total = np.add(x, y)
        return [total, separate([total, scale, bias])[0]]
    return run


def _global_average_pool(node, consts) -> GlueFn:
    def run(xs):
        x = xs[0]
        if x.ndim < 3:
            raise ValueError(f"GlobalAveragePool needs an input of rank >= 3 (N, C, spatial...), got rank {x.ndim}")
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
