"""CSR conversion pass on a dense-exported ONNX graph: plan which weights to convert, then rewrite.

:func:`plan_csr` looks at every Gemm / MatMul (+ bias Add) / Conv whose weight is an
initializer and decides, per layer, whether to replace it by an ``ai.sparsify`` op, recording
the reason either way ("measured on this host (...): sparse 0.21 ms + ... vs dense ONNX Runtime
2.10 ms", "weight is not an initializer", ...). The decision is measured on the running host
(``sparsify.runtime.calibrate``, cached per host) unless ``--density-threshold`` sets a
threshold; the fixed rules below serve only when calibration is turned off
(``SPARSIFY_CALIBRATION=off``) or a conv's input shape is unknown. A following Relu that is the sole consumer is fused into the op, and so is
the exact-erf GELU pattern the exporter emits (``x * (0.5 * (erf(x / sqrt2) + 1))``).
:func:`rewrite_csr` then builds the new model: CSR arrays and bias are ordinary
initializers, every other op stays standard. :class:`CsrPass` wraps both.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsify.errors import ExportError
from sparsify.sparse_ops import CONV_OP, DOMAIN, DOMAIN_VERSION, LINEAR_OP, make_node, node_label
from sparsify.onnxfile import inferred_graph, initializer_array, node_attrs
from sparsify.passes.blocks import MAX_TIMED, block_candidates, bsr_arrays, fixed_rule_block

# The fixed rules, used when calibration is off: a layer converts when its density is below the
# crossover at which CSR beat ONNX Runtime's dense op (fp32, 1024x1024 and 4096x4096 linear
# layers at 1 and 2 threads; batches between entries take the next larger entry), from
#   python benchmarks/bench_sparse_e2e.py --crossover --threads 1|2
# (benchmarks/results/sparse_crossover*.json; the figures: benchmarks/README.md, "Conversion thresholds").
LINEAR_CROSSOVER: dict[int, float] = {1: 0.4, 8: 0.2, 64: 0.3}
# Stride-1 convs with a kernel larger than 1x1 (the direct conv kernel), batch 1: every
# measured shape won at 0.05 at both thread counts, none reliably at 0.1.
CONV_CROSSOVER: float = 0.05
# Convs smaller than the smallest measured winner (64x64x3x3 over 8x8) stay dense: below it the
# fixed per-call cost dominates (digits-cnn at 95% ran at 0.31-0.39x dense ORT when converted).
# Without the output size from shape inference, the weight count is compared instead.
MIN_CONV_WEIGHTS = 64 * 64 * 3 * 3
MIN_CONV_MACS = MIN_CONV_WEIGHTS * 8 * 8
# A model whose convertible layers are all linear and all below this many multiply-adds per call
# stays dense as a whole: each runtime step and ORT segment costs more than such layers take
# dense (digits-mlp and digits-vit ran at 0.22-0.40x dense ORT when converted); per model, since
# a small dense layer between sparse ones adds an ORT segment.
MIN_LINEAR_MACS = 1 << 20
# 1x1 and strided convs never won at both thread counts under the fixed rules, so they convert
# only when measured on the host or forced with --density-threshold.


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

    @property
    def label(self) -> str | None:
        """The weight's name for people: the torch parameter when known, else the initializer."""
        if self.source and self.source != self.weight:
            return f"{self.source} (initializer {self.weight})"
        return self.weight

    def keep_dense(self, reason: str) -> None:
        """Decide against converting, for ``reason`` (nothing fused)."""
        self.convert, self.reason = False, reason
        self.activation, self.fused, self.blocksize = "none", (), None

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
                "blocksize": list(self.blocksize) if self.blocksize else None}


@dataclasses.dataclass
class CsrPlan:
    """Decisions for every candidate node, with the inputs of the choice."""

    decisions: list[LayerDecision]
    target_batch: int
    density_threshold: float | None  # the user's override, None when measured defaults were used
    # Shape inference of the planned model, reused by rewrite_csr on the same model.
    shapes: "_Shapes | None" = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def converted(self) -> list[LayerDecision]:
        return [d for d in self.decisions if d.convert]

    @property
    def skipped(self) -> list[LayerDecision]:
        return [d for d in self.decisions if not d.convert]

    def lines(self) -> list[str]:
        return [d.line() for d in self.decisions]


@dataclasses.dataclass
class PassResult:
    """The rewritten model, whether anything changed, and the plan behind it."""

    model: onnx.ModelProto
    modified: bool
    plan: CsrPlan


# Initializers up to this size (biases, scalars) are kept once read; weights are read again.
_CACHED_BYTES = 1 << 20


class _Graph:
    """Index of a graph: producers, consumers, initializers, graph outputs."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | Path | None = None) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.outputs = {o.name for o in g.output}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.base_dir = base_dir
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        """The initializer's values; large ones are read anew on each call rather than kept, so
        a model with external data is converted holding one weight at a time."""
        if name in self._arrays:
            return self._arrays[name]
        a = initializer_array(self.inits[name], self.base_dir)
        if a.nbytes <= _CACHED_BYTES:
            self._arrays[name] = a
        return a

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.inits[name].dims)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.inits[name].data_type))

    def sole_consumer(self, value: str) -> int | None:
        """Index of the only node reading ``value`` (None if several, none, or a graph output)."""
        users = self.consumers.get(value, [])
        if len(users) != 1 or value in self.outputs:
            return None
        return users[0]

    def scalar(self, name: str) -> float | None:
        if name in self.inits:
            a = self.array(name)
            if a.size == 1 and np.issubdtype(a.dtype, np.floating):
                return float(a.reshape(()))
        return None


def _with_constant(g: _Graph, value: str, op_type: str, constant: float) -> int | None:
    """The sole consumer of ``value`` if it is ``op_type(value, constant)`` (either input order)."""
    user = g.sole_consumer(value)
    if user is None or g.nodes[user].op_type != op_type:
        return None
    other = [v for v in g.nodes[user].input if v != value]
    return user if len(other) == 1 and g.scalar(other[0]) == constant else None


def _match_gelu(g: _Graph, value: str) -> tuple[list[int], str] | None:
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


def _fuse_activation(g: _Graph, value: str) -> tuple[str, list[int], str]:
    """(activation, fused node indices, new output) for the activation consuming ``value``, if any."""
    nxt = g.sole_consumer(value)
    if nxt is not None and g.nodes[nxt].op_type == "Relu":
        return "relu", [nxt], g.nodes[nxt].output[0]
    gelu = _match_gelu(g, value)
    if gelu is not None:
        return "gelu", gelu[0], gelu[1]
    return "none", [], value


def _source_parameter(node: onnx.NodeProto, weight: str) -> str | None:
    """``<module path>.weight`` from the exporter's name-scope metadata, for initializers it named ``val_*``."""
    if not weight.startswith("val_"):
        return weight
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            path = ".".join(str(p) for p in scopes[1:-1] if p)
            return f"{path}.weight" if path else None
    return None


def _candidate(g: _Graph, idx: int) -> LayerDecision | None:
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
    activation, act_nodes, out = _fuse_activation(g, out)
    return LayerDecision(label, node.op_type, weight, shape, None, None, True, "", activation, bias, out,
                         fused=tuple(fused + act_nodes), transpose=transpose,
                         source=_source_parameter(node, weight))


def _inferred_value_info(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Value info of the graph's inputs, intermediate values and outputs after shape
    inference (empty where inference fails: it is a convenience here, not a requirement)."""
    g = inferred_graph(model)
    return {} if g is None else {vi.name: vi for vi in [*g.input, *g.value_info, *g.output]}


class _Shapes:
    """Value shapes from ONNX shape inference, run on first use (nothing known where it fails)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._known: dict[str, onnx.ValueInfoProto] | None = None

    def of(self, model: onnx.ModelProto) -> bool:
        """Whether these shapes were inferred on ``model`` (the same object)."""
        return model is self._model

    def value_info(self, name: str) -> onnx.ValueInfoProto | None:
        """The inferred value info of ``name``, if any."""
        if self._known is None:
            self._known = _inferred_value_info(self._model)
        return self._known.get(name)

    def dims(self, name: str) -> list[int | None]:
        """The dims of value ``name`` (None where unknown); [] when its rank is unknown."""
        vi = self.value_info(name)
        dims = vi.type.tensor_type.shape.dim if vi is not None else []
        return [dm.dim_value if dm.HasField("dim_value") else None for dm in dims]

    def positions(self, name: str) -> int | None:
        """The spatial size (product of the dims after the first two) of an NC... value."""
        spatial = self.dims(name)[2:]
        return math.prod(spatial) if spatial and None not in spatial else None

    def rows_per_sample(self, name: str) -> int:
        """Rows a linear layer sees per sample in its input ``name`` (N, ..., in): the
        product of the dims between the first and the last (tokens), 1 when unknown."""
        inner = self.dims(name)[1:-1]
        return math.prod(inner) if inner and None not in inner else 1


def _conv_too_small(weights: int, positions: int | None) -> str | None:
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


def plan_csr(model: onnx.ModelProto, density_threshold: float | None = None,
             target_batch: int = 1, base_dir: str | Path | None = None,
             progress: Callable[[int], None] | None = None, calibrate: bool | None = None) -> CsrPlan:
    """Decide, for each Gemm / MatMul / Conv of ``model``, whether to convert it and why.

    With ``density_threshold`` a layer is converted when its weight density is strictly
    below it (1.0: every eligible layer, fully dense ones included). Otherwise, with
    ``calibrate`` (default: unless ``$SPARSIFY_CALIBRATION`` is off), each layer is timed
    on this host at ``target_batch`` against ONNX Runtime's dense op and converted when
    our kernel wins (``sparsify.runtime.calibrate``; cached per host); without it, the
    fixed rules of :func:`default_threshold` and the size floors apply. External data is
    read from ``base_dir``; ``progress`` is called with each weight's byte count once it
    has been read.
    """
    if density_threshold is not None and not (isinstance(density_threshold, (int, float))
                                              and 0.0 <= density_threshold <= 1.0):
        raise ExportError(f"density threshold {density_threshold!r} should be a number in [0, 1]")
    if not isinstance(target_batch, int) or target_batch < 1:
        raise ExportError(f"target batch {target_batch!r} should be a positive int")
    g = _Graph(model, base_dir)
    shapes = _Shapes(model)
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
        blocks = block_candidates(w.T if d.transpose else w) if d.op_type != "Conv" else []
        d.blocksize = fixed_rule_block(blocks)
        if progress:
            progress(w.nbytes)
        if calibrator is not None and _decide_by_measurement(g, d, w, shapes, target_batch, calibrator, blocks):
            if d.convert:
                claimed.update(d.fused)
            continue
        del w
        kind = "conv" if d.op_type == "Conv" else "linear"
        if density_threshold is not None:
            threshold = float(density_threshold)
        elif kind == "conv":
            a = node_attrs(g.nodes[d.fused[0]])
            threshold = default_threshold(kind, target_batch, a.get("kernel_shape", d.weight_shape[2:]),
                                          a.get("strides", (1, 1)))
        else:
            threshold = default_threshold(kind, target_batch)
        too_small = (_conv_too_small(math.prod(d.weight_shape), shapes.positions(g.nodes[d.fused[0]].output[0]))
                     if density_threshold is None and kind == "conv" and threshold > 0 else None)
        if too_small:
            d.keep_dense(too_small + "; --density-threshold converts it anyway")
            continue
        d.threshold = threshold
        source = "set by --density-threshold" if density_threshold is not None else f"for batch {target_batch}"
        prefix = d.reason  # why it was not timed, if it was not
        if d.density < threshold or threshold >= 1.0:
            d.reason = f"{prefix}density {d.density:.3f} below threshold {threshold:.2f} {source}"
            if d.density >= threshold:
                d.reason = f"{prefix}density {d.density:.3f}, threshold {threshold:.2f} {source} converts every layer"
            claimed.update(d.fused)
        else:
            reason = f"{prefix}density {d.density:.3f} not below threshold {threshold:.2f} {source}"
            if density_threshold is None and threshold == 0.0:
                what = "1x1 and strided conv" if kind == "conv" else kind
                reason += f" ({what} kernels measured slower than ONNX Runtime at every density)"
            d.keep_dense(reason)
    if calibrator is not None:
        calibrator.save()
    elif density_threshold is None:
        _keep_small_models_dense(g, decisions, target_batch, shapes)
    return CsrPlan(decisions, target_batch, density_threshold, shapes)


def _decide_by_measurement(g: _Graph, d: LayerDecision, w: np.ndarray, shapes: _Shapes, target_batch: int,
                           calibrator, blocks: Sequence[tuple[int, int]] = ()) -> bool:
    """Decide ``d`` by timing it on this host (True), or return False when its input shape
    is unknown (a conv needs it), leaving the decision to the fixed rules. A linear weight
    with block ``blocks`` is timed as a CSR and as a BSR of each of (the first MAX_TIMED of)
    them; the fastest is the one stored and compared with dense."""
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
            m = calibrator.conv(w, (target_batch, *dims[1:]), a.get("strides", [1] * spatial),
                                a.get("pads", [0] * 2 * spatial), a.get("dilations", [1] * spatial),
                                int(a.get("group", 1)))
        else:
            w2d = w.T if d.transpose else w.reshape(w.shape[0], -1)
            rows = target_batch * shapes.rows_per_sample(node.input[0])
            timed = [(calibrator.linear(w2d, rows), None)]
            timed += [(calibrator.linear(w2d, rows, b), b) for b in blocks[:MAX_TIMED]]
            m, d.blocksize = min(timed, key=lambda t: t[0].sparse_ms)
            if len(timed) > 1:
                layouts = "; layouts timed: " + ", ".join(
                    f"{'CSR' if b is None else f'{b[0]}x{b[1]} blocks'} {t.sparse_ms:.4f} ms" for t, b in timed)
    except Exception as exc:  # a layer the timing cannot run (ORT or a kernel refusing it): fixed rules
        d.reason = f"not timed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        return False
    reason = f"density {d.density:.3f}, {m.reason(calibrator.where)} at batch {target_batch}{layouts}"
    if m.convert:
        d.reason = reason
    else:
        d.keep_dense(reason + "; --density-threshold converts it anyway")
    return True


def _keep_small_models_dense(g: _Graph, decisions: list[LayerDecision], target_batch: int,
                             shapes: _Shapes) -> None:
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


def _index_arrays(csr_indices: np.ndarray, csr_indptr: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Narrowest stored dtypes: uint16 column indices when cols fit, int32 (int64) indptr."""
    nnz = int(csr_indptr[-1]) if csr_indptr.size else 0
    ptr = csr_indptr.astype(np.int32 if nnz <= np.iinfo(np.int32).max else np.int64)
    if cols <= np.iinfo(np.uint16).max + 1:
        return csr_indices.astype(np.uint16), ptr
    return csr_indices.astype(np.int32 if cols <= np.iinfo(np.int32).max else np.int64), ptr


def _csr(w2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows_idx, cols_idx = np.nonzero(w2d)
    indptr = np.zeros(w2d.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows_idx, minlength=w2d.shape[0]), out=indptr[1:])
    return np.ascontiguousarray(w2d[rows_idx, cols_idx]), cols_idx, indptr


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


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
    g = _Graph(model, base_dir)
    shapes = plan.shapes if plan.shapes is not None and plan.shapes.of(model) else _Shapes(model)
    taken = {i.name for i in model.graph.initializer} | {v for n in model.graph.node for v in [*n.input, *n.output]}
    taken |= {n.name for n in model.graph.node}
    new_inits: list[onnx.TensorProto] = []
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    for d in plan.converted:
        main = g.nodes[d.fused[0]]
        w = g.array(d.weight)
        w2d = w.T if d.transpose else w.reshape(w.shape[0], -1)
        if d.blocksize:
            data, indices, indptr = bsr_arrays(np.ascontiguousarray(w2d), *d.blocksize)
            idx, ptr = _index_arrays(indices, indptr, w2d.shape[1] // d.blocksize[1])
        else:
            data, indices, indptr = _csr(np.ascontiguousarray(w2d))
            idx, ptr = _index_arrays(indices, indptr, w2d.shape[1])
        base = d.source or d.weight
        names = tuple(_unique(f"{base}.csr_{part}", taken) for part in ("data", "indices", "indptr"))
        for name, arr in zip(names, (data, idx, ptr)):
            new_inits.append(numpy_helper.from_array(arr, name))
        bias = d.bias
        if bias is not None and g.array(bias).shape != (w2d.shape[0],):
            b = g.array(bias).reshape(w2d.shape[0])
            bias = _unique(f"{bias}.flat", taken)
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(b), bias))
        conv: dict[str, Any] = {}
        if d.op_type == "Conv":
            a = node_attrs(main)
            conv = dict(kernel_shape=list(a.get("kernel_shape", w.shape[2:])), strides=a.get("strides", [1, 1]),
                        pads=a.get("pads", [0, 0, 0, 0]), dilations=a.get("dilations", [1, 1]),
                        group=a.get("group", 1))
        op = CONV_OP if d.op_type == "Conv" else LINEAR_OP
        node = make_node(op, main.input[0], names, bias, d.output, _unique(f"{d.node}.sparse", taken),
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


__all__: Sequence[str] = ["LINEAR_CROSSOVER", "CONV_CROSSOVER", "MIN_CONV_WEIGHTS", "MIN_CONV_MACS", "default_threshold", "LayerDecision", "CsrPlan",
                          "PassResult", "plan_csr", "rewrite_csr", "CsrPass"]
