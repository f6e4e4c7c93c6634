"""Small standard ONNX ops ("glue" between sparse layers) evaluated in numpy.

Running an Add + Relu between two sparse convs through its own ONNX Runtime session costs
one ``InferenceSession.run`` (tens of microseconds of fixed overhead); numpy does it in a
few. Only ops whose numpy result is ONNX's (up to float rounding: LayerNormalization runs
a Numba kernel that accumulates in float64, a depthwise Conv one that accumulates in the
input's float type) are here, and only on
float tensors (the partitioner checks the inferred types); anything else runs in ORT.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

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


def _dims(tensor: Any) -> list[int]:
    """The shape of a constant: an ``onnx.TensorProto`` (the model's initializer) or an array."""
    return list(tensor.dims) if isinstance(tensor, onnx.TensorProto) else list(np.shape(tensor))


def _scalar(consts: Mapping[str, Any], name: str, what: str) -> float:
    """The value of a constant scalar input (shape [] or [1], as ONNX Runtime takes)."""
    a = np.asarray(consts[name])
    if a.shape not in ((), (1,)):
        raise ValueError(f"{what} {name!r} has shape {list(a.shape)}; expected a scalar")
    return float(a.reshape(()))


def clip_bounds(node: onnx.NodeProto, consts: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(min, max) of a ``Clip`` node, None where not given: from its constant inputs 1 and 2
    (opset >= 11), or from its ``min``/``max`` attributes (opset 6)."""
    a = node_attrs(node)
    given = [v for v in node.input[1:3] if v]
    if "min" in a or "max" in a:
        if given:
            raise ValueError("Clip has both min/max attributes and min/max inputs")
        return (None if a.get("min") is None else float(a["min"]), None if a.get("max") is None else float(a["max"]))
    name = list(node.input[1:3]) + ["", ""]
    return (_scalar(consts, name[0], "Clip min") if name[0] else None,
            _scalar(consts, name[1], "Clip max") if name[1] else None)


def clip_limits(lo: float | None, hi: float | None, dtype: np.dtype) -> tuple[Any, Any]:
    """Clip bounds as ``dtype`` scalars, as ONNX Runtime applies them: a missing bound is the
    type's finite extreme (so Clip turns inf into it), a NaN bound clips nothing."""
    info = np.finfo(dtype)
    lo = info.min if lo is None else (-math.inf if math.isnan(lo) else lo)
    hi = info.max if hi is None else (math.inf if math.isnan(hi) else hi)
    return dtype.type(lo), dtype.type(hi)


def _clip(node, consts) -> GlueFn:
    lo, hi = clip_bounds(node, consts)

    def run(xs):
        x = xs[0]
        return [np.clip(x, *clip_limits(lo, hi, x.dtype))]
    return run


# auto_pad values of Conv: NOTSET uses ``pads``; VALID pads nothing; SAME_UPPER / SAME_LOWER pad
# so that the output has ceil(input / stride) positions, the odd one at the end / start.
AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def _ints_attr(a: dict[str, Any], name: str, count: int, default: int, least: int) -> list[int]:
    """An int-list attribute of ``count`` values >= ``least`` (``default`` each when missing)."""
    v = [int(x) for x in a.get(name, [default] * count)]
    if len(v) != count or any(x < least for x in v):
        raise ValueError(f"{name} {v} should be {count} ints >= {least}")
    return v


def same_pads(size: tuple[int, ...], kernel: list[int], strides: list[int], lower: bool) -> tuple[int, ...]:
    """ONNX Runtime's (top, left, bottom, right) padding for auto_pad SAME_UPPER (``lower``
    False) or SAME_LOWER: total ``(ceil(n / s) - 1) * s + k - n`` per axis (at least 0 when
    k >= s), the odd one at the end (UPPER) or start (LOWER); dilation 1."""
    begin, end = [], []
    for n, k, s in zip(size, kernel, strides):
        need = ((n + s - 1) // s - 1) * s + k - n
        head = (need + 1) // 2 if lower else need // 2
        begin.append(head)
        end.append(need - head)
    return tuple(begin + end)


def depthwise_conv_supported(node: onnx.NodeProto, inits: Mapping[str, Any]) -> bool:
    """True when Conv ``node`` is depthwise (weight (C*M, 1, kH, kW), ``group`` C) with its
    weight and bias among ``inits`` (constants by name) and an auto_pad this module takes:
    SAME_* only at dilation 1 with kernels at least the strides (ONNX Runtime's condition)."""
    if len(node.input) < 2 or node.input[1] not in inits:
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return False
    dims = _dims(inits[node.input[1]])
    a = node_attrs(node)
    group = a.get("group", 1)
    if len(dims) != 4 or dims[1] != 1 or min(dims) < 1 or not isinstance(group, int) or group < 1 or dims[0] % group:
        return False
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad not in AUTO_PADS:
        return False
    if auto_pad.startswith("SAME"):
        strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
        return dilations == [1, 1] and len(strides) == 2 and all(k >= s for k, s in zip(dims[2:], strides))
    return True


def compile_depthwise(conv: onnx.NodeProto, consts: Mapping[str, Any], before: onnx.NodeProto | None = None,
                      after: onnx.NodeProto | None = None) -> GlueFn:
    """The depthwise ``conv`` (:func:`depthwise_conv_supported`) as one kernel pass
    (``kernels.depthwise``), with the Clip ``before`` it on its input and the Clip or Relu
    ``after`` it on its output applied in that pass (when given). Inputs: (x,); float16
    runs in float32, then is rounded."""
    from sparsify.kernels.depthwise import DepthwiseConv2d

    a = node_attrs(conv)
    w = np.asarray(consts[conv.input[1]])
    group = int(a.get("group", 1))
    if w.ndim != 4 or w.shape[1] != 1 or w.shape[0] % group:
        raise ValueError(f"Conv weight of shape {list(w.shape)} with group {group} is not depthwise "
                         "(C*M, 1, kH, kW) with C = group")
    kernel = list(w.shape[2:])
    if "kernel_shape" in a and list(a["kernel_shape"]) != kernel:
        raise ValueError(f"Conv kernel_shape {list(a['kernel_shape'])} differs from the weight's {kernel}")
    strides = _ints_attr(a, "strides", 2, 1, 1)
    dilations = _ints_attr(a, "dilations", 2, 1, 1)
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"Conv auto_pad {auto_pad!r} should be one of {list(AUTO_PADS)}")
    pads = tuple(_ints_attr(a, "pads", 4, 0, 0)) if auto_pad == "NOTSET" else (0, 0, 0, 0)
    bias = np.asarray(consts[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else None
    if bias is not None and bias.shape != (w.shape[0],):
        raise ValueError(f"Conv bias has shape {list(bias.shape)}; expected [{w.shape[0]}]")
    pre = None if before is None else clip_bounds(before, consts)
    post = None if after is None else ((0.0, math.inf) if after.op_type == "Relu" else clip_bounds(after, consts))
    convs: dict[tuple[Any, ...], Any] = {}

    def build(work: np.dtype, pad: tuple[int, ...]):
        return DepthwiseConv2d(w.astype(work), None if bias is None else bias.astype(work), tuple(strides), pad,
                               tuple(dilations), None if post is None else clip_limits(*post, work),
                               None if pre is None else clip_limits(*pre, work))

    def run(xs):
        x = xs[0]
        if x.ndim != 4 or x.shape[1] != group:
            raise ValueError(f"Conv input of shape {list(x.shape)} should be (N, {group}, H, W): group {group}")
        pad = pads if not auto_pad.startswith("SAME") else same_pads(x.shape[2:], kernel, strides,
                                                                    auto_pad == "SAME_LOWER")
        # float16 is convolved in float32 (clipped to its own limits there), then rounded.
        work = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        key = (work, pad)
        fn = convs.get(key)
        if fn is None:
            fn = convs[key] = build(work, pad)
        return [fn(x.astype(work, copy=False)).astype(x.dtype, copy=False)]
    return run


def _conv(node, consts) -> GlueFn:
    return compile_depthwise(node, consts)


def _reads(value: str, nodes: list[onnx.NodeProto]) -> int:
    return sum(value in n.input for n in nodes)


def depthwise_chain(nodes: list[onnx.NodeProto], i: int, outputs: list[str]
                    ) -> tuple[onnx.NodeProto | None, onnx.NodeProto, onnx.NodeProto | None] | None:
    """(before, conv, after) when ``nodes[i]`` starts a depthwise Conv that
    :func:`compile_depthwise` runs in one pass with its neighbours: ``before`` a Clip right
    before it whose output only the Conv reads, ``after`` a Clip or Relu right after it that
    alone reads the Conv's output (neither a step output, in ``outputs``); None when
    ``nodes[i]`` is neither such a Clip nor a Conv."""
    before = None
    if (nodes[i].op_type == "Clip" and i + 1 < len(nodes) and nodes[i + 1].op_type == "Conv"
            and nodes[i + 1].input[0] == nodes[i].output[0] and nodes[i].output[0] not in outputs
            and _reads(nodes[i].output[0], nodes) == 1):
        before, i = nodes[i], i + 1
    conv = nodes[i]
    if conv.op_type != "Conv":
        return None
    after = nodes[i + 1] if i + 1 < len(nodes) else None
    if (after is None or after.op_type not in ("Clip", "Relu") or after.input[0] != conv.output[0]
            or conv.output[0] in outputs or _reads(conv.output[0], nodes) != 1):
        after = None
    return before, conv, after


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


def max_pool_supported(node: onnx.NodeProto) -> bool:
    """True for a MaxPool this module runs: 2-D, without the Indices output, ceil_mode 0, no
    SAME auto_pad (ONNX Runtime runs the others)."""
    a = node_attrs(node)
    return (len(node.output) < 2 or not node.output[1]) and len(a.get("kernel_shape", [])) == 2 \
        and a.get("ceil_mode", 0) == 0 and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")


def _max_pool(node, consts) -> GlueFn:
    from sparsify.kernels.pool import max_pool2d, pool_window

    a = node_attrs(node)
    pads = _ints_attr(a, "pads", 4, 0, 0) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0, 0, 0, 0]
    window = pool_window(_ints_attr(a, "kernel_shape", 2, 1, 1), _ints_attr(a, "strides", 2, 1, 1), pads,
                         _ints_attr(a, "dilations", 2, 1, 1))

    def run(xs):
        x = xs[0]
        if x.ndim != 4:
            raise ValueError(f"a 2-D MaxPool needs an input of rank 4 (N, C, H, W), got rank {x.ndim}")
        # float16 is pooled in float32: max picks one of the inputs, so rounding back is exact.
        work = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        y = max_pool2d(x.astype(work, copy=False), *window)
        return [y.astype(x.dtype, copy=False)]
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
    "Clip": _clip,
    "Conv": _conv,
    "MaxPool": _max_pool,
}
# Node conditions beyond the op type: LayerNormalization only without its optional Mean
# and InvStdDev outputs; MaxPool as max_pool_supported says.
ONLY_IF: dict[str, Callable[[onnx.NodeProto], bool]] = {
    "LayerNormalization": lambda node: not any(node.output[1:]),
    "MaxPool": max_pool_supported,
}
# Node conditions on the node's constant inputs (the model's initializers by name): a Clip's
# min and max are constants; a Conv is depthwise with constant weights.
CONST_CHECKS: dict[str, Callable[[onnx.NodeProto, Mapping[str, Any]], bool]] = {
    "Clip": lambda node, inits: all(v in inits for v in node.input[1:3] if v),
    "Conv": depthwise_conv_supported,
}
# Inputs of these ops that are shapes/axes (int64), not float data.
INT_INPUTS = {"Reshape": {1}, "ReduceMean": {1}}


def supports(node: onnx.NodeProto, inits: Mapping[str, Any] | None = None) -> bool:
    """True when ``node`` is a standard-domain op with a numpy implementation here. ``inits``
    are the model's initializers by name (TensorProtos or arrays); without them, a node whose
    support depends on its constant inputs (CONST_CHECKS) is supported only where it has none
    of them (a Clip without min and max inputs)."""
    if not (node.domain in ("", "ai.onnx") and node.op_type in GLUE_OPS
            and ONLY_IF.get(node.op_type, lambda n: True)(node)):
        return False
    check = CONST_CHECKS.get(node.op_type)
    return check is None or check(node, {} if inits is None else inits)


def compile_node(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> GlueFn:
    """The numpy function for ``node`` (inputs in node order, missing optional inputs as None)."""
    return GLUE_OPS[node.op_type](node, consts)
